"""Restoring a backup: the logic of the ``pg_backup_restore`` module.

:func:`run_restore` reads the manifest, looks up the target and the names a replace uses
(one psql call), verifies the dump once before anything is changed
(:func:`verify_backup`: sha256 against the manifest, then the readability check, or
for an encrypted dump its decryption and the plaintext's sha256), then restores into a
new database (:func:`_restore_into`), compares the row counts with the manifest and, for
``mode=replace``, swaps the restored database in (:func:`_swap`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
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
from ansible.module_utils.pg_dump import verify_archive
from ansible.module_utils.pg_session import Background, PgContainer
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
        lookup.result()  # a connection, password or role problem is the one to report
        raise
    _, infos = lookup.result()
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
        raise PgError(
            f"database {target} already exists in container {pg.container}: use mode=replace to "
            "replace it (its current content is kept as a renamed copy by default), or choose "
            "another database name"
        )
    replacing = mode == "replace" and current is not None
    work_db = work_name if replacing else target
    previous = previous_name if replacing else None
    owner = params.get("owner") or (current["owner"] if replacing else None)
    if replacing and infos[previous] is not None:
        raise PgError(
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
    laps("create_seconds")
    swapped = False
    try:
        _restore_into(pg, path, manifest, work_db, params)
        laps("restore_seconds")
        if params.get("verify_rows", True):
            actual = pg.row_counts(work_db)
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
        if replacing:
            _swap(pg, target, work_db, previous, maintenance_db, marker)
            swapped = True
        else:
            pg.psql(MARK_SQL, maintenance_db, variables={"work": work_db, "marker": marker})
        laps("swap_seconds")
    except BaseException:
        if not swapped:
            with contextlib.suppress(PgError):
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
    argv = pg.exec_argv(command, interactive=True)
    returncode, stderr = feed_command(argv, source, compression, pg.env())
    if returncode != 0:
        raise CommandError(pg.explain(stderr, returncode, context), returncode, stderr)


def compare_rows(expected, actual):
    """Differences between two {table: rows} maps, as readable strings."""
    problems = []
    for table in sorted(set(expected) | set(actual)):
        want, have = expected.get(table), actual.get(table)
        if want != have:
            problems.append(f"{table}: expected {want}, found {have}")
    return problems


# --------------------------------------------------------------------------- databases


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
