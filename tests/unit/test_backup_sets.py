"""Backup sets (module_utils/backup_sets.py, backup_run.py, library/backup_sets.py): SET.json,
listing, retention, the run lock, metrics, and one run from the lock to the seal."""

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
    delete_sets,
    plan_retention,
    select_keep,
)
from ansible.module_utils.backup_sets import (
    DUMP_KEYS,
    SET_FILE,
    SET_KEYS,
    BackupSetError,
    build_set,
    list_sets,
    metrics_text,
    open_run,
    read_set,
    release_run,
    select_set,
    set_path,
    write_metric_file,
    write_set,
)
from ansible.module_utils.op_lock import LockHeld
from ansible.module_utils.ops_errors import OpsError, PgError

from tests.ansible_cli import run_module

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


def make_set(
    backup_dir: Path, backup_id: str, created: datetime, verified=True, sealed=True,
    purpose="scheduled",
):  # fmt: skip
    """A set of ours (start marker with ``purpose``; None: no marker)."""
    path = backup_dir / backup_id
    path.mkdir(parents=True)
    if purpose:
        marker = {"owner": "opsauto", "backup_id": backup_id, "purpose": purpose}
        (path / MARKER_FILE).write_text(json.dumps(marker))
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


def prune(sets, keep_last, dry_run=False, now=None, **policy):
    """Plan retention with keep_last only (and ``policy``); delete unless dry_run."""
    options = {"keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0, **policy}
    plan = plan_retention(sets, Policy(keep_last=keep_last, **options), now=now)
    if not dry_run:
        delete_sets(plan.delete)
    return plan.delete


def test_newest_verified_set_is_never_deleted(tmp_path):
    make_set(tmp_path, "old-verified", START - timedelta(days=2), verified=True)
    make_set(tmp_path, "new-unverified-1", START - timedelta(days=1), verified=False)
    make_set(tmp_path, "new-unverified-2", START, verified=False)
    sets = list_sets(str(tmp_path))
    reasons = select_keep(sets, 1, 0, 0, 0)
    assert reasons["old-verified"] == ["newest-verified"]
    doomed = prune(sets, 1)
    assert [d.backup_id for d in doomed] == ["new-unverified-1"]
    assert (tmp_path / "old-verified" / "appdb.dump").exists()


def test_prune_dry_run_deletes_nothing(tmp_path):
    daily_sets(tmp_path, 5)
    doomed = prune(list_sets(str(tmp_path)), 2, dry_run=True)
    assert len(doomed) == 3
    assert len(list(tmp_path.iterdir())) == 5


def test_incomplete_sets_pruned_only_when_old(tmp_path):
    daily_sets(tmp_path, 1)
    young = make_set(tmp_path, "young", START, sealed=False)
    old = make_set(tmp_path, "old", START, sealed=False)
    os.utime(old, (0, (START - timedelta(hours=30)).timestamp()))
    os.utime(young, (0, (START - timedelta(hours=1)).timestamp()))
    doomed = prune(list_sets(str(tmp_path)), 1, now=START.timestamp())
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
        "backup_id": "s1",
        "set_dir": f"{backup_dir}/s1",
        "set_exists": False,
        "locked": True,
        "lock": f"{backup_dir}/.lock",
        "holder": run["holder"],
        "broken": [],
    }
    assert run["holder"]["operation"] == "backup s1"
    assert oct(backup_dir.stat().st_mode & 0o777) == "0o700"
    assert (backup_dir / ".lock" / "holder.json").is_file()
    assert release_run(str(backup_dir)) is True
    (backup_dir / "s1").mkdir()
    again = open_run(str(backup_dir), "s1", 6, check_mode=False)
    assert again["changed"] is False
    assert again["set_exists"] is True


def test_open_run_refuses_while_another_run_holds_the_lock(tmp_path):
    first = open_run(str(tmp_path), "s1", 6, check_mode=False)
    with pytest.raises(LockHeld, match="Another backup is running") as held:
        open_run(str(tmp_path), "s2", 6, check_mode=False)
    assert "it will be released when that run ends" in str(held.value)
    later = first["holder"]["started_epoch"] + 7 * 3600
    with pytest.raises(LockHeld, match="older than 6 h") as stale:
        open_run(str(tmp_path), "s2", 6, check_mode=False, now=later)
    assert f"rm -rf {tmp_path}/.lock" in str(stale.value)
    assert not (tmp_path / "s2").exists()


def test_open_run_fixes_a_loose_directory_mode(tmp_path):
    tmp_path.chmod(0o755)
    run = open_run(str(tmp_path), "s1", 6, check_mode=False)
    assert run["changed"] is True
    assert oct(tmp_path.stat().st_mode & 0o777) == "0o700"


# --------------------------------------------------------------------------- SET.json


def manifest(label: str, created: str, **extra) -> dict:
    return {
        "label": label, "file": f"{label}.dump", "mode": "database", "format": "custom",
        "compression": "none", "size": 10, "sha256": "ab" * 32, "duration_seconds": 0.5,
        "encryption": None, "created": created, "verified": True, "row_counts": {"t": 1},
        "backup_id": "s1", "manifest_format": 1, "database": label, **extra,
    }  # fmt: skip


def test_build_set_keeps_the_dump_keys_and_the_earliest_time():
    dumps = [manifest("appdb", "2026-11-29T03:00:02Z"), manifest("globals", "2026-11-29T03:00:01Z")]
    meta = build_set("s1", "app1", "proj", ["appdb"], dumps, {"compose.yaml": "cd" * 32})
    assert sorted(meta) == sorted(SET_KEYS)
    assert meta["created"] == "2026-11-29T03:00:01Z"
    assert meta["verified"] is True
    assert [d["label"] for d in meta["dumps"]] == ["appdb", "globals"]
    assert sorted(meta["dumps"][0]) == sorted(DUMP_KEYS)  # no row counts, no created
    assert meta["config"] == {"config/compose.yaml": "cd" * 32}
    unverified = build_set("s1", "h", "p", ["appdb"], [manifest("appdb", "x", verified=False)])
    assert unverified["verified"] is False


def test_write_set_is_atomic_private_and_idempotent(tmp_path):
    meta = build_set("s1", "h", "p", ["appdb"], [manifest("appdb", "2026-11-29T03:00:00Z")])
    assert write_set(str(tmp_path), meta, check_mode=True) is True
    assert not (tmp_path / SET_FILE).exists()
    assert write_set(str(tmp_path), meta, check_mode=False) is True
    assert oct((tmp_path / SET_FILE).stat().st_mode & 0o777) == "0o600"
    assert read_set(str(tmp_path)) == meta
    assert write_set(str(tmp_path), meta, check_mode=False) is False
    assert [p.name for p in tmp_path.iterdir()] == [SET_FILE]  # no partial file left


@pytest.mark.parametrize(
    ("meta", "problem"),
    [
        ([], "not a JSON object"),
        ({"backup_id": "s1"}, r"verified \(true/false\) is missing"),
        ({"backup_id": "s1", "verified": True, "dumps": [{"file": "a"}]}, "file and sha256"),
        ({"backup_id": "s1", "verified": True, "created": "yesterday"}, "not a UTC ISO 8601"),
    ],
)
def test_a_damaged_set_description_is_refused_naming_the_problem(tmp_path, meta, problem):
    (tmp_path / SET_FILE).write_text(json.dumps(meta))
    with pytest.raises(BackupSetError, match=problem):
        read_set(str(tmp_path))


def test_set_path_refuses_an_id_that_is_not_a_file_name(tmp_path):
    assert set_path(str(tmp_path), "s-1.a") == f"{tmp_path}/s-1.a"
    with pytest.raises(OpsError, match="backup_id '../x' is not allowed"):
        set_path(str(tmp_path), "../x")


# --------------------------------------------------------------------------- metrics


def test_metrics_of_the_newest_set_and_the_offsite_gauge():
    latest = {
        "created": "2026-11-29T03:00:00Z", "verified": True,
        "dumps": [{"size": 100, "duration_seconds": 0.25}, {"size": 20, "duration_seconds": 0.5}],
    }  # fmt: skip
    text = metrics_text('my"proj', latest, 3)
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    label = '{project="my\\"proj"}'
    created = int(datetime(2026, 11, 29, 3, tzinfo=UTC).timestamp())
    assert values[f"opsauto_backup_last_success_timestamp_seconds{label}"] == str(created)
    assert values[f"opsauto_backup_size_bytes{label}"] == "120"
    assert values[f"opsauto_backup_duration_seconds{label}"] == "0.75"
    assert values[f"opsauto_backup_verified{label}"] == "1"
    assert values[f"opsauto_backup_sets{label}"] == "3"
    assert "offsite" not in text
    assert 'opsauto_backup_offsite_success{project="p"} 1' in metrics_text("p", latest, 1, True)
    empty = metrics_text("p", None, 0)
    assert 'opsauto_backup_verified{project="p"} 0' in empty


def test_metric_file_written_0644_only_when_it_changes(tmp_path):
    metrics = tmp_path / "node-exporter"
    assert write_metric_file(str(metrics), "a.prom", "x 1\n", check_mode=True) is True
    assert not metrics.exists()
    assert write_metric_file(str(metrics), "a.prom", "x 1\n", check_mode=False) is True
    assert oct(metrics.stat().st_mode & 0o777) == "0o755"
    assert oct((metrics / "a.prom").stat().st_mode & 0o777) == "0o644"
    assert write_metric_file(str(metrics), "a.prom", "x 1\n", check_mode=False) is False
    assert write_metric_file(str(metrics), "a.prom", None, check_mode=False) is True
    assert not (metrics / "a.prom").exists()


# --------------------------------------------------------------------------- one run


class FakeDumps:
    """Stands in for pg_dump.run_backup: writes a dump and its manifest, or fails."""

    def __init__(self, fail_on: str | None = None):
        self.fail_on = fail_on
        self.requests: list[dict] = []

    def __call__(self, request: dict, check_mode: bool = False) -> dict:
        self.requests.append(request)
        label = request["database"] if request["mode"] == "database" else "globals"
        directory = Path(request["dest_dir"]) / request["backup_id"]
        path = directory / f"{label}.dump"
        if label == self.fail_on:
            raise PgError(f"password authentication failed for {label}")
        exists = (directory / f"{label}.manifest.json").exists()
        if check_mode or exists:
            return {"changed": not exists, "path": str(path), "msg": "checked"}
        directory.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"PGDMP")
        data = manifest(label, "2026-11-29T03:00:00Z", mode=request["mode"])
        (directory / f"{label}.manifest.json").write_text(json.dumps(data))
        return {"changed": True, "path": str(path), "msg": "dumped"}


@pytest.fixture(autouse=True)
def no_container_cleanup(monkeypatch):
    """The leftovers' cleanup needs a container (tests/integration/test_backup_safety.py);
    here it records its calls."""
    calls = []
    monkeypatch.setattr(backup_run, "clean_leftovers", lambda *args: calls.append(args) or [])
    monkeypatch.setattr(
        backup_run, "database_sizes", lambda pg, db: lambda names: dict.fromkeys(names, 4096)
    )
    return calls


def run_params(tmp_path: Path, **extra) -> dict:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "compose.yaml").write_text("services: {}\n")
    (project / ".env").write_text("DB_PASSWORD=secret\n")
    return {
        "path": str(tmp_path / "backups"), "backup_id": "s1", "databases": ["appdb"],
        "globals": True, "format": "custom", "jobs": 1, "compression": "none",
        "compress_level": None, "container": "db", "docker_cli": "docker",
        "login_user": "app", "login_password": "pw", "encrypt_recipients": [],
        "config_src": str(project), "project": "proj", "host": "app1", "lock_held": True,
        "metrics_dir": str(tmp_path / "metrics"), "retention": True, "keep_last": 7,
        "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6, "incomplete_max_age_hours": 24,
        **extra,
    }  # fmt: skip


def test_a_run_dumps_snapshots_seals_prunes_writes_metrics_and_releases(
    tmp_path, monkeypatch, no_container_cleanup
):
    fake = FakeDumps()
    monkeypatch.setattr(backup_run, "run_backup", fake)
    params = run_params(tmp_path)
    opened = open_run(params["path"], "s1", 6, check_mode=False)
    result = backup_run.finish(params, False, backup_run.take_set(params, False))
    assert [r["mode"] for r in fake.requests] == ["database", "globals"]
    assert all(r["run_lock_held"] for r in fake.requests)  # the run lock is the only lock
    # under the run lock the leftovers of killed runs are cleaned first, and every client
    # of the run carries the run's name
    assert [c[1:] for c in no_container_cleanup] == [(params["path"], opened["set_dir"], "appdb")]
    assert len({r["app_name"] for r in fake.requests}) == 1
    assert fake.requests[0]["app_name"].startswith("opsauto-backup-")
    meta = json.loads((Path(opened["set_dir"]) / SET_FILE).read_text())
    assert meta == result["set"]
    assert [d["file"] for d in meta["dumps"]] == ["appdb.dump", "globals.dump"]
    assert sorted(meta["config"]) == ["config/compose.yaml", "config/env.masked"]
    assert (Path(opened["set_dir"]) / "config" / "env.masked").read_text().count("secret") == 0
    assert result["latest"]["backup_id"] == "s1"
    assert result["released"] is True
    assert not Path(opened["lock"]).exists()
    prom = (tmp_path / "metrics" / "opsauto_backup.prom").read_text()
    assert 'opsauto_backup_sets{project="proj"} 1' in prom
    assert "Backup set s1 in" in result["msg"]
    assert "1 sets kept" in result["msg"]

    open_run(params["path"], "s1", 6, check_mode=False)
    again = backup_run.finish(params, False, backup_run.take_set(params, False))
    assert again["changed"] is False
    assert "complete already" in again["msg"]


def test_a_failed_run_removes_its_set_records_the_failure_and_releases(tmp_path, monkeypatch):
    monkeypatch.setattr(backup_run, "run_backup", FakeDumps(fail_on="globals"))
    params = run_params(tmp_path)
    open_run(params["path"], "s1", 6, check_mode=False)
    (Path(params["path"]) / "older").mkdir()
    with pytest.raises(backup_run.RunFailed) as failed:
        backup_run.take_set(params, False)
    message = str(failed.value)
    assert message.startswith("Backup s1 of proj on app1 failed: password authentication")
    assert "No incomplete set was left" in message
    assert failed.value.released is True
    assert sorted(p.name for p in Path(params["path"]).iterdir()) == ["older"]
    flag = (tmp_path / "metrics" / "opsauto_backup_failure.prom").read_text()
    assert 'opsauto_backup_last_failure_timestamp_seconds{project="proj"}' in flag


def test_a_failed_rerun_leaves_the_existing_set(tmp_path, monkeypatch):
    monkeypatch.setattr(backup_run, "run_backup", FakeDumps())
    params = run_params(tmp_path, lock_held=False, metrics_dir="")
    backup_run.take_set(params, False)
    monkeypatch.setattr(backup_run, "run_backup", FakeDumps(fail_on="appdb"))
    with pytest.raises(backup_run.RunFailed, match="existed before this run and was left") as e:
        backup_run.take_set(params, False)
    assert e.value.released is False
    assert (Path(params["path"]) / "s1" / SET_FILE).exists()


def test_check_mode_of_a_new_set_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(backup_run, "run_backup", FakeDumps())
    params = run_params(tmp_path)
    result = backup_run.finish(params, True, backup_run.take_set(params, True))
    assert result["changed"] is True
    assert result["msg"].startswith("Check mode: would write backup set s1")
    assert result["released"] is False
    assert not (tmp_path / "backups").exists()
    assert not (tmp_path / "metrics").exists()


def test_module_locked_chooses_the_id_and_refuses_a_secret_key(tmp_path):
    args = {"path": str(tmp_path), "state": "locked", "backup_id": ""}
    done = run_module("backup_sets", args)
    assert done["locked"] is True
    assert (tmp_path / ".lock").is_dir()
    assert datetime.strptime(done["backup_id"], "%Y%m%dT%H%M%SZ")
    assert done["set_dir"] == f"{tmp_path}/{done['backup_id']}"
    assert release_run(str(tmp_path)) is True
    key = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
    refused = run_module("backup_sets", {**args, "encrypt_recipients": [key]})
    assert refused["status"].startswith("FAILED")
    assert "age identity" in refused["msg"]
    assert key not in refused["msg"]
    assert not (tmp_path / ".lock").exists()


def test_select_set_latest_skips_safety_sets_and_lists_what_exists(tmp_path):
    make_set(tmp_path, "s1", START - timedelta(days=1))
    make_set(tmp_path, "pre-restore-x", START)
    make_set(tmp_path, "unverified", START - timedelta(days=2), verified=False)
    make_set(tmp_path, "crashed", START, sealed=False)
    sets = list_sets(str(tmp_path))
    assert select_set(sets, "latest", "here")["backup_id"] == "s1"
    assert select_set(sets, "pre-restore-x", "here")["path"] == f"{tmp_path}/pre-restore-x"
    for wanted in ("nope", "unverified", "crashed"):
        with pytest.raises(BackupSetError) as refused:
            select_set(sets, wanted, "here")
        message = str(refused.value)
        assert message.startswith(f"No complete, verified backup set '{wanted}' in here.")
        assert "(newest first): pre-restore-x, s1, unverified" in message
        assert "incomplete (not restorable): crashed." in message
