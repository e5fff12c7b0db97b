"""Retention deletes only the sets it recognises as its own (module_utils/backup_retention.py):
the start marker, sets made before the marker existed, foreign directories and RDS records
left alone, safety sets kept by their own count and never displacing scheduled sets."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ansible.module_utils import backup_run
from ansible.module_utils.backup_retention import (
    MARKER_FILE,
    Policy,
    kind_of,
    plan_retention,
    read_marker,
    start_set,
)
from ansible.module_utils.backup_sets import (
    SET_FILE,
    BackupSetError,
    build_rds_record,
    build_set,
    list_sets,
    write_set,
)

from tests.ansible_cli import run_module
from tests.unit.test_backup_sets import FakeDumps, manifest, run_params

START = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def our_set(backup_dir: Path, backup_id: str, created: datetime, purpose: str | None) -> Path:
    """A sealed set with this project's SET.json; a start marker unless ``purpose`` is None."""
    path = backup_dir / backup_id
    path.mkdir(parents=True)
    if purpose:
        start_set(str(path), backup_id, purpose, "app1", "proj", now=created.timestamp())
    (path / "appdb.dump").write_bytes(b"PGDMP")
    meta = build_set(backup_id, "app1", "proj", ["appdb"], [manifest("appdb", stamp(created))])
    write_set(str(path), meta, check_mode=False)
    return path


def rds_record(backup_dir: Path, backup_id: str, created: datetime) -> Path:
    path = backup_dir / backup_id
    path.mkdir(parents=True)
    snapshot = {
        "snapshot_identifier": f"app-{backup_id.lower()}", "db_instance_identifier": "app",
        "status": "available", "created": stamp(created), "region": "eu-west-1",
    }  # fmt: skip
    write_set(str(path), build_rds_record(backup_id, "h", "p", snapshot), check_mode=False)
    return path


def old(path: Path, hours: float = 100) -> Path:
    when = (START - timedelta(hours=hours)).timestamp()
    os.utime(path, (when, when))
    return path


def prune_args(backup_dir: Path, **extra) -> dict:
    args = {"path": str(backup_dir), "state": "pruned", "keep_last": 1, "keep_daily": 0}
    return {**args, "keep_weekly": 0, "keep_monthly": 0, **extra}


def test_foreign_directories_and_rds_records_survive_retention(tmp_path):
    for n in range(3):
        our_set(tmp_path, f"s{n}", START - timedelta(days=n), "scheduled")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    old(foreign)
    alien = tmp_path / "other-tool"
    alien.mkdir()  # a SET.json of another schema: not ours either
    (alien / SET_FILE).write_text(json.dumps({"backup_id": "other-tool", "verified": True}))
    rds = rds_record(tmp_path, "rds-20261001", START - timedelta(days=60))
    result = run_module("backup_sets", prune_args(tmp_path))
    assert result["deleted"] == ["s1", "s2"], result
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "other-tool",
        "photos",
        "rds-20261001",
        "s0",
    ]
    assert (foreign / "holiday.jpg").read_bytes() == b"\xff\xd8"
    assert (rds / SET_FILE).exists()
    assert "RDS snapshot record" in result["left_alone"]["rds-20261001"]
    assert "not a set of this project" in result["left_alone"]["photos"]
    assert "not a set of this project" in result["left_alone"]["other-tool"]


def test_many_safety_sets_never_displace_scheduled_sets(tmp_path):
    scheduled = [f"s{n}" for n in range(5)]
    for n, backup_id in enumerate(scheduled):
        our_set(tmp_path, backup_id, START - timedelta(days=n + 1), "scheduled")
    safety = [f"pre-restore-{n}" for n in range(8)]  # all newer than every scheduled set
    for n, backup_id in enumerate(safety):
        our_set(tmp_path, backup_id, START - timedelta(minutes=n), "safety")
    result = run_module("backup_sets", prune_args(tmp_path, keep_last=3, keep_safety=2))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(scheduled[:3] + safety[:2]), result
    assert result["kept"]["pre-restore-0"] == ["safety"]
    assert result["kept"]["s0"] == ["last", "newest-verified"]


def test_sets_made_before_the_marker_count_as_ours_by_their_set_json(tmp_path):
    our_set(tmp_path, "20261120T030000Z", START - timedelta(days=8), None)
    our_set(tmp_path, "20261121T030000Z", START - timedelta(days=7), None)
    our_set(tmp_path, "pre-restore-20261122T030000Z", START - timedelta(days=6), None)
    our_set(tmp_path, "pre-restore-20261123T030000Z", START - timedelta(days=5), None)
    sets = list_sets(str(tmp_path))
    assert {s.backup_id: kind_of(s) for s in sets} == {
        "20261120T030000Z": "scheduled", "20261121T030000Z": "scheduled",
        "pre-restore-20261122T030000Z": "safety", "pre-restore-20261123T030000Z": "safety",
    }  # fmt: skip
    plan = plan_retention(sets, Policy(keep_last=1, keep_daily=0, keep_weekly=0, keep_monthly=0,
                                       keep_safety=1))  # fmt: skip
    assert sorted(b.backup_id for b in plan.delete) == [
        "20261120T030000Z", "pre-restore-20261122T030000Z",
    ]  # fmt: skip


def test_an_old_incomplete_directory_is_deleted_only_with_our_marker(tmp_path):
    ours = tmp_path / "crashed"
    start_set(str(ours), "crashed", "scheduled", "h", "p")
    (ours / ".appdb.dump.partial-abc").write_bytes(b"PGDMP")
    unknown = tmp_path / "download-in-progress"
    unknown.mkdir()
    (unknown / "appdb.dump").write_bytes(b"PGDMP")
    for path in (ours, unknown):
        old(path, hours=48)
    plan = plan_retention(list_sets(str(tmp_path)), Policy(), now=START.timestamp())
    assert [b.backup_id for b in plan.delete] == ["crashed"]
    assert list(plan.left_alone) == ["download-in-progress"]


def test_start_set_writes_a_private_marker_once_and_refuses_a_foreign_directory(tmp_path):
    set_dir = tmp_path / "s1"
    assert start_set(str(set_dir), "s1", "safety", "app1", "proj") is True
    assert oct(set_dir.stat().st_mode & 0o777) == "0o700"
    assert oct((set_dir / MARKER_FILE).stat().st_mode & 0o777) == "0o600"
    marker = read_marker(str(set_dir))
    assert marker["purpose"] == "safety"
    assert marker["project"] == "proj"
    assert start_set(str(set_dir), "s1", "scheduled", "app1", "proj") is False
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    with pytest.raises(BackupSetError, match="is not a backup set of this project"):
        start_set(str(foreign), "notes", "scheduled", "app1", "proj")
    assert sorted(p.name for p in foreign.iterdir()) == ["todo.txt"]
    with pytest.raises(BackupSetError, match="purpose must be one of"):
        start_set(str(tmp_path / "x"), "x", "weekly", "h", "p")


def test_a_run_into_a_foreign_directory_is_refused_and_leaves_it(tmp_path, monkeypatch):
    monkeypatch.setattr(backup_run, "run_backup", FakeDumps())
    params = run_params(tmp_path, lock_held=False, metrics_dir="", space_check=False)
    foreign = Path(params["path"]) / "s1"
    foreign.mkdir(parents=True)
    (foreign / "todo.txt").write_text("keep me")
    with pytest.raises(backup_run.RunFailed, match="is not a backup set of this project"):
        backup_run.take_set(params, False)
    assert sorted(p.name for p in foreign.iterdir()) == ["todo.txt"]


def test_a_run_marks_its_set_with_its_purpose(tmp_path, monkeypatch):
    monkeypatch.setattr(backup_run, "run_backup", FakeDumps())
    params = run_params(
        tmp_path, lock_held=False, metrics_dir="", purpose="safety", space_check=False
    )
    backup_run.take_set(params, False)
    assert read_marker(str(Path(params["path"]) / "s1"))["purpose"] == "safety"


def test_keep_safety_below_one_is_refused():
    with pytest.raises(BackupSetError, match="keep_safety must be 1 or more"):
        plan_retention([], Policy(keep_safety=0))
