"""Scheduled backups with a vaulted inventory, and restore `latest` beside RDS snapshot
records, on this machine's Docker engine (a compose project of its own).

The scheduled run is the wrapper that cron runs (cron's bare environment), running
playbooks/backup.yml through ansible-runner against an inventory whose stack_db_password is
an ansible-vault encrypt_string value. The RDS record is written by backup.yml with
backup_target=rds against the local moto server, in the same backup directory as the
container dumps.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    AWS_TEST_CREDENTIALS,
    VENV_BIN,
    compose_down,
    create_postgres_instance,
    moto_client,
    run,
    run_playbook,
    unique_name,
)

PROJECT = "opsauto-it-vault"
PASSWORD = "vaulted-integration-password-7"
CRON_ENV = [
    "/usr/bin/env",
    "-i",
    "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "SHELL=/bin/sh",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_ready):
    base = tmp_path_factory.mktemp("vault")
    common = {
        "stack_project_name": PROJECT,
        "stack_project_dir": str(base / PROJECT),
        "stack_http_port": 18660,
        "stack_prometheus_port": 19660,
        "stack_db_password": PASSWORD,
        "deploy_backend_replicas": 1,
        "deploy_health_timeout": 90,
        "stack_backup_dir": str(base / "backups"),
        "backup_metrics_dir": str(base / "metrics"),
    }
    result, failures = run_playbook(base / "runner", "deploy.yml", common)
    assert result.rc == 0, failures
    yield base, common
    compose_down(PROJECT)


def psql(sql: str) -> str:
    proc = run(
        ["docker", "compose", "-p", PROJECT, "exec", "-T", "db"]
        + ["psql", "-U", "app", "-d", "appdb", "-v", "ON_ERROR_STOP=1", "-tAc", sql]
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# --- restore latest and RDS records (issue 13) ---------------------------------------------


def rds_record(stack, tmp_path, moto_endpoint, backup_dir: Path, backup_id: str, monkeypatch):
    """backup.yml with backup_target=rds: a snapshot in moto and its record in backup_dir."""
    _, common = stack
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_TEST_CREDENTIALS["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_TEST_CREDENTIALS["secret_key"])
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    db = create_postgres_instance(moto_client(moto_endpoint, "rds"), unique_name("db"))
    result, failures = run_playbook(
        tmp_path / f"rds-{backup_id}",
        "backup.yml",
        {
            **common,
            "backup_target": "rds",
            "backup_id": backup_id,
            "stack_rds_instance_identifier": db,
            "stack_rds_region": "us-east-1",
            "stack_rds_endpoint_url": moto_endpoint,
            "stack_backup_dir": str(backup_dir),
        },
    )
    assert result.rc == 0, failures
    assert json.loads((backup_dir / backup_id / "SET.json").read_text())["kind"] == "rds"
    return f"{db}-{backup_id}"


def test_restore_latest_skips_a_newer_rds_record(stack, tmp_path, moto_endpoint, monkeypatch):
    base, common = stack
    result, failures = run_playbook(
        tmp_path / "dump", "backup.yml", {**common, "backup_id": "it-docker-1"}
    )
    assert result.rc == 0, failures
    rds_record(stack, tmp_path, moto_endpoint, base / "backups", "it-rds-1", monkeypatch)

    result, failures = run_playbook(
        tmp_path / "restore",
        "restore.yml",
        {**common, "restore_backup_id": "latest", "restore_database": "appdb_latest"},
    )
    assert result.rc == 0, failures
    restored = [
        e["event_data"]["res"]
        for e in result.events
        if e.get("event") == "runner_on_ok"
        and str(e["event_data"].get("task_action", "")).endswith("backup_sets")
    ]
    assert restored[-1]["selected"]["backup_id"] == "it-docker-1"
    assert psql("SELECT count(*) FROM pg_database WHERE datname = 'appdb_latest'") == "1"


def test_restore_latest_with_only_rds_records_points_to_rds_restore(
    stack, tmp_path, moto_endpoint, monkeypatch
):
    _, common = stack
    only_rds = tmp_path / "only-rds"
    snapshot = rds_record(stack, tmp_path, moto_endpoint, only_rds, "it-rds-2", monkeypatch)

    result, failures = run_playbook(
        tmp_path / "restore",
        "restore.yml",
        {
            **common,
            "stack_backup_dir": str(only_rds),
            "restore_backup_id": "latest",
            "restore_database": "appdb_never",
        },
    )
    assert result.rc != 0
    message = " ".join(failures)
    assert "only RDS snapshot records" in message, message
    assert "it-rds-2" in message
    assert "playbooks/rds_restore.yml -e rds_restore_region=us-east-1" in message
    assert f"-e rds_restore_snapshot={snapshot}" in message
    assert psql("SELECT count(*) FROM pg_database WHERE datname = 'appdb_never'") == "0"


# --- scheduled runs with a vaulted inventory (issue 12) -------------------------------------


def encrypt_string(password_file: Path, value: str, name: str) -> str:
    proc = run(
        [str(VENV_BIN / "ansible-vault"), "encrypt_string", "--vault-password-file",
         str(password_file), "--name", name, "--", value]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def vaulted(stack, tmp_path):
    """An inventory of the test stack whose database password is vaulted, its password file
    (root, 0600) and the scheduler's paths; the cron entry is removed afterwards."""
    _, common = stack
    password_file = tmp_path / "vault-pass"
    password_file.write_text("the-vault-password\n")
    password_file.chmod(0o600)
    # The local inventory (its stack and deploy group_vars, e.g. the admin identity) with the
    # test stack's names; only the database password differs: vaulted instead of generated.
    local = Path(__file__).resolve().parents[2] / "inventories/local"
    inventory = tmp_path / "inventory"
    (inventory / "group_vars" / "app_servers").mkdir(parents=True)
    (inventory / "hosts.yml").write_text((local / "hosts.yml").read_text())
    plain = {}
    for name in ("stack.yml", "deploy.yml"):
        plain.update(yaml.safe_load((local / "group_vars/app_servers" / name).read_text()) or {})
    plain.update({k: v for k, v in common.items() if k != "stack_db_password"})
    (inventory / "group_vars/app_servers/stack.yml").write_text(yaml.safe_dump(plain))
    (inventory / "group_vars/app_servers/vault.yml").write_text(
        encrypt_string(password_file, PASSWORD, "stack_db_password")
    )
    schedule = {
        "backup_schedule_inventory": str(inventory / "hosts.yml"),
        "backup_schedule_data_dir": str(tmp_path / "runner"),
        "backup_schedule_log_dir": str(tmp_path / "logs"),
        "backup_schedule_wrapper": str(tmp_path / "scheduled-backup"),
        "backup_schedule_cron_file": "opsauto-backup-it-vault",
        "backup_schedule_vault_password_file": str(password_file),
        "backup_schedule_extra_vars": {"backup_id": "it-vault"},
    }
    yield password_file, schedule
    run_playbook(
        tmp_path / "unschedule",
        "schedule_backups.yml",
        {**schedule, "backup_schedule_state": "absent"},
    )


def scheduled_run(schedule) -> subprocess.CompletedProcess:
    return run(CRON_ENV + [schedule["backup_schedule_wrapper"]], env={}, timeout=900)


def test_scheduled_run_reads_the_vaulted_inventory(stack, tmp_path, vaulted):
    base, _ = stack
    password_file, schedule = vaulted
    result, failures = run_playbook(tmp_path / "schedule", "schedule_backups.yml", schedule)
    assert result.rc == 0, failures
    wrapper = Path(schedule["backup_schedule_wrapper"]).read_text()
    assert "the-vault-password" not in wrapper

    proc = scheduled_run(schedule)
    logs = sorted(Path(schedule["backup_schedule_log_dir"]).glob("backup-*.log"))
    assert proc.returncode == 0, proc.stderr + logs[-1].read_text()[-3000:]
    meta = json.loads((base / "backups" / "it-vault" / "SET.json").read_text())
    assert meta["verified"] is True
    assert [d["label"] for d in meta["dumps"]] == ["appdb", "globals"]
    # Neither secret is in the run's log or in anything ansible-runner kept.
    for path in [*logs, *Path(schedule["backup_schedule_data_dir"]).rglob("*")]:
        if path.is_file():
            text = path.read_bytes()
            assert PASSWORD.encode() not in text, path
            assert b"the-vault-password" not in text, path


def test_a_bad_vault_password_file_is_named_by_the_schedule_and_the_run(stack, tmp_path, vaulted):
    base, _ = stack
    password_file, schedule = vaulted
    password_file.chmod(0o644)
    result, failures = run_playbook(tmp_path / "refused", "schedule_backups.yml", schedule)
    assert result.rc != 0
    assert "has mode 0644: group or others can access the vault password" in " ".join(failures)
    assert not Path(schedule["backup_schedule_wrapper"]).exists()

    password_file.chmod(0o600)
    result, failures = run_playbook(tmp_path / "schedule", "schedule_backups.yml", schedule)
    assert result.rc == 0, failures

    password_file.chmod(0o640)
    proc = scheduled_run(schedule)
    assert proc.returncode == 78
    assert f"vault password file {password_file} has mode 640" in proc.stderr

    password_file.write_text("not-the-vault-password\n")
    password_file.chmod(0o600)
    before = sorted(p.name for p in (base / "backups").iterdir())
    proc = scheduled_run(schedule)
    assert proc.returncode != 0
    assert f"the vault password in {password_file} does not decrypt" in proc.stderr
    assert sorted(p.name for p in (base / "backups").iterdir()) == before

    os.unlink(password_file)
    proc = scheduled_run(schedule)
    assert proc.returncode == 78
    assert f"vault password file {password_file} does not exist" in proc.stderr
