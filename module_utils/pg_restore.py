"""Restoring a backup: the logic of the ``pg_backup_restore`` module.

:func:`run_restore` reads the manifest, looks up the target and the names a replace uses
(one psql call), verifies the dump once before anything is changed
(:func:`verify_backup`: sha256 against the manifest, then the readability check, or
for an encrypted dump its decryption and the plaintext's sha256), then restores into a
new database (:func:`_restore_into`), compares the row counts with the manifest and, for
``mode=replace``, swaps the restored database in (``pg_swap.swap_in``).  The live
database's properties a replace keeps are read and copied by ``pg_db_properties``; the
swap and the repair of interrupted runs are in ``pg_swap``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time

from ansible.module_utils.age import decrypted, require_identity
from ansible.module_utils.fileops import CHUNK_SIZE, os_error_message, sha256_file
from ansible.module_utils.ops_errors import CommandError, CorruptBackupError, PgError
from ansible.module_utils.pg_artifacts import (
    locate_manifest,
    pg_identifier,
    read_manifest,
    restore_marker,
)
from ansible.module_utils.pg_db_properties import (
    check_free_space,
    copy_database_properties,
    database_properties,
)
from ansible.module_utils.pg_dump import verify_archive
from ansible.module_utils.pg_globals import create_missing_roles
from ansible.module_utils.pg_session import SESSION_TIMEOUT, Background, PgContainer
from ansible.module_utils.pg_swap import MARK_SQL, drop_database, repair_interrupted, swap_in
from ansible.module_utils.pipelines import feed_command

# --------------------------------------------------------------------------- verification


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
        raise PgError(f"backup file {path} does not exist: check the path option")
    if os.path.basename(path) != manifest["file"]:
        raise CorruptBackupError(
            f"the manifest describes {manifest['file']}, not {os.path.basename(path)}: the "
            "backup is corrupt or the wrong manifest_path was given"
        )
    try:
        file_id = file_identity(path)  # taken before reading: a later write changes it
    except OSError as exc:
        raise PgError(os_error_message(exc, f"read {path}")) from None
    # The second check (decryption, or readability) runs beside the sha256; the sha256's
    # verdict is reported first, as when they ran one after the other.
    if manifest.get("encryption"):
        second = Background(lambda: _verify_plaintext(path, manifest, identity_file))
    else:
        second = Background(lambda: {"readable": _check_readable(pg, path, manifest)})
    try:
        sha256, size = sha256_file(path)
    except OSError as exc:
        raise PgError(os_error_message(exc, f"read {path}")) from None
    finally:
        second.join()
    if sha256 != manifest["sha256"] or size != manifest["size"]:
        raise CorruptBackupError(
            f"backup {path} is corrupt: sha256 check failed (file {sha256}, {size} bytes; "
            f"manifest {manifest['sha256']}, {manifest['size']} bytes). Nothing was changed; "
            "restore another backup"
        )
    checks["sha256"] = sha256
    checks["file"] = file_id
    checks.update(second.result())
    return checks


def _check_readable(pg, path, manifest):
    try:
        return verify_archive(
            pg, path, manifest["format"], manifest["mode"], manifest.get("compression", "none")
        )
    except CorruptBackupError as exc:
        raise CorruptBackupError(
            f"backup {path} is corrupt: readability check failed ({exc}). Nothing was changed; "
            "restore another backup"
        ) from None


def file_identity(path):
    """What changes when a file is replaced or written: device, inode, size, mtime (ns)."""
    info = os.stat(path)
    return {
        "device": info.st_dev,
        "inode": info.st_ino,
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
    }


def reuse_verification(path, manifest, earlier):
    """The checks of an earlier run (option ``verified``) if they still hold, else None.

    They hold when they were made for this manifest's sha256 and the file still has the
    device, inode, size and modification time recorded then: it was neither replaced nor
    written since, so reading it whole again would prove nothing new.  The role's
    check-mode step verifies; its restore step passes that result here.
    """
    if not earlier or earlier.get("sha256") != manifest["sha256"] or not earlier.get("file"):
        return None
    if os.path.basename(path) != manifest["file"]:
        return None
    try:
        unchanged = earlier["file"] == file_identity(path)
    except OSError:
        return None
    if not unchanged:
        return None
    return {
        **earlier,
        "reused": "verified by an earlier run; the file is unchanged since (same device, "
        "inode, size and modification time), so it was not read again",
    }


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


# --------------------------------------------------------------------------- restore


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
        raise PgError(
            f"backup {backup_id} is a mode={manifest['mode']} dump (pg_dumpall); "
            "pg_backup_restore restores single-database dumps only (mode=database). Restore "
            "cluster or globals dumps with psql -f as a superuser (see the module notes)"
        )
    pg = PgContainer.from_params(params)
    identity = params.get("decrypt_identity_file")
    require_identity(manifest, identity, path)
    pg.check_running()
    # Whatever an interrupted earlier replace left (a blocked live database, a renamed one
    # without its successor, leftover work databases) is repaired before anything else.
    repairs = repair_interrupted(pg, target, maintenance_db, check_mode)
    short = manifest["sha256"][:8]
    work_name = pg_identifier(target, f"__restore_{short}")
    previous_name = pg_identifier(target, f"__pre_{backup_id}")
    # One round trip, run beside the verification (both only read): connection, password
    # and role problems show up here, and the target and the names a replace uses are
    # looked up.  Nothing is changed before both succeeded.
    lookup = Background(
        lambda: pg.server_and_databases([target, work_name, previous_name], maintenance_db)
    )
    laps = _Laps(started, "prepare_seconds")
    try:
        checks = reuse_verification(path, manifest, params.get("verified")) or verify_backup(
            pg, path, manifest, identity
        )
    except BaseException:
        # a connection, password or role problem is the one to report, then a dump that
        # this server is too old for (which pg_restore --list calls unreadable)
        check_versions(manifest, lookup.result()[0])
        raise
    server, infos = lookup.result()
    check_versions(manifest, server)
    laps("verify_seconds")
    marker = restore_marker(backup_id, manifest["sha256"])
    result = {
        "changed": False,
        "database": target,
        "backup_id": backup_id,
        "restored_rows": {},
        "previous_database": None,
        "verification": {"backup": checks, "rows": None},
        "timings": laps.times,
        "repairs": repairs,
    }
    current = infos[target]
    unchanged, why_changed = (False, None)
    if current is not None and marked_by(current["comment"], marker):
        if not current["allow_connections"]:  # check mode, before its repair
            why_changed = "it does not accept connections"
        else:
            unchanged, why_changed = unchanged_since_restore(
                pg, target, current["comment"], marker, manifest, params, result, maintenance_db
            )
    if unchanged:
        result.update(
            msg=_with_repairs(
                f"database {target} is already restored from backup {backup_id} (its COMMENT "
                "marks it, and it has not been written since); nothing to do",
                repairs,
            ),
            duration_seconds=round(time.monotonic() - started, 3),
        )
        return result
    if mode == "new" and current is not None:
        raise PgError(
            f"database {target} already exists in container {pg.container}"
            + (
                f" (restored from backup {backup_id}, but changed since: {why_changed})"
                if why_changed
                else ""
            )
            + ": use mode=replace to replace it (its current content is kept as a renamed copy "
            "by default), or choose another database name"
        )
    replacing = mode == "replace" and current is not None
    work_db = work_name if replacing else target
    owner = params.get("owner") or (current["owner"] if replacing else None)
    previous = (
        _free_previous_name(pg, target, backup_id, infos, maintenance_db) if replacing else None
    )
    if replacing:
        result["space"] = check_free_space(pg, target, maintenance_db)
    # restore_globals=missing: the dump's roles the server lacks, from the set's globals
    result["roles_created"] = create_missing_roles(
        pg, params, maintenance_db, check_mode,
        lambda p, m: verify_backup(pg, p, m, identity), lambda p, m: plaintext_of(p, m, identity),
    )  # fmt: skip
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
            msg=_with_repairs(
                action + (f" (restored from it before, but {why_changed})" if why_changed else ""),
                repairs,
            ),
            previous_database=previous,
            duration_seconds=round(time.monotonic() - started, 3),
        )
        return result

    if replacing and infos[work_db] is not None:
        drop_database(pg, work_db, maintenance_db)  # left over by an interrupted run
    live = database_properties(pg, target, maintenance_db) if replacing else None
    _create_database(pg, work_db, owner, manifest, maintenance_db, live)
    laps("create_seconds")
    swapped = False
    try:
        try:
            _restore_into(pg, path, manifest, work_db, params)
        except CommandError as exc:
            raise_missing_roles(exc, pg, backup_id, target)
            raise
        laps("restore_seconds")
        if params.get("verify_rows", True):
            actual = pg.row_counts(
                work_db, timeout=rows_timeout(pg, work_db, params, maintenance_db)
            )
            laps("rows_seconds")
            problems = compare_rows(manifest.get("row_counts") or {}, actual)
            if problems:
                raise PgError(
                    f"row counts of the restored database {work_db} differ from the manifest: "
                    + "; ".join(problems[:20])
                    + ". The restore was rolled back"
                    + (f"; the live database {target} is untouched" if replacing else "")
                )
            result["restored_rows"] = actual
            result["verification"]["rows"] = "exact match with the manifest's row counts"
        # what the database looks like once restored, in its marker: a later run restores
        # again if it was written since (read before the swap, so no application write
        # after the swap is taken for part of the restore)
        if replacing:
            # what pg_restore without --create does not carry: the live database's ACL,
            # its settings and its roles' settings in it, its connection limit
            copy_database_properties(pg, target, work_db, maintenance_db)
            result["database_properties"] = live
        full_marker = f"{marker} writes={database_writes(pg, work_db, maintenance_db)}"
        if replacing:
            swap_in(pg, target, work_db, previous, maintenance_db, full_marker)
            swapped = True
        else:
            pg.psql(MARK_SQL, maintenance_db, variables={"work": work_db, "marker": full_marker})
        laps("swap_seconds")
    except BaseException:
        if not swapped:
            # a client that timed out or was killed may still have its session running
            pg.terminate_own_sessions(maintenance_db)
            with contextlib.suppress(Exception):
                drop_database(pg, work_db, maintenance_db)
        raise
    if replacing:
        if params.get("keep_previous", True):
            result["previous_database"] = previous
        else:
            drop_database(pg, previous, maintenance_db)
    result.update(
        changed=True,
        msg=_with_repairs(
            f"restored backup {backup_id} into {target}"
            + (f" again (restored from it before, but {why_changed})" if why_changed else "")
            + (f" (previous content kept as {previous})" if result["previous_database"] else ""),
            repairs,
        ),
        duration_seconds=round(time.monotonic() - started, 3),
    )
    return result


class _Laps:
    """Seconds per phase of a run: ``laps(name)`` records the time since the previous lap."""

    def __init__(self, started, first):
        self.times = {}
        self._last = started
        self(first)

    def __call__(self, name):
        now = time.monotonic()
        self.times[name] = round(now - self._last, 3)
        self._last = now


def _restore_into(pg, path, manifest, database, params):
    """Load a single-database dump into the existing, empty ``database``."""
    fmt = manifest["format"]
    jobs = int(params.get("jobs") or 1)
    context = f" while restoring into database {database}"
    base = ["pg_restore", "--exit-on-error", *pg.conn_args(database)]
    if params.get("no_owner"):
        base += ["--no-owner", "--no-acl"]
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
    argv = pg.exec_argv(command, interactive=True)
    returncode, stderr = feed_command(argv, source, compression, pg.env())
    if returncode != 0:
        raise CommandError(pg.explain(stderr, returncode, context), returncode, stderr)


# Seconds the row count may take per GiB of database, and never less than SESSION_TIMEOUT.
ROWS_SECONDS_PER_GIB = 120


def rows_timeout_for(size_bytes, explicit=None):
    """The row count's time limit: ``explicit`` (option rows_timeout) if set, else it scales.

    ``max(SESSION_TIMEOUT, size in GiB * ROWS_SECONDS_PER_GIB)``: 30 minutes up to 15 GiB,
    then 2 minutes per GiB, so a large database is not refused for its size alone.
    """
    if explicit:
        return float(explicit)
    return max(SESSION_TIMEOUT, size_bytes / 1024**3 * ROWS_SECONDS_PER_GIB)


def rows_timeout(pg, database, params, maintenance_db):
    """:func:`rows_timeout_for` of ``database`` (its size asked only when it matters)."""
    if params.get("rows_timeout"):
        return rows_timeout_for(0, params["rows_timeout"])
    rows = pg.psql(
        "SELECT pg_database_size(:'db');\n",
        maintenance_db,
        variables={"db": database},
        context=f" measuring database {database}",
    )
    return rows_timeout_for(int(rows[0][0]))


def raise_missing_roles(exc, pg, backup_id, target):
    """Turn ``role "x" does not exist`` from pg_restore or psql into what to do about it."""
    missing = sorted(set(re.findall(r'role "([^"]+)" does not exist', exc.stderr or "")))
    if missing:
        raise PgError(
            f"backup {backup_id} needs role(s) {', '.join(missing)}, which do not exist on the "
            f"server in container {pg.container}: the restore was rolled back and {target} is "
            "untouched. Either create the missing roles from the set's globals.sql "
            "(restore_globals=missing with globals_path; role variable restore_globals: roles "
            "that exist are never changed), or restore with no_owner=true (role variable "
            "restore_no_owner: pg_restore --no-owner --no-acl, objects owned by the login user "
            "and no GRANTs; custom and directory dumps only)"
        ) from None


def compare_rows(expected, actual):
    """Differences between two {table: rows} maps, as readable strings."""
    problems = []
    for table in sorted(set(expected) | set(actual)):
        want, have = expected.get(table), actual.get(table)
        if want != have:
            problems.append(f"{table}: expected {want}, found {have}")
    return problems


# --------------------------------------------------------------------------- databases


def _create_database(pg, name, owner, manifest, maintenance_db, live=None):
    """CREATE DATABASE from template0, with the live database's properties when replacing."""
    sql = 'CREATE DATABASE :"db" TEMPLATE template0'
    variables = {"db": name}
    if owner:
        sql += ' OWNER :"owner"'
        variables["owner"] = owner
    if live and live["tablespace"] != "pg_default":
        sql += ' TABLESPACE :"tablespace"'
        variables["tablespace"] = live["tablespace"]
    encoding = live or manifest.get("database_encoding") or {}
    for key, clause in (("encoding", "ENCODING"), ("collate", "LC_COLLATE"), ("ctype", "LC_CTYPE")):
        if encoding.get(key):
            sql += f" {clause} :'{key}'"
            variables[key] = encoding[key]
    pg.psql(sql + ";", maintenance_db, variables=variables, context=f" creating database {name}")


def _with_repairs(msg, repairs):
    if not repairs:
        return msg
    return f"{msg}; first repaired what an interrupted earlier run left: " + "; ".join(repairs)


def _free_previous_name(pg, target, backup_id, infos, maintenance_db):
    """``{target}__pre_{backup_id}``, or with ``_2``, ``_3``... when an earlier replace kept it."""
    first = pg_identifier(target, f"__pre_{backup_id}")
    if infos.get(first) is None:
        return first
    candidates = [pg_identifier(target, f"__pre_{backup_id}_{n}") for n in range(2, 21)]
    _, taken = pg.server_and_databases(candidates, maintenance_db)
    for name in candidates:
        if taken[name] is None:
            return name
    raise PgError(
        f"databases {first} and {candidates[-1]} already exist (kept by earlier replaces from "
        f'backup {backup_id}): drop the old copies first (DROP DATABASE "{first}"), then re-run'
    )


# --------------------------------------------------------------------------- state at restore

# The sessions connected to a database, then (a later transaction: it sees what those
# sessions flushed when they ended) its counters of rows inserted, updated and deleted.
WRITES_SQL = """
SELECT count(*) FROM pg_stat_activity WHERE datname = :'db' AND backend_type = 'client backend';
SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname = :'db';
"""


def database_writes(pg, database, maintenance_db, wait=5.0):
    """The server's count of rows written in ``database``, once its sessions have ended.

    A session hands its counts to the server when it ends, before it leaves
    pg_stat_activity: with no session left, the count includes the restore's.
    """
    deadline = time.monotonic() + wait
    while True:
        (sessions,), (writes,) = pg.psql(WRITES_SQL, maintenance_db, variables={"db": database})
        if int(sessions) == 0 or time.monotonic() > deadline:
            return int(writes)
        time.sleep(0.1)


def marked_by(comment, marker):
    """Whether a database COMMENT is this backup's restore marker (with or without writes)."""
    return comment == marker or comment.startswith(marker + " writes=")


def recorded_writes(comment, marker):
    """The write counter the marker recorded at restore time, or None."""
    tail = comment[len(marker) :]
    if tail.startswith(" writes=") and tail[8:].isdigit():
        return int(tail[8:])
    return None


def unchanged_since_restore(pg, target, comment, marker, manifest, params, result, maintenance_db):
    """``(True, None)`` if ``target`` is still as restored, else ``(False, why)``.

    Cheap and conservative: the server's counters of rows inserted, updated and deleted in
    the database (pg_stat_database) must equal those recorded in the marker when the
    restore was loaded (before the swap), and, with verify_rows, the exact row counts
    must equal the manifest's.
    Anything that resets the counters (pg_stat_reset, a crash) makes the database count
    as changed, so it is restored again rather than wrongly left alone.
    """
    recorded = recorded_writes(comment, marker)
    if recorded is None:
        return False, "its marker does not record its write counters at restore time"
    now = database_writes(pg, target, maintenance_db, wait=0)
    if now != recorded:
        return False, (
            f"it has been written since (rows inserted, updated or deleted per "
            f"pg_stat_database: {recorded} when restored, {now} now)"
        )
    if params.get("verify_rows", True):
        actual = pg.row_counts(target, timeout=rows_timeout(pg, target, params, maintenance_db))
        problems = compare_rows(manifest.get("row_counts") or {}, actual)
        if problems:
            return False, "its row counts differ from the backup's: " + "; ".join(problems[:5])
        result["restored_rows"] = actual
    return True, None


# --------------------------------------------------------------------------- versions


def _major(version):
    """``15.4 (Debian...)`` -> (15,); ``9.6.24`` -> (9, 6); None if unreadable."""
    match = re.match(r"\s*(\d+)(?:\.(\d+))?", version or "")
    if not match:
        return None
    major = int(match.group(1))
    return (major,) if major >= 10 else (major, int(match.group(2) or 0))


def check_versions(manifest, server):
    """Refuse a dump written by a pg_dump of a newer major version than the server."""
    dumped, running = manifest.get("pg_dump_version"), server.get("server_version")
    if _major(dumped) and _major(running) and _major(dumped) > _major(running):
        raise PgError(
            f"backup {manifest['backup_id']} was written by pg_dump {dumped}, newer than the "
            f"target server (PostgreSQL {running}): a server reads dumps of its own major "
            f"version or older only. Restore it into a PostgreSQL {dumped.split('.')[0]} (or "
            "newer) server, or take the dump with the target's pg_dump; nothing was changed"
        )
