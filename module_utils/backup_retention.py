"""Which backup sets are this project's own, and the retention policy that deletes only those.

A set is ours when its directory carries the start marker ``.opsauto-set.json``, written by
``start_set`` when a backup run starts the set (before any dump). The marker records the
set's purpose: ``scheduled`` (every backup run of the backup role) or ``safety`` (the backup
the restore role takes before a replace restore).

Sets made before the marker existed: a directory without the marker counts as ours only when
its ``SET.json`` is a valid description of this project's schema (every key of
``backup_sets.SET_KEYS``) whose ``backup_id`` is the directory's name. Its purpose is then
``safety`` when the id starts with ``pre-restore-``, else ``scheduled``. A directory without
the marker and without such a ``SET.json`` (a foreign directory, a download in progress, an
incomplete set of an older version) is never deleted.

RDS snapshot records (``SET.json`` with ``kind: rds``) are ours but belong to the RDS
snapshot pruning (``backup_rds_keep_count``): the dump retention leaves them alone.

Policy (``plan_retention``): scheduled sets are kept by keep-last/daily/weekly/monthly among
scheduled sets only (the newest verified scheduled set is always kept); safety sets by their
own count (the newest ``keep_safety``), so safety sets never displace scheduled ones; our
incomplete sets (marker, no ``SET.json``) older than the limit are deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ansible.module_utils.backup_sets import (
    SAFETY_PREFIX,
    SET_FILE,
    SET_KEYS,
    BackupSet,
    BackupSetError,
)
from ansible.module_utils.fileops import write_json_atomic

MARKER_FILE = ".opsauto-set.json"
MARKER_OWNER = "opsauto"
PURPOSES = ("scheduled", "safety")
DIR_MODE = 0o700


# --------------------------------------------------------------------------- ownership


def read_marker(set_dir: str) -> dict | None:
    """The start marker of ``set_dir`` when it is one of ours (owner, backup_id = name)."""
    try:
        with open(os.path.join(set_dir, MARKER_FILE), encoding="utf-8") as handle:
            marker = json.load(handle)
    except (OSError, ValueError):
        return None
    if (
        isinstance(marker, dict)
        and marker.get("owner") == MARKER_OWNER
        and marker.get("backup_id") == os.path.basename(set_dir)
        and marker.get("purpose") in PURPOSES
    ):
        return marker
    return None


def kind_of(backup: BackupSet) -> str:
    """``scheduled``, ``safety``, ``rds`` (an RDS snapshot record) or ``foreign``."""
    marker = read_marker(backup.path)
    meta = backup.meta if backup.complete else {}
    if meta.get("kind") == "rds" and meta.get("backup_id") == backup.backup_id:
        return "rds"
    if marker is not None:
        return marker["purpose"]
    if backup.complete and meta.get("backup_id") == backup.backup_id and set(SET_KEYS) <= set(meta):
        # made before the marker existed: our schema, our name
        return "safety" if backup.backup_id.startswith(SAFETY_PREFIX) else "scheduled"
    return "foreign"


def _set_meta(set_dir: str) -> dict | None:
    """The JSON object in ``set_dir``/SET.json, or None (absent, unreadable, not an object)."""
    try:
        with open(os.path.join(set_dir, SET_FILE), encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def start_set(
    set_dir: str, backup_id: str, purpose: str, host: str, project: str, now: float | None = None
) -> bool:
    """Mark ``set_dir`` (created 0700 when missing) as a set this run starts; True if written.

    An existing directory that is not one of ours is refused (BackupSetError): a backup id
    that names a foreign directory must not turn it into a set that retention may delete.
    """
    if purpose not in PURPOSES:
        raise BackupSetError(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}.")
    if read_marker(set_dir) is not None:
        return False
    if os.path.isdir(set_dir) and os.listdir(set_dir):
        meta = _set_meta(set_dir)
        probe = BackupSet(backup_id, set_dir, datetime.now(timezone.utc), meta is not None)
        probe.meta = meta or {}
        if kind_of(probe) not in PURPOSES:
            raise BackupSetError(
                f"{set_dir} exists and is not a backup set of this project (no {MARKER_FILE}, "
                f"no {SET_FILE} of ours). Nothing was written. Choose another backup_id, or move "
                "that directory out of the backup directory."
            )
    try:
        os.makedirs(set_dir, DIR_MODE, exist_ok=True)
        marker = {
            "owner": MARKER_OWNER,
            "backup_id": backup_id,
            "purpose": purpose,
            "started": datetime.fromtimestamp(
                time.time() if now is None else now, timezone.utc
            ).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "host": host,
            "project": project,
        }
        write_json_atomic(os.path.join(set_dir, MARKER_FILE), marker, 0o600)
    except OSError as exc:
        raise BackupSetError(
            f"cannot start the set {set_dir}: {exc.strerror or exc}. Check the backup "
            "directory's permissions and free space, then re-run."
        ) from None
    return True


# --------------------------------------------------------------------------- policy


@dataclass
class Policy:
    keep_last: int = 7
    keep_daily: int = 7
    keep_weekly: int = 4
    keep_monthly: int = 6
    keep_safety: int = 3
    incomplete_max_age_hours: float = 24

    def check(self) -> None:
        for name in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly"):
            if getattr(self, name) < 0:
                raise BackupSetError(f"{name} must be 0 or more, got {getattr(self, name)}.")
        if self.keep_safety < 1:
            raise BackupSetError(
                f"keep_safety must be 1 or more (the newest safety set is the way back from a "
                f"replace restore), got {self.keep_safety}."
            )


@dataclass
class RetentionPlan:
    keep: dict[str, list[str]] = field(default_factory=dict)
    delete: list[BackupSet] = field(default_factory=list)
    left_alone: dict[str, str] = field(default_factory=dict)  # not ours to judge: why


LEFT_ALONE = {
    "rds": "RDS snapshot record: pruned with its snapshots (backup_rds_keep_count)",
    "foreign": f"not a set of this project (no {MARKER_FILE}, no {SET_FILE} of ours)",
}


def select_keep(
    sets: list[BackupSet], keep_last: int, keep_daily: int, keep_weekly: int, keep_monthly: int
) -> dict[str, list[str]]:
    """Map backup_id -> reasons it is kept, among the complete sets of ``sets``.

    The newest verified set is always kept, whatever the policy says.
    """
    complete = [s for s in sets if s.complete]
    reasons: dict[str, list[str]] = {}

    def keep(backup: BackupSet, why: str) -> None:
        reasons.setdefault(backup.backup_id, []).append(why)

    for backup in complete[: max(keep_last, 0)]:
        keep(backup, "last")
    buckets = (
        ("daily", keep_daily, "%Y-%m-%d"),
        ("weekly", keep_weekly, "%G-W%V"),
        ("monthly", keep_monthly, "%Y-%m"),
    )
    for name, count, fmt in buckets:
        seen: set[str] = set()
        for backup in complete:
            if len(seen) >= count:
                break
            bucket = backup.created.strftime(fmt)
            if bucket not in seen:
                seen.add(bucket)
                keep(backup, name)
    verified = [s for s in complete if s.verified]
    if verified:
        keep(verified[0], "newest-verified")
    return reasons


def plan_retention(
    sets: list[BackupSet], policy: Policy, now: float | None = None
) -> RetentionPlan:
    """What to keep (with reasons), delete and leave alone; ``sets`` newest first."""
    policy.check()
    now = time.time() if now is None else now
    plan = RetentionPlan()
    kinds = {s.backup_id: kind_of(s) for s in sets}
    scheduled = [s for s in sets if kinds[s.backup_id] == "scheduled" and s.complete]
    plan.keep.update(
        select_keep(
            scheduled, policy.keep_last, policy.keep_daily, policy.keep_weekly,
            policy.keep_monthly,
        )
    )  # fmt: skip
    safety = [s for s in sets if kinds[s.backup_id] == "safety" and s.complete]
    for backup in safety[: policy.keep_safety]:
        plan.keep.setdefault(backup.backup_id, []).append("safety")
    for backup in sets:
        kind = kinds[backup.backup_id]
        if kind in LEFT_ALONE:
            plan.left_alone[backup.backup_id] = LEFT_ALONE[kind]
        elif backup.complete and backup.backup_id not in plan.keep:
            plan.delete.append(backup)
        elif not backup.complete:
            age_h = (now - backup.created.timestamp()) / 3600
            if age_h >= policy.incomplete_max_age_hours:
                plan.delete.append(backup)
    return plan


def delete_sets(doomed: list[BackupSet]) -> None:
    """Remove each set's directory; BackupSetError naming the first that cannot go."""
    for backup in doomed:
        try:
            shutil.rmtree(backup.path)
        except OSError as exc:
            raise BackupSetError(
                f"cannot delete expired set {backup.path}: {exc.strerror or exc}. "
                "Check permissions and free space, then re-run."
            ) from None
