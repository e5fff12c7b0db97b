"""playbooks/backup.yml with backup_target=rds against a local RDS endpoint (moto server).

The playbook runs through ansible-runner as AWX does, with fake credentials in the
environment (the boto3 chain) and stack_rds_endpoint_url on 127.0.0.1. The rds path runs
on the control node and never touches Docker: these tests need no engine. They assert the
AWS state read back with boto3 (snapshot, tags, retention, the copy in the DR region and
its KMS key, pruning) and the set record and metrics written in the backup directory.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import (
    AWS_TEST_CREDENTIALS,
    create_postgres_instance,
    moto_client,
    run_playbook,
    unique_name,
)

SOURCE = "us-east-1"
DR = "us-west-2"
PROJECT = "opsauto-it-rds"
FAILURE_METRIC = "opsauto_backup_last_failure_timestamp_seconds"


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_TEST_CREDENTIALS["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_TEST_CREDENTIALS["secret_key"])
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def tags_of(rds, arn) -> dict:
    return {t["Key"]: t["Value"] for t in rds.list_tags_for_resource(ResourceName=arn)["TagList"]}


def manual_snapshots(rds, instance) -> set[str]:
    found = rds.describe_db_snapshots(DBInstanceIdentifier=instance, SnapshotType="manual")
    return {s["DBSnapshotIdentifier"] for s in found["DBSnapshots"]}


def backup(tmp_path, run_name, moto_endpoint, **extra):
    extravars = {
        "backup_target": "rds",
        "stack_project_name": PROJECT,
        "stack_db_password": "integration-password-rds",
        "stack_rds_region": SOURCE,
        "stack_rds_endpoint_url": moto_endpoint,
        "stack_backup_dir": str(tmp_path / "backups"),
        "backup_metrics_dir": str(tmp_path / "metrics"),
        **extra,
    }
    return run_playbook(tmp_path / run_name, "backup.yml", extravars)


def test_snapshot_copy_record_metrics_and_pruning(tmp_path, moto_endpoint):
    rds = moto_client(moto_endpoint, "rds", SOURCE)
    rds_dr = moto_client(moto_endpoint, "rds", DR)
    source_key = moto_client(moto_endpoint, "kms", SOURCE).create_key()["KeyMetadata"]["Arn"]
    dr_key = moto_client(moto_endpoint, "kms", DR).create_key()["KeyMetadata"]["Arn"]
    db = create_postgres_instance(
        rds, unique_name("db"), BackupRetentionPeriod=1, StorageEncrypted=True, KmsKeyId=source_key
    )
    options = {
        "stack_rds_instance_identifier": db,
        "backup_rds_retention_days": 5,
        "backup_rds_copy_region": DR,
        "backup_rds_copy_kms_key_id": dr_key,
        "backup_rds_keep_count": 2,
    }

    result, failures = backup(tmp_path, "run1", moto_endpoint, backup_id="Nightly_1", **options)
    assert result.rc == 0, failures

    name = f"{db}-nightly-1"
    snap = rds.describe_db_snapshots(DBSnapshotIdentifier=name)["DBSnapshots"][0]
    assert snap["DBInstanceIdentifier"] == db
    assert snap["SnapshotType"] == "manual"
    tags = tags_of(rds, snap["DBSnapshotArn"])
    assert tags["backup_id"] == "Nightly_1"
    assert tags["project"] == PROJECT
    assert tags["opsauto:managed-by"] == "opsauto"
    instance = rds.describe_db_instances(DBInstanceIdentifier=db)["DBInstances"][0]
    assert instance["BackupRetentionPeriod"] == 5

    copy = rds_dr.describe_db_snapshots(DBSnapshotIdentifier=name)["DBSnapshots"][0]
    assert copy["KmsKeyId"] == dr_key
    assert copy["Encrypted"] is True
    assert tags_of(rds_dr, copy["DBSnapshotArn"])["backup_id"] == "Nightly_1"

    record = json.loads((tmp_path / "backups" / "Nightly_1" / "SET.json").read_text())
    assert record["kind"] == "rds"
    assert record["backup_id"] == "Nightly_1"
    assert record["instance"] == db
    assert record["engine"] == "postgres"
    assert record["engine_version"] == snap["EngineVersion"]
    assert record["encrypted"] is True
    assert record["kms_key_id"] == snap["KmsKeyId"]
    assert record["snapshot_arn"] == snap["DBSnapshotArn"]
    assert record["region"] == SOURCE
    assert record["verified"] is True
    assert record["created"]
    assert record["copies"] == [
        {
            "region": DR,
            "snapshot_identifier": name,
            "snapshot_arn": copy["DBSnapshotArn"],
            "encrypted": True,
            "kms_key_id": dr_key,
        }
    ]
    metrics = (tmp_path / "metrics" / "opsauto_backup.prom").read_text()
    assert f'opsauto_backup_verified{{project="{PROJECT}"}} 1' in metrics
    assert f'opsauto_backup_sets{{project="{PROJECT}"}} 1' in metrics

    # A rerun of the same set changes nothing in AWS and keeps the record.
    result, failures = backup(tmp_path, "rerun", moto_endpoint, backup_id="Nightly_1", **options)
    assert result.rc == 0, failures
    assert manual_snapshots(rds, db) == {name}

    # Two more sets: keep_count=2 prunes the first one in both regions.
    for n in (2, 3):
        result, failures = backup(
            tmp_path, f"run{n}", moto_endpoint, backup_id=f"Nightly_{n}", **options
        )
        assert result.rc == 0, failures
    kept = {f"{db}-nightly-2", f"{db}-nightly-3"}
    assert manual_snapshots(rds, db) == kept
    assert manual_snapshots(rds_dr, db) == kept
    sets = sorted(p.name for p in (tmp_path / "backups").iterdir() if (p / "SET.json").exists())
    assert sets == ["Nightly_1", "Nightly_2", "Nightly_3"]  # records stay; AWS copies pruned
    assert (
        f'opsauto_backup_sets{{project="{PROJECT}"}} 3'
        in (tmp_path / "metrics" / "opsauto_backup.prom").read_text()
    )


def test_no_instance_is_refused_before_aws_is_called(tmp_path, moto_endpoint):
    result, failures = backup(tmp_path, "run", moto_endpoint, backup_id="x1")
    assert result.rc != 0
    assert "stack_rds_instance_identifier" in " ".join(failures)
    assert not (tmp_path / "backups").exists()
    assert_failure_metric(tmp_path)


def assert_failure_metric(tmp_path):
    """The failed run left the failure metric, stamped now, so the backup alert fires."""
    text = (tmp_path / "metrics" / "opsauto_backup_failure.prom").read_text()
    line = next(x for x in text.splitlines() if x.startswith(FAILURE_METRIC))
    assert line.startswith(f'{FAILURE_METRIC}{{project="{PROJECT}"}} ')
    assert abs(int(line.split()[-1]) - time.time()) < 300


def test_encrypted_copy_without_dr_key_is_refused(tmp_path, moto_endpoint):
    rds = moto_client(moto_endpoint, "rds", SOURCE)
    key = moto_client(moto_endpoint, "kms", SOURCE).create_key()["KeyMetadata"]["Arn"]
    db = create_postgres_instance(rds, unique_name("db"), StorageEncrypted=True, KmsKeyId=key)
    result, failures = backup(
        tmp_path, "run", moto_endpoint, backup_id="b1",
        stack_rds_instance_identifier=db, backup_rds_copy_region=DR,
    )  # fmt: skip
    assert result.rc != 0
    assert "kms_key_id" in " ".join(failures), failures
    assert manual_snapshots(moto_client(moto_endpoint, "rds", DR), db) == set()
    assert not (tmp_path / "backups" / "b1" / "SET.json").exists()
    assert_failure_metric(tmp_path)


def test_check_mode_creates_nothing(tmp_path, moto_endpoint):
    rds = moto_client(moto_endpoint, "rds", SOURCE)
    dr_key = moto_client(moto_endpoint, "kms", DR).create_key()["KeyMetadata"]["Arn"]
    db = create_postgres_instance(rds, unique_name("db"))
    extravars = {
        "backup_target": "rds",
        "backup_id": "c1",
        "stack_project_name": PROJECT,
        "stack_db_password": "integration-password-rds",
        "stack_rds_instance_identifier": db,
        "stack_rds_region": SOURCE,
        "stack_rds_endpoint_url": moto_endpoint,
        "stack_backup_dir": str(tmp_path / "backups"),
        "backup_metrics_dir": str(tmp_path / "metrics"),
        "backup_rds_copy_region": DR,
        "backup_rds_copy_kms_key_id": dr_key,
    }
    result, failures = run_playbook(tmp_path / "run", "backup.yml", extravars, cmdline="--check")
    assert result.rc == 0, failures
    assert manual_snapshots(rds, db) == set()
    assert manual_snapshots(moto_client(moto_endpoint, "rds", DR), db) == set()
    assert not (tmp_path / "backups").exists()
    assert not (tmp_path / "metrics").exists()
