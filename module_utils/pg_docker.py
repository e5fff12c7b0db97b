"""Shared logic of the ``pg_backup`` and ``pg_backup_restore`` modules.

The modules run on the Docker host and talk to PostgreSQL in a container through the
``docker`` CLI (``docker exec``, argv lists only, never a shell on the host).  This file
holds everything they share and is plain Python (standard library only), so it is
unit-tested without Ansible.  Problems are raised as :class:`PgDockerError` (or a
subclass) whose message names the cause and the fix; the modules turn it into
``fail_json``.

What lives here:

* names: backup ids, labels, artifact file names, PostgreSQL identifiers of at most
  63 bytes, SQL quoting;
* files: streaming a command's stdout into ``.{name}.partial-XXXX`` beside the final
  file in 1 MiB chunks while hashing (sha256) and optionally compressing it (gzip in
  Python, zstd through the ``zstd`` binary), fsync, atomic ``os.replace``, fsync of the
  directory; the partial file is removed on any failure;
* the manifest (JSON, written atomically), the plain-dump trailer check;
* :class:`PgContainer`: ``docker exec`` argv building (the password reaches the
  client programs only through the environment: ``-e PGPASSWORD`` in argv, the value in
  the docker CLI's environment), psql queries, error classification;
* :class:`SnapshotSession`: a psql session holding a REPEATABLE READ transaction whose
  exported snapshot pg_dump uses, so row counts and dump agree;
* the backup and restore operations themselves (:func:`run_backup`,
  :func:`run_restore`).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
import zlib

from ansible.module_utils.fileops import (
    CHUNK_SIZE,
    FILE_MODE,
    LockTimeout,
    LockUnsupported,
    discard,
    ensure_directory,
    flock_file,
    new_partial_path,
    os_error_message,
    publish,
    sha256_file,
    write_json_atomic,
)
from ansible.module_utils.ops_errors import CommandError, CorruptBackupError, PgError

PgDockerError = PgError
SOCKET_DIR = "/var/run/postgresql"
MAX_IDENTIFIER_BYTES = 63
NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT_VERSION = 1
MARKER_PREFIX = "opsauto-restore"
TAIL_BYTES = 4096
LOCK_POLL_INTERVAL = 0.2
SESSION_TIMEOUT = 1800.0
COMMAND_TIMEOUT = 120.0

MODES = ("database", "cluster", "globals")
FORMATS = ("custom", "directory", "plain")
COMPRESSIONS = ("none", "gzip", "zstd")
EXTENSIONS = {
    ("custom", "none"): "dump",
    ("directory", "none"): "dir.tar",
    ("plain", "none"): "sql",
    ("plain", "gzip"): "sql.gz",
    ("plain", "zstd"): "sql.zst",
}
TRAILERS = {
    "database": "-- PostgreSQL database dump complete",
    "cluster": "-- PostgreSQL database cluster dump complete",
    "globals": "-- PostgreSQL database cluster dump complete",
}
PACKAGE_HINTS = {"zstd": "zstd (apt-get install zstd / dnf install zstd)"}
ENCRYPTED_SUFFIX = ".age"
# An age X25519 public key: "age1" and 58 bech32 characters (what age-keygen -y prints).
AGE_RECIPIENT_RE = re.compile(r"^age1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{58}$")
AGE_SECRET_PREFIX = "AGE-SECRET-KEY-"

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

# Every ordinary table of the database with its exact row count, in one statement so
# that it runs inside the caller's transaction (and snapshot).  Tables that belong to
# an extension are left out: pg_dump does not dump their rows by default.
ROW_COUNT_SQL = """
SELECT n.nspname || '.' || c.relname,
       (xpath('/row/c/text()', query_to_xml(
           format('SELECT count(*) AS c FROM ONLY %I.%I', n.nspname, c.relname),
           false, true, '')))[1]::text::bigint
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname !~ '^pg_(toast|temp_)'
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_class'::regclass
                      AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY 1;
"""


# The options every module that runs clients in the container takes (documented once in
# doc_fragments/pg_container.py).
CONNECTION_ARGUMENT_SPEC = {
    "container": {"type": "str", "required": True},
    "docker_cli": {"type": "path", "default": "docker"},
    "login_user": {"type": "str", "required": True},
    "login_password": {"type": "str", "no_log": True},
}


# --------------------------------------------------------------------------- names


def check_name(value, option):
    """Validate a backup id / label: letters, digits, '.', '_', '-', not starting with '.'."""
    if not isinstance(value, str) or not NAME_RE.match(value) or value.startswith("."):
        raise PgDockerError(
            f"{option} {value!r} is not allowed: use only letters, digits, '.', '_' and '-' "
            "and do not start it with '.' (it becomes part of a file name)"
        )
    return value


def check_recipients(values):
    """Validate age public keys (``age1...``); returns them without duplicates, in order.

    An age identity (secret key) given by mistake is refused without echoing it.
    """
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    recipients = []
    for value in values:
        text = value.strip() if isinstance(value, str) else value
        if isinstance(text, str) and text.upper().startswith(AGE_SECRET_PREFIX):
            raise PgDockerError(
                "encrypt_recipients holds an age identity (a secret key starting with "
                f"{AGE_SECRET_PREFIX}), not a public key; the value is not shown. Give the public "
                "key instead (age-keygen -y IDENTITY_FILE prints it) and keep the identity off "
                "the backup host"
            )
        if not isinstance(text, str) or not AGE_RECIPIENT_RE.match(text):
            raise PgDockerError(
                f"encrypt_recipients: {value!r} is not an age public key: it must be 'age1' "
                "followed by 58 lowercase bech32 characters, as printed by age-keygen "
                "(or age-keygen -y IDENTITY_FILE)"
            )
        if text not in recipients:
            recipients.append(text)
    return recipients


def sanitize_label(name):
    """Turn a database name into a file-name-safe label (used when 'label' is not given)."""
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", name or "").lstrip(".")
    return label or "backup"


def artifact_name(label, fmt, compression="none", encrypted=False):
    """File name of a dump: ``{label}.dump|dir.tar|sql|sql.gz|sql.zst``, plus ``.age``."""
    if fmt != "plain" and compression != "none":
        raise PgDockerError(
            f"compression={compression} applies to format=plain only; format={fmt} is "
            "compressed by pg_dump itself. Remove 'compression' or use format=plain."
        )
    try:
        name = f"{label}.{EXTENSIONS[(fmt, compression)]}"
    except KeyError:
        raise PgDockerError(
            f"unsupported format/compression {fmt}/{compression}: format is one of "
            f"{', '.join(FORMATS)}, compression one of {', '.join(COMPRESSIONS)}"
        ) from None
    return name + ENCRYPTED_SUFFIX if encrypted else name


def manifest_name(label):
    return f"{label}{MANIFEST_SUFFIX}"


def label_from_artifact(filename):
    """The label of a dump file name (inverse of :func:`artifact_name`), or None."""
    if filename.endswith(ENCRYPTED_SUFFIX):
        filename = filename[: -len(ENCRYPTED_SUFFIX)]
    for ext in sorted(EXTENSIONS.values(), key=len, reverse=True):
        if filename.endswith("." + ext) and len(filename) > len(ext) + 1:
            return filename[: -len(ext) - 1]
    return None


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


def truncate_utf8(text, max_bytes):
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", errors="ignore")


def pg_identifier(base, suffix):
    """``base + suffix`` as a PostgreSQL identifier of at most 63 bytes.

    The suffix (which says what the name is for) is kept; the base is shortened.  When
    the suffix alone is too long, it is shortened and made unique with a short hash.
    """
    limit = MAX_IDENTIFIER_BYTES
    if len((base + suffix).encode("utf-8")) <= limit:
        return base + suffix
    if len(suffix.encode("utf-8")) > limit // 2:
        digest = hashlib.sha256(suffix.encode("utf-8")).hexdigest()[:8]
        suffix = truncate_utf8(suffix, limit // 2 - 9) + "_" + digest
    return truncate_utf8(base, limit - len(suffix.encode("utf-8"))) + suffix


def quote_ident(name):
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value):
    return "'" + value.replace("'", "''") + "'"


def restore_marker(backup_id, sha256):
    """The database COMMENT that marks a database as restored from this backup."""
    return f"{MARKER_PREFIX} backup_id={backup_id} sha256={sha256}"


def utc_now():
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- files


REQUIRED_MANIFEST_KEYS = ("backup_id", "label", "file", "mode", "format", "sha256", "size")


def read_manifest(path):
    """Load and check a manifest written by :func:`build_manifest`."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise PgDockerError(
            f"manifest {path} does not exist: a pg_backup dump has its manifest beside it as "
            "{label}.manifest.json; give its location with manifest_path"
        ) from None
    except (OSError, ValueError) as exc:
        raise CorruptBackupError(
            f"manifest {path} cannot be read as JSON ({exc}): the backup is corrupt or was not "
            "written by pg_backup; use another backup"
        ) from None
    if not isinstance(data, dict):
        raise CorruptBackupError(f"manifest {path} is not a JSON object: the backup is corrupt")
    missing = [key for key in REQUIRED_MANIFEST_KEYS if key not in data]
    if missing:
        raise CorruptBackupError(
            f"manifest {path} lacks {', '.join(missing)}: the backup is corrupt or was not "
            "written by pg_backup"
        )
    return data


def tail_has_trailer(tail, trailer):
    """True if ``trailer`` is the last line of a plain dump.

    Blank lines, ``--`` lines and the closing ``\\unrestrict`` meta-command are ignored.
    """
    text = tail.decode("utf-8", errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # pg_dump 15.14+ ends with "\unrestrict <key>" after the trailer (CVE-2025-8714 fix)
    while lines and (lines[-1] == "--" or lines[-1].startswith("\\unrestrict ")):
        lines.pop()
    return bool(lines) and lines[-1] == trailer


def read_plain_tail(path, compression, zstd_bin=None):
    """The last TAIL_BYTES of the decompressed content of a plain dump."""
    tail = b""
    if compression == "none":
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - TAIL_BYTES))
            return handle.read()
    if compression == "gzip":
        decomp = zlib.decompressobj(wbits=31)
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_SIZE):
                try:
                    tail = (tail + decomp.decompress(chunk))[-TAIL_BYTES:]
                except zlib.error as exc:
                    raise CorruptBackupError(f"{path} is not valid gzip data ({exc})") from None
        if not decomp.eof:
            raise CorruptBackupError(f"{path} is a truncated gzip stream")
        return tail
    if compression == "zstd":
        argv = [zstd_bin or find_binary("zstd"), "-d", "-c", "-q", path]
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err)
            with proc.stdout:
                while chunk := proc.stdout.read(CHUNK_SIZE):
                    tail = (tail + chunk)[-TAIL_BYTES:]
            if proc.wait() != 0:
                err.seek(0)
                raise CorruptBackupError(
                    f"{path} is not valid zstd data: {err.read().decode(errors='replace')}"
                )
        return tail
    raise PgDockerError(f"unknown compression {compression!r}")


def check_plain_trailer(path, mode, compression, zstd_bin=None):
    trailer = TRAILERS[mode]
    if not tail_has_trailer(read_plain_tail(path, compression, zstd_bin), trailer):
        raise CorruptBackupError(
            f"{path} does not end with {trailer!r}: the dump is truncated or not a complete "
            "pg_dump/pg_dumpall output"
        )
    return f"trailer {trailer!r} found"


def find_binary(name):
    path = shutil.which(name)
    if path is None and name == "age":
        raise PgDockerError(
            "the age binary is required on the Docker host for encrypt_recipients and "
            "decrypt_identity_file but was not found in PATH: install the age package: "
            "apt-get install age"
        )
    if path is None:
        raise PgDockerError(
            f"the {name} binary is required on the Docker host for compression={name} but was "
            f"not found in PATH: install the package {PACKAGE_HINTS.get(name, name)} or use "
            "compression=gzip"
        )
    return path


# --------------------------------------------------------------------------- streaming


class _Gzip:
    def __init__(self):
        self._obj = zlib.compressobj(6, zlib.DEFLATED, 31)

    def feed(self, data):
        return self._obj.compress(data)

    def finish(self):
        return self._obj.flush()


def _widen_pipe(stream):
    """Let the pipe behind ``stream`` hold CHUNK_SIZE bytes (Linux; best effort).

    With the default 64 KiB the writer (the docker CLI) and this process wake each other
    16 times per MiB; on a busy host those switches cost measurable CPU on big dumps.
    """
    with contextlib.suppress(AttributeError, OSError):
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, CHUNK_SIZE)


def _stderr_text(handle, limit=4000):
    handle.seek(0)
    return handle.read().decode("utf-8", errors="replace").strip()[-limit:]


def _stream_os_error(exc, argv, out_path):
    """The error to raise for an OSError while streaming a command's output to a file."""
    if isinstance(exc, FileNotFoundError) and exc.filename == argv[0]:
        return PgDockerError(f"{argv[0]} not found: install the docker CLI or set docker_cli")
    return PgDockerError(os_error_message(exc, f"write {out_path}"))


def stream_to_file(
    argv, out_path, env=None, stdin=None, compression="none", zstd_bin=None, check_argv=None
):
    """Run ``argv``; write its stdout (compressed if asked) to ``out_path``; hash it.

    Memory use is flat: stdout is read in 1 MiB chunks.  Returns ``(sha256, size)`` of
    the bytes written.  A non-zero exit status of any process raises CommandError with
    the command's stderr; an OSError while writing (disk full) raises PgDockerError.
    ``check_argv``, if given, is a process fed the same (uncompressed) chunks on its stdin
    for as long as it reads them; a non-zero exit status of it raises CorruptBackupError.
    The caller owns ``out_path`` (and removes it on failure).
    """
    procs = []
    errs = []
    check = None
    digest = hashlib.sha256()
    size = 0
    gzip = _Gzip() if compression == "gzip" else None
    try:
        err = tempfile.TemporaryFile()
        errs.append(err)
        proc = subprocess.Popen(
            argv,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
        procs.append(proc)
        source = proc.stdout
        if compression == "zstd":
            err2 = tempfile.TemporaryFile()
            errs.append(err2)
            zproc = subprocess.Popen(
                [zstd_bin or find_binary("zstd"), "-q", "-c", "-"],
                stdin=proc.stdout,
                stdout=subprocess.PIPE,
                stderr=err2,
            )
            procs.append(zproc)
            proc.stdout.close()  # only zstd reads it now
            source = zproc.stdout
        if check_argv:
            check_err = tempfile.TemporaryFile()
            errs.append(check_err)
            check = subprocess.Popen(
                check_argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=check_err,
                env=env,
            )
            procs.append(check)
        check_open = check is not None
        _widen_pipe(source)
        with open(out_path, "wb") as out:
            while chunk := source.read(CHUNK_SIZE):
                if check_open:
                    check_open = _write_quietly(check.stdin, chunk)
                if gzip is not None:
                    chunk = gzip.feed(chunk)
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            if gzip is not None:
                chunk = gzip.finish()
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if check is not None:
            with contextlib.suppress(BrokenPipeError):
                check.stdin.close()
        for number, proc in enumerate(procs):
            returncode = proc.wait()
            if returncode != 0 and proc is check:
                raise CorruptBackupError(
                    "the dump stream is not a readable archive: "
                    + (_stderr_text(errs[number]) or f"{check_argv[-1]} exit {returncode}")
                )
            if returncode != 0:
                stderr = _stderr_text(errs[number])
                raise CommandError(
                    f"{os.path.basename(proc.args[0])} exited with status {returncode}: {stderr}",
                    returncode,
                    stderr,
                )
    except OSError as exc:
        raise _stream_os_error(exc, argv, out_path) from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream:
                    with contextlib.suppress(OSError):
                        stream.close()
        for err in errs:
            err.close()
    return digest.hexdigest(), size


def _write_quietly(handle, data):
    """Write to a child's stdin; False when the child has closed it (it exited)."""
    try:
        handle.write(data)
    except BrokenPipeError:
        return False
    return True


def stream_encrypted(argv, out_path, recipients, env=None, compression="none", check_argv=None):
    """Run ``argv``; encrypt its stdout with age to ``out_path``; check the plaintext on the way.

    Only ciphertext reaches ``out_path``: the producer's stdout is read here in 1 MiB
    chunks, compressed if asked (gzip in Python, zstd through the ``zstd`` binary), hashed
    (sha256 of the plaintext, the bytes age encrypts) and written to ``age -r KEY...`` whose
    stdout is the file.  While streaming, the uncompressed chunks also go to:

    * the last TAIL_BYTES kept in memory (for the plain-dump trailer check), and
    * ``check_argv``, if given: a process reading them on stdin (``pg_restore`` or ``tar -t``
      in the container) whose exit status says whether the stream is readable.

    Returns a dict: ``sha256``/``size`` of the ciphertext file, ``plaintext_sha256``,
    ``plaintext_size``, ``tail`` and ``check_error`` (None when the check passed or none
    was run).  A failing producer, compressor or age raises CommandError.
    """
    age_argv = [find_binary("age")]
    for recipient in recipients:
        age_argv += ["-r", recipient]
    procs = []  # (process, its stderr file)
    plain = hashlib.sha256()
    state = {"plain_size": 0, "tail": b"", "pump_error": None}
    gzip = _Gzip() if compression == "gzip" else None
    pump = None
    check = None

    def start(command, **kwargs):
        err = tempfile.TemporaryFile()
        try:
            proc = subprocess.Popen(command, stderr=err, **kwargs)
        except BaseException:
            err.close()
            raise
        procs.append((proc, err))
        return proc

    def died(proc):
        """CommandError of a child that stopped reading its input (it exited)."""
        returncode = proc.wait()
        stderr = _stderr_text(next(err for child, err in procs if child is proc))
        return CommandError(
            f"{os.path.basename(proc.args[0])} exited with status {returncode}: {stderr}",
            returncode,
            stderr,
        )

    def to_age(age, data):
        plain.update(data)
        state["plain_size"] += len(data)
        if not _write_quietly(age.stdin, data):
            raise died(age)

    def pump_compressed(source, age):
        try:
            while chunk := source.read(CHUNK_SIZE):
                to_age(age, chunk)
        except BaseException as exc:  # reported by the main thread
            state["pump_error"] = exc
            while source.read(CHUNK_SIZE):  # keep zstd from blocking the main thread
                pass

    try:
        with open(out_path, "wb") as out:
            producer = start(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env)
            age = start(age_argv, stdin=subprocess.PIPE, stdout=out)
            zstd = None
            if compression == "zstd":
                zstd = start(
                    [find_binary("zstd"), "-q", "-c", "-"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                pump = threading.Thread(target=pump_compressed, args=(zstd.stdout, age))
                pump.start()
            if check_argv:
                check = start(check_argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
            check_open = check is not None
            _widen_pipe(producer.stdout)
            while chunk := producer.stdout.read(CHUNK_SIZE):
                state["tail"] = (state["tail"] + chunk)[-TAIL_BYTES:]
                if check_open:
                    check_open = _write_quietly(check.stdin, chunk)
                if zstd is not None:
                    if not _write_quietly(zstd.stdin, chunk):
                        raise died(zstd)
                elif gzip is not None:
                    to_age(age, gzip.feed(chunk))
                else:
                    to_age(age, chunk)
            if gzip is not None:
                to_age(age, gzip.finish())
            for proc in (zstd, check):
                if proc is not None:
                    with contextlib.suppress(BrokenPipeError):
                        proc.stdin.close()
            if pump is not None:
                pump.join()
                if state["pump_error"] is not None:
                    raise state["pump_error"]
            with contextlib.suppress(BrokenPipeError):
                age.stdin.close()
            for proc, err in procs:
                returncode = proc.wait()
                if returncode != 0 and proc is not check:
                    stderr = _stderr_text(err)
                    raise CommandError(
                        f"{os.path.basename(proc.args[0])} exited with status {returncode}: "
                        f"{stderr}",
                        returncode,
                        stderr,
                    )
            check_error = None
            if check is not None and check.returncode != 0:
                check_error = _stderr_text(procs[-1][1]) or f"exit {check.returncode}"
            out.flush()
            os.fsync(out.fileno())
        sha256, size = sha256_file(out_path)
    except OSError as exc:
        raise _stream_os_error(exc, argv, out_path) from None
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if pump is not None:
            pump.join()
        for proc, err in procs:
            for stream in (proc.stdin, proc.stdout):
                if stream:
                    with contextlib.suppress(OSError):
                        stream.close()
            err.close()
    return {
        "sha256": sha256,
        "size": size,
        "plaintext_sha256": plain.hexdigest(),
        "plaintext_size": state["plain_size"],
        "tail": state["tail"],
        "check_error": check_error,
    }


def age_version():
    proc = subprocess.run(
        [find_binary("age"), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    return proc.stdout.strip() or None


@contextlib.contextmanager
def decrypted(path, identity_file, what=None):
    """A readable binary stream of the plaintext of an age-encrypted file.

    ``age -d -i IDENTITY_FILE PATH`` decrypts in 64 KiB authenticated chunks; the key
    stays in its file (only its path is in argv).  After the body, the rest of the stream
    is drained and age's exit status checked: a wrong identity or a damaged file raises
    (CorruptBackupError for damage).  ``what`` names the file in messages.
    """
    what = what or path
    check_identity_file(identity_file)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [find_binary("age"), "-d", "-i", identity_file, path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        try:
            yield proc.stdout
            while proc.stdout.read(CHUNK_SIZE):
                pass
            returncode = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if returncode != 0:
            raise _decrypt_error(what, identity_file, _stderr_text(err))


def check_identity_file(identity_file):
    if not identity_file:
        raise PgDockerError("decrypt_identity_file is empty: give the path of an age identity file")
    if not os.path.isfile(identity_file) or not os.access(identity_file, os.R_OK):
        raise PgDockerError(
            f"decrypt_identity_file {identity_file} does not exist or is not readable: give the "
            "path of the age identity file (from age-keygen) of one of the backup's recipients "
            "on the Docker host, readable by the user the task runs as"
        )


def _decrypt_error(what, identity_file, stderr):
    if "no identity matched" in stderr:
        return PgDockerError(
            f"cannot decrypt {what} with decrypt_identity_file {identity_file}: it holds no key "
            "of the backup's recipients (age: no identity matched any of the recipients). "
            "Nothing was changed; give the identity file of one of the recipients listed in "
            "the manifest's encryption.recipients"
        )
    if "identity" in stderr and ("read" in stderr or "pars" in stderr or "malformed" in stderr):
        return PgDockerError(
            f"decrypt_identity_file {identity_file} is not a usable age identity file (age: "
            f"{stderr.splitlines()[-1] if stderr else 'error'}): give a file written by "
            "age-keygen"
        )
    return CorruptBackupError(
        f"{what} is corrupt: age decryption failed ({stderr.splitlines()[-1] if stderr else ''}"
        "). Nothing was changed; restore another backup"
    )


# --------------------------------------------------------------------------- containers


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
            raise PgDockerError(
                f"docker CLI {self.docker_cli!r} not found: install it or set docker_cli"
            ) from None
        except subprocess.TimeoutExpired:
            raise PgDockerError(
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
            raise PgDockerError(
                f"docker CLI {self.docker_cli!r} not found: install it or set docker_cli"
            ) from None
        if proc.returncode != 0:
            raise PgDockerError(self.explain(proc.stderr, proc.returncode))
        if proc.stdout.strip() != "true":
            raise PgDockerError(
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

    def row_counts(self, database):
        rows = self.psql(ROW_COUNT_SQL, database, timeout=SESSION_TIMEOUT)
        return {name: int(count) for name, count in rows}

    def terminate_own_sessions(self, maintenance_db="postgres"):
        """Best effort: end server sessions opened by our (possibly abandoned) clients."""
        with contextlib.suppress(PgDockerError):
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
            with contextlib.suppress(PgDockerError):
                self.run(["rm", "-rf", "--", path], timeout=300)


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
            raise PgDockerError(
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
                raise PgDockerError(
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
        stderr = _stderr_text(self.err)
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


# --------------------------------------------------------------------------- locking


@contextlib.contextmanager
def file_lock(path, timeout):
    """Exclusive flock on ``path`` (created 0600), waiting at most ``timeout`` seconds.

    Only taking the lock is worded here; errors of the block under it pass unchanged.
    """
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(flock_file(path, timeout, FILE_MODE))
        except OSError as exc:
            raise PgDockerError(os_error_message(exc, f"lock {path}")) from None
        except LockUnsupported as exc:
            raise PgDockerError(
                f"cannot lock {path}: the file system refuses flock ({exc}): choose a dest_dir "
                "on a local file system"
            ) from None
        except LockTimeout:
            raise PgDockerError(
                f"another pg_backup run holds {path} (it is writing the same backup) and did "
                f"not finish within {timeout:g}s: wait for it and re-run (the re-run reports "
                "changed=false if that backup succeeded), or raise lock_timeout"
            ) from None
        yield path


# --------------------------------------------------------------------------- verification


def verify_archive(pg, path, fmt, mode="database", compression="none"):
    """Check that a dump file is readable; return a description of the check.

    custom: ``pg_restore --list`` reading the file from stdin in the container;
    directory (tar): unpacked into a container temp dir, then ``pg_restore --list``;
    plain: the completion trailer at the end of the (decompressed) content.
    Raises CorruptBackupError.
    """
    try:
        if fmt == "plain":
            return check_plain_trailer(path, mode, compression)
        if fmt == "custom":
            with open(path, "rb") as handle:
                pg.run(["pg_restore", "--list"], stdin=handle, timeout=SESSION_TIMEOUT)
            return "pg_restore --list (custom archive read from stdin in the container)"
        if fmt == "directory":
            tmp = pg.make_temp_dir()
            try:
                with open(path, "rb") as handle:
                    pg.run(["tar", "-x", "-C", tmp], stdin=handle, timeout=SESSION_TIMEOUT)
                pg.run(["pg_restore", "--list", tmp], timeout=SESSION_TIMEOUT)
            finally:
                pg.remove_temp_dir(tmp)
            return "pg_restore --list (directory archive unpacked in a container temp dir)"
    except CommandError as exc:
        raise CorruptBackupError(
            f"{path} is not a readable {fmt} archive: {exc.stderr or exc}"
        ) from None
    raise PgDockerError(f"unknown format {fmt!r}")


# --------------------------------------------------------------------------- backup


def backup_plan(params):
    """Resolve the options of pg_backup into names and paths (no side effects)."""
    mode = params.get("mode") or "database"
    fmt = params.get("format")
    compression = params.get("compression") or "none"
    database = params.get("database")
    if mode == "database" and not database:
        raise PgDockerError("mode=database needs the 'database' option (the database to dump)")
    if mode != "database":
        if fmt not in ("plain", None):
            raise PgDockerError(
                f"mode={mode} writes pg_dumpall output, which is plain SQL only: remove 'format' "
                "or set format=plain"
            )
        fmt = "plain"
    fmt = fmt or "custom"
    if fmt != "plain" and compression != "none":
        raise PgDockerError(
            f"compression={compression} applies to format=plain only (format={fmt} is "
            "compressed by pg_dump): remove 'compression' or use format=plain"
        )
    level = params.get("compress_level")
    if level is not None:
        level = int(level)
        if fmt == "plain":
            raise PgDockerError(
                "compress_level sets pg_dump -Z for format=custom or format=directory; plain "
                "dumps are compressed on the host with 'compression' (gzip, zstd): remove "
                "compress_level"
            )
        if not 0 <= level <= 9:
            raise PgDockerError(
                f"compress_level must be 0 (none) to 9 (smallest, slowest), got {level}"
            )
    jobs = int(params.get("jobs") or 1)
    if jobs < 1:
        raise PgDockerError(f"jobs must be 1 or more, got {jobs}")
    if jobs > 1 and fmt != "directory":
        raise PgDockerError(
            "jobs > 1 (parallel pg_dump) works with format=directory only: set format=directory "
            "or jobs=1"
        )
    backup_id = check_name(params["backup_id"], "backup_id")
    label = params.get("label") or (sanitize_label(database) if mode == "database" else mode)
    check_name(label, "label")
    directory = os.path.join(params["dest_dir"], backup_id)
    recipients = check_recipients(params.get("encrypt_recipients"))
    name = artifact_name(label, fmt, compression, encrypted=bool(recipients))
    return {
        "mode": mode,
        "format": fmt,
        "compression": compression,
        "compress_level": level,
        "database": database if mode == "database" else None,
        "jobs": jobs,
        "recipients": recipients,
        "backup_id": backup_id,
        "label": label,
        "directory": directory,
        "name": name,
        "path": os.path.join(directory, name),
        "manifest_path": os.path.join(directory, manifest_name(label)),
    }


def check_existing(pg, plan):
    """If this backup already exists and verifies, return its manifest; None if absent.

    Raises PgDockerError when something exists that is not a valid, matching backup;
    an existing backup is never modified.
    """
    path, manifest_path = plan["path"], plan["manifest_path"]
    has_file = os.path.exists(path)
    has_manifest = os.path.exists(manifest_path)
    if not has_manifest:
        if has_file:
            raise PgDockerError(
                f"{path} exists but its manifest {manifest_path} does not: it was not written by "
                "pg_backup or is incomplete. It was left untouched; move it aside or choose "
                "another backup_id"
            )
        return None
    manifest = read_manifest(manifest_path)
    if manifest.get("file") != plan["name"]:
        raise PgDockerError(
            f"backup {plan['backup_id']} already has label {plan['label']} as "
            f"{manifest.get('file')} (format={manifest.get('format')}, "
            f"compression={manifest.get('compression')}), not {plan['name']}: choose another "
            "backup_id or label; the existing backup was left untouched"
        )
    if not has_file:
        return None  # manifest written, dump never published: dump again
    encryption = manifest.get("encryption") or {}
    if sorted(encryption.get("recipients") or []) != sorted(plan["recipients"]):
        raise PgDockerError(
            f"backup {path} already exists, encrypted to other age recipients "
            f"({', '.join(encryption.get('recipients') or [])}) than encrypt_recipients asks "
            "for: choose another backup_id; the existing backup was left untouched"
        )
    sha256, size = sha256_file(path)
    if sha256 != manifest["sha256"] or size != manifest["size"]:
        raise CorruptBackupError(
            f"existing backup {path} does not match its manifest (sha256 {sha256}, manifest "
            f"says {manifest['sha256']}): it is corrupt. It was left untouched; move it and "
            f"{manifest_path} aside to take this backup again, or choose another backup_id"
        )
    if encryption:
        return manifest  # no identity here: the ciphertext's sha256 is what can be checked
    try:
        verify_archive(pg, path, manifest["format"], manifest["mode"], manifest.get("compression"))
    except CorruptBackupError as exc:
        raise CorruptBackupError(
            f"existing backup {path} matches its manifest but does not verify ({exc}); it was "
            "left untouched: move it aside or choose another backup_id"
        ) from None
    return manifest


def _dump_command(pg, plan, snapshot, target_dir=None):
    if plan["mode"] == "cluster":
        command = ["pg_dumpall", *pg.conn_args()]
        if plan["database"]:
            command += ["-l", plan["database"]]
        return command
    if plan["mode"] == "globals":
        return ["pg_dumpall", "--globals-only", *pg.conn_args()]
    command = ["pg_dump", *pg.conn_args(plan["database"]), f"--snapshot={snapshot}"]
    if plan.get("compress_level") is not None:
        command += ["-Z", str(plan["compress_level"])]
    if plan["format"] == "custom":
        return command + ["-Fc"]
    if plan["format"] == "plain":
        return command + ["-Fp"]
    return command + ["-Fd", "-j", str(plan["jobs"]), "-f", target_dir]


def _dump_to(pg, plan, partial, snapshot):
    """Run the dump; its output lands in ``partial``. Returns (sha256, size)."""
    env = pg.env()
    zstd_bin = find_binary("zstd") if plan["compression"] == "zstd" else None
    context = (
        f" while dumping database {plan['database']}" if plan["database"] else " while dumping"
    )
    try:
        if plan["recipients"]:
            return _dump_encrypted(pg, plan, partial, snapshot, context)
        if plan["format"] == "custom":
            # The archive's header and table of contents come first in the stream, and they
            # are all `pg_restore --list` reads: it checks them while the data still streams.
            check = pg.exec_argv(["pg_restore", "--list"], interactive=True)
            argv = pg.exec_argv(_dump_command(pg, plan, snapshot))
            out = stream_to_file(argv, partial, env, check_argv=check)
            plan["stream"] = {
                "method": "pg_restore --list (custom archive streamed into the container while "
                "it was written)"
            }
            return out
        if plan["format"] != "directory":
            argv = pg.exec_argv(_dump_command(pg, plan, snapshot))
            return stream_to_file(argv, partial, env, None, plan["compression"], zstd_bin)
        tmp = pg.make_temp_dir()
        try:
            pg.run(_dump_command(pg, plan, snapshot, f"{tmp}/dump"), timeout=None, context=context)
            argv = pg.exec_argv(["tar", "-C", f"{tmp}/dump", "-cf", "-", "."])
            return stream_to_file(argv, partial, env)
        finally:
            pg.remove_temp_dir(tmp)
    except CommandError as exc:
        raise CommandError(
            pg.explain(exc.stderr, exc.returncode, context), exc.returncode
        ) from None


def _dump_encrypted(pg, plan, partial, snapshot, context):
    """The dump encrypted with age into ``partial``, its plaintext checked while streaming.

    Returns (ciphertext sha256, size) and ``plan["stream"]`` holds what was checked.
    custom: the plaintext is fed at the same time to ``pg_restore -f /dev/null`` in the
    container, which reads and decompresses every block of the archive (more than
    ``--list`` does) and writes nothing;
    directory: ``pg_restore --list`` of the dump directory in the container before it is
    streamed, and ``tar -t`` of the streamed tar;
    plain: the completion trailer at the end of the uncompressed stream.
    """
    env = pg.env()
    fmt = plan["format"]
    if fmt == "custom":
        check = pg.exec_argv(["pg_restore", "-f", "/dev/null"], interactive=True)
        method = (
            "pg_restore -f /dev/null (every block of the custom archive read from the plaintext "
            "stream in the container while it was encrypted)"
        )
    elif fmt == "directory":
        check = pg.exec_argv(["tar", "-t", "-f", "-"], interactive=True)
        method = (
            "pg_restore --list (directory archive in the container) and tar -t of the plaintext "
            "stream while it was encrypted"
        )
    else:
        check = None
        method = f"trailer {TRAILERS[plan['mode']]!r} found at the end of the plaintext stream"
    if fmt != "directory":
        argv = pg.exec_argv(_dump_command(pg, plan, snapshot))
        recipients, compression = plan["recipients"], plan["compression"]
        stream = stream_encrypted(argv, partial, recipients, env, compression, check)
    else:
        tmp = pg.make_temp_dir()
        try:
            pg.run(_dump_command(pg, plan, snapshot, f"{tmp}/dump"), timeout=None, context=context)
            try:
                pg.run(["pg_restore", "--list", f"{tmp}/dump"], timeout=SESSION_TIMEOUT)
            except CommandError as exc:
                raise CorruptBackupError(
                    f"the directory dump is not a readable archive: {exc.stderr or exc}"
                ) from None
            argv = pg.exec_argv(["tar", "-C", f"{tmp}/dump", "-cf", "-", "."])
            stream = stream_encrypted(argv, partial, plan["recipients"], env, "none", check)
        finally:
            pg.remove_temp_dir(tmp)
    if stream["check_error"] is not None:
        raise CorruptBackupError(
            f"the {fmt} dump stream is not readable ({stream['check_error']}); nothing was kept"
        )
    if fmt == "plain" and not tail_has_trailer(stream["tail"], TRAILERS[plan["mode"]]):
        raise CorruptBackupError(
            f"the plain dump stream does not end with {TRAILERS[plan['mode']]!r}: the dump is "
            "truncated or not a complete pg_dump/pg_dumpall output; nothing was kept"
        )
    stream["method"] = method
    plan["stream"] = stream
    return stream["sha256"], stream["size"]


def build_manifest(plan, **facts):
    manifest = {
        "manifest_format": MANIFEST_FORMAT_VERSION,
        "backup_id": plan["backup_id"],
        "label": plan["label"],
        "file": plan["name"],
        "mode": plan["mode"],
        "format": plan["format"],
        "compression": plan["compression"],
        "compress_level": plan.get("compress_level"),
        "database": plan["database"],
        "jobs": plan["jobs"],
        "encryption": None,
    }
    if plan.get("recipients"):
        manifest["encryption"] = {"tool": "age", "recipients": list(plan["recipients"])}
    manifest.update(facts)
    return manifest


def produce_file(final_path, write, verify, before_publish=None):
    """Create ``final_path`` only if it is written and verified completely.

    ``write(partial_path) -> (sha256, size)`` fills a ``.{name}.partial-XXXX`` file beside
    ``final_path``; ``verify(partial_path) -> description`` checks it (raising on failure);
    ``before_publish(sha256, size, description)`` runs just before the atomic rename.  On
    any exception the partial file is removed and ``final_path`` is not created.
    Returns ``(sha256, size, description)``.
    """
    partial = new_partial_path(final_path)
    try:
        sha256, size = write(partial)
        description = verify(partial)
        if before_publish is not None:
            before_publish(sha256, size, description)
        try:
            publish(partial, final_path)
        except OSError as exc:
            raise PgDockerError(os_error_message(exc, f"publish {final_path}")) from None
        partial = None
        return sha256, size, description
    finally:
        discard(partial)


def _backup_manifest(pg, plan, info, state, sha256, size, method, started):
    databases = [plan["database"]] if plan["database"] else []
    if plan["mode"] == "cluster":
        databases = info["databases"]  # read just before pg_dumpall started
    tools = state.get("tools") or _tool_versions(pg, plan)
    encrypted = {}
    if plan["recipients"]:
        tools["age"] = age_version()
        stream = plan["stream"]
        encrypted = {
            "plaintext_sha256": stream["plaintext_sha256"],
            "plaintext_size": stream["plaintext_size"],
        }
    return build_manifest(
        plan,
        created=utc_now(),
        container=pg.container,
        databases=databases,
        server_version=info["server_version"],
        pg_dump_version=tools["pg_dump"],
        tools=tools,
        snapshot=state["snapshot"],
        size=size,
        sha256=sha256,
        duration_seconds=round(time.monotonic() - started, 3),
        # dump_seconds: from the start until the dump stream ended (row counts and tool
        # versions were read meanwhile); verify_seconds: the readability check after it.
        timings=dict(state.get("timings") or {}),
        row_counts=state["row_counts"],
        row_counts_scope=(
            "exact, same snapshot as the dump"
            if plan["mode"] == "database"
            else "omitted: pg_dumpall cannot share one snapshot across databases"
        ),
        database_encoding=(
            {key: info[key] for key in ("encoding", "collate", "ctype")}
            if plan["mode"] == "database"
            else None
        ),
        verified=True,
        verify_method=method,
        **encrypted,
    )


def _tool_versions(pg, plan):
    tools = pg.client_versions(("pg_dump", "pg_dumpall", "pg_restore"))
    tools["zstd"] = _zstd_version() if plan["compression"] == "zstd" else None
    return tools


def _zstd_version():
    proc = subprocess.run(
        [find_binary("zstd"), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    return proc.stdout.strip() or None


def run_backup(params, check_mode=False):
    """Take (or confirm) one backup; returns the module result.

    ``elapsed_seconds`` is the wall time of the whole call (connecting, locking, dumping,
    verifying, publishing); the manifest's ``duration_seconds`` covers the part under the
    lock, from the snapshot to the rename.
    """
    begun = time.monotonic()
    result = _run_backup(params, check_mode)
    result["elapsed_seconds"] = round(time.monotonic() - begun, 3)
    return result


def _run_backup(params, check_mode):
    plan = backup_plan(params)
    pg = PgContainer(
        params["container"],
        params["login_user"],
        params.get("login_password"),
        params.get("docker_cli") or "docker",
    )
    what = f"database {plan['database']}" if plan["mode"] == "database" else f"the {plan['mode']}"
    result = {
        "changed": False,
        "path": plan["path"],
        "manifest_path": plan["manifest_path"],
        "manifest": None,
        "sha256": None,
        "size": None,
        "duration_seconds": 0.0,
    }
    pg.check_running()
    if plan["compression"] == "zstd":
        find_binary("zstd")
    if plan["recipients"]:
        find_binary("age")

    def existing_result(manifest):
        result.update(
            manifest=manifest,
            sha256=manifest["sha256"],
            size=manifest["size"],
            msg=f"backup {plan['path']} already exists and verifies ("
            + (
                "sha256 of the age ciphertext matches the manifest; the plaintext was checked "
                "when written: "
                if manifest.get("encryption")
                else ""
            )
            + f"{manifest['verify_method']})",
        )
        return result

    if check_mode:
        pg.server_info(plan["database"] or "postgres")  # password, database, connection
        manifest = check_existing(pg, plan)
        if manifest is not None:
            return existing_result(manifest)
        result.update(
            changed=True,
            msg=f"would dump {what} from container {pg.container} to {plan['path']}",
        )
        return result

    with contextlib.ExitStack() as stack:
        # Connecting first makes password, database and connection problems fail before
        # anything is created.  For one database the same psql session later exports the
        # dump's snapshot and counts its rows, so that takes a single docker exec.
        session = None
        if plan["mode"] == "database":
            session = stack.enter_context(SnapshotSession(pg, plan["database"]))
            info = session.info
        else:
            info = pg.server_info(plan["database"] or "postgres")
        manifest = _backup_locked(pg, plan, params, info, session, existing_result)
    if manifest is None:
        return result
    result.update(
        changed=True,
        manifest=manifest,
        sha256=manifest["sha256"],
        size=manifest["size"],
        duration_seconds=manifest["duration_seconds"],
        msg=f"dumped {what} from container {pg.container} to {plan['path']}",
    )
    return result


def _backup_locked(pg, plan, params, info, session, existing_result):
    """Under the backup's lock: the new manifest, or None when it already existed."""
    for directory in (params["dest_dir"], plan["directory"]):
        ensure_directory(directory)
    lock_path = os.path.join(plan["directory"], f".{plan['label']}.lock")
    with file_lock(lock_path, float(params.get("lock_timeout") or 600)):
        manifest = check_existing(pg, plan)
        if manifest is not None:
            existing_result(manifest)
            return None
        started = time.monotonic()
        state = {"snapshot": None, "row_counts": {}, "timings": {}}

        def write(partial):
            # The tool versions (one docker exec) and the exact row counts (in the dump's
            # own snapshot, on the session that exported it) are read while the dump streams.
            tools = Background(lambda: _tool_versions(pg, plan))
            try:
                if session is None:
                    out = _dump_to(pg, plan, partial, None)
                else:
                    state["snapshot"] = session.export_snapshot()
                    counter = Background(session.row_counts)
                    try:
                        out = _dump_to(pg, plan, partial, session.snapshot)
                    finally:
                        counter.join()  # the session closes only after counting
                    state["row_counts"] = counter.result()
                state["tools"] = tools.result()
            finally:
                tools.join()
            state["timings"]["dump_seconds"] = round(time.monotonic() - started, 3)
            return out

        def verify(partial):
            begun = time.monotonic()
            if plan.get("stream"):
                method = plan["stream"]["method"]  # checked while streaming (_dump_to)
            else:
                method = verify_archive(
                    pg, partial, plan["format"], plan["mode"], plan["compression"]
                )
            state["timings"]["verify_seconds"] = round(time.monotonic() - begun, 3)
            return method

        def before_publish(sha256, size, method):
            manifest = _backup_manifest(pg, plan, info, state, sha256, size, method, started)
            write_json_atomic(plan["manifest_path"], manifest)
            state["manifest"] = manifest

        try:
            produce_file(plan["path"], write, verify, before_publish)
        except BaseException:
            pg.terminate_own_sessions(plan["database"] or "postgres")
            raise
    return state["manifest"]


# --------------------------------------------------------------------------- restore


def locate_manifest(path, manifest_path=None):
    if manifest_path:
        return manifest_path
    directory, filename = os.path.split(path)
    label = label_from_artifact(filename)
    if label is None:
        raise PgDockerError(
            f"cannot tell the label of {path}: pg_backup names dumps {{label}}.dump, .dir.tar, "
            ".sql, .sql.gz or .sql.zst; give the manifest with manifest_path"
        )
    return os.path.join(directory, manifest_name(label))


def verify_backup(pg, path, manifest, identity_file=None):
    """Read-only checks of a backup file against its manifest; returns their report.

    An encrypted backup (``manifest["encryption"]``) is checked by the sha256 of its
    ciphertext, then decrypted (streaming, nothing written) with ``identity_file``: age
    authenticates every chunk and the plaintext's sha256 must equal the manifest's.  The
    plaintext is then exactly the bytes pg_backup checked (verify_method) before it
    published the backup.
    """
    checks = {}
    if not os.path.isfile(path):
        raise PgDockerError(f"backup file {path} does not exist: check the path option")
    if os.path.basename(path) != manifest["file"]:
        raise CorruptBackupError(
            f"the manifest describes {manifest['file']}, not {os.path.basename(path)}: the "
            "backup is corrupt or the wrong manifest_path was given"
        )
    try:
        sha256, size = sha256_file(path)
    except OSError as exc:
        raise PgDockerError(os_error_message(exc, f"read {path}")) from None
    if sha256 != manifest["sha256"] or size != manifest["size"]:
        raise CorruptBackupError(
            f"backup {path} is corrupt: sha256 check failed (file {sha256}, {size} bytes; "
            f"manifest {manifest['sha256']}, {manifest['size']} bytes). Nothing was changed; "
            "restore another backup"
        )
    checks["sha256"] = sha256
    if manifest.get("encryption"):
        checks.update(_verify_plaintext(path, manifest, identity_file))
        return checks
    try:
        checks["readable"] = verify_archive(
            pg, path, manifest["format"], manifest["mode"], manifest.get("compression", "none")
        )
    except CorruptBackupError as exc:
        raise CorruptBackupError(
            f"backup {path} is corrupt: readability check failed ({exc}). Nothing was changed; "
            "restore another backup"
        ) from None
    return checks


def require_identity(manifest, identity_file, path):
    """Fail unless an encrypted backup can be decrypted (an identity file is given)."""
    encryption = manifest.get("encryption")
    if not encryption:
        return
    if encryption.get("tool") != "age":
        raise PgDockerError(
            f"backup {path} is encrypted with {encryption.get('tool')!r}; only age is supported"
        )
    if not identity_file:
        raise PgDockerError(
            f"backup {path} is encrypted with age (recipients: "
            f"{', '.join(encryption.get('recipients') or [])}): set decrypt_identity_file to the "
            "age identity file of one of these recipients. Nothing was changed"
        )
    check_identity_file(identity_file)


def _verify_plaintext(path, manifest, identity_file):
    digest = hashlib.sha256()
    size = 0
    with decrypted(path, identity_file, f"backup {path}") as stream:
        while chunk := stream.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    want = (manifest.get("plaintext_sha256"), manifest.get("plaintext_size"))
    if (digest.hexdigest(), size) != want:
        raise CorruptBackupError(
            f"backup {path} is corrupt: the decrypted content does not match the manifest "
            f"(sha256 {digest.hexdigest()}, {size} bytes; manifest {want[0]}, {want[1]} bytes). "
            "Nothing was changed; restore another backup"
        )
    return {
        "plaintext_sha256": digest.hexdigest(),
        "readable": (
            "age decryption authenticated every chunk and the plaintext sha256 matches the "
            "manifest; that plaintext was checked before publishing: "
            f"{manifest.get('verify_method')}"
        ),
    }


@contextlib.contextmanager
def plaintext_of(path, manifest, identity_file):
    """The dump's content as a readable binary stream (decrypted if it is encrypted)."""
    if manifest.get("encryption"):
        with decrypted(path, identity_file, f"backup {path}") as stream:
            yield stream
    else:
        with open(path, "rb") as handle:
            yield handle


def _restore_into(pg, path, manifest, database, params):
    """Load a single-database dump into the existing, empty ``database``."""
    fmt = manifest["format"]
    jobs = int(params.get("jobs") or 1)
    context = f" while restoring into database {database}"
    base = ["pg_restore", "--exit-on-error", *pg.conn_args(database)]
    if params.get("no_owner"):
        base.append("--no-owner")
    identity = params.get("decrypt_identity_file")
    if fmt == "custom" and jobs == 1:
        with plaintext_of(path, manifest, identity) as handle:
            pg.run(base, stdin=handle, timeout=None, context=context)
        return
    if fmt in ("custom", "directory"):
        tmp = pg.make_temp_dir()
        try:
            with plaintext_of(path, manifest, identity) as handle:
                if fmt == "custom":
                    target = f"{tmp}/dump"
                    pg.run(
                        ["dd", f"of={target}", "bs=1M", "status=none"],
                        stdin=handle,
                        timeout=None,
                        context=context,
                    )
                else:
                    target = tmp
                    pg.run(["tar", "-x", "-C", tmp], stdin=handle, timeout=None, context=context)
            pg.run(base + ["-j", str(jobs), target], timeout=None, context=context)
        finally:
            pg.remove_temp_dir(tmp)
        return
    # plain SQL through psql, decompressed on the host and streamed on stdin
    command = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *pg.conn_args(database), "-f", "-"]
    compression = manifest.get("compression") or "none"
    with plaintext_of(path, manifest, identity) as handle:
        if compression == "none":
            pg.run(command, stdin=handle, timeout=None, context=context)
        else:
            _pipe_decompressed(pg, command, handle, compression, context)


def _pipe_decompressed(pg, command, source, compression, context):
    """Decompress ``source`` (a readable binary stream) into ``command``'s stdin."""
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as zerr:
        feeder = None
        if compression == "zstd":
            feeder = subprocess.Popen(
                [find_binary("zstd"), "-d", "-c", "-q"],
                stdin=source,
                stdout=subprocess.PIPE,
                stderr=zerr,
            )
            stdin = feeder.stdout
        else:
            stdin = subprocess.PIPE
        proc = subprocess.Popen(
            pg.exec_argv(command, interactive=True),
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=pg.env(),
        )
        try:
            if feeder is not None:
                feeder.stdout.close()
            else:
                decomp = zlib.decompressobj(wbits=31)
                try:
                    while chunk := source.read(CHUNK_SIZE):
                        proc.stdin.write(decomp.decompress(chunk))
                    proc.stdin.write(decomp.flush())
                except BrokenPipeError:
                    pass  # psql stopped on an error; its status and stderr tell why
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
            returncode = proc.wait()
        finally:
            for child in (proc, feeder):
                if child is not None and child.poll() is None:
                    child.kill()
                    child.wait()
        if returncode != 0:
            stderr = _stderr_text(err)
            raise CommandError(pg.explain(stderr, returncode, context), returncode, stderr)


def compare_rows(expected, actual):
    """Differences between two {table: rows} maps, as readable strings."""
    problems = []
    for table in sorted(set(expected) | set(actual)):
        want, have = expected.get(table), actual.get(table)
        if want != have:
            problems.append(f"{table}: expected {want}, found {have}")
    return problems


def run_restore(params, check_mode=False):
    """Restore a pg_backup dump into a database; returns the module result."""
    started = time.monotonic()
    path = params["path"]
    target = params["database"]
    mode = params.get("mode") or "new"
    maintenance_db = params.get("maintenance_db") or "postgres"
    manifest = read_manifest(locate_manifest(path, params.get("manifest_path")))
    backup_id = manifest["backup_id"]
    if manifest["mode"] != "database":
        raise PgDockerError(
            f"backup {backup_id} is a mode={manifest['mode']} dump (pg_dumpall); "
            "pg_backup_restore restores single-database dumps only (mode=database). Restore "
            "cluster or globals dumps with psql -f as a superuser (see the module notes)"
        )
    pg = PgContainer(
        params["container"],
        params["login_user"],
        params.get("login_password"),
        params.get("docker_cli") or "docker",
    )
    identity = params.get("decrypt_identity_file")
    require_identity(manifest, identity, path)
    pg.check_running()
    short = manifest["sha256"][:8]
    work_name = pg_identifier(target, f"__restore_{short}")
    previous_name = pg_identifier(target, f"__pre_{backup_id}")
    # one round trip: connection, password and role problems show up here, and the target
    # and the names a replace uses are looked up (nothing is changed before verification)
    _, infos = pg.server_and_databases([target, work_name, previous_name], maintenance_db)
    checks = verify_backup(pg, path, manifest, identity)
    marker = restore_marker(backup_id, manifest["sha256"])
    result = {
        "changed": False,
        "database": target,
        "backup_id": backup_id,
        "restored_rows": {},
        "previous_database": None,
        "verification": {"backup": checks, "rows": None},
    }
    current = infos[target]
    if current is not None and current["comment"] == marker:
        result["restored_rows"] = pg.row_counts(target) if params.get("verify_rows", True) else {}
        result.update(
            msg=f"database {target} is already restored from backup {backup_id} (its COMMENT "
            "marks it); nothing to do",
            duration_seconds=round(time.monotonic() - started, 3),
        )
        return result
    if mode == "new" and current is not None:
        raise PgDockerError(
            f"database {target} already exists in container {pg.container}: use mode=replace to "
            "replace it (its current content is kept as a renamed copy by default), or choose "
            "another database name"
        )
    replacing = mode == "replace" and current is not None
    work_db = work_name if replacing else target
    previous = previous_name if replacing else None
    owner = params.get("owner") or (current["owner"] if replacing else None)
    if replacing and infos[previous] is not None:
        raise PgDockerError(
            f"database {previous} already exists (kept by an earlier replace from backup "
            f'{backup_id}): drop or rename it first (DROP DATABASE "{previous}"), then re-run'
        )
    if check_mode:
        if replacing:
            action = (
                f"would restore backup {backup_id} into {work_db}, verify rows, then swap it in "
                f"as {target} and "
                + (
                    f"keep the old one as {previous}"
                    if params.get("keep_previous", True)
                    else "drop the old one"
                )
            )
        else:
            action = f"would create database {target} and restore backup {backup_id} into it"
        result.update(
            changed=True,
            msg=action,
            previous_database=previous,
            duration_seconds=round(time.monotonic() - started, 3),
        )
        return result

    if replacing and infos[work_db] is not None:
        _drop_database(pg, work_db, maintenance_db)  # left over by an interrupted run
    _create_database(pg, work_db, owner, manifest, maintenance_db)
    swapped = False
    try:
        _restore_into(pg, path, manifest, work_db, params)
        if params.get("verify_rows", True):
            actual = pg.row_counts(work_db)
            problems = compare_rows(manifest.get("row_counts") or {}, actual)
            if problems:
                raise PgDockerError(
                    f"row counts of the restored database {work_db} differ from the manifest: "
                    + "; ".join(problems[:20])
                    + ". The restore was rolled back"
                    + (f"; the live database {target} is untouched" if replacing else "")
                )
            result["restored_rows"] = actual
            result["verification"]["rows"] = "exact match with the manifest's row counts"
        if replacing:
            _swap(pg, target, work_db, previous, maintenance_db, marker)
            swapped = True
        else:
            pg.psql(MARK_SQL, maintenance_db, variables={"work": work_db, "marker": marker})
    except BaseException:
        if not swapped:
            with contextlib.suppress(PgDockerError):
                _drop_database(pg, work_db, maintenance_db)
        raise
    if replacing:
        if params.get("keep_previous", True):
            result["previous_database"] = previous
        else:
            _drop_database(pg, previous, maintenance_db)
    result.update(
        changed=True,
        msg=(
            f"restored backup {backup_id} into {target}"
            + (f" (previous content kept as {previous})" if result["previous_database"] else "")
        ),
        duration_seconds=round(time.monotonic() - started, 3),
    )
    return result


def _create_database(pg, name, owner, manifest, maintenance_db):
    sql = 'CREATE DATABASE :"db" TEMPLATE template0'
    variables = {"db": name}
    if owner:
        sql += ' OWNER :"owner"'
        variables["owner"] = owner
    encoding = manifest.get("database_encoding") or {}
    for key, clause in (("encoding", "ENCODING"), ("collate", "LC_COLLATE"), ("ctype", "LC_CTYPE")):
        if encoding.get(key):
            sql += f" {clause} :'{key}'"
            variables[key] = encoding[key]
    pg.psql(sql + ";", maintenance_db, variables=variables, context=f" creating database {name}")


def _drop_database(pg, name, maintenance_db):
    pg.psql(
        'DROP DATABASE IF EXISTS :"db" WITH (FORCE);',
        maintenance_db,
        variables={"db": name},
        context=f" dropping database {name}",
    )


MARK_SQL = "COMMENT ON DATABASE :\"work\" IS :'marker';\n"

BLOCK_SQL = 'ALTER DATABASE :"target" WITH ALLOW_CONNECTIONS false;\n'

SWAP_SQL = """
SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity
 WHERE datname = :'target' AND pid <> pg_backend_pid();
BEGIN;
ALTER DATABASE :"target" RENAME TO :"previous";
ALTER DATABASE :"work" RENAME TO :"target";
COMMIT;
"""

UNBLOCK_SQL = 'ALTER DATABASE :"db" WITH ALLOW_CONNECTIONS true;\n'


def _swap(pg, target, work_db, previous, maintenance_db, marker, attempts=10):
    """Mark ``work_db`` restored and put it in place of ``target`` (kept as ``previous``).

    The renames happen in one transaction, after new connections to ``target`` are
    blocked and its sessions ended.  The common case takes one psql call; if that fails
    (a session that would not end, a permission), the state is looked up and the swap is
    retried step by step, so ``target`` never stays blocked.
    """
    variables = {
        "target": target,
        "work": work_db,
        "previous": previous,
        "marker": marker,
        "db": previous,
    }
    try:
        pg.psql(
            MARK_SQL + BLOCK_SQL + SWAP_SQL + UNBLOCK_SQL,
            maintenance_db,
            variables=variables,
            context=f" swapping {target}",
        )
        return
    except CommandError:
        pass  # the careful path below finds out how far it got
    _, infos = pg.server_and_databases([target, previous], maintenance_db)
    if infos[previous] is not None and (infos[target] or {}).get("comment") == marker:
        # renamed; only the old database's connection permission is left to give back
        pg.psql(UNBLOCK_SQL, maintenance_db, variables={"db": previous})
        return
    pg.psql(MARK_SQL, maintenance_db, variables=variables, context=f" marking {work_db}")
    pg.psql(BLOCK_SQL, maintenance_db, variables=variables, context=f" blocking {target}")
    swapped = False
    try:
        for attempt in range(attempts):
            try:
                pg.psql(
                    SWAP_SQL, maintenance_db, variables=variables, context=f" swapping {target}"
                )
                swapped = True
                break
            except CommandError as exc:
                if "being accessed by other users" not in exc.stderr or attempt == attempts - 1:
                    raise
                time.sleep(0.5)
    finally:
        # the old database (renamed or not) gets its connection permission back
        pg.psql(UNBLOCK_SQL, maintenance_db, variables={"db": previous if swapped else target})
