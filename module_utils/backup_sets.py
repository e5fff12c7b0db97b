"""Backup sets on disk: their description (SET.json), listing, the run lock and the
node_exporter metrics (the retention policy is in backup_retention.py).

A backup set is a directory <backup_dir>/<backup_id>/ holding dumps, their manifests, a
config snapshot and SET.json. SET.json is written last: a directory without it is an
incomplete set (a run that died) and is never offered for restore. This file is the one
definition of SET.json: ``build_set`` makes it from the dumps' manifests, ``write_set``
writes it, ``read_set`` reads and checks it (listing, restore, the S3 copy).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ansible.module_utils.fileops import ensure_directory, write_bytes_atomic, write_json_atomic
from ansible.module_utils.op_lock import (
    LockHeld,
    acquire,
    describe,
    force_hint,
    new_holder,
    release,
)
from ansible.module_utils.ops_errors import FileOpsError, OpsError
from ansible.module_utils.pg_artifacts import check_name

SET_FILE = "SET.json"
SET_MODE = 0o600
# The keys of SET.json, and those of each dump's manifest it carries in "dumps".
SET_KEYS = ("backup_id", "created", "host", "project", "databases", "verified", "dumps", "config")
DUMP_KEYS = (
    "label", "file", "mode", "format", "compression", "size", "sha256", "duration_seconds",
    "encryption",
)  # fmt: skip


class BackupSetError(OpsError):
    """A problem with the backup directory, with a message that names the fix."""


@dataclass
class BackupSet:
    backup_id: str
    path: str
    created: datetime
    complete: bool
    verified: bool = False
    meta: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "backup_id": self.backup_id,
            "path": self.path,
            "created": self.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "complete": self.complete,
            "verified": self.verified,
            "databases": self.meta.get("databases", []),
            "dumps": self.meta.get("dumps", []),
        }


def parse_time(value: str) -> datetime:
    """Parse the UTC ISO 8601 times the modules write (2026-11-28T12:00:00Z, fractions allowed)."""
    text = value.strip().replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def set_path(backup_dir: str, backup_id: str) -> str:
    """The directory of the set ``backup_id`` (checked as a file name): the one place that
    joins the two."""
    return os.path.join(backup_dir, check_name(backup_id, "backup_id"))


def build_set(
    backup_id: str,
    host: str,
    project: str,
    databases: list[str],
    manifests: list[dict],
    config_checksums: dict | None = None,
) -> dict:
    """SET.json's content from the dumps' manifests and the config snapshot's checksums.

    ``created`` is the earliest dump's; ``dumps`` keeps DUMP_KEYS of each manifest, in the
    order given; ``config`` maps ``config/<name>`` to the sha256 of each stored file.
    """
    created = sorted(m["created"] for m in manifests)
    return {
        "backup_id": backup_id,
        "created": created[0] if created else "",
        "host": host,
        "project": project,
        "databases": list(databases),
        "verified": all(m.get("verified") is True for m in manifests),
        "dumps": [{key: m[key] for key in DUMP_KEYS if key in m} for m in manifests],
        "config": {f"config/{name}": digest for name, digest in (config_checksums or {}).items()},
    }


RDS_COPY_KEYS = ("region", "snapshot_identifier", "snapshot_arn", "encrypted", "kms_key_id")


def build_rds_record(
    backup_id: str, host: str, project: str, snapshot: dict, copies: list[dict] | None = None
) -> dict:
    """SET.json's content for a set that is an RDS manual snapshot (``kind: rds``).

    ``snapshot`` and each of ``copies`` are as rds_snapshot returns them (RV snapshot). The
    record has the keys every set has (no dumps, no config: the data stays in RDS), so
    list_sets shows container dumps and RDS snapshots side by side; ``verified`` is true
    when the snapshot is ``available``.
    """
    return {
        "backup_id": backup_id,
        "kind": "rds",
        "created": snapshot.get("created") or "",
        "host": host,
        "project": project,
        "databases": [],
        "verified": snapshot.get("status") == "available",
        "dumps": [],
        "config": {},
        "instance": snapshot.get("db_instance_identifier"),
        "engine": snapshot.get("engine"),
        "engine_version": snapshot.get("engine_version"),
        "encrypted": bool(snapshot.get("encrypted")),
        "kms_key_id": snapshot.get("kms_key_id") or None,
        "region": snapshot.get("region"),
        "snapshot_identifier": snapshot.get("snapshot_identifier"),
        "snapshot_arn": snapshot.get("snapshot_arn"),
        "allocated_storage_gb": snapshot.get("allocated_storage_gb"),
        "copies": [{k: copy.get(k) for k in RDS_COPY_KEYS} for copy in copies or []],
    }


def check_set(meta, where: str) -> dict:
    """``meta`` if it is a set description; BackupSetError naming ``where`` otherwise.

    Required: backup_id (str) and verified (bool); when present, created is a UTC time,
    databases a list, dumps a list of objects with file and sha256, config an object.
    """
    problem = None
    if not isinstance(meta, dict):
        problem = "it is not a JSON object"
    elif not isinstance(meta.get("backup_id"), str) or not isinstance(meta.get("verified"), bool):
        problem = "backup_id (text) or verified (true/false) is missing"
    elif not isinstance(meta.get("databases", []), list) or not isinstance(
        meta.get("config", {}), dict
    ):
        problem = "databases is not a list or config is not an object"
    elif not isinstance(meta.get("dumps", []), list) or not all(
        isinstance(d, dict) and isinstance(d.get("file"), str) and isinstance(d.get("sha256"), str)
        for d in meta.get("dumps", [])
    ):
        problem = "dumps is not a list of objects with file and sha256"
    elif meta.get("created"):
        try:
            parse_time(meta["created"])
        except (TypeError, ValueError, AttributeError):
            problem = f"created {meta['created']!r} is not a UTC ISO 8601 time"
    if problem:
        raise BackupSetError(
            f"{where} is not a valid backup set description ({problem}). Inspect the set; if it "
            "is damaged, take a new backup or restore another set."
        )
    return meta


def read_set(directory: str) -> dict:
    """The checked content of ``directory``/SET.json (BackupSetError naming the fix)."""
    marker = os.path.join(directory, SET_FILE)
    try:
        with open(marker, encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, ValueError) as exc:
        raise BackupSetError(
            f"{marker} is unreadable ({exc}). Inspect the set; if it is damaged, move the "
            f"directory {directory} out of {os.path.dirname(directory)}."
        ) from None
    return check_set(meta, marker)


def write_set(directory: str, meta: dict, check_mode: bool) -> bool:
    """Write SET.json (0600, atomically) unless it already says the same; True if written."""
    check_set(meta, f"the description of {directory}")
    try:
        if read_set(directory) == meta:
            return False
    except BackupSetError:
        pass  # absent or damaged: write it
    if not check_mode:
        write_json_atomic(os.path.join(directory, SET_FILE), meta, SET_MODE)
    return True


def list_sets(backup_dir: str) -> list[BackupSet]:
    """Every set under backup_dir, newest first. Complete sets sort by SET.json's created."""
    if not os.path.isdir(backup_dir):
        return []
    sets = []
    for name in os.listdir(backup_dir):
        path = os.path.join(backup_dir, name)
        if name.startswith(".") or not os.path.isdir(path) or os.path.islink(path):
            continue
        mtime = datetime.fromtimestamp(os.stat(path).st_mtime, tz=timezone.utc)
        if not os.path.isfile(os.path.join(path, SET_FILE)):
            sets.append(BackupSet(name, path, mtime, complete=False))
            continue
        meta = read_set(path)
        created = parse_time(meta["created"]) if meta.get("created") else mtime
        sets.append(BackupSet(name, path, created, True, bool(meta.get("verified")), meta=meta))
    sets.sort(key=lambda s: (s.created, s.backup_id), reverse=True)
    return sets


LATEST = "latest"
SAFETY_PREFIX = "pre-restore-"


def _rds_restore_hint(record: BackupSet) -> str:
    """The rds_restore.yml command line that restores the snapshot an RDS record names."""
    meta = record.meta
    return (
        "ansible-playbook playbooks/rds_restore.yml"
        f" -e rds_restore_region={meta.get('region') or 'REGION'}"
        f" -e rds_restore_snapshot={meta.get('snapshot_identifier') or 'SNAPSHOT'}"
        " -e rds_restore_target=NEW_INSTANCE"
    )


def select_set(sets: list[BackupSet], backup_id: str, where: str) -> dict:
    """The complete, verified set ``backup_id`` (as listed), for a restore.

    ``latest`` is the newest container dump set: not a safety set taken before a replace
    restore (``pre-restore-*``) and not an RDS snapshot record (``kind: rds``, restored by
    playbooks/rds_restore.yml). Otherwise a BackupSetError lists what exists; a request that
    can only find RDS records names them and the rds_restore.yml command.
    """
    complete = [s for s in sets if s.complete]
    rds = [s for s in complete if s.meta.get("kind") == "rds"]
    if backup_id == LATEST:
        found = [
            s for s in complete
            if not s.backup_id.startswith(SAFETY_PREFIX) and s.meta.get("kind") != "rds"
        ][:1]  # fmt: skip
        if not found and rds:
            raise BackupSetError(
                f"No container backup set in {where}: only RDS snapshot records (kind rds, "
                f"newest first: {', '.join(s.backup_id for s in rds)}), which a restore into "
                "the database container cannot use. Nothing was changed. Restore the snapshot "
                f"into a new RDS instance with `{_rds_restore_hint(rds[0])}`, or take a "
                "container backup with playbooks/backup.yml (backup_target=docker)."
            )
    else:
        found = [s for s in complete if s.backup_id == backup_id]
        if found and found[0].meta.get("kind") == "rds":
            raise BackupSetError(
                f"Backup set '{backup_id}' in {where} is an RDS snapshot record (kind rds), not "
                "a container dump. Nothing was changed. Restore the snapshot into a new RDS "
                f"instance with `{_rds_restore_hint(found[0])}`, or pass -e "
                "restore_backup_id=latest for the newest container backup set."
            )
    if found and found[0].verified:
        return found[0].as_dict()
    incomplete = [s.backup_id for s in sets if not s.complete]
    raise BackupSetError(
        f"No complete, verified backup set '{backup_id}' in {where}. Nothing was changed. "
        f"Sets available (newest first): {', '.join(s.backup_id for s in complete) or 'none'}"
        + (f"; incomplete (not restorable): {', '.join(incomplete)}" if incomplete else "")
        + ". Take one with playbooks/backup.yml or pass -e restore_backup_id=ID."
    )


LOCK_NAME = ".lock"
DIR_MODE = 0o700


def open_run(
    backup_dir: str,
    backup_id: str,
    stale_hours: float,
    check_mode: bool,
    now: float | None = None,
    controller: dict | None = None,
    break_token: str | None = None,
    forced_token: str | None = None,
) -> dict:
    """Start a backup run: the backup directory (0700), the run lock, the set's directory
    (``set_dir``) and whether it exists already.

    The lock is the run lock of module_utils/op_lock.py (a directory with its holder record,
    published in one rename: of two runs at once exactly one gets it), taken for
    ``controller`` (host, pid, pid_start; filled in by the action plugin). A stale lock (no
    record, the host rebooted, or ``break_token``: its controller process has ended), or the
    one the operator names by its token (``forced_token``), is broken and reported in
    ``broken``; a live holder raises LockHeld naming it. It is not
    taken in check mode. Returns changed (the backup directory was created or fixed, or
    would be), set_exists, locked, lock (its path), holder and broken.
    """
    lock = os.path.join(backup_dir, LOCK_NAME)
    set_dir = set_path(backup_dir, backup_id)
    result = {
        "changed": False,
        "backup_id": backup_id,
        "set_dir": set_dir,
        "set_exists": False,
        "locked": False,
        "lock": lock,
        "holder": None,
        "broken": [],
    }
    try:
        if not os.path.isdir(backup_dir):
            result["changed"] = True
            if check_mode:
                return result
            os.makedirs(backup_dir, DIR_MODE)
        info = os.stat(backup_dir)
        wrong_owner = os.geteuid() == 0 and (info.st_uid, info.st_gid) != (0, 0)
        if info.st_mode & 0o7777 != DIR_MODE or wrong_owner:
            result["changed"] = True
            if not check_mode:
                os.chmod(backup_dir, DIR_MODE)
                if wrong_owner:
                    os.chown(backup_dir, 0, 0)
        result["set_exists"] = os.path.isdir(set_dir)
        if check_mode:
            return result
        holder = new_holder(f"backup {backup_id}", controller or {}, now)
        taken = acquire(lock, holder, break_token, forced_token=forced_token)
    except LockHeld as exc:
        raise LockHeld(_held_message(lock, exc.holder, stale_hours, now), exc.holder) from None
    except FileOpsError as exc:
        raise BackupSetError(f"cannot take the backup lock: {exc}") from None
    except OSError as exc:
        raise BackupSetError(
            f"cannot prepare the backup directory {backup_dir}: {exc.strerror or exc}. Check "
            "that its parent exists and is writable by the backup user (become: true), then "
            "re-run."
        ) from None
    result.update(locked=taken["acquired"], holder=taken["holder"], broken=taken["broken"])
    return result


def _held_message(lock: str, holder: dict | None, stale_hours: float, now: float | None) -> str:
    now = time.time() if now is None else now
    started = (holder or {}).get("started_epoch")
    old = isinstance(started, (int, float)) and (now - started) / 3600 >= stale_hours
    advice = (
        f"it is older than {stale_hours:g} h: if it was taken from another controller and no "
        "backup runs there (ps -ef | grep pg_dump on this host), "
        + force_hint(holder, "backup_lock_force_break", lock)
        if old
        else "it will be released when that run ends (if you are sure that run is gone, "
        + force_hint(holder, "backup_lock_force_break", lock)
        + ")"
    )
    return (
        f"Another backup is running: the lock {lock} is held by {describe(holder, now)}. "
        "Nothing was written. Wait for it to finish; a lock whose run was killed on this "
        f"controller, or taken before the host rebooted, is broken automatically; {advice}."
    )


def new_backup_id(now: float | None = None) -> str:
    """The id of a set taken now: its UTC time, 20261129T030000Z."""
    now = time.time() if now is None else now
    return datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def release_run(backup_dir: str) -> bool:
    """Remove the run lock taken by ``open_run``; True if it was there."""
    lock = os.path.join(backup_dir, LOCK_NAME)
    try:
        return release(lock, None)["released"]
    except FileOpsError as exc:
        raise BackupSetError(
            f"cannot release the backup lock {lock}: {exc}. Remove it with rm -rf {lock} once "
            "no backup runs."
        ) from None


# --------------------------------------------------------------------------- metrics

METRICS_FILE = "opsauto_backup.prom"
FAILURE_FILE = "opsauto_backup_failure.prom"
OFFSITE_FILE = "opsauto_backup_offsite.prom"
METRICS_DIR_MODE = 0o755
METRICS_MODE = 0o644


def _gauge(name: str, help_text: str, project: str, value) -> str:
    return (
        f"# HELP {name} {help_text}\n# TYPE {name} gauge\n"
        f'{name}{{project="{_label_value(project)}"}} {value}\n'
    )


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(project: str, latest: dict | None, set_count: int, offsite=None) -> str:
    """node_exporter textfile metrics of the newest complete set (``latest``, as listed).

    ``offsite`` None leaves out the off-site gauge (no off-site copy configured).
    """
    dumps = latest["dumps"] if latest else []
    created = int(parse_time(latest["created"]).timestamp()) if latest else 0
    text = _gauge(
        "opsauto_backup_last_success_timestamp_seconds",
        "Creation time of the newest verified backup set.", project, created,
    )  # fmt: skip
    text += _gauge(
        "opsauto_backup_size_bytes", "Size of the dumps in the newest backup set.", project,
        sum(int(d.get("size") or 0) for d in dumps),
    )  # fmt: skip
    text += _gauge(
        "opsauto_backup_duration_seconds", "Time the dumps of the newest backup set took.",
        project, round(sum(float(d.get("duration_seconds") or 0) for d in dumps), 3),
    )  # fmt: skip
    text += _gauge(
        "opsauto_backup_verified", "1 when the newest backup set was verified after dumping.",
        project, 1 if latest and latest["verified"] else 0,
    )  # fmt: skip
    text += _gauge(
        "opsauto_backup_sets", "Number of complete backup sets kept on the host.", project,
        set_count,
    )  # fmt: skip
    if offsite is not None:
        text += offsite_text(project, offsite)
    return text


def offsite_text(project: str, success: bool) -> str:
    return _gauge(
        "opsauto_backup_offsite_success",
        "1 when the newest set was copied off-site and verified.", project, 1 if success else 0,
    )  # fmt: skip


def failure_text(project: str, now: float | None = None) -> str:
    now = time.time() if now is None else now
    return _gauge(
        "opsauto_backup_last_failure_timestamp_seconds", "Time of the last failed backup run.",
        project, int(now),
    )  # fmt: skip


def record_failure(metrics_dir: str, project: str, check_mode: bool) -> bool:
    """Write the failure metric (now) to ``metrics_dir``; True if written ('' : no metrics)."""
    if not metrics_dir:
        return False
    return write_metric_file(metrics_dir, FAILURE_FILE, failure_text(project), check_mode)


def write_metric_file(metrics_dir: str, name: str, text: str | None, check_mode: bool) -> bool:
    """Make ``metrics_dir``/``name`` hold ``text`` (0644; None: no file); True if changed.

    The directory is created 0755 when missing (node_exporter reads it as another user).
    """
    path = os.path.join(metrics_dir, name)
    try:
        with open(path, encoding="utf-8") as handle:
            current = handle.read()
    except FileNotFoundError:
        current = None
    except OSError as exc:
        raise BackupSetError(f"cannot read {path}: {exc.strerror or exc}") from None
    if current == text:
        return False
    if check_mode:
        return True
    try:
        if text is None:
            os.unlink(path)
            return True
        if ensure_directory(metrics_dir):
            os.chmod(metrics_dir, METRICS_DIR_MODE)
        write_bytes_atomic(path, text.encode("utf-8"), METRICS_MODE)
    except (OSError, FileOpsError) as exc:
        raise BackupSetError(
            f"cannot write the metrics file {path}: {getattr(exc, 'strerror', None) or exc}. Check "
            "the directory "
            "(backup_metrics_dir) and its permissions, or set backup_metrics_dir to '' to write "
            "no metrics."
        ) from None
    return True
