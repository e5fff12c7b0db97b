"""Backup sets on disk: listing, and the retention policy (keep last / daily / weekly / monthly).

A backup set is a directory <backup_dir>/<backup_id>/ holding dumps, their manifests, a
config snapshot and SET.json. SET.json is written last: a directory without it is an
incomplete set (a run that died) and is never offered for restore.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ansible.module_utils.ops_errors import OpsError

SET_FILE = "SET.json"


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


def list_sets(backup_dir: str) -> list[BackupSet]:
    """Every set under backup_dir, newest first. Complete sets sort by SET.json's created."""
    if not os.path.isdir(backup_dir):
        return []
    sets = []
    for name in os.listdir(backup_dir):
        path = os.path.join(backup_dir, name)
        if name.startswith(".") or not os.path.isdir(path) or os.path.islink(path):
            continue
        marker = os.path.join(path, SET_FILE)
        mtime = datetime.fromtimestamp(os.stat(path).st_mtime, tz=timezone.utc)
        if not os.path.isfile(marker):
            sets.append(BackupSet(name, path, mtime, complete=False))
            continue
        try:
            with open(marker, encoding="utf-8") as handle:
                meta = json.load(handle)
            created = parse_time(meta["created"]) if meta.get("created") else mtime
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BackupSetError(
                f"{marker} is unreadable ({exc}). Inspect the set; if it is damaged, move the "
                f"directory {path} out of {backup_dir}."
            ) from None
        sets.append(BackupSet(name, path, created, True, bool(meta.get("verified")), meta=meta))
    sets.sort(key=lambda s: (s.created, s.backup_id), reverse=True)
    return sets


def select_keep(
    sets: list[BackupSet], keep_last: int, keep_daily: int, keep_weekly: int, keep_monthly: int
) -> dict[str, list[str]]:
    """Map backup_id -> reasons it is kept. Only complete sets are considered.

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


def prune(
    sets: list[BackupSet],
    keep_reasons: dict[str, list[str]],
    incomplete_max_age_hours: float,
    dry_run: bool,
    now: float | None = None,
) -> list[BackupSet]:
    """Delete complete sets not kept and incomplete sets older than the limit."""
    now = time.time() if now is None else now
    doomed = []
    for backup in sets:
        if backup.complete and backup.backup_id not in keep_reasons:
            doomed.append(backup)
        elif not backup.complete:
            age_h = (now - backup.created.timestamp()) / 3600
            if age_h >= incomplete_max_age_hours:
                doomed.append(backup)
    if not dry_run:
        for backup in doomed:
            try:
                shutil.rmtree(backup.path)
            except OSError as exc:
                raise BackupSetError(
                    f"cannot delete expired set {backup.path}: {exc.strerror or exc}. "
                    "Check permissions and free space, then re-run."
                ) from None
    return doomed


LOCK_NAME = ".lock"
DIR_MODE = 0o700


def open_run(
    backup_dir: str,
    backup_id: str,
    stale_hours: float,
    check_mode: bool,
    now: float | None = None,
) -> dict:
    """Start a backup run: the backup directory (0700), the run lock, whether the set exists.

    The lock is a directory created with mkdir, which is atomic: of two runs at once exactly
    one gets it. It is not taken in check mode. Returns changed (the backup directory was
    created or fixed, or would be), set_exists, locked and lock (its path).
    """
    lock = os.path.join(backup_dir, LOCK_NAME)
    result = {"changed": False, "set_exists": False, "locked": False, "lock": lock}
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
        result["set_exists"] = os.path.isdir(os.path.join(backup_dir, backup_id))
        if check_mode:
            return result
        os.mkdir(lock, DIR_MODE)
    except FileExistsError:
        raise BackupSetError(_held_message(lock, stale_hours, now)) from None
    except OSError as exc:
        raise BackupSetError(
            f"cannot prepare the backup directory {backup_dir}: {exc.strerror or exc}. Check "
            "that its parent exists and is writable by the backup user (become: true), then "
            "re-run."
        ) from None
    result["locked"] = True
    return result


def _held_message(lock: str, stale_hours: float, now: float | None) -> str:
    now = time.time() if now is None else now
    try:
        since = os.stat(lock).st_mtime
    except OSError:  # released in between: say so rather than guess an age
        return f"Another backup held the lock {lock} a moment ago. Nothing was written. Re-run."
    age_h = (now - since) / 3600
    when = datetime.fromtimestamp(since, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if age_h >= stale_hours:
        advice = (
            f"the lock is older than {stale_hours:g} h and probably stale: if no backup runs "
            f"(ps -ef | grep pg_dump), remove it with rmdir {lock}"
        )
    else:
        advice = "it will be released when that run ends"
    return (
        f"Another backup is running: {lock} exists since {when} ({age_h:.1f} h ago). Nothing "
        f"was written. Wait for it to finish; {advice}."
    )
