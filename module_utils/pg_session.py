"""The PostgreSQL client side: programs run in the database container with ``docker exec``.

* :data:`CONNECTION_ARGUMENT_SPEC`: the options of every module that connects
  (documented once in doc_fragments/pg_container.py);
* :class:`PgContainer`: argv building (the password reaches the client programs only
  through the environment: ``-e PGPASSWORD`` in argv, the value in the docker CLI's
  environment), psql queries, and :meth:`PgContainer.explain`, which turns a failed
  client command into a message naming the cause and the fix;
* :class:`SnapshotSession`: one psql session that reads the server's facts, then holds a
  REPEATABLE READ transaction whose exported snapshot pg_dump uses, so the row counts and
  the dump agree;
* :class:`Background`: a function run in a thread while a dump streams.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import subprocess
import tempfile
import threading
import time
import uuid

from ansible.module_utils.ops_errors import CommandError, PgError
from ansible.module_utils.pipelines import stderr_text

SOCKET_DIR = "/var/run/postgresql"
SESSION_TIMEOUT = 1800.0
COMMAND_TIMEOUT = 120.0

# The server's version, the current database's encoding and the databases that accept
# connections (what pg_dumpall dumps), in one round trip.
SERVER_INFO_SQL = (
    "SELECT current_setting('server_version'), pg_encoding_to_char(encoding), "
    "datcollate, datctype, (SELECT json_agg(datname ORDER BY datname) FROM pg_database "
    "WHERE datallowconn) FROM pg_database WHERE datname = current_database();"
)

# Counting runs beside pg_dump: one backend without parallel workers or JIT compilation,
# so that it takes one core and leaves the rest to the dump (about as fast on 2 cores).
COUNT_SETTINGS_SQL = "SET LOCAL max_parallel_workers_per_gather = 0;\nSET LOCAL jit = off;\n"

# The ordinary tables of a database whose rows pg_dump dumps: tables that belong to an
# extension are left out (pg_dump does not dump their rows by default).
_DUMPED_TABLES = """
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname !~ '^pg_(toast|temp_)'
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_class'::regclass
                      AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY 1"""

# Every such table with its exact row count, in one statement so that it runs inside the
# caller's transaction (and snapshot): the backup's counts.
ROW_COUNT_SQL = f"""
SELECT n.nspname || '.' || c.relname,
       (xpath('/row/c/text()', query_to_xml(
           format('SELECT count(*) AS c FROM ONLY %I.%I', n.nspname, c.relname),
           false, true, '')))[1]::text::bigint{_DUMPED_TABLES};
"""

# The same counts as one top-level statement per table (psql's \gexec runs each generated
# statement), so that the server may scan a big table with parallel workers, which a
# count inside query_to_xml never gets: the counts after a restore, when nothing else
# competes for the cores.
PARALLEL_ROW_COUNT_SQL = f"""
SELECT format('SELECT %L, count(*) FROM ONLY %I.%I',
              n.nspname || '.' || c.relname, n.nspname, c.relname){_DUMPED_TABLES}
\\gexec
"""

# The options every module that runs clients in the container takes (documented once in
# doc_fragments/pg_container.py).
CONNECTION_ARGUMENT_SPEC = {
    "container": {"type": "str", "required": True},
    "docker_cli": {"type": "path", "default": "docker"},
    "login_user": {"type": "str", "required": True},
    "login_password": {"type": "str", "no_log": True},
}


# --------------------------------------------------------------------------- server facts


def parse_server_info(rows):
    version, encoding, collate, ctype, databases = rows[0]
    return {
        "server_version": version,
        "encoding": encoding,
        "collate": collate,
        "ctype": ctype,
        "databases": json.loads(databases),
    }


def version_text(line):
    """``pg_dump (PostgreSQL) 15.4`` -> ``15.4``."""
    line = line.strip()
    return line.split(")", 1)[-1].strip() if ")" in line else line


# --------------------------------------------------------------------------- container


class PgContainer:
    """PostgreSQL client programs run in a container with ``docker exec`` (no TTY).

    With a password the clients connect over TCP to 127.0.0.1 (so the password is
    really checked) and get it from ``PGPASSWORD``, which reaches the container as
    ``-e PGPASSWORD`` with the value in the docker CLI's environment only.  Without a
    password they use the local socket (``-h /var/run/postgresql``).
    """

    def __init__(self, container, login_user, login_password=None, docker_cli="docker"):
        self.container = container
        self.login_user = login_user
        self.login_password = login_password or None
        self.docker_cli = docker_cli or "docker"
        # Tags our server sessions so they can be terminated if the client is abandoned.
        self.app_name = f"opsauto-{uuid.uuid4().hex[:12]}"

    @classmethod
    def from_params(cls, params):
        """The container a module's CONNECTION_ARGUMENT_SPEC options name."""
        return cls(
            params["container"],
            params["login_user"],
            params.get("login_password"),
            params.get("docker_cli") or "docker",
        )

    # -- argv and environment

    @property
    def host(self):
        return "127.0.0.1" if self.login_password else SOCKET_DIR

    def env(self):
        env = dict(os.environ)
        env.pop("PGPASSWORD", None)
        if self.login_password:
            env["PGPASSWORD"] = self.login_password
        return env

    def exec_argv(self, command, interactive=False):
        argv = [self.docker_cli, "exec"]
        if interactive:
            argv.append("-i")
        if self.login_password:
            argv += ["-e", "PGPASSWORD"]
        argv += ["-e", f"PGAPPNAME={self.app_name}", self.container]
        return argv + list(command)

    def conn_args(self, database=None):
        args = ["-h", self.host, "-U", self.login_user, "-w"]
        if database is not None:
            args += ["-d", database]
        return args

    # -- running

    def run(self, command, input_bytes=None, stdin=None, timeout=COMMAND_TIMEOUT, context=""):
        """Run a command in the container; return stdout (bytes) or raise CommandError."""
        interactive = input_bytes is not None or stdin is not None
        argv = self.exec_argv(command, interactive=interactive)
        try:
            proc = subprocess.run(
                argv,
                input=input_bytes,
                stdin=stdin if input_bytes is None else None,
                capture_output=True,
                env=self.env(),
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError:
            raise PgError(
                f"docker CLI {self.docker_cli!r} not found: install it or set docker_cli"
            ) from None
        except subprocess.TimeoutExpired:
            raise PgError(
                f"{command[0]} in container {self.container} did not finish within {timeout:g}s"
                f"{context}: check the container's health (docker logs {self.container})"
            ) from None
        if proc.returncode != 0:
            stderr = proc.stderr.decode("utf-8", errors="replace").strip()
            raise CommandError(
                self.explain(stderr, proc.returncode, context), proc.returncode, stderr
            )
        return proc.stdout

    def explain(self, stderr, returncode=None, context=""):
        """A message for a failed client command naming the cause and the fix."""
        c = self.container
        user = self.login_user
        lower = stderr.lower()
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {returncode}"
        if "no such container" in lower or "no such object" in lower:
            return (
                f"container {c} does not exist on this host: check the container option "
                "(docker ps -a)"
            )
        if "is not running" in lower or "is restarting" in lower or "is paused" in lower:
            return (
                f"container {c} is not running{context}: start it (docker start {c}) and "
                f"check its logs (docker logs {c}), then re-run"
            )
        if (
            "cannot connect to the docker daemon" in lower
            or "permission denied while trying" in lower
        ):
            return (
                f"the Docker engine is not reachable ({detail}): start it or run the task with "
                "become: true"
            )
        match = re.search(r'database "([^"]*)" does not exist', stderr)
        if match:
            return (
                f'database "{match.group(1)}" does not exist in container {c}{context}: check the '
                f"database option / list databases with `docker exec {c} psql -U {user} -l`"
            )
        if "password authentication failed" in lower or "no password supplied" in lower:
            return (
                f'password authentication failed for user "{user}" in container {c}{context}: '
                "check login_password (it must be the role's password; leave it empty to use the "
                "container's local socket)"
            )
        match = re.search(r'role "([^"]*)" does not exist', stderr)
        if match:
            return (
                f'role "{match.group(1)}" does not exist in container {c}{context}: check '
                "login_user (the POSTGRES_USER of the container, usually)"
            )
        if "no space left on device" in lower:
            return (
                f"no space left on device inside container {c}{context} ({detail}): free space "
                "in the container's file systems (volume or /tmp) and re-run"
            )
        if (
            "could not connect" in lower
            or "connection refused" in lower
            or "the database system is" in lower
        ):
            return (
                f"PostgreSQL in container {c} is not accepting connections{context} ({detail}): "
                f"wait until `docker exec {c} pg_isready` succeeds, or check docker logs {c}"
            )
        if (
            "server closed the connection unexpectedly" in lower
            or "unexpected postmaster exit" in lower
            or "terminating connection due to administrator command" in lower
        ):
            return (
                f"the PostgreSQL server in container {c} ended the session{context} ({detail}): "
                "the container was stopped or killed, the server was shut down or crashed, or an "
                "administrator ended the session (pg_terminate_backend, for example a replace "
                f"restore of the same database) while the command ran{self._state_note()}; "
                f"check docker ps -a / docker logs {c}, then re-run"
            )
        if returncode in (137, 143) or "signal" in lower:
            return (
                f"the client in container {c} was killed{context} (exit {returncode}): the "
                f"container was stopped or killed while it ran; check docker ps / docker logs {c}"
            )
        if "permission denied" in lower or "must be owner" in lower:
            return (
                f"permission denied in container {c}{context} ({detail}): use a login_user "
                "with enough privileges (a superuser)"
            )
        return (
            f"command failed in container {c}{context} (exit {returncode}): "
            f"{stderr.strip()[-2000:]}"
        )

    def _state_note(self):
        """', container state now: ...' from docker inspect, or '' when it cannot be read."""
        argv = [
            self.docker_cli, "inspect", "--format",
            "{{.State.Status}} (exit code {{.State.ExitCode}}, OOMKilled={{.State.OOMKilled}})",
            self.container,
        ]  # fmt: skip
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return ""
        state = proc.stdout.strip()
        return f"; container state now: {state}" if proc.returncode == 0 and state else ""

    def check_running(self):
        """Fail unless the container exists and runs."""
        argv = [self.docker_cli, "inspect", "--format", "{{.State.Running}}", self.container]
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
            )
        except FileNotFoundError:
            raise PgError(
                f"docker CLI {self.docker_cli!r} not found: install it or set docker_cli"
            ) from None
        if proc.returncode != 0:
            raise PgError(self.explain(proc.stderr, proc.returncode))
        if proc.stdout.strip() != "true":
            raise PgError(
                f"container {self.container} is not running: start it "
                f"(docker start {self.container}) and re-run"
            )

    def psql(self, sql, database, variables=None, context="", timeout=COMMAND_TIMEOUT):
        """Run SQL (stdin) with psql; return the rows as lists of strings.

        ``variables`` become ``-v name=value``; use them in SQL as :'name' (literal) or
        :"name" (identifier), so values are quoted by psql.
        """
        command = ["psql", "-X", "-q", "-A", "-t", "-F", "\x1f", "-v", "ON_ERROR_STOP=1"]
        for name, value in (variables or {}).items():
            command += ["-v", f"{name}={value}"]
        command += self.conn_args(database)
        out = self.run(command, input_bytes=sql.encode("utf-8"), context=context, timeout=timeout)
        text = out.decode("utf-8", errors="replace")
        return [line.split("\x1f") for line in text.splitlines() if line != ""]

    def client_versions(self, programs):
        """``{program: version}`` of client programs in the container, in one docker exec."""
        script = 'for p in "$@"; do "$p" --version || exit 1; done'
        try:
            out = self.run(["sh", "-c", script, "sh", *programs])
            lines = out.decode("utf-8", errors="replace").strip().splitlines()
        except CommandError:
            lines = []  # no sh in the image: one exec per program
        if len(lines) != len(programs):
            lines = [
                self.run([program, "--version"]).decode("utf-8", errors="replace").strip()
                for program in programs
            ]
        return {program: version_text(line) for program, line in zip(programs, lines, strict=True)}

    def server_info(self, database):
        rows = self.psql(
            SERVER_INFO_SQL, database, context=f" while connecting to database {database}"
        )
        return parse_server_info(rows)

    def server_and_databases(self, databases, maintenance_db):
        """The server's facts and ``{name: {"owner", "comment", "allow_connections"} or None}``.

        One psql call: connection, password and role problems show up here, naming
        ``maintenance_db``.
        """
        names = {f"d{number}": name for number, name in enumerate(databases)}
        lookup = (
            "SELECT datname, pg_get_userbyid(datdba), "
            "coalesce(shobj_description(oid, 'pg_database'), ''), datallowconn "
            "FROM pg_database WHERE datname IN (" + ", ".join(f":'{key}'" for key in names) + ");"
        )
        rows = self.psql(
            f"{SERVER_INFO_SQL}\n{lookup}",
            maintenance_db,
            variables=names,
            context=f" while connecting to database {maintenance_db}",
        )
        found = {
            row[0]: {"owner": row[1], "comment": row[2], "allow_connections": row[3] == "t"}
            for row in rows[1:]
        }
        return parse_server_info(rows[:1]), {name: found.get(name) for name in databases}

    def row_counts(self, database, timeout=SESSION_TIMEOUT):
        """``{schema.table: rows}`` of ``database``, counted with parallel scans if useful."""
        rows = self.psql(PARALLEL_ROW_COUNT_SQL, database, timeout=timeout)
        return {name: int(count) for name, count in rows}

    def terminate_own_sessions(self, maintenance_db="postgres"):
        """Best effort: end server sessions opened by our (possibly abandoned) clients."""
        with contextlib.suppress(PgError):
            self.psql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :'app' AND pid <> pg_backend_pid();",
                maintenance_db,
                variables={"app": self.app_name},
                timeout=30,
            )

    def make_temp_dir(self):
        out = self.run(["mktemp", "-d", "/tmp/opsauto-pg.XXXXXXXX"], context=" (mktemp)")
        return out.decode().strip()

    def remove_temp_dir(self, path):
        if path and path.startswith("/tmp/opsauto-pg."):
            with contextlib.suppress(PgError):
                self.run(["rm", "-rf", "--", path], timeout=300)


# --------------------------------------------------------------------------- sessions


class Background:
    """Run ``func`` in a thread while the dump streams; :meth:`result` re-raises its error."""

    def __init__(self, func):
        self._value = None
        self._error = None
        self._thread = threading.Thread(target=self._run, args=(func,), daemon=True)
        self._thread.start()

    def _run(self, func):
        try:
            self._value = func()
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def join(self):
        self._thread.join()

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


class SnapshotSession:
    """A psql session that first reads the server's facts, then exports a snapshot.

    Entering the ``with`` block connects (so password, database and connection problems
    show up here) and sets :attr:`info`; :meth:`export_snapshot` then opens a REPEATABLE
    READ transaction and exports its snapshot: ``pg_dump --snapshot=<id>`` sees exactly
    the rows :meth:`row_counts` counts while the session stays open.  Leaving the block
    ends the transaction.  One ``docker exec`` serves all of this.
    """

    MARKER = "__opsauto_done__"

    def __init__(self, pg, database, timeout=SESSION_TIMEOUT):
        self.pg = pg
        self.database = database
        self.timeout = timeout
        self.proc = None
        self.err = None
        self.info = None
        self.snapshot = None
        self._context = f" while connecting to database {database}"

    def __enter__(self):
        command = ["psql", "-X", "-q", "-A", "-t", "-F", "\x1f", "-v", "ON_ERROR_STOP=1"]
        command += self.pg.conn_args(self.database)
        self.err = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                self.pg.exec_argv(command, interactive=True),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.err,
                env=self.pg.env(),
            )
        except FileNotFoundError:
            self.err.close()
            raise PgError(
                f"docker CLI {self.pg.docker_cli!r} not found: install it or set docker_cli"
            ) from None
        try:
            self.info = parse_server_info(self.query(SERVER_INFO_SQL))
        except BaseException:
            self.close()
            raise
        return self

    def export_snapshot(self):
        self._context = f" while opening a snapshot of {self.database}"
        rows = self.query(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSELECT pg_export_snapshot();"
        )
        self.snapshot = rows[0][0]
        return self.snapshot

    def query(self, sql):
        """Send SQL, wait (bounded) for its output up to a marker line, return the rows."""
        try:
            self.proc.stdin.write(f"{sql}\n\\echo {self.MARKER}\n".encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            self._fail()
        buffer = b""
        deadline = time.monotonic() + self.timeout
        fd = self.proc.stdout.fileno()
        while (self.MARKER.encode() + b"\n") not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PgError(
                    f"psql in container {self.pg.container} did not answer within "
                    f"{self.timeout:g}s while counting rows: check the server's load"
                )
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self._fail()
                buffer += chunk
        text = buffer.decode("utf-8", errors="replace")
        lines = [line for line in text.splitlines() if line and line != self.MARKER]
        return [line.split("\x1f") for line in lines]

    def _fail(self):
        try:
            returncode = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            returncode = None
        stderr = stderr_text(self.err)
        raise CommandError(
            self.pg.explain(stderr, returncode, self._context),
            returncode,
            stderr,
        )

    def row_counts(self):
        rows = self.query(COUNT_SETTINGS_SQL + ROW_COUNT_SQL)
        return {name: int(count) for name, count in rows}

    def close(self):
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            self.proc.stdin.write(b"COMMIT;\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.err.close()
        self.proc = None

    def __exit__(self, *exc_info):
        self.close()
        return False
