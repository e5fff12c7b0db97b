"""Retention and listing of backup sets (module_utils/backup_sets.py, library/backup_sets.py)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ansible.module_utils.backup_sets import (
    BackupSetError,
    list_sets,
    open_run,
    prune,
    select_keep,
)

from tests.ansible_cli import run_module

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


def make_set(backup_dir: Path, backup_id: str, created: datetime, verified=True, sealed=True):
    path = backup_dir / backup_id
    path.mkdir(parents=True)
    (path / "appdb.dump").write_bytes(b"PGDMP" + backup_id.encode())
    if sealed:
        meta = {"backup_id": backup_id, "created": created.strftime("%Y-%m-%dT%H:%M:%SZ")}
        meta.update(verified=verified, databases=["appdb"])
        (path / "SET.json").write_text(json.dumps(meta))
    return path


def daily_sets(backup_dir: Path, days: int) -> list[str]:
    ids = []
    for n in range(days):
        created = START - timedelta(days=n)
        backup_id = created.strftime("%Y%m%dT%H%M%SZ")
        make_set(backup_dir, backup_id, created)
        ids.append(backup_id)
    return ids  # newest first


def test_list_sets_newest_first_and_incomplete_flagged(tmp_path):
    ids = daily_sets(tmp_path, 3)
    make_set(tmp_path, "crashed", START, sealed=False)
    sets = list_sets(str(tmp_path))
    assert [s.backup_id for s in sets if s.complete] == ids
    assert [s.backup_id for s in sets if not s.complete] == ["crashed"]


def test_missing_directory_has_no_sets(tmp_path):
    assert list_sets(str(tmp_path / "absent")) == []


def test_unreadable_set_json_names_the_file_and_the_fix(tmp_path):
    path = make_set(tmp_path, "bad", START)
    (path / "SET.json").write_text("{not json")
    with pytest.raises(BackupSetError, match=r"bad/SET.json is unreadable.*move the directory"):
        list_sets(str(tmp_path))


def test_keep_last_only(tmp_path):
    ids = daily_sets(tmp_path, 10)
    reasons = select_keep(list_sets(str(tmp_path)), 3, 0, 0, 0)
    assert sorted(reasons) == sorted(ids[:3])


def test_daily_weekly_monthly_buckets(tmp_path):
    ids = daily_sets(tmp_path, 70)  # 70 days back from 2026-11-28
    reasons = select_keep(list_sets(str(tmp_path)), 2, 7, 4, 3)
    kept = set(reasons)
    assert set(ids[:7]) <= kept  # 7 daily
    weekly = {i for i, r in reasons.items() if "weekly" in r}
    assert len(weekly) == 4
    monthly = {i for i, r in reasons.items() if "monthly" in r}
    # newest of November, October, September 2026
    assert sorted(monthly) == ["20260930T030000Z", "20261031T030000Z", "20261128T030000Z"]
    assert len(kept) < 70


def test_newest_verified_set_is_never_deleted(tmp_path):
    make_set(tmp_path, "old-verified", START - timedelta(days=2), verified=True)
    make_set(tmp_path, "new-unverified-1", START - timedelta(days=1), verified=False)
    make_set(tmp_path, "new-unverified-2", START, verified=False)
    sets = list_sets(str(tmp_path))
    reasons = select_keep(sets, 1, 0, 0, 0)
    assert reasons["old-verified"] == ["newest-verified"]
    doomed = prune(sets, reasons, 24, dry_run=False)
    assert [d.backup_id for d in doomed] == ["new-unverified-1"]
    assert (tmp_path / "old-verified" / "appdb.dump").exists()


def test_prune_dry_run_deletes_nothing(tmp_path):
    daily_sets(tmp_path, 5)
    sets = list_sets(str(tmp_path))
    doomed = prune(sets, select_keep(sets, 2, 0, 0, 0), 24, dry_run=True)
    assert len(doomed) == 3
    assert len(list(tmp_path.iterdir())) == 5


def test_incomplete_sets_pruned_only_when_old(tmp_path):
    daily_sets(tmp_path, 1)
    young = make_set(tmp_path, "young", START, sealed=False)
    old = make_set(tmp_path, "old", START, sealed=False)
    os.utime(old, (0, (START - timedelta(hours=30)).timestamp()))
    os.utime(young, (0, (START - timedelta(hours=1)).timestamp()))
    sets = list_sets(str(tmp_path))
    doomed = prune(sets, select_keep(sets, 1, 0, 0, 0), 24, False, now=START.timestamp())
    assert [d.backup_id for d in doomed] == ["old"]
    assert young.exists()
    assert not old.exists()


def test_module_check_mode_then_prune(tmp_path):
    ids = daily_sets(tmp_path, 4)
    args = {"path": str(tmp_path), "state": "pruned", "keep_last": 2, "keep_daily": 0}
    args.update(keep_weekly=0, keep_monthly=0)
    checked = run_module("backup_sets", args, "--check")
    assert checked["status"] == "CHANGED"
    assert checked["deleted"] == sorted(ids[2:])
    assert len(list(tmp_path.iterdir())) == 4
    done = run_module("backup_sets", args)
    assert done["deleted"] == sorted(ids[2:])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ids[:2])
    again = run_module("backup_sets", args)
    assert again["status"] == "SUCCESS"
    assert again["deleted"] == []
    assert again["latest"]["backup_id"] == ids[0]


def test_open_run_makes_the_directory_and_takes_the_lock(tmp_path):
    backup_dir = tmp_path / "backups" / "app"
    checked = open_run(str(backup_dir), "s1", 6, check_mode=True)
    assert checked["changed"] is True
    assert checked["locked"] is False
    assert not backup_dir.exists()
    run = open_run(str(backup_dir), "s1", 6, check_mode=False)
    assert run == {
        "changed": True,
        "set_exists": False,
        "locked": True,
        "lock": f"{backup_dir}/.lock",
    }
    assert oct(backup_dir.stat().st_mode & 0o777) == "0o700"
    assert (backup_dir / ".lock").is_dir()
    (backup_dir / ".lock").rmdir()
    (backup_dir / "s1").mkdir()
    again = open_run(str(backup_dir), "s1", 6, check_mode=False)
    assert again["changed"] is False
    assert again["set_exists"] is True


def test_open_run_refuses_while_another_run_holds_the_lock(tmp_path):
    open_run(str(tmp_path), "s1", 6, check_mode=False)
    with pytest.raises(BackupSetError, match="Another backup is running") as held:
        open_run(str(tmp_path), "s2", 6, check_mode=False)
    assert "it will be released when that run ends" in str(held.value)
    later = (tmp_path / ".lock").stat().st_mtime + 7 * 3600
    with pytest.raises(BackupSetError, match="probably stale") as stale:
        open_run(str(tmp_path), "s2", 6, check_mode=False, now=later)
    assert f"rmdir {tmp_path}/.lock" in str(stale.value)
    assert not (tmp_path / "s2").exists()


def test_open_run_fixes_a_loose_directory_mode(tmp_path):
    tmp_path.chmod(0o755)
    run = open_run(str(tmp_path), "s1", 6, check_mode=False)
    assert run["changed"] is True
    assert oct(tmp_path.stat().st_mode & 0o777) == "0o700"
