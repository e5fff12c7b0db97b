"""backup_sets' query (select_set): which set a Docker restore gets, with RDS snapshot records
(SET.json with kind rds, written by backup_target=rds) in the same backup directory."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ansible.module_utils.backup_sets import (
    BackupSetError,
    build_rds_record,
    list_sets,
    select_set,
    write_set,
)

from tests.ansible_cli import run_module

START = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def dump_set(backup_dir: Path, backup_id: str, created: datetime) -> None:
    path = backup_dir / backup_id
    path.mkdir(parents=True)
    meta = {"backup_id": backup_id, "created": stamp(created), "verified": True}
    meta.update(databases=["appdb"], dumps=[{"file": "appdb.dump", "sha256": "0" * 64}])
    (path / "SET.json").write_text(json.dumps(meta))


def rds_set(backup_dir: Path, backup_id: str, created: datetime) -> None:
    path = backup_dir / backup_id
    path.mkdir(parents=True)
    snapshot = {
        "snapshot_identifier": f"app-{backup_id}",
        "db_instance_identifier": "app",
        "status": "available",
        "created": stamp(created),
        "region": "eu-west-1",
        "engine": "postgres",
    }
    write_set(str(path), build_rds_record(backup_id, "h", "p", snapshot), check_mode=False)


def test_latest_skips_a_newer_rds_record(tmp_path):
    dump_set(tmp_path, "docker-1", START - timedelta(hours=2))
    rds_set(tmp_path, "rds-1", START)
    selected = select_set(list_sets(str(tmp_path)), "latest", "here")
    assert selected["backup_id"] == "docker-1"
    assert selected["dumps"][0]["file"] == "appdb.dump"


def test_latest_with_only_rds_records_names_them_and_rds_restore(tmp_path):
    rds_set(tmp_path, "rds-1", START - timedelta(hours=1))
    rds_set(tmp_path, "rds-2", START)
    with pytest.raises(BackupSetError) as refused:
        select_set(list_sets(str(tmp_path)), "latest", "here")
    message = str(refused.value)
    assert "only RDS snapshot records" in message
    assert "rds-2, rds-1" in message
    assert "playbooks/rds_restore.yml" in message
    assert "-e rds_restore_snapshot=app-rds-2" in message
    assert "-e rds_restore_region=eu-west-1" in message
    assert "Nothing was changed" in message


def test_an_rds_record_named_by_id_points_to_rds_restore(tmp_path):
    dump_set(tmp_path, "docker-1", START - timedelta(hours=2))
    rds_set(tmp_path, "rds-1", START)
    with pytest.raises(BackupSetError) as refused:
        select_set(list_sets(str(tmp_path)), "rds-1", "here")
    message = str(refused.value)
    assert "'rds-1' in here is an RDS snapshot record" in message
    assert "-e rds_restore_snapshot=app-rds-1" in message
    assert "playbooks/rds_restore.yml" in message


def test_the_module_query_skips_rds_records(tmp_path):
    dump_set(tmp_path, "docker-1", START - timedelta(hours=2))
    rds_set(tmp_path, "rds-1", START)
    result = run_module("backup_sets", {"path": str(tmp_path), "backup_id": "latest"})
    assert result["selected"]["backup_id"] == "docker-1", result
