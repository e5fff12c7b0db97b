"""Free space before a backup run (module_utils/backup_space.py): the estimate from the last
set or pg_database_size, the directory format counted twice, the refusal with the figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ansible.module_utils import backup_run
from ansible.module_utils.backup_sets import BackupSetError, list_sets
from ansible.module_utils.backup_space import check, estimate, free_space

from tests.unit.test_backup_sets import FakeDumps, run_params

MiB = 1024 * 1024


def sealed(backup_dir: Path, backup_id: str, created: str, sizes: dict) -> None:
    path = backup_dir / backup_id
    path.mkdir(parents=True)
    dumps = [
        {"label": k, "file": f"{k}.dump", "sha256": "0" * 64, "size": v} for k, v in sizes.items()
    ]
    meta = {"backup_id": backup_id, "created": created, "verified": True, "dumps": dumps}
    (path / "SET.json").write_text(json.dumps(meta))


def test_estimate_from_the_newest_dump_else_the_database_size(tmp_path):
    sealed(tmp_path, "old", "2026-11-27T03:00:00Z", {"appdb": 5 * MiB, "globals": 2000})
    sealed(tmp_path, "new", "2026-11-28T03:00:00Z", {"appdb": 7 * MiB})
    asked = []

    def db_sizes(names):
        asked.append(names)
        return dict.fromkeys(names, 300 * MiB)

    items = estimate(list_sets(str(tmp_path)), ["appdb", "shop"], True, db_sizes, "custom")
    assert items == [
        ("appdb", 7 * MiB, "its dump in set new"),
        ("shop", 300 * MiB, "pg_database_size"),
        ("globals", 2000, "its dump in set old"),
    ]
    assert asked == [["shop"]]  # only the database never dumped is measured
    doubled = estimate([], ["appdb"], False, db_sizes, "directory")
    assert doubled == [("appdb", 600 * MiB, "pg_database_size, twice: staged, then tar")]


def test_refusal_names_needed_free_and_where(tmp_path):
    items = [("appdb", 100 * MiB, "pg_database_size")]
    figures = check(str(tmp_path), items, free=(200 * MiB, "/srv"))
    assert figures == {"needed": 116 * MiB, "free": 200 * MiB, "where": str(tmp_path),
                       "file_system": "/srv"}  # fmt: skip
    with pytest.raises(BackupSetError) as refused:
        check(str(tmp_path), items, free=(50 * MiB, "/srv"))
    message = str(refused.value)
    assert f"Not enough free space for the backup in {tmp_path} (file system /srv)" in message
    assert "needs about 116.0 MiB (appdb 100.0 MiB (pg_database_size), plus a margin)" in message
    assert "50.0 MiB is free. Nothing was written." in message
    assert "backup_space_check to false" in message


def test_free_space_of_a_path_not_yet_made_is_its_parents(tmp_path):
    free, mount = free_space(str(tmp_path / "a" / "b"))
    assert free > 0
    assert Path(mount).is_dir()


def test_a_run_without_room_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(backup_run, "run_backup", FakeDumps())
    monkeypatch.setattr(
        backup_run, "database_sizes", lambda pg, db: lambda n: dict.fromkeys(n, 2**62)
    )
    params = run_params(tmp_path, lock_held=False, metrics_dir="")
    with pytest.raises(backup_run.RunFailed, match="Not enough free space"):
        backup_run.take_set(params, False)
    assert not (Path(params["path"]) / "s1").exists()
