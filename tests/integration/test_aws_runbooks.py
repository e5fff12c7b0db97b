"""The AWS runbooks (rds_restore, dr_failover, server_recovery) against moto's server.

Each playbook runs through ansible-runner, as AWX runs it, on the control node (localhost,
connection local: every task of these plays is an AWS API call) with fake credentials and
endpoint_url on 127.0.0.1; the resulting AWS state is read back with boto3. moto answers
every wait at once and accepts calls real AWS refuses, so what these tests prove is the
runbooks' order, decisions, records and refusals, not AWS timing (docs/aws.md). There is
no application in moto's EC2 instances and no SSH to them: the deploy steps stay off
(dr_failover_deploy, server_recovery_deploy) and the smoke-test target is unset, which the
runs report as a warning.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import (
    AWS_TEST_CREDENTIALS,
    create_postgres_instance,
    create_vpc_with_subnets,
    moto_client,
    run_playbook,
    unique_name,
)

COPY_TASK = "Copy the snapshot to the DR region, re-encrypted with its key"
SOURCE = "us-east-1"
DR = "us-west-2"


@pytest.fixture(scope="module", autouse=True)
def fake_credentials():
    """ansible-runner passes the environment on: the modules find these fake keys there."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = AWS_TEST_CREDENTIALS["access_key"]
    os.environ["AWS_SECRET_ACCESS_KEY"] = AWS_TEST_CREDENTIALS["secret_key"]
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def play(tmp_path, playbook, extravars, name="run"):
    """Run a playbook; (status, failure messages, debug messages, set_stats data)."""
    result, failures = run_playbook(tmp_path / name, playbook, extravars, timeout=300)
    debug = [
        e["event_data"]["res"].get("msg")
        for e in result.events
        if e.get("event") == "runner_on_ok" and "msg" in e["event_data"].get("res", {})
    ]
    stats = next(
        (e["event_data"].get("artifact_data", {}) for e in result.events
         if e.get("event") == "playbook_on_stats"),
        {},
    )  # fmt: skip
    tasks = {}
    for e in result.events:
        if e.get("event") in ("runner_on_ok", "runner_on_skipped", "runner_on_failed"):
            tasks.setdefault(e["event_data"].get("task"), []).append(e["event"])
    return result.status, failures, debug, stats, tasks


def instance_tags(rds, name):
    found = rds.describe_db_instances(DBInstanceIdentifier=name)["DBInstances"][0]
    return {t["Key"]: t["Value"] for t in found.get("TagList", [])}


@pytest.fixture
def world(moto_endpoint):
    """An encrypted production instance with a snapshot in SOURCE; network, key, launch
    template and hosted zone in DR."""
    rds = moto_client(moto_endpoint, "rds")
    source_key = moto_client(moto_endpoint, "kms").create_key()["KeyMetadata"]["Arn"]
    kms = moto_client(moto_endpoint, "kms", DR)
    dr_key = kms.create_key()["KeyMetadata"]["Arn"]
    alias = "alias/" + unique_name("dr")
    kms.create_alias(AliasName=alias, TargetKeyId=dr_key)
    db = create_postgres_instance(
        rds, unique_name("db"), BackupRetentionPeriod=7, StorageEncrypted=True, KmsKeyId=source_key
    )
    rds.create_db_snapshot(DBInstanceIdentifier=db, DBSnapshotIdentifier=f"{db}-nightly")
    ec2 = moto_client(moto_endpoint, "ec2", DR)
    vpc, subnets = create_vpc_with_subnets(ec2, 20, DR)
    sg = ec2.create_security_group(GroupName=unique_name("sg"), Description="dr", VpcId=vpc)[
        "GroupId"
    ]
    dr_rds = moto_client(moto_endpoint, "rds", DR)
    subnet_group = unique_name("dbsubnets")
    dr_rds.create_db_subnet_group(
        DBSubnetGroupName=subnet_group, DBSubnetGroupDescription="dr", SubnetIds=subnets
    )
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    template = unique_name("app-template")
    ec2.create_launch_template(
        LaunchTemplateName=template,
        LaunchTemplateData={"ImageId": image, "InstanceType": "t3.micro"},
    )
    r53 = moto_client(moto_endpoint, "route53")
    zone = f"{unique_name('zone')}.test"  # one zone per test: route53 finds a zone by its name
    zone_id = r53.create_hosted_zone(Name=zone, CallerReference=unique_name("ref"))["HostedZone"][
        "Id"
    ]
    return {
        "db": db,
        "alias": alias,
        "dr_key": dr_key,
        "subnet_group": subnet_group,
        "subnets": subnets,
        "sg": sg,
        "template": template,
        "zone_id": zone_id,
        "zone": zone,
        "record": f"app.{zone}",
        "endpoint": moto_endpoint,
    }


def dr_vars(world, tmp_path, **extra):
    return {
        "dr_failover_source_region": SOURCE,
        "dr_failover_region": DR,
        "dr_failover_db_instance": world["db"],
        "dr_failover_kms_key_id": world["alias"],
        "dr_failover_db_instance_class": "db.t3.small",
        "dr_failover_db_subnet_group": world["subnet_group"],
        "dr_failover_db_security_group_ids": [world["sg"]],
        "dr_failover_launch_template": world["template"],
        "dr_failover_subnet_id": world["subnets"][0],
        "dr_failover_app_security_group_ids": [world["sg"]],
        "dr_failover_dns_zone": world["zone"],
        "dr_failover_dns_record": world["record"],
        "dr_failover_state_file": str(tmp_path / "dr-state.json"),
        "dr_failover_endpoint_url": world["endpoint"],
        "dr_failover_poll_interval": 1,
        **extra,
    }


def dr_copies(world):
    dr = moto_client(world["endpoint"], "rds", DR)
    return [
        s
        for s in dr.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]
        if s["DBInstanceIdentifier"] == world["db"]
    ]


def record_values(world):
    r53 = moto_client(world["endpoint"], "route53")
    sets = r53.list_resource_record_sets(HostedZoneId=world["zone_id"])["ResourceRecordSets"]
    return [
        [r["Value"] for r in s["ResourceRecords"]]
        for s in sets
        if s["Name"].rstrip(".") == world["record"] and s["Type"] == "A"
    ]


def app_instances(world):
    ec2 = moto_client(world["endpoint"], "ec2", DR)
    found = ec2.describe_instances(
        Filters=[
            {"Name": "tag:opsauto:dr-failover-of", "Values": [world["db"]]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    return [i for r in found for i in r["Instances"]]


def test_dr_dry_run_reports_every_step_and_changes_nothing(world, tmp_path):
    status, failures, debug, stats, _ = play(
        tmp_path, "dr_failover.yml", dr_vars(world, tmp_path, dr_failover_dry_run=True)
    )
    assert status == "successful", "\n".join(failures)
    steps = stats["dr_failover_report"]["steps"]
    text = "\n".join(steps)
    assert text.startswith("preflight: preflight in us-west-2"), text
    assert f"would copy snapshot arn:aws:rds:{SOURCE}" in text
    assert f"would restore instance {world['db']}-dr from snapshot {world['db']}-dr-" in text
    assert f"would launch {world['db']}-dr-app from launch template {world['template']}" in text
    assert "smoke_test: would skipped" not in text
    assert "dr_failover_smoke_url is empty" in text
    assert f"would UPSERT A {world['record']}" in text
    assert stats["dr_failover_report"]["rpo_seconds"] is not None
    # Nothing changed: no copy, no instance, no host, no record, no step record.
    assert dr_copies(world) == []
    dr = moto_client(world["endpoint"], "rds", DR)
    assert f"{world['db']}-dr" not in {
        i["DBInstanceIdentifier"] for i in dr.describe_db_instances()["DBInstances"]
    }
    assert app_instances(world) == []
    assert record_values(world) == []
    assert not (tmp_path / "dr-state.json").exists()


def state_of(tmp_path):
    return json.loads((tmp_path / "dr-state.json").read_text())


def test_dr_failover_end_to_end_then_a_rerun_changes_nothing(world, tmp_path):
    status, failures, debug, stats, _ = play(tmp_path, "dr_failover.yml", dr_vars(world, tmp_path))
    assert status == "successful", "\n".join(failures)
    report = stats["dr_failover_report"]
    # The copy: in the DR region, encrypted with the DR key, tagged with its source.
    [copy] = dr_copies(world)
    assert copy["KmsKeyId"] == world["dr_key"]
    assert copy["Encrypted"] is True
    # The restored instance: its class and the copy it came from.
    dr = moto_client(world["endpoint"], "rds", DR)
    restored = dr.describe_db_instances(DBInstanceIdentifier=f"{world['db']}-dr")["DBInstances"][0]
    assert restored["DBInstanceClass"] == "db.t3.small"
    assert restored["DBSubnetGroup"]["DBSubnetGroupName"] == world["subnet_group"]
    tags = instance_tags(dr, f"{world['db']}-dr")
    assert tags["opsauto:restored-from"] == f"snapshot:{copy['DBSnapshotIdentifier']}"
    # The application host and the record pointing at it.
    [host] = app_instances(world)
    assert host["State"]["Name"] == "running"
    assert record_values(world) == [[host["PublicIpAddress"]]]
    # The step record: every phase finished, with its wall time; the RPO measured.
    state = state_of(tmp_path)
    phases = state["phases"]
    assert {p for p in phases if phases[p]["status"] == "done"} == {
        "preflight", "snapshot", "copy", "restore", "app_host", "dns"
    }  # fmt: skip
    assert phases["deploy"]["status"] == "skipped"
    assert phases["smoke_test"]["status"] == "skipped"
    assert phases["copy"]["data"]["snapshot_identifier"] == copy["DBSnapshotIdentifier"]
    assert phases["app_host"]["data"]["instance_id"] == host["InstanceId"]
    assert phases["dns"]["data"]["previous"] == []
    assert all(phases[p]["seconds"] >= 0 for p in phases)
    assert 0 <= report["rpo_seconds"] < 600
    assert report["rto_seconds"] == pytest.approx(
        sum(phases[p]["seconds"] for p in phases), abs=0.05
    )
    assert any("WARN: dr_failover_smoke_url is empty" in str(m) for m in debug)

    again, failures, _, stats, tasks = play(
        tmp_path, "dr_failover.yml", dr_vars(world, tmp_path), name="rerun"
    )
    assert again == "successful", "\n".join(failures)
    assert all(s.endswith("done earlier, skipped") for s in stats["dr_failover_report"]["steps"]), (
        stats["dr_failover_report"]["steps"]
    )
    assert len(dr_copies(world)) == 1
    assert len(app_instances(world)) == 1
    assert state_of(tmp_path)["phases"] == phases


def test_dr_missing_kms_key_stops_in_preflight_before_any_copy(world, tmp_path):
    variables = dr_vars(world, tmp_path, dr_failover_kms_key_id="alias/no-such-key")
    status, failures, _, _, _ = play(tmp_path, "dr_failover.yml", variables)
    assert status == "failed"
    message = failures[-1]
    assert "stopped in phase preflight" in message
    assert f"KMS key alias/no-such-key not found in {DR}" in message
    assert "Done: nothing" in message
    assert dr_copies(world) == []
    phases = state_of(tmp_path)["phases"]
    assert phases == {"preflight": phases["preflight"]}
    assert phases["preflight"]["status"] == "failed"
    assert "alias/no-such-key" in phases["preflight"]["error"]


def test_dr_interrupted_after_the_copy_resumes_without_copying_again(world, tmp_path):
    # A DB instance another tool made already holds the target name: the restore fails
    # after the copy, as an interruption there would.
    dr = moto_client(world["endpoint"], "rds", DR)
    create_postgres_instance(dr, f"{world['db']}-dr", DBSubnetGroupName=world["subnet_group"])
    status, failures, _, _, tasks = play(tmp_path, "dr_failover.yml", dr_vars(world, tmp_path))
    assert status == "failed"
    assert tasks[COPY_TASK] == ["runner_on_ok"]
    message = failures[-1]
    assert "stopped in phase restore" in message
    assert "restore target name taken" in message
    assert "Done: preflight, snapshot, copy" in message
    assert "Resume: fix the cause and run the same command again" in message
    [copy] = dr_copies(world)
    assert f"snapshot_identifier={copy['DBSnapshotIdentifier']}" in message  # how to undo it
    first = state_of(tmp_path)["phases"]
    assert first["copy"]["status"] == "done"
    assert first["restore"]["status"] == "failed"

    dr.delete_db_instance(DBInstanceIdentifier=f"{world['db']}-dr", SkipFinalSnapshot=True)
    status, failures, _, stats, tasks = play(
        tmp_path, "dr_failover.yml", dr_vars(world, tmp_path), name="resume"
    )
    assert status == "successful", "\n".join(failures)
    steps = stats["dr_failover_report"]["steps"]
    assert steps[:3] == [f"{p}: done earlier, skipped" for p in ("preflight", "snapshot", "copy")]
    assert COPY_TASK not in tasks  # the copy phase was not even entered
    assert dr_copies(world) == [copy]
    resumed = state_of(tmp_path)["phases"]
    assert resumed["copy"] == first["copy"]  # not run again: same record, same times
    assert resumed["restore"]["status"] == "done"
    assert resumed["restore"]["attempts"] == 2
    assert instance_tags(dr, f"{world['db']}-dr")["opsauto:restored-from"] == (
        f"snapshot:{copy['DBSnapshotIdentifier']}"
    )


def restore_vars(world, **extra):
    return {
        "rds_restore_region": SOURCE,
        "rds_restore_endpoint_url": world["endpoint"],
        "rds_restore_poll_interval": 1,
        **extra,
    }


def test_rds_restore_from_snapshot_tags_the_old_instance_and_refuses_bad_requests(world, tmp_path):
    rds = moto_client(world["endpoint"], "rds")
    db, target = world["db"], f"{world['db']}-restored"
    variables = restore_vars(
        world,
        rds_restore_snapshot=f"{db}-nightly",
        rds_restore_target=target,
        rds_restore_instance_class="db.t3.medium",
    )
    status, failures, _, stats, _ = play(tmp_path, "rds_restore.yml", variables)
    assert status == "successful", "\n".join(failures)
    got = rds.describe_db_instances(DBInstanceIdentifier=target)["DBInstances"][0]
    assert got["DBInstanceClass"] == "db.t3.medium"
    assert got["DBInstanceStatus"] == "available"
    assert stats["rds_restore_report"]["endpoint"]["address"] == got["Endpoint"]["Address"]
    old = rds.describe_db_instances(DBInstanceIdentifier=db)["DBInstances"][0]
    assert old["DBInstanceStatus"] == "available"  # left running
    assert instance_tags(rds, db)["opsauto:restored-to"] == target

    # The cut-over changes production: without its confirmation it is refused before the
    # Docker host is touched.
    status, failures, _, _, _ = play(
        tmp_path, "rds_restore.yml", {**variables, "rds_restore_cutover": True}, name="cutover"
    )
    assert status == "failed"
    assert f"Confirm with -e rds_restore_cutover_confirm={target}" in failures[-1]

    # A point in time outside the restorable window: refused before AWS is called (moto
    # would restore it), both ends of the window named.
    pitr = f"{db}-pitr"
    status, failures, _, _, _ = play(
        tmp_path,
        "rds_restore.yml",
        restore_vars(
            world,
            rds_restore_source_instance=db,
            rds_restore_time="2001-01-01T00:00:00Z",
            rds_restore_target=pitr,
        ),
        name="pitr",
    )
    assert status == "failed"
    assert "outside the restorable window" in failures[-1]
    assert "earliest 20" in failures[-1]
    assert "latest 20" in failures[-1]
    assert pitr not in {
        i["DBInstanceIdentifier"] for i in rds.describe_db_instances()["DBInstances"]
    }


def test_server_recovery_replaces_the_host_and_moves_the_record_and_the_elastic_ip(world, tmp_path):
    ec2 = moto_client(world["endpoint"], "ec2", DR)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    old = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro")[
        "Instances"
    ][0]  # fmt: skip
    name = unique_name("app")
    variables = {
        "server_recovery_region": DR,
        "server_recovery_endpoint_url": world["endpoint"],
        "server_recovery_old_instance_id": old["InstanceId"],
        "server_recovery_launch_template": world["template"],
        "server_recovery_subnet_id": world["subnets"][0],
        "server_recovery_name": name,
        "server_recovery_switch": "route53",
        "server_recovery_dns_zone": world["zone"],
        "server_recovery_dns_record": world["record"],
        "server_recovery_poll_interval": 1,
    }
    status, failures, debug, stats, _ = play(tmp_path, "server_recovery.yml", variables)
    assert status == "successful", "\n".join(failures)
    report = stats["server_recovery_report"]
    new = report["new"]
    assert new["instance_id"] != old["InstanceId"]
    found = ec2.describe_instances(InstanceIds=[new["instance_id"]])["Reservations"][0]
    [instance] = found["Instances"]
    assert instance["State"]["Name"] == "running"
    assert instance["InstanceType"] == "t3.micro"  # from the launch template
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["opsauto:replaces"] == old["InstanceId"]
    assert report["old"]["public_ip"] == old["PublicIpAddress"]
    assert record_values(world) == [[instance["PublicIpAddress"]]]
    assert any("WARN: server_recovery_health_url is empty" in str(m) for m in debug)
    old_now = ec2.describe_instances(InstanceIds=[old["InstanceId"]])["Reservations"][0]
    assert old_now["Instances"][0]["State"]["Name"] == "running"  # never stopped

    # Elastic IP: moved to the replacement; a rerun finds the same replacement.
    eip = ec2.allocate_address(Domain="vpc")
    ec2.associate_address(AllocationId=eip["AllocationId"], InstanceId=old["InstanceId"])
    status, failures, _, stats, _ = play(
        tmp_path,
        "server_recovery.yml",
        {**variables, "server_recovery_switch": "eip", "server_recovery_eip": eip["PublicIp"]},
        name="eip",
    )
    assert status == "successful", "\n".join(failures)
    assert stats["server_recovery_report"]["new"]["instance_id"] == new["instance_id"]
    address = ec2.describe_addresses(PublicIps=[eip["PublicIp"]])["Addresses"][0]
    assert address["InstanceId"] == new["instance_id"]
    assert stats["server_recovery_report"]["new"]["public_ip"] == eip["PublicIp"]
