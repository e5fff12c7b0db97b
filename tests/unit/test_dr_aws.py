"""Unit tests of the AWS runbook steps (module_utils/aws_preflight.py, aws_runbook.py).

moto accepts what real AWS refuses and answers every wait at once, so the refusals a DR
preflight must find (a disabled key, an instance type not offered, a full snapshot quota,
AccessDenied), the choice of the snapshot to restore and the status-check wait with its
timeout are driven here with botocore's Stubber and an injected clock.
"""

from __future__ import annotations

import datetime
import importlib
from pathlib import Path

import ansible.module_utils
import botocore.session
import pytest
from botocore.stub import Stubber

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))
preflight = importlib.import_module("ansible.module_utils.aws_preflight")
runbook = importlib.import_module("ansible.module_utils.aws_runbook")
api_mod = importlib.import_module("ansible.module_utils.rds_api")
waits = importlib.import_module("ansible.module_utils.rds_waits")
logic = importlib.import_module("ansible.module_utils.rds_snapshots")

UTC = datetime.UTC
NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
DR = "us-west-2"
OURS = {logic.OWNER_TAG: logic.OWNER_VALUE}


def client(service, region=DR):
    return botocore.session.get_session().create_client(
        service, region_name=region, aws_access_key_id="k", aws_secret_access_key="s"
    )


def stubbed(service):
    made = client(service)
    stub = Stubber(made)
    stub.activate()
    return made, stub


def snap(name, hours_ago, instance="app", status="available", **extra):
    return {
        "DBSnapshotIdentifier": name,
        "DBInstanceIdentifier": instance,
        "Status": status,
        "SnapshotCreateTime": NOW - datetime.timedelta(hours=hours_ago),
        "DBSnapshotArn": f"arn:aws:rds:us-east-1:1:snapshot:{name}",
        **extra,
    }


# ------------------------------------------------------------------ snapshot choice


def test_the_newest_available_source_snapshot_is_copied():
    source = [snap("old", 30), snap("new", 2), snap("creating", 1, status="creating")]
    decision, chosen, copy = runbook.choose_snapshot("app", source, [], {})
    assert (decision, chosen["DBSnapshotIdentifier"], copy) == ("copy", "new", None)
    assert runbook.copy_name("app", chosen) == "app-dr-20261128t100000z"


def test_a_copy_as_new_as_the_source_is_used_and_a_stale_one_is_not():
    source = [snap("new", 2)]
    current = snap("app-dr-1", 1, OriginalSnapshotCreateTime=NOW - datetime.timedelta(hours=2))
    stale = snap("app-dr-0", 20, OriginalSnapshotCreateTime=NOW - datetime.timedelta(hours=30))
    tags = {
        "app-dr-1": {**OURS, logic.SOURCE_TAG: "arn:new"},
        "app-dr-0": {**OURS, logic.SOURCE_TAG: "arn:old"},
    }
    assert runbook.choose_snapshot("app", source, [current, stale], tags)[0] == "use_copy"
    decision, chosen, copy = runbook.choose_snapshot("app", source, [stale], tags)
    assert (decision, chosen["DBSnapshotIdentifier"], copy) == ("copy", "new", None)


def test_copies_of_other_instances_or_tools_do_not_count():
    foreign = snap("hand-made", 1)
    other = snap("other-dr", 1, instance="billing")
    tags = {"hand-made": {}, "other-dr": {**OURS, logic.SOURCE_TAG: "arn:x"}}
    decision, _, copy = runbook.choose_snapshot("app", [snap("s", 5)], [foreign, other], tags)
    assert (decision, copy) == ("copy", None)


def test_source_region_down_uses_the_dr_copy_and_nothing_at_all_is_an_error():
    copy = snap("app-dr-1", 3)
    tags = {"app-dr-1": {**OURS, logic.SOURCE_TAG: "arn:s"}}
    assert runbook.choose_snapshot("app", [], [copy], tags, "endpoint unreachable")[0] == (
        "use_copy"
    )
    with pytest.raises(api_mod.RdsError, match="could not be read \\(endpoint unreachable\\)"):
        runbook.choose_snapshot("app", [], [], {}, "endpoint unreachable")


def test_pick_measures_the_rpo_from_when_the_data_was_taken():
    class Api:
        def __init__(self, region, snaps):
            self.region, self._snaps = region, snaps

        def snapshots(self, instance=None, snapshot_type=None):
            return self._snaps

        def tags(self, resource):
            return {}

    chosen = runbook.pick(Api("us-east-1", [snap("s", 5)]), Api(DR, []), "app", NOW)
    assert chosen["rpo_seconds"] == 5 * 3600
    assert chosen["data_taken_at"] == "2026-11-28T07:00:00Z"
    assert chosen["source"]["snapshot_identifier"] == "s"


# ------------------------------------------------------------------ preflight


def test_kms_key_missing_disabled_and_enabled():
    kms, stub = stubbed("kms")
    stub.add_client_error("describe_key", "NotFoundException", "Alias alias/dr is not found.")
    stub.add_response("describe_key", {"KeyMetadata": {"KeyId": "k1", "KeyState": "Disabled"}})
    stub.add_response(
        "describe_key",
        {
            "KeyMetadata": {
                "KeyId": "k1",
                "KeyState": "Enabled",
                "Arn": "arn:aws:kms:us-west-2:1:key/k1",
            }
        },
    )
    missing = preflight.kms_key(kms, "alias/dr", DR)
    assert missing["ok"] is False
    assert missing["detail"] == f"KMS key alias/dr not found in {DR}"
    assert "create a customer managed key in us-west-2" in missing["fix"]
    disabled = preflight.kms_key(kms, "alias/dr", DR)
    assert (disabled["ok"], disabled["detail"]) == (False, f"KMS key alias/dr in {DR} is Disabled")
    assert preflight.kms_key(kms, "alias/dr", DR)["ok"] is True


def test_instance_type_not_offered_in_the_zone_and_access_denied():
    ec2, stub = stubbed("ec2")
    stub.add_response("describe_instance_type_offerings", {"InstanceTypeOfferings": []})
    stub.add_client_error("describe_instance_type_offerings", "UnauthorizedOperation", "no")
    absent = preflight.instance_type_offered(ec2, "m7g.large", "us-west-2d", DR)
    assert absent["ok"] is False
    assert absent["detail"] == "m7g.large is not offered in us-west-2d"
    assert "--location-type availability-zone" in absent["fix"]
    denied = preflight.instance_type_offered(ec2, "m7g.large", "us-west-2d", DR)
    assert denied["ok"] is False
    assert denied["detail"].startswith("AccessDenied reading")


def test_snapshot_quota_full_readable_and_unreadable():
    rds, stub = stubbed("rds")
    quota = {"AccountQuotaName": "ManualSnapshots", "Used": 100, "Max": 100}
    stub.add_response("describe_account_attributes", {"AccountQuotas": [quota]})
    stub.add_response("describe_account_attributes", {"AccountQuotas": [{**quota, "Used": 3}]})
    stub.add_client_error("describe_account_attributes", "AccessDenied", "no")
    full = preflight.snapshot_quota(rds, DR)
    assert (full["ok"], full["detail"]) == (False, f"manual DB snapshots in {DR}: 100 of 100 used")
    assert preflight.snapshot_quota(rds, DR)["ok"] is True
    unknown = preflight.snapshot_quota(rds, DR)
    assert unknown["ok"] is None
    assert "not readable" in unknown["detail"]


def test_run_checks_takes_the_launch_templates_image_and_type_and_lists_every_failure():
    clients = {s: stubbed(s) for s in ("kms", "rds", "ec2")}
    kms_stub, rds_stub, ec2_stub = (clients[s][1] for s in ("kms", "rds", "ec2"))
    kms_stub.add_client_error("describe_key", "NotFoundException", "gone")
    rds_stub.add_client_error("describe_db_subnet_groups", "DBSubnetGroupNotFoundFault", "gone")
    ec2_stub.add_response(
        "describe_launch_template_versions",
        {"LaunchTemplateVersions": [{"LaunchTemplateData": {"ImageId": "ami-1",
                                                            "InstanceType": "t3.small"}}]},
        {"LaunchTemplateName": "app", "Versions": ["$Default"]},
    )  # fmt: skip
    ec2_stub.add_response(
        "describe_images", {"Images": [{"ImageId": "ami-1", "State": "available"}]},
        {"ImageIds": ["ami-1"]},
    )  # fmt: skip
    ec2_stub.add_response(
        "describe_instance_type_offerings",
        {"InstanceTypeOfferings": [{"InstanceType": "t3.small"}]},
        {"LocationType": "region", "Filters": [
            {"Name": "instance-type", "Values": ["t3.small"]},
            {"Name": "location", "Values": [DR]}]},
    )  # fmt: skip
    opts = {"kms_key_id": "alias/dr", "db_subnet_group_name": "db", "launch_template": "app",
            "check_snapshot_quota": False}  # fmt: skip
    results = preflight.run_checks(lambda s, attempts=5: clients[s][0], DR, opts)
    assert [(r["check"], r["ok"]) for r in results] == [
        ("kms_key", False), ("db_subnet_group", False), ("launch_template", True), ("ami", True),
        ("instance_type_offered", True),
    ]  # fmt: skip
    msg, failed = preflight.verdict(results, DR)
    assert failed
    assert msg.startswith(f"preflight in {DR} failed (2 of 5 checks): kms_key: KMS key")
    assert msg.endswith("Nothing was changed")
    for _, stub in clients.values():
        stub.assert_no_pending_responses()


# ------------------------------------------------------------------ status checks, tags


class FakeTime:
    def __init__(self):
        self.now = 0.0

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def instance_answers(stub, state, instance_status):
    stub.add_response(
        "describe_instances",
        {"Reservations": [{"Instances": [{"InstanceId": "i-1", "State": {"Name": state},
                                          "PublicIpAddress": "198.51.100.7"}]}]},
    )  # fmt: skip
    stub.add_response(
        "describe_instance_status",
        {"InstanceStatuses": [{"InstanceId": "i-1",
                               "InstanceStatus": {"Status": instance_status},
                               "SystemStatus": {"Status": "ok"}}]},
    )  # fmt: skip


def test_wait_ready_waits_for_both_status_checks():
    ec2, stub = stubbed("ec2")
    fake = FakeTime()
    instance_answers(stub, "pending", "initializing")
    instance_answers(stub, "running", "initializing")
    instance_answers(stub, "running", "ok")
    poller = waits.Poller(10, 600, fake.sleep, fake.clock)
    view = runbook.wait_ready(ec2, "i-1", DR, poller)
    assert view["public_ip"] == "198.51.100.7"
    assert fake.now == 20
    assert [e["status"] for e in poller.events] == [
        "pending, instance initializing, system ok",
        "running, instance initializing, system ok",
        "running, instance ok, system ok",
    ]


def test_wait_ready_times_out_naming_the_last_state_and_fails_on_impaired():
    ec2, stub = stubbed("ec2")
    fake = FakeTime()
    for _ in range(3):
        instance_answers(stub, "running", "initializing")
    with pytest.raises(api_mod.WaitTimeout, match="'running, instance initializing, system ok'"):
        runbook.wait_ready(ec2, "i-1", DR, waits.Poller(10, 20, fake.sleep, fake.clock))
    instance_answers(stub, "running", "impaired")
    with pytest.raises(api_mod.RdsError, match="get-console-output"):
        runbook.wait_ready(ec2, "i-1", DR, waits.Poller(10, 20, fake.sleep, fake.clock))


def test_tag_db_instance_adds_only_missing_tags_and_never_the_ownership_tag():
    rds, stub = stubbed("rds")
    arn = "arn:aws:rds:us-west-2:1:db:app"
    stub.add_response(
        "describe_db_instances",
        {"DBInstances": [{"DBInstanceIdentifier": "app", "DBInstanceArn": arn,
                          "TagList": [{"Key": "team", "Value": "api"}]}]},
    )  # fmt: skip
    stub.add_response(
        "add_tags_to_resource", {},
        {"ResourceName": arn, "Tags": [{"Key": "opsauto:restored-to", "Value": "app-r"}]},
    )  # fmt: skip
    done = []
    added = runbook.tag_db_instance(
        api_mod.RdsApi(rds, DR), "app", {"team": "api", "opsauto:restored-to": "app-r"},
        lambda what, call: (done.append(what), call()),
    )  # fmt: skip
    assert added == {"opsauto:restored-to": "app-r"}
    assert done == ["tag DB instance app with opsauto:restored-to"]
    stub.assert_no_pending_responses()
