"""The rds_snapshot module through the ansible CLI against a local RDS endpoint (moto server).

Each test makes its own instances (unique names) in the session's moto server, runs the
module as an operator would (`ansible localhost -m rds_snapshot`, fake credentials,
endpoint_url on 127.0.0.1) and reads the resulting AWS state back with boto3. moto accepts
calls real AWS refuses (an encrypted cross-region copy without a key, a restore time
outside the window, a retention of 50), so those tests prove the module refuses them
itself: the server would have said yes. Waits, timeouts and progress are unit-tested in
tests/unit/test_rds_snapshot.py (moto answers every wait at once). No Docker is used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.ansible_cli import run_module
from tests.conftest import (
    AWS_TEST_CREDENTIALS,
    ROOT,
    create_postgres_instance,
    create_vpc_with_subnets,
    moto_client,
    unique_name,
)

SOURCE = "us-east-1"
DR = "us-west-2"
OWNER = {"Key": "opsauto:managed-by", "Value": "opsauto"}


@pytest.fixture
def rds(moto_endpoint):
    return moto_client(moto_endpoint, "rds")


@pytest.fixture
def module(moto_endpoint):
    """Run rds_snapshot with the endpoint and fake credentials; extra flags like --check."""

    def call(args, *flags):
        full = {"region": SOURCE, "endpoint_url": moto_endpoint, "poll_interval": 1}
        full.update(AWS_TEST_CREDENTIALS)
        full.update(args)
        result = run_module("rds_snapshot", full, *flags)
        result["status"] = result["status"].rstrip("!")  # the one-line output says FAILED!
        return result

    return call


def make_instance(rds, name=None, **extra):
    return create_postgres_instance(
        rds, name or unique_name("db"), BackupRetentionPeriod=7, **extra
    )


def snapshot_of(rds, name):
    found = rds.describe_db_snapshots(DBSnapshotIdentifier=name)["DBSnapshots"][0]
    tags = rds.list_tags_for_resource(ResourceName=found["DBSnapshotArn"])["TagList"]
    return found, {tag["Key"]: tag["Value"] for tag in tags}


def snapshot_names(rds, instance):
    return {
        s["DBSnapshotIdentifier"]
        for s in rds.describe_db_snapshots(DBInstanceIdentifier=instance)["DBSnapshots"]
    }


def test_present_check_create_rerun_and_retention(rds, module):
    db = make_instance(rds)
    args = {
        "db_instance_identifier": db,
        "snapshot_identifier": f"{db}-b1",
        "tags": {"backup_id": "B1"},
        "backup_retention_days": 14,
    }
    checked = module(args, "--check")
    assert checked["status"] == "CHANGED", checked
    assert "would create snapshot" in checked["msg"]
    assert f"{db}-b1" not in snapshot_names(rds, db)
    assert rds.describe_db_instances(DBInstanceIdentifier=db)["DBInstances"][0][
        "BackupRetentionPeriod"
    ] == 7  # fmt: skip

    made = module(args)
    assert made["status"] == "CHANGED", made
    snap, tags = snapshot_of(rds, f"{db}-b1")
    assert snap["DBInstanceIdentifier"] == db
    assert snap["Status"] == "available"
    assert tags == {"backup_id": "B1", "opsauto:managed-by": "opsauto"}
    assert made["snapshot"]["managed"] is True
    assert made["snapshot"]["region"] == SOURCE
    instance = rds.describe_db_instances(DBInstanceIdentifier=db)["DBInstances"][0]
    assert instance["BackupRetentionPeriod"] == 14
    assert not (instance.get("PendingModifiedValues") or {}).get("BackupRetentionPeriod")

    again = module(args)
    assert again["status"] == "SUCCESS", again
    assert again["changed"] is False


def test_present_name_of_another_instance_and_missing_instance(rds, module):
    first, second = make_instance(rds), make_instance(rds)
    assert module({"db_instance_identifier": first, "snapshot_identifier": f"{first}-x"})[
        "status"
    ] == "CHANGED"  # fmt: skip
    taken = module({"db_instance_identifier": second, "snapshot_identifier": f"{first}-x"})
    assert taken["status"] == "FAILED"
    assert f"for another instance ({first})" in taken["msg"]
    missing = module({"db_instance_identifier": "no-such-db", "snapshot_identifier": "nope-1"})
    assert missing["status"] == "FAILED"
    assert "DB instance no-such-db not found in us-east-1" in missing["msg"]


def test_encrypted_copy_to_dr_region_with_its_kms_key(rds, module, moto_endpoint):
    source_key = moto_client(moto_endpoint, "kms").create_key()["KeyMetadata"]["Arn"]
    dr_key = moto_client(moto_endpoint, "kms", DR).create_key()["KeyMetadata"]["Arn"]
    db = make_instance(rds, StorageEncrypted=True, KmsKeyId=source_key)
    made = module(
        {"db_instance_identifier": db, "snapshot_identifier": f"{db}-s", "tags": {"app": "api"}}
    )
    assert made["status"] == "CHANGED", made
    assert made["snapshot"]["encrypted"] is True
    dr = moto_client(moto_endpoint, "rds", DR)
    copy = {
        "state": "copied",
        "region": DR,
        "source_region": SOURCE,
        "source_snapshot_identifier": f"{db}-s",
        "snapshot_identifier": f"{db}-dr",
        "tags": {"site": "dr"},
    }

    refused = module(copy)  # moto itself would copy it without a key
    assert refused["status"] == "FAILED"
    assert "is encrypted" in refused["msg"]
    assert f"exists in {DR}" in refused["msg"]
    assert f"{db}-dr" not in {
        s["DBSnapshotIdentifier"] for s in dr.describe_db_snapshots()["DBSnapshots"]
    }

    wrong_key = module({**copy, "kms_key_id": source_key})
    assert wrong_key["status"] == "FAILED"
    assert f"belongs to region {SOURCE}" in wrong_key["msg"]

    checked = module({**copy, "kms_key_id": dr_key}, "--check")
    assert checked["status"] == "CHANGED"
    assert checked["msg"].startswith("would copy snapshot")

    copied = module({**copy, "kms_key_id": dr_key})
    assert copied["status"] == "CHANGED", copied
    snap, tags = snapshot_of(dr, f"{db}-dr")
    assert snap["Status"] == "available"
    assert snap["KmsKeyId"] == dr_key
    assert snap["Encrypted"] is True
    source_arn = rds.describe_db_snapshots(DBSnapshotIdentifier=f"{db}-s")["DBSnapshots"][0][
        "DBSnapshotArn"
    ]  # fmt: skip
    assert tags == {
        "app": "api",  # copy_tags: the source's own tag
        "site": "dr",
        "opsauto:managed-by": "opsauto",
        "opsauto:source-snapshot": source_arn,
    }
    assert copied["snapshot"]["region"] == DR
    assert copied["source"]["region"] == SOURCE

    again = module({**copy, "kms_key_id": dr_key})
    assert again["status"] == "SUCCESS", again


def test_copy_from_the_wrong_region_names_it(module):
    wrong = module(
        {
            "state": "copied",
            "region": DR,
            "source_region": "eu-west-1",
            "source_snapshot_identifier": "not-there",
            "snapshot_identifier": "not-there-dr",
        }
    )
    assert wrong["status"] == "FAILED"
    assert "source snapshot not-there not found in eu-west-1" in wrong["msg"]


def test_prune_leaves_newest_foreign_and_automated(rds, module):
    db = make_instance(rds)
    for n in range(1, 5):
        assert module({"db_instance_identifier": db, "snapshot_identifier": f"{db}-m{n}"})[
            "status"
        ] == "CHANGED"  # fmt: skip
    rds.create_db_snapshot(
        DBInstanceIdentifier=db,
        DBSnapshotIdentifier=f"{db}-terraform",
        Tags=[{"Key": "owner", "Value": "terraform"}],
    )
    automated = {
        s["DBSnapshotIdentifier"]
        for s in rds.describe_db_snapshots(DBInstanceIdentifier=db, SnapshotType="automated")[
            "DBSnapshots"
        ]
    }  # fmt: skip
    assert automated, "moto made no automated snapshot: the test would prove nothing about them"
    before = snapshot_names(rds, db)

    checked = module({"state": "pruned", "db_instance_identifier": db, "keep_count": 2}, "--check")
    assert sorted(checked["pruned"]) == [f"{db}-m1", f"{db}-m2"]
    assert snapshot_names(rds, db) == before

    pruned = module({"state": "pruned", "db_instance_identifier": db, "keep_count": 1})
    assert pruned["status"] == "CHANGED", pruned
    assert sorted(pruned["pruned"]) == [f"{db}-m1", f"{db}-m2", f"{db}-m3"]
    assert snapshot_names(rds, db) == {f"{db}-m4", f"{db}-terraform"} | automated

    # max_age_days=0 makes every managed snapshot "too old": the newest still stays.
    again = module({"state": "pruned", "db_instance_identifier": db, "max_age_days": 0})
    assert again["status"] == "SUCCESS", again
    assert f"{db}-m4" in snapshot_names(rds, db)


def test_absent_refuses_newest_and_foreign_deletes_old(rds, module):
    db = make_instance(rds)
    for n in (1, 2):
        module({"db_instance_identifier": db, "snapshot_identifier": f"{db}-s{n}"})
    rds.create_db_snapshot(DBInstanceIdentifier=db, DBSnapshotIdentifier=f"{db}-hand")
    foreign = module({"state": "absent", "snapshot_identifier": f"{db}-hand"})
    assert foreign["status"] == "FAILED"
    assert "another tool" in foreign["msg"]
    assert f"{db}-hand" in snapshot_names(rds, db)
    rds.delete_db_snapshot(DBSnapshotIdentifier=f"{db}-hand")
    newest = module({"state": "absent", "snapshot_identifier": f"{db}-s2"})
    assert newest["status"] == "FAILED"
    assert f"{db}-s2" in snapshot_names(rds, db)
    assert "newest available snapshot" in newest["msg"]
    deleted = module({"state": "absent", "snapshot_identifier": f"{db}-s1"})
    assert deleted["status"] == "CHANGED", deleted
    assert f"{db}-s1" not in snapshot_names(rds, db)
    gone = module({"state": "absent", "snapshot_identifier": f"{db}-s1"})
    assert gone["status"] == "SUCCESS"


def test_info_lists_age_size_status_encryption_region(rds, module):
    db = make_instance(rds)
    module({"db_instance_identifier": db, "snapshot_identifier": f"{db}-i1"})
    info = module({"state": "info", "db_instance_identifier": db, "snapshot_type": "manual"})
    assert info["status"] == "SUCCESS"
    [item] = info["snapshots"]
    assert item["snapshot_identifier"] == f"{db}-i1"
    assert item["region"] == SOURCE
    assert item["status"] == "available"
    assert item["allocated_storage_gb"] == 20
    assert item["encrypted"] is False
    assert 0 <= item["age_seconds"] < 600
    assert item["managed"] is True


@pytest.fixture
def network(moto_endpoint):
    """A VPC with two subnets, a DB subnet group, a security group and a parameter group."""
    ec2 = moto_client(moto_endpoint, "ec2")
    vpc, subnets = create_vpc_with_subnets(ec2, 9, SOURCE)
    group = unique_name("sg")
    sg = ec2.create_security_group(GroupName=group, Description="db", VpcId=vpc)["GroupId"]
    rds = moto_client(moto_endpoint, "rds")
    subnet_group = unique_name("subnets")
    rds.create_db_subnet_group(
        DBSubnetGroupName=subnet_group, DBSubnetGroupDescription="db", SubnetIds=subnets
    )
    params = unique_name("params")
    rds.create_db_parameter_group(
        DBParameterGroupName=params, DBParameterGroupFamily="postgres16", Description="db"
    )
    return {"subnet_group": subnet_group, "sg": sg, "params": params}


def test_restore_from_snapshot_into_a_new_instance(rds, module, network):
    db = make_instance(rds)
    module({"db_instance_identifier": db, "snapshot_identifier": f"{db}-r"})
    target = f"{db}-restored"
    args = {
        "state": "restored",
        "snapshot_identifier": f"{db}-r",
        "target_db_instance_identifier": target,
        "db_instance_class": "db.t3.small",
        "db_subnet_group_name": network["subnet_group"],
        "vpc_security_group_ids": [network["sg"]],
        "db_parameter_group_name": network["params"],
        "allocated_storage": 30,
        "backup_retention_days": 3,
    }
    smaller = module({**args, "allocated_storage": 10})
    assert smaller["status"] == "FAILED"
    assert "smaller than the 20 GiB" in smaller["msg"]

    restored = module(args)
    assert restored["status"] == "CHANGED", restored
    got = rds.describe_db_instances(DBInstanceIdentifier=target)["DBInstances"][0]
    assert got["DBInstanceClass"] == "db.t3.small"
    assert got["DBInstanceStatus"] == "available"
    assert got["AllocatedStorage"] == 30
    assert got["DBSubnetGroup"]["DBSubnetGroupName"] == network["subnet_group"]
    assert [g["VpcSecurityGroupId"] for g in got["VpcSecurityGroups"]] == [network["sg"]]
    assert [g["DBParameterGroupName"] for g in got["DBParameterGroups"]] == [network["params"]]
    assert got["BackupRetentionPeriod"] == 3
    assert restored["instance"]["endpoint"]["address"] == got["Endpoint"]["Address"]
    assert restored["instance"]["endpoint"]["port"] == got["Endpoint"]["Port"]

    again = module(args)
    assert again["status"] == "SUCCESS", again

    other = module({**args, "snapshot_identifier": "some-other-snapshot"})
    assert other["status"] == "FAILED"
    assert "restore target name taken" in other["msg"]


def test_restore_from_a_missing_snapshot(module):
    missing = module(
        {
            "state": "restored",
            "snapshot_identifier": "never-taken",
            "target_db_instance_identifier": unique_name("t"),
        }
    )
    assert missing["status"] == "FAILED"
    assert "snapshot never-taken not found in us-east-1" in missing["msg"]


def test_point_in_time_window_checked_before_calling_aws(rds, module):
    db = make_instance(rds)
    target = f"{db}-pitr"
    outside = module(
        {
            "state": "restored",
            "db_instance_identifier": db,
            "restore_time": "2001-01-01T00:00:00Z",  # moto would restore this
            "target_db_instance_identifier": target,
        }
    )
    assert outside["status"] == "FAILED"
    assert "outside the restorable window" in outside["msg"]
    assert "earliest 20" in outside["msg"]
    assert "latest 20" in outside["msg"]
    assert target not in {
        i["DBInstanceIdentifier"] for i in rds.describe_db_instances()["DBInstances"]
    }

    latest = module(
        {
            "state": "restored",
            "db_instance_identifier": db,
            "use_latest_restorable_time": True,
            "target_db_instance_identifier": target,
            "db_instance_class": "db.t3.medium",
        }
    )
    assert latest["status"] == "CHANGED", latest
    got = rds.describe_db_instances(DBInstanceIdentifier=target)["DBInstances"][0]
    assert got["DBInstanceClass"] == "db.t3.medium"
    tags = {t["Key"]: t["Value"] for t in got.get("TagList", [])}
    assert tags["opsauto:restored-from"] == f"instance:{db}@latest"


def test_retention_range_enforced_where_moto_would_accept(rds, module):
    db = make_instance(rds)
    fifty = module(
        {"state": "configured", "db_instance_identifier": db, "backup_retention_days": 50}
    )
    assert fifty["status"] == "FAILED"
    assert "outside 1..35" in fifty["msg"]
    zero = module({"state": "configured", "db_instance_identifier": db, "backup_retention_days": 0})
    assert zero["status"] == "FAILED"
    assert "allow_disable_pitr" in zero["msg"]
    assert rds.describe_db_instances(DBInstanceIdentifier=db)["DBInstances"][0][
        "BackupRetentionPeriod"
    ] == 7  # fmt: skip
    ok = module({"state": "configured", "db_instance_identifier": db, "backup_retention_days": 21})
    assert ok["status"] == "CHANGED", ok
    assert ok["instance"]["backup_retention_days"] == 21
    assert rds.describe_db_instances(DBInstanceIdentifier=db)["DBInstances"][0][
        "BackupRetentionPeriod"
    ] == 21  # fmt: skip


def test_no_credentials_is_a_clear_error(moto_endpoint, tmp_path):
    args = {"state": "info", "region": SOURCE, "endpoint_url": moto_endpoint}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    ansible = str(ROOT / ".venv" / "bin" / "ansible")
    if not os.path.exists(ansible):
        ansible = os.path.join(os.path.dirname(sys.executable), "ansible")
    proc = subprocess.run(
        [ansible, "localhost", "-m", "rds_snapshot", "-a", json.dumps(args), "-o"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "FAILED" in proc.stdout, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.split("=>", 1)[1])
    assert "no AWS credentials found" in result["msg"]
    assert "access_key" in result["msg"]
