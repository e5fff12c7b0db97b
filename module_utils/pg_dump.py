"""Taking a backup: the logic of the ``pg_backup`` module.

:func:`run_backup` resolves the options (:func:`backup_plan`), connects (a
:class:`SnapshotSession` for one database), takes the backup's lock
(:func:`file_lock`), confirms an existing backup (:func:`check_existing`) or dumps into
a partial file (:func:`produce_file`, :func:`pipelines.stream_to_file`), checks that the
dump is readable (while it streams, or :func:`verify_archive` afterwards), writes the
manifest and publishes the dump with an atomic rename.  :func:`verify_archive` is also
pg_backup_restore's readability check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import time

from ansible.module_utils.age import age_version, check_recipients
from ansible.module_utils.fileops import (
    FILE_MODE,
    ensure_directory,
    held_flock,
    produce_file,
    sha256_file,
    write_json_atomic,
)
from ansible.module_utils.ops_errors import CommandError, CorruptBackupError, PgError
from ansible.module_utils.pg_artifacts import (
    TRAILERS,
    artifact_name,
    build_manifest,
    check_name,
    check_plain_trailer,
    manifest_name,
    read_manifest,
    sanitize_label,
    tail_has_trailer,
    utc_now,
)
from ansible.module_utils.pg_dump_directory import dump_directory
from ansible.module_utils.pg_session import (
    SESSION_TIMEOUT,
    Background,
    PgContainer,
    SnapshotSession,
)
from ansible.module_utils.pipelines import StreamResult, find_binary, stream_to_file

# --------------------------------------------------------------------------- locking


def file_lock(path, timeout):
    """Exclusive flock on ``path`` (created 0600), waiting at most ``timeout`` seconds.

    Only taking the lock is worded here (fileops.held_flock); errors of the block under it
    pass unchanged.
    """
    busy = (
        "another pg_backup run holds it (it is writing the same backup): wait for it and "
        "re-run (the re-run reports changed=false if that backup succeeded), or raise "
        "lock_timeout"
    )
    return held_flock(path, timeout, PgError, busy, FILE_MODE)


# --------------------------------------------------------------------------- verification


def temp_dir(pg, prefix=None):
    """A new temp dir in the container: ``<prefix>XXXXXXXX`` (a backup run's names), or
    PgContainer's own."""
    if not prefix:
        return pg.make_temp_dir()
    return pg.run(["mktemp", "-d", f"{prefix}XXXXXXXX"], context=" (mktemp)").decode().strip()


def remove_temp(pg, path, prefix=None):
    if prefix and path and path.startswith(prefix):
        with contextlib.suppress(PgError):
            pg.run(["rm", "-rf", "--", path], timeout=300)
    else:
        pg.remove_temp_dir(path)


def verify_archive(pg, path, fmt, mode="database", compression="none", temp_prefix=None):
    """Check that a dump file is readable; return a description of the check.

    custom: ``pg_restore --list`` reading the file from stdin in the container;
    directory (tar): the whole tar read by ``tar -x`` in the container, which writes only
    ``toc.dat`` (all ``pg_restore --list`` reads) into a temp dir, then ``pg_restore
    --list``: the data files are never staged in the container's writable layer;
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
            tmp = temp_dir(pg, temp_prefix)
            try:
                with open(path, "rb") as handle:
                    pg.run(
                        ["tar", "-x", "-C", tmp, "./toc.dat"], stdin=handle,
                        timeout=SESSION_TIMEOUT,
                    )  # fmt: skip
                pg.run(["pg_restore", "--list", tmp], timeout=SESSION_TIMEOUT)
            finally:
                remove_temp(pg, tmp, temp_prefix)
            return (
                "pg_restore --list (the directory archive's tar read whole in the container, "
                "its table of contents unpacked in a container temp dir)"
            )
    except CommandError as exc:
        raise CorruptBackupError(
            f"{path} is not a readable {fmt} archive: {exc.stderr or exc}"
        ) from None
    raise PgError(f"unknown format {fmt!r}")


# --------------------------------------------------------------------------- plan


def backup_plan(params):
    """Resolve the options of pg_backup into names and paths (no side effects)."""
    mode = params.get("mode") or "database"
    fmt = params.get("format")
    compression = params.get("compression") or "none"
    database = params.get("database")
    if mode == "database" and not database:
        raise PgError("mode=database needs the 'database' option (the database to dump)")
    if mode != "database":
        if fmt not in ("plain", None):
            raise PgError(
                f"mode={mode} writes pg_dumpall output, which is plain SQL only: remove 'format' "
                "or set format=plain"
            )
        fmt = "plain"
    fmt = fmt or "custom"
    if fmt != "plain" and compression != "none":
        raise PgError(
            f"compression={compression} applies to format=plain only (format={fmt} is "
            "compressed by pg_dump): remove 'compression' or use format=plain"
        )
    level = params.get("compress_level")
    if level is not None:
        level = int(level)
        if fmt == "plain":
            raise PgError(
                "compress_level sets pg_dump -Z for format=custom or format=directory; plain "
                "dumps are compressed on the host with 'compression' (gzip, zstd): remove "
                "compress_level"
            )
        if not 0 <= level <= 9:
            raise PgError(f"compress_level must be 0 (none) to 9 (smallest, slowest), got {level}")
    jobs = int(params.get("jobs") or 1)
    if jobs < 1:
        raise PgError(f"jobs must be 1 or more, got {jobs}")
    if jobs > 1 and fmt != "directory":
        raise PgError(
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
        "temp_prefix": params.get("temp_prefix"),
        "label_filter": params.get("container_label"),
    }


def check_existing(pg, plan):
    """If this backup already exists and verifies, return its manifest; None if absent.

    Raises PgError when something exists that is not a valid, matching backup;
    an existing backup is never modified.
    """
    path, manifest_path = plan["path"], plan["manifest_path"]
    has_file = os.path.exists(path)
    has_manifest = os.path.exists(manifest_path)
    if not has_manifest:
        if has_file:
            raise PgError(
                f"{path} exists but its manifest {manifest_path} does not: it was not written by "
                "pg_backup or is incomplete. It was left untouched; move it aside or choose "
                "another backup_id"
            )
        return None
    manifest = read_manifest(manifest_path)
    if manifest.get("file") != plan["name"]:
        raise PgError(
            f"backup {plan['backup_id']} already has label {plan['label']} as "
            f"{manifest.get('file')} (format={manifest.get('format')}, "
            f"compression={manifest.get('compression')}), not {plan['name']}: choose another "
            "backup_id or label; the existing backup was left untouched"
        )
    if not has_file:
        return None  # manifest written, dump never published: dump again
    encryption = manifest.get("encryption") or {}
    if sorted(encryption.get("recipients") or []) != sorted(plan["recipients"]):
        raise PgError(
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
        verify_archive(
            pg, path, manifest["format"], manifest["mode"], manifest.get("compression"),
            plan["temp_prefix"],
        )  # fmt: skip
    except CorruptBackupError as exc:
        raise CorruptBackupError(
            f"existing backup {path} matches its manifest but does not verify ({exc}); it was "
            "left untouched: move it aside or choose another backup_id"
        ) from None
    return manifest


# --------------------------------------------------------------------------- dump


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
    """Run the dump into ``partial``; return ``(StreamResult, method)``.

    ``method`` names the readability check done while the dump streamed, or is None
    when the written file is to be checked afterwards (:func:`verify_archive`):

    * custom: the stream is fed at the same time to ``pg_restore --list`` in the
      container (the archive's header and table of contents come first in the stream, and
      they are all it reads); encrypted, to ``pg_restore -f /dev/null``, which reads and
      decompresses every block and writes nothing (no identity is at hand to read the
      file back);
    * directory: staged on the host, see pg_dump_directory.py;
    * plain: the completion trailer of the file afterwards; encrypted, the trailer at the
      end of the plaintext stream.
    """
    fmt, encrypted = plan["format"], bool(plan["recipients"])
    context = (
        f" while dumping database {plan['database']}" if plan["database"] else " while dumping"
    )
    try:
        if fmt == "directory":
            stream, method = dump_directory(
                pg, plan, partial, lambda target: _dump_command(pg, plan, snapshot, target),
                context,
            )  # fmt: skip
        else:
            check, method = None, None
            if fmt == "custom" and encrypted:
                check = pg.exec_argv(["pg_restore", "-f", "/dev/null"], interactive=True)
                method = (
                    "pg_restore -f /dev/null (every block of the custom archive read from the "
                    "plaintext stream in the container while it was encrypted)"
                )
            elif fmt == "custom":
                check = pg.exec_argv(["pg_restore", "--list"], interactive=True)
                method = (
                    "pg_restore --list (custom archive streamed into the container while it was "
                    "written)"
                )
            elif encrypted:
                method = (
                    f"trailer {TRAILERS[plan['mode']]!r} found at the end of the plaintext stream"
                )
            argv = pg.exec_argv(_dump_command(pg, plan, snapshot))
            stream = stream_to_file(
                argv, partial, pg.env(), plan["compression"], plan["recipients"], check
            )
    except CommandError as exc:
        raise CommandError(
            pg.explain(exc.stderr, exc.returncode, context), exc.returncode
        ) from None
    require_readable_stream(stream, plan)
    return stream, method


def require_readable_stream(stream, plan):
    """Raise CorruptBackupError if the checks made while the dump streamed failed."""
    if stream.check_error is not None:
        raise CorruptBackupError(
            f"the {plan['format']} dump stream is not a readable archive "
            f"({stream.check_error}); nothing was kept"
        )
    trailer = TRAILERS[plan["mode"]]
    if (
        plan["format"] == "plain"
        and plan["recipients"]
        and not tail_has_trailer(stream.tail, trailer)
    ):
        raise CorruptBackupError(
            f"the plain dump stream does not end with {trailer!r}: the dump is truncated or "
            "not a complete pg_dump/pg_dumpall output; nothing was kept"
        )


@dataclasses.dataclass(frozen=True)
class Dump:
    """A dump written into its partial file, and what was learnt while it streamed."""

    stream: StreamResult
    method: str | None  # the check made while streaming; None: verify the file afterwards
    snapshot: str | None
    row_counts: dict
    tools: dict


def _dump(pg, plan, partial, session):
    """Dump into ``partial``; returns a :class:`Dump`.

    The tool versions (one docker exec) and the exact row counts (in the dump's own
    snapshot, on the session that exported it) are read while the dump streams.
    """
    tools = Background(lambda: _tool_versions(pg, plan))
    try:
        if session is None:
            stream, method = _dump_to(pg, plan, partial, None)
            snapshot, row_counts = None, {}
        else:
            snapshot = session.export_snapshot()
            counter = Background(session.row_counts)
            try:
                stream, method = _dump_to(pg, plan, partial, snapshot)
            finally:
                counter.join()  # the session closes only after counting
            row_counts = counter.result()
        return Dump(stream, method, snapshot, row_counts, tools.result())
    finally:
        tools.join()


# --------------------------------------------------------------------------- manifest


def _backup_manifest(pg, plan, info, dump, method, timings, started):
    databases = [plan["database"]] if plan["database"] else []
    if plan["mode"] == "cluster":
        databases = info["databases"]  # read just before pg_dumpall started
    tools = dict(dump.tools)
    encrypted = {}
    if plan["recipients"]:
        tools["age"] = age_version()
        encrypted = {
            "plaintext_sha256": dump.stream.plaintext_sha256,
            "plaintext_size": dump.stream.plaintext_size,
        }
    return build_manifest(
        plan,
        created=utc_now(),
        container=pg.container,
        databases=databases,
        server_version=info["server_version"],
        pg_dump_version=tools["pg_dump"],
        tools=tools,
        snapshot=dump.snapshot,
        size=dump.stream.size,
        sha256=dump.stream.sha256,
        duration_seconds=round(time.monotonic() - started, 3),
        # dump_seconds: from the start until the dump stream ended (row counts and tool
        # versions were read meanwhile); verify_seconds: the readability check after it.
        timings=timings,
        row_counts=dump.row_counts,
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


# --------------------------------------------------------------------------- backup


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


def _existing_message(plan, manifest):
    return (
        f"backup {plan['path']} already exists and verifies ("
        + (
            "sha256 of the age ciphertext matches the manifest; the plaintext was checked "
            "when written: "
            if manifest.get("encryption")
            else ""
        )
        + f"{manifest['verify_method']})"
    )


def _run_backup(params, check_mode):
    plan = backup_plan(params)
    pg = PgContainer.from_params(params)
    if params.get("app_name"):  # a backup run's name: its clients are recognisable
        pg.app_name = params["app_name"]
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

    if check_mode:
        pg.server_info(plan["database"] or "postgres")  # password, database, connection
        manifest = check_existing(pg, plan)
        if manifest is None:
            result.update(
                changed=True,
                msg=f"would dump {what} from container {pg.container} to {plan['path']}",
            )
            return result
        created = False
    else:
        with contextlib.ExitStack() as stack:
            # Connecting first makes password, database and connection problems fail before
            # anything is created.  For one database the same psql session later exports
            # the dump's snapshot and counts its rows, so that takes a single docker exec.
            session = None
            if plan["mode"] == "database":
                session = stack.enter_context(SnapshotSession(pg, plan["database"]))
                info = session.info
            else:
                info = pg.server_info(plan["database"] or "postgres")
            manifest, created = _backup_locked(pg, plan, params, info, session)
    result.update(manifest=manifest, sha256=manifest["sha256"], size=manifest["size"])
    if not created:
        result["msg"] = _existing_message(plan, manifest)
        return result
    result.update(
        changed=True,
        duration_seconds=manifest["duration_seconds"],
        msg=f"dumped {what} from container {pg.container} to {plan['path']}",
    )
    return result


def _backup_locked(pg, plan, params, info, session):
    """Under the backup's lock: ``(manifest, created)``; an existing backup is not redone.

    ``params["run_lock_held"]``: the caller (backup_sets, a whole backup run) already holds
    the run lock of the backup directory, which is then the only lock.
    """
    for directory in (params["dest_dir"], plan["directory"]):
        ensure_directory(directory)
    lock_path = os.path.join(plan["directory"], f".{plan['label']}.lock")
    if params.get("run_lock_held"):
        lock = contextlib.nullcontext()
    else:
        lock = file_lock(lock_path, float(params.get("lock_timeout") or 600))
    with lock:
        manifest = check_existing(pg, plan)
        if manifest is not None:
            return manifest, False
        started = time.monotonic()
        try:
            with produce_file(plan["path"]) as partial:
                dump = _dump(pg, plan, partial, session)
                timings = {"dump_seconds": round(time.monotonic() - started, 3)}
                begun = time.monotonic()
                method = dump.method or verify_archive(
                    pg, partial, plan["format"], plan["mode"], plan["compression"],
                    plan["temp_prefix"],
                )  # fmt: skip
                timings["verify_seconds"] = round(time.monotonic() - begun, 3)
                manifest = _backup_manifest(pg, plan, info, dump, method, timings, started)
                write_json_atomic(plan["manifest_path"], manifest)
        except BaseException:
            pg.terminate_own_sessions(plan["database"] or "postgres")
            raise
    return manifest, True
