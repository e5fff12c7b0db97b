"""What a killed backup run leaves behind, how it is recognised, and how the next run cleans it.

Every client a backup run starts in the database container (``docker exec`` of pg_dump,
pg_dumpall, psql, tar, pg_restore) carries ``PGAPPNAME=opsauto-backup-<tag>-<run>`` in its
environment, so its server sessions carry it as ``application_name`` too; ``<tag>`` names
the backup directory (a hash of its real path), ``<run>`` the run. Temporary directories in
the container are ``/tmp/opsauto-backup-<tag>.XXXXXXXX``; throwaway containers (the
directory-format dump) carry the label ``opsauto.backup=<tag>``.

A run that is killed (SIGKILL of the module or of ansible-playbook) cannot clean up, and the
processes it started in the container keep running: pg_dump, and the psql session that holds
the dump's snapshot (an open REPEATABLE READ transaction, which blocks vacuum and holds
locks). The next run of the same backup directory holds the run lock, so no other live run
of that directory exists, and ``clean_leftovers`` removes exactly what carries that
directory's tag: processes (TERM, then KILL), server sessions (pg_terminate_backend),
temporary directories in the container, throwaway containers, and on the host the
incomplete sets of ours (start marker, no SET.json) and partial files. Runs of other backup
directories, restores and other clients are never touched: their names differ.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import uuid

from ansible.module_utils.backup_retention import read_marker
from ansible.module_utils.backup_sets import SET_FILE
from ansible.module_utils.ops_errors import OpsError, PgError

APP_PREFIX = "opsauto-backup-"
TEMP_PREFIX = "/tmp/opsauto-backup-"
LABEL = "opsauto.backup"

# Lists (pid and command line) and ends the container's processes whose environment holds
# PGAPPNAME=<$1>...: TERM first, KILL after a second for those still there.
KILL_SCRIPT = r"""
want="PGAPPNAME=$1"
pids=""
for d in /proc/[0-9]*; do
  pid=${d#/proc/}
  [ "$pid" = "$$" ] && continue
  env=$(tr '\0' '\n' < "$d/environ" 2>/dev/null) || continue
  printf '%s\n' "$env" | grep -q "^$want" || continue
  echo "$pid $(tr '\0' ' ' < "$d/cmdline" 2>/dev/null)"
  pids="$pids $pid"
done
[ -z "$pids" ] && exit 0
kill -TERM $pids 2>/dev/null
sleep 1
for pid in $pids; do kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null; done
exit 0
"""

TERMINATE_SQL = (
    "SELECT pid, application_name, pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE starts_with(application_name, :'prefix') AND pid <> pg_backend_pid();"
)


def dir_tag(backup_dir: str) -> str:
    """8 hex digits naming a backup directory (its real path) in names and labels."""
    return hashlib.sha256(os.path.realpath(backup_dir).encode()).hexdigest()[:8]


def run_names(backup_dir: str) -> dict:
    """The names of one run: its application_name, temp dir prefix and container label."""
    tag = dir_tag(backup_dir)
    return {
        "app_name": f"{APP_PREFIX}{tag}-{uuid.uuid4().hex[:10]}",
        "temp_prefix": f"{TEMP_PREFIX}{tag}.",
        "container_label": f"{LABEL}={tag}",
    }


def clean_leftovers(pg, backup_dir: str, current_set: str, database: str) -> list[str]:
    """Remove what killed runs of ``backup_dir`` left; one line per thing removed.

    ``pg`` is a PgContainer whose own application_name is not a backup run's; ``database``
    the database to connect to for the session cleanup; ``current_set`` the set this run
    writes (its incomplete directory is kept, only its partial files go).
    """
    tag = dir_tag(backup_dir)
    prefix = f"{APP_PREFIX}{tag}-"
    if pg.app_name.startswith(APP_PREFIX):
        raise PgError("the cleanup must not run under a backup run's application_name")
    notes = []
    notes += [f"container {name}" for name in _remove_containers(pg, tag)]
    out = pg.run(["sh", "-c", KILL_SCRIPT, "sh", prefix], timeout=60).decode(errors="replace")
    notes += [f"process {line.strip()}" for line in out.splitlines() if line.strip()]
    with contextlib.suppress(PgError):  # a server that is down has no sessions to end
        for pid, name, _ in pg.psql(TERMINATE_SQL, database, variables={"prefix": prefix}):
            notes.append(f"server session {pid} ({name})")
    temp = f"{TEMP_PREFIX}{tag}."
    listed = pg.run(
        ["sh", "-c", 'for d in "$1"*; do [ -e "$d" ] && echo "$d" && rm -rf -- "$d"; done; true',
         "sh", temp],
        timeout=300,
    ).decode(errors="replace")  # fmt: skip
    notes += [f"container temp dir {line}" for line in listed.splitlines() if line]
    notes += _clean_host(backup_dir, current_set)
    return notes


def _remove_containers(pg, tag: str) -> list[str]:
    argv = [pg.docker_cli, "ps", "-aq", "--filter", f"label={LABEL}={tag}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    ids = proc.stdout.split()
    if ids:
        subprocess.run(
            [pg.docker_cli, "rm", "-f", *ids], capture_output=True, timeout=120, check=False
        )
    return ids


def _clean_host(backup_dir: str, current_set: str) -> list[str]:
    notes = []
    try:
        names = sorted(os.listdir(backup_dir))
    except OSError:
        return notes
    for name in names:
        path = os.path.join(backup_dir, name)
        if name.startswith(".") or not os.path.isdir(path) or os.path.islink(path):
            continue
        if read_marker(path) is None or os.path.exists(os.path.join(path, SET_FILE)):
            continue  # not ours, or complete
        if os.path.realpath(path) != os.path.realpath(current_set):
            shutil.rmtree(path, ignore_errors=True)
            notes.append(f"incomplete set {path}")
            continue
        for entry in sorted(os.listdir(path)):
            if ".partial-" in entry or entry.startswith(".stage-"):
                target = os.path.join(path, entry)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(target)
                notes.append(f"partial file {target}")
    return notes


class Terminated(OpsError):
    """The run was asked to stop (SIGTERM or SIGHUP): it cleans up as after any failure."""


@contextlib.contextmanager
def stop_on_signals():
    """Turn SIGTERM and SIGHUP into :class:`Terminated` while the block runs (main thread),
    so a run stopped that way ends its clients and removes its partial set itself."""

    def handler(signum, _frame):
        raise Terminated(
            f"the backup was stopped by signal {signal.Signals(signum).name} while it ran"
        )

    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave the handlers as they are
        pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
