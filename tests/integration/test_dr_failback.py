"""playbooks/dr_failback.yml against moto's server: after a DR failover, the final snapshot of
the DR instance and the failover phases back to the primary region (ansible-runner, as AWX
runs it; no Docker engine)."""

from __future__ import annotations

from tests.conftest import create_vpc_with_subnets, moto_client, unique_name
from tests.integration import test_aws_runbooks as runbooks
from tests.integration.test_aws_runbooks import (
    DR,
    SOURCE,
    dr_vars,
    instance_tags,
    play,
    record_values,
)

# The failover's world (instance, snapshot, DR network) and fake credentials, shared.
world = runbooks.world
fake_credentials = runbooks.fake_credentials


def primary_network(world):
    """The primary region's KMS key, network and launch template, as the failback needs them."""
    endpoint = world["endpoint"]
    kms = moto_client(endpoint, "kms", SOURCE)
    alias = "alias/" + unique_name("primary")
    kms.create_alias(AliasName=alias, TargetKeyId=kms.create_key()["KeyMetadata"]["Arn"])
    ec2 = moto_client(endpoint, "ec2", SOURCE)
    vpc, subnets = create_vpc_with_subnets(ec2, 30, SOURCE)
    sg = ec2.create_security_group(GroupName=unique_name("sg"), Description="app", VpcId=vpc)
    group = unique_name("dbsubnets")
    moto_client(endpoint, "rds", SOURCE).create_db_subnet_group(
        DBSubnetGroupName=group, DBSubnetGroupDescription="primary", SubnetIds=subnets
    )
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    template = unique_name("app-template")
    ec2.create_launch_template(
        LaunchTemplateName=template,
        LaunchTemplateData={"ImageId": image, "InstanceType": "t3.micro"},
    )
    return {
        "alias": alias,
        "subnets": subnets,
        "sg": sg["GroupId"],
        "subnet_group": group,
        "template": template,
    }


def test_failback_snapshots_the_dr_instance_and_returns_to_the_primary(world, tmp_path):
    status, failures, *_ = play(tmp_path, "dr_failover.yml", dr_vars(world, tmp_path), "failover")
    assert status == "successful", "\n".join(failures)
    dr_instance, new_primary = f"{world['db']}-dr", f"{world['db']}-2"
    final = f"{dr_instance}-failback-1"
    primary = primary_network(world)
    back = {
        **dr_vars(world, tmp_path),
        "dr_failover_source_region": DR,
        "dr_failover_region": SOURCE,
        "dr_failover_db_instance": dr_instance,
        "dr_failover_db_instance_target": new_primary,
        "dr_failover_kms_key_id": primary["alias"],
        "dr_failover_db_subnet_group": primary["subnet_group"],
        "dr_failover_db_security_group_ids": [primary["sg"]],
        "dr_failover_launch_template": primary["template"],
        "dr_failover_subnet_id": primary["subnets"][0],
        "dr_failover_app_security_group_ids": [primary["sg"]],
        "dr_failover_state_file": str(tmp_path / "failback-state.json"),
        "dr_failover_failback_snapshot": final,
    }
    dr_rds = moto_client(world["endpoint"], "rds", DR)
    rds = moto_client(world["endpoint"], "rds", SOURCE)

    # Without the confirmation: refused, nothing taken.
    status, failures, *_ = play(tmp_path, "dr_failback.yml", back, "unconfirmed")
    assert status == "failed"
    assert f"confirm with -e dr_failover_failback_confirm={dr_instance}" in failures[-1]
    assert "Stop the writes on the DR side first" in failures[-1]
    snaps = dr_rds.describe_db_snapshots(DBInstanceIdentifier=dr_instance)["DBSnapshots"]
    assert final not in {s["DBSnapshotIdentifier"] for s in snaps}

    status, failures, _, stats, _ = play(
        tmp_path, "dr_failback.yml", {**back, "dr_failover_failback_confirm": dr_instance}
    )
    assert status == "successful", "\n".join(failures)
    snap = dr_rds.describe_db_snapshots(DBSnapshotIdentifier=final)["DBSnapshots"][0]
    assert snap["Status"] == "available"
    # The new primary was restored from the copy of that final snapshot, in the primary region.
    restored = rds.describe_db_instances(DBInstanceIdentifier=new_primary)["DBInstances"][0]
    copy = instance_tags(rds, new_primary)["opsauto:restored-from"]
    assert copy.startswith("snapshot:")
    copied = rds.describe_db_snapshots(DBSnapshotIdentifier=copy.split(":", 1)[1])["DBSnapshots"]
    assert copied[0]["DBInstanceIdentifier"] == dr_instance
    assert restored["DBSubnetGroup"]["DBSubnetGroupName"] == primary["subnet_group"]
    # The record points at the primary region's new application host; the DR side is left.
    host = stats["dr_failover_report"]
    assert record_values(world) != [], host
    ec2 = moto_client(world["endpoint"], "ec2", SOURCE)
    addresses = {
        i.get("PublicIpAddress")
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
    }
    assert record_values(world)[0][0] in addresses
    assert dr_rds.describe_db_instances(DBInstanceIdentifier=dr_instance)["DBInstances"]
