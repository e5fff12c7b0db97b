"""Unit tests of the rds_snapshot module's code (module_utils/rds_*.py).

The waits, timeouts and AWS error paths cannot be proved against moto's server (it answers
every wait at once and accepts calls real AWS refuses), so they are driven here with real
botocore clients wrapped in botocore.stub.Stubber, real botocore exceptions, and an
injected clock and sleep: every test runs in milliseconds. The module against a running
endpoint is tested in tests/integration/test_rds_snapshot.py.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
from pathlib import Path

import ansible.module_utils
import botocore.session
import pytest
from botocore.stub import Stubber

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))
api_mod = importlib.import_module("ansible.module_utils.rds_api")
logic = importlib.import_module("ansible.module_utils.rds_snapshots")
waits = importlib.import_module("ansible.module_utils.rds_waits")
actions = importlib.import_module("ansible.module_utils.rds_actions")
ops_errors = importlib.import_module("ansible.module_utils.ops_errors")

_spec = importlib.util.spec_from_file_location(
    "rds_snapshot_module", ROOT / "library" / "rds_snapshot.py"
)
module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(module)  # fmt: skip

UTC = datetime.UTC
NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
OURS = {logic.OWNER_TAG: logic.OWNER_VALUE}
ACCOUNT = "123456789012"


class FakeTime:
    """Clock and sleep of the poller: sleeping only moves the clock."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def rds_client(region="us-east-1"):
    return botocore.session.get_session().create_client(
        "rds", region_name=region, aws_access_key_id="k", aws_secret_access_key="s"
    )


def params(**overrides):
    values = {name: spec.get("default") for name, spec in module.ARGUMENT_SPEC.items()}
    values.update(region="us-east-1", wait_timeout=60, poll_interval=10)
    values.update(overrides)
    return values


def snap(name, instance="db1", status="available", created=NOW, kind="manual", tags=None, **extra):
    region = extra.pop("region", "us-east-1")
    item = {
        "DBSnapshotIdentifier": name,
        "DBInstanceIdentifier": instance,
        "DBSnapshotArn": f"arn:aws:rds:{region}:{ACCOUNT}:snapshot:{name}",
        "Status": status,
        "SnapshotType": kind,
        "SnapshotCreateTime": created,
        "AllocatedStorage": 20,
        "Encrypted": False,
        "TagList": [{"Key": k, "Value": v} for k, v in (OURS if tags is None else tags).items()],
    }
    item.update(extra)
    return item


def inst(name="db1", status="available", retention=7, pending=None, **extra):
    item = {
        "DBInstanceIdentifier": name,
        "DBInstanceArn": f"arn:aws:rds:us-east-1:{ACCOUNT}:db:{name}",
        "DBInstanceStatus": status,
        "DBInstanceClass": "db.t3.micro",
        "Engine": "postgres",
        "AllocatedStorage": 20,
        "BackupRetentionPeriod": retention,
        "PendingModifiedValues": pending or {},
        "InstanceCreateTime": NOW - datetime.timedelta(days=30),
        "LatestRestorableTime": NOW - datetime.timedelta(minutes=5),
        "Endpoint": {"Address": f"{name}.example.rds.amazonaws.com", "Port": 5432},
        "TagList": [],
    }
    item.update(extra)
    return item


class Rig:
    """One runbook over stubbed clients (one per region) and a fake clock."""

    def __init__(self, regions=("us-east-1",)):
        self.clients = {region: rds_client(region) for region in regions}
        self.stubs = {region: Stubber(client) for region, client in self.clients.items()}
        for stub in self.stubs.values():
            stub.activate()
        self.time = FakeTime()

    def stub(self, region="us-east-1"):
        return self.stubs[region]

    def runbook(self, check_mode=False, **overrides):
        return actions.SnapshotRunbook(
            lambda region: api_mod.RdsApi(self.clients[region], region),
            params(**overrides),
            check_mode=check_mode,
            sleep=self.time.sleep,
            clock=self.time.clock,
            now=lambda: NOW,
        )

    def done(self):
        for stub in self.stubs.values():
            stub.assert_no_pending_responses()


def describe_snap(stub, name, *items):
    """Queue DescribeDBSnapshots answers for `name`: each item a snapshot, or None (not found)."""
    for item in items:
        if item is None:
            stub.add_client_error(
                "describe_db_snapshots",
                service_error_code="DBSnapshotNotFound",
                service_message=f"DBSnapshot {name} not found.",
                http_status_code=404,
                expected_params={"DBSnapshotIdentifier": name},
            )
        else:
            stub.add_response(
                "describe_db_snapshots", {"DBSnapshots": [item]}, {"DBSnapshotIdentifier": name}
            )


def describe_inst(stub, name, *items):
    for item in items:
        if item is None:
            stub.add_client_error(
                "describe_db_instances",
                service_error_code="DBInstanceNotFound",
                service_message=f"DBInstance {name} not found.",
                http_status_code=404,
                expected_params={"DBInstanceIdentifier": name},
            )
        else:
            stub.add_response(
                "describe_db_instances", {"DBInstances": [item]}, {"DBInstanceIdentifier": name}
            )


# ---------------------------------------------------------------------------- pure decisions


def test_prune_never_touches_automated_foreign_or_the_newest():
    day = datetime.timedelta(days=1)
    pairs = [
        (snap("new", created=NOW - day), OURS),
        (snap("mid", created=NOW - 5 * day), OURS),
        (snap("old", created=NOW - 40 * day), OURS),
        (snap("theirs", created=NOW - 90 * day), {"owner": "terraform"}),
        (snap("rds:db1-auto", created=NOW - 90 * day, kind="automated"), {}),
        (snap("busy", created=NOW - 60 * day, status="creating"), OURS),
        (snap("other-new", instance="db2", created=NOW - 100 * day), OURS),
    ]
    decisions = {d["snapshot_identifier"]: d for d in logic.prune_plan(pairs, NOW, keep_count=1)}
    assert sorted(name for name, d in decisions.items() if d["delete"]) == ["mid", "old"]
    assert "newest" in decisions["new"]["reason"]
    assert "another tool" in decisions["theirs"]["reason"]
    assert "never pruned" in decisions["rds:db1-auto"]["reason"]
    assert "creating" in decisions["busy"]["reason"]
    # the only snapshot of db2 is very old but the newest of its instance: kept
    assert decisions["other-new"]["delete"] is False


def test_prune_by_age_keeps_newest_even_when_everything_is_old():
    day = datetime.timedelta(days=1)
    pairs = [(snap(f"s{i}", created=NOW - (50 + i) * day), OURS) for i in range(3)]
    decisions = logic.prune_plan(pairs, NOW, max_age_days=30)
    assert [d["snapshot_identifier"] for d in decisions if not d["delete"]] == ["s0"]
    both = logic.prune_plan(
        [(snap("a", created=NOW - day), OURS), (snap("b", created=NOW - 2 * day), OURS),
         (snap("c", created=NOW - 3 * day), OURS)], NOW, keep_count=5, max_age_days=1.5,
    )  # fmt: skip
    assert [d["snapshot_identifier"] for d in both if d["delete"]] == ["b", "c"]


def test_prune_needs_a_rule_and_a_positive_count():
    with pytest.raises(api_mod.RdsError, match="keep_count, max_age_days"):
        logic.prune_plan([], NOW)
    with pytest.raises(api_mod.RdsError, match="1 or more"):
        logic.prune_plan([], NOW, keep_count=0)


def test_retention_range_and_pitr_guard():
    logic.check_retention(1, False)
    logic.check_retention(35, False)
    logic.check_retention(0, True)
    with pytest.raises(api_mod.RdsError, match="allow_disable_pitr"):
        logic.check_retention(0, False)
    for days in (36, 50, -1):
        with pytest.raises(api_mod.RdsError, match=r"outside 1\.\.35"):
            logic.check_retention(days, True)


def test_encrypted_cross_region_copy_needs_a_destination_key():
    source = snap("s1", Encrypted=True, KmsKeyId="arn:aws:kms:us-east-1:1:key/a")
    with pytest.raises(api_mod.RdsError, match="needs kms_key_id.*exists in eu-west-1"):
        logic.check_copy_key(source, "us-east-1", "eu-west-1", None)
    with pytest.raises(api_mod.RdsError, match="belongs to region us-east-1"):
        logic.check_copy_key(source, "us-east-1", "eu-west-1", "arn:aws:kms:us-east-1:1:key/a")
    logic.check_copy_key(source, "us-east-1", "eu-west-1", "arn:aws:kms:eu-west-1:1:key/b")
    logic.check_copy_key(source, "us-east-1", "us-east-1", None)  # same region: same key
    logic.check_copy_key(snap("plain"), "us-east-1", "eu-west-1", None)


def test_restore_time_outside_window_shows_both_ends():
    earliest = NOW - datetime.timedelta(days=7)
    latest = NOW - datetime.timedelta(minutes=5)
    logic.check_restore_time(NOW - datetime.timedelta(days=1), earliest, latest, "db1", "x")
    with pytest.raises(api_mod.RdsError) as err:
        logic.check_restore_time(NOW, earliest, latest, "db1", "the RestoreWindow")
    assert "earliest 2026-11-21T12:00:00Z" in str(err.value)
    assert "latest 2026-11-28T11:55:00Z" in str(err.value)
    with pytest.raises(api_mod.RdsError, match="automated backups are off"):
        logic.check_restore_time(NOW, None, None, "db1", "x")


def test_parse_time_and_storage_checks():
    assert logic.parse_time("2026-11-28T03:00:00") == datetime.datetime(2026, 11, 28, 3, tzinfo=UTC)
    assert logic.parse_time("2026-11-28T04:00:00+01:00").hour == 3
    with pytest.raises(api_mod.RdsError, match="ISO 8601"):
        logic.parse_time("yesterday")
    logic.check_storage(20, 20, "s1")
    logic.check_storage(None, 20, "s1")
    with pytest.raises(api_mod.RdsError, match="smaller than the 100 GiB of s1"):
        logic.check_storage(50, 100, "s1")


def test_check_delete_refusals():
    old = snap("old", created=NOW - datetime.timedelta(days=3))
    new = snap("new")
    logic.check_delete(old, OURS, [old, new], False, False)
    with pytest.raises(api_mod.RdsError, match="newest available snapshot"):
        logic.check_delete(new, OURS, [old, new], False, False)
    logic.check_delete(new, OURS, [old, new], False, True)
    with pytest.raises(api_mod.RdsError, match="another tool.*allow_foreign"):
        logic.check_delete(old, {}, [old, new], False, False)
    with pytest.raises(api_mod.RdsError, match="automated"):
        logic.check_delete(snap("rds:x", kind="automated"), {}, [], True, True)


def test_restore_source_options_name_exactly_one_source():
    base = params(state="restored", target_db_instance_identifier="t")
    assert "needs snapshot_identifier" in module.restore_source_problem(base)
    both = dict(base, snapshot_identifier="s", restore_time="2026-11-28T00:00:00Z")
    assert "not both" in module.restore_source_problem(both)
    pitr = dict(base, use_latest_restorable_time=True)
    assert "needs db_instance_identifier" in module.restore_source_problem(pitr)
    assert module.restore_source_problem(dict(pitr, db_instance_identifier="db1")) is None


def test_errors_derive_from_the_project_base():
    assert issubclass(api_mod.RdsError, ops_errors.OpsError)
    assert issubclass(api_mod.WaitTimeout, api_mod.RdsError)


# ---------------------------------------------------------------------------- poller


def test_poller_times_out_naming_the_last_state_and_progress():
    clock = FakeTime()
    poller = waits.Poller(10, 35, clock.sleep, clock.clock)
    seen = iter([("creating", 0), ("creating", 20)] + [("creating", 30)] * 10)
    with pytest.raises(api_mod.WaitTimeout) as err:
        poller.until("snapshot s1", lambda: next(seen), lambda s: False, lambda s: s)
    assert "'creating, 30% done'" in str(err.value)
    assert "timed out after 35 s" in str(err.value)
    assert err.value.last == "creating"
    assert clock.sleeps == [10, 10, 10, 5]  # never sleeps past the deadline
    assert [e["percent"] for e in poller.events] == [0, 20, 30]


def test_poller_stops_at_a_failed_state():
    clock = FakeTime()
    poller = waits.Poller(10, 600, clock.sleep, clock.clock)
    seen = iter([("creating", None), ("failed", None)])
    with pytest.raises(api_mod.RdsError, match="snapshot s1 failed.*'failed'"):
        poller.until(
            "snapshot s1", lambda: next(seen), lambda s: False, lambda s: s,
            failed=lambda s: s[0] == "failed",
        )  # fmt: skip
    assert clock.now - 1000 == 10


# ---------------------------------------------------------------------------- present


def test_present_creates_tags_and_reports_progress():
    rig = Rig()
    stub = rig.stub()
    describe_snap(stub, "s1", None)
    describe_inst(stub, "db1", inst(), inst())
    tags = {"backup_id": "B1", **OURS}
    stub.add_response(
        "create_db_snapshot",
        {"DBSnapshot": snap("s1", status="creating", PercentProgress=0)},
        {
            "DBSnapshotIdentifier": "s1",
            "DBInstanceIdentifier": "db1",
            "Tags": [{"Key": k, "Value": v} for k, v in sorted(tags.items())],
        },
    )
    describe_snap(
        stub, "s1",
        snap("s1", status="creating", PercentProgress=0),
        snap("s1", status="creating", PercentProgress=45),
        snap("s1", status="available", PercentProgress=100),
    )  # fmt: skip
    result = rig.runbook(
        state="present", snapshot_identifier="s1", db_instance_identifier="db1",
        tags={"backup_id": "B1"},
    ).run()  # fmt: skip
    rig.done()
    assert result["changed"] is True
    assert result["msg"] == "create snapshot s1 of instance db1"
    assert [e["percent"] for e in result["events"]] == [0, 45, 100]
    assert result["snapshot"]["status"] == "available"
    assert result["snapshot"]["managed"] is True
    assert rig.time.sleeps == [10, 10]
    assert result["diff"]["after"]["snapshot"]["tags"] == tags


def test_present_is_idempotent_and_adds_missing_tags_only():
    rig = Rig()
    stub = rig.stub()
    existing = snap("s1", tags={**OURS, "keep": "me"})
    describe_snap(stub, "s1", existing)
    stub.add_response(
        "add_tags_to_resource",
        {},
        {"ResourceName": existing["DBSnapshotArn"], "Tags": [{"Key": "backup_id", "Value": "B1"}]},
    )
    describe_snap(stub, "s1", existing)
    result = rig.runbook(
        snapshot_identifier="s1", db_instance_identifier="db1", tags={"backup_id": "B1"}
    ).run()
    rig.done()
    assert result["actions"] == ["add tags backup_id to s1"]
    assert result["diff"]["after"]["tags"] == {**OURS, "keep": "me", "backup_id": "B1"}


def test_present_refuses_a_name_taken_by_another_instance():
    rig = Rig()
    describe_snap(rig.stub(), "s1", snap("s1", instance="other-db"))
    with pytest.raises(api_mod.RdsError, match="already exists in us-east-1 for another instance"):
        rig.runbook(snapshot_identifier="s1", db_instance_identifier="db1").run()
    rig.done()


def test_present_refuses_an_instance_that_is_not_available():
    rig = Rig()
    describe_snap(rig.stub(), "s1", None)
    describe_inst(rig.stub(), "db1", inst(status="backing-up"), inst(status="backing-up"))
    with pytest.raises(
        api_mod.RdsError, match="'backing-up', not 'available'.*nothing was changed"
    ):
        rig.runbook(snapshot_identifier="s1", db_instance_identifier="db1").run()
    rig.done()  # and no CreateDBSnapshot was queued: Stubber would have refused it


def test_present_instance_not_found():
    rig = Rig()
    describe_snap(rig.stub(), "s1", None)
    describe_inst(rig.stub(), "db1", None)
    with pytest.raises(api_mod.RdsError, match="DB instance db1 not found in us-east-1"):
        rig.runbook(snapshot_identifier="s1", db_instance_identifier="db1").run()


def test_present_check_mode_says_what_it_would_do_and_calls_nothing():
    rig = Rig()
    describe_snap(rig.stub(), "s1", None)
    describe_inst(rig.stub(), "db1", inst(), inst())
    result = rig.runbook(True, snapshot_identifier="s1", db_instance_identifier="db1").run()
    rig.done()
    assert result["changed"] is True
    assert result["msg"] == "would create snapshot s1 of instance db1"
    assert result["events"] == []


def test_snapshot_quota_exceeded_names_the_fix():
    rig = Rig()
    describe_snap(rig.stub(), "s1", None)
    describe_inst(rig.stub(), "db1", inst(), inst())
    rig.stub().add_client_error(
        "create_db_snapshot",
        service_error_code="SnapshotQuotaExceeded",
        service_message="Cannot create more than 100 manual snapshots",
        http_status_code=400,
    )
    with pytest.raises(
        api_mod.RdsError, match="SnapshotQuotaExceeded.*state=pruned.*Service Quotas"
    ):
        rig.runbook(snapshot_identifier="s1", db_instance_identifier="db1").run()


def test_snapshot_wait_timeout_says_the_state_and_what_was_done():
    rig = Rig()
    stub = rig.stub()
    describe_snap(stub, "s1", None)
    describe_inst(stub, "db1", inst(), inst())
    stub.add_response("create_db_snapshot", {"DBSnapshot": snap("s1", status="creating")})
    describe_snap(stub, "s1", *[snap("s1", status="creating", PercentProgress=12)] * 7)
    runbook = rig.runbook(snapshot_identifier="s1", db_instance_identifier="db1")
    with pytest.raises(api_mod.WaitTimeout, match="snapshot s1.*'creating, 12% done'"):
        runbook.run()
    rig.done()
    assert runbook.actions == ["create snapshot s1 of instance db1"]
    assert rig.time.now - 1000 == 60  # wait_timeout, exactly


def test_access_denied_names_the_permission():
    rig = Rig()
    rig.stub().add_client_error(
        "describe_db_snapshots",
        service_error_code="AccessDenied",
        service_message="User: arn:aws:iam::1:user/ops is not authorized",
        http_status_code=403,
    )
    with pytest.raises(api_mod.RdsError, match="AccessDenied.*rds:DescribeDBSnapshots.*IAM"):
        rig.runbook(snapshot_identifier="s1", db_instance_identifier="db1").run()


def test_no_credentials_is_a_clear_error(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    boto3 = pytest.importorskip("boto3")
    client = api_mod.make_client(boto3, {"endpoint_url": "http://127.0.0.1:9"}, "us-east-1")
    with pytest.raises(api_mod.RdsError, match="no AWS credentials found.*access_key"):
        api_mod.RdsApi(client, "us-east-1").snapshot("s1")


def test_unknown_profile_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    boto3 = pytest.importorskip("boto3")
    with pytest.raises(api_mod.RdsError, match="profile 'nope' is not in the AWS config"):
        api_mod.make_client(boto3, {"profile": "nope"}, "us-east-1")


# ---------------------------------------------------------------------------- copied


def test_encrypted_cross_region_copy_without_key_is_refused_before_calling_aws():
    rig = Rig(("us-east-1", "eu-west-1"))
    source = snap("s1", Encrypted=True, KmsKeyId="arn:aws:kms:us-east-1:1:key/a")
    describe_snap(rig.stub("us-east-1"), "s1", source)
    describe_snap(rig.stub("eu-west-1"), "c1", None)
    runbook = rig.runbook(
        state="copied", region="eu-west-1", source_region="us-east-1",
        source_snapshot_identifier="s1", snapshot_identifier="c1",
    )  # fmt: skip
    with pytest.raises(api_mod.RdsError, match="encrypted.*needs kms_key_id"):
        runbook.run()
    rig.done()
    assert runbook.actions == []


def test_copy_passes_source_arn_region_key_and_merged_tags():
    rig = Rig(("us-east-1", "eu-west-1"))
    source = snap("s1", tags={**OURS, "app": "x"}, Encrypted=True, KmsKeyId="k-src")
    arn = source["DBSnapshotArn"]
    key = "arn:aws:kms:eu-west-1:1:key/dr"
    describe_snap(rig.stub("us-east-1"), "s1", source)
    dest = rig.stub("eu-west-1")
    describe_snap(dest, "c1", None)
    want = {"app": "x", "site": "dr", logic.SOURCE_TAG: arn, **OURS}
    copy = snap("c1", status="pending", region="eu-west-1", tags=want)
    # botocore adds the presigned URL itself; the Stubber sees the request before that.
    dest.add_response(
        "copy_db_snapshot",
        {"DBSnapshot": copy},
        {
            "SourceDBSnapshotIdentifier": arn,
            "TargetDBSnapshotIdentifier": "c1",
            "CopyTags": True,
            "Tags": [{"Key": k, "Value": v} for k, v in sorted(want.items())],
            "KmsKeyId": key,
            "SourceRegion": "us-east-1",
        },
    )
    copying = snap("c1", status="copying", PercentProgress=50, region="eu-west-1", tags=want)
    describe_snap(dest, "c1", copy, copying, snap("c1", region="eu-west-1", tags=want))
    result = rig.runbook(
        state="copied", region="eu-west-1", source_snapshot_identifier=arn,
        snapshot_identifier="c1", kms_key_id=key, tags={"site": "dr"},
    ).run()  # fmt: skip
    rig.done()
    assert result["actions"] == [f"copy snapshot {arn} to c1 in eu-west-1"]
    assert result["snapshot"]["region"] == "eu-west-1"
    assert result["snapshot"]["status"] == "available"
    assert [e["status"] for e in result["events"]] == ["copying", "available"]


def test_copy_target_name_of_another_source_is_refused():
    rig = Rig(("us-east-1", "eu-west-1"))
    describe_snap(rig.stub("us-east-1"), "s1", snap("s1"))
    describe_snap(rig.stub("eu-west-1"), "c1", snap("c1", region="eu-west-1"))
    with pytest.raises(api_mod.RdsError, match="not a copy of .*snapshot:s1"):
        rig.runbook(
            state="copied", region="eu-west-1", source_region="us-east-1",
            source_snapshot_identifier="s1", snapshot_identifier="c1",
        ).run()  # fmt: skip


def test_copy_of_a_missing_source_names_the_region():
    rig = Rig(("us-east-1", "eu-west-1"))
    describe_snap(rig.stub("us-east-1"), "s1", None)
    with pytest.raises(api_mod.RdsError, match="source snapshot s1 not found in us-east-1"):
        rig.runbook(
            state="copied", region="eu-west-1", source_region="us-east-1",
            source_snapshot_identifier="s1", snapshot_identifier="c1",
        ).run()  # fmt: skip


# ---------------------------------------------------------------------------- retention


def test_retention_waits_until_no_longer_pending_not_just_available():
    rig = Rig()
    stub = rig.stub()
    describe_inst(stub, "db1", inst(retention=7))
    stub.add_response(
        "modify_db_instance",
        {"DBInstance": inst(retention=7, pending={"BackupRetentionPeriod": 14})},
        {"DBInstanceIdentifier": "db1", "BackupRetentionPeriod": 14, "ApplyImmediately": True},
    )
    describe_inst(
        stub, "db1",
        inst(status="modifying", retention=7, pending={"BackupRetentionPeriod": 14}),
        inst(status="available", retention=7, pending={"BackupRetentionPeriod": 14}),
        inst(status="backing-up", retention=14),
        inst(status="available", retention=14),
    )  # fmt: skip
    result = rig.runbook(
        state="configured", db_instance_identifier="db1", backup_retention_days=14
    ).run()
    rig.done()
    assert result["instance"]["backup_retention_days"] == 14
    assert result["diff"] == {
        "before": {"backup_retention_days": 7},
        "after": {"backup_retention_days": 14},
    }
    assert len(rig.time.sleeps) == 3  # it did not stop at the 'available' that still held it
    assert "available (pending: BackupRetentionPeriod=14)" in [
        e["status"] for e in result["events"]
    ]


def test_retention_already_set_changes_nothing():
    rig = Rig()
    describe_inst(rig.stub(), "db1", inst(retention=14))
    result = rig.runbook(
        state="configured", db_instance_identifier="db1", backup_retention_days=14
    ).run()
    rig.done()
    assert result["changed"] is False
    assert result["msg"] == "nothing to change"


def test_retention_stuck_pending_times_out_naming_it():
    rig = Rig()
    stub = rig.stub()
    describe_inst(stub, "db1", inst(retention=7))
    stub.add_response("modify_db_instance", {"DBInstance": inst(retention=7)})
    stuck = inst(retention=7, pending={"BackupRetentionPeriod": 14})
    describe_inst(stub, "db1", *[stuck] * 7)
    with pytest.raises(api_mod.WaitTimeout, match="pending: BackupRetentionPeriod=14"):
        rig.runbook(
            state="configured", db_instance_identifier="db1", backup_retention_days=14
        ).run()


def test_retention_zero_is_refused_before_any_call():
    rig = Rig()
    with pytest.raises(api_mod.RdsError, match="allow_disable_pitr"):
        rig.runbook(state="configured", db_instance_identifier="db1", backup_retention_days=0).run()
    rig.done()


# ---------------------------------------------------------------------------- restored


def automated_backups(stub, name, earliest, latest):
    stub.add_response(
        "describe_db_instance_automated_backups",
        {"DBInstanceAutomatedBackups": [{"DBInstanceIdentifier": name,
         "RestoreWindow": {"EarliestTime": earliest, "LatestTime": latest}}]},
        {"DBInstanceIdentifier": name},
    )  # fmt: skip


def test_pitr_outside_the_window_is_refused_with_both_times():
    rig = Rig()
    stub = rig.stub()
    describe_inst(stub, "new-db", None)
    describe_inst(stub, "db1", inst())
    automated_backups(
        stub, "db1", NOW - datetime.timedelta(days=3), NOW - datetime.timedelta(hours=1)
    )
    with pytest.raises(api_mod.RdsError) as err:
        rig.runbook(
            state="restored", db_instance_identifier="db1", target_db_instance_identifier="new-db",
            restore_time="2026-11-20T00:00:00Z",
        ).run()  # fmt: skip
    rig.done()  # no RestoreDBInstanceToPointInTime call was made
    assert "earliest 2026-11-25T12:00:00Z, latest 2026-11-28T11:00:00Z" in str(err.value)
    assert "RestoreWindow" in str(err.value)


def test_pitr_inside_the_window_restores_and_returns_the_endpoint():
    rig = Rig()
    stub = rig.stub()
    when = datetime.datetime(2026, 11, 27, 9, 15, tzinfo=UTC)
    describe_inst(stub, "new-db", None)
    describe_inst(stub, "db1", inst())
    automated_backups(stub, "db1", NOW - datetime.timedelta(days=3), NOW)
    origin = "instance:db1@2026-11-27T09:15:00Z"
    want_tags = {logic.RESTORED_FROM_TAG: origin, **OURS}
    stub.add_response(
        "restore_db_instance_to_point_in_time",
        {"DBInstance": inst("new-db", status="creating")},
        {
            "SourceDBInstanceIdentifier": "db1",
            "TargetDBInstanceIdentifier": "new-db",
            "RestoreTime": when,
            "DBInstanceClass": "db.t3.small",
            "AllocatedStorage": 30,
            "Tags": [{"Key": k, "Value": v} for k, v in sorted(want_tags.items())],
        },
    )
    describe_inst(stub, "new-db", inst("new-db", status="creating"), inst("new-db"))
    result = rig.runbook(
        state="restored", db_instance_identifier="db1", target_db_instance_identifier="new-db",
        restore_time="2026-11-27T09:15:00Z", db_instance_class="db.t3.small", allocated_storage=30,
    ).run()  # fmt: skip
    rig.done()
    assert result["instance"]["endpoint"] == {
        "address": "new-db.example.rds.amazonaws.com",
        "port": 5432,
    }
    assert result["actions"] == ["restore instance new-db from db1 at 2026-11-27T09:15:00Z"]


def test_restore_target_name_taken_is_refused():
    rig = Rig()
    describe_inst(rig.stub(), "new-db", inst("new-db"))
    with pytest.raises(api_mod.RdsError, match="restore target name taken.*was not touched"):
        rig.runbook(
            state="restored", snapshot_identifier="s1", target_db_instance_identifier="new-db"
        ).run()


def test_restore_rerun_of_the_same_source_is_unchanged():
    rig = Rig()
    tagged = inst("new-db", TagList=[{"Key": logic.RESTORED_FROM_TAG, "Value": "snapshot:s1"}])
    describe_inst(rig.stub(), "new-db", tagged)
    result = rig.runbook(
        state="restored", snapshot_identifier="s1", target_db_instance_identifier="new-db"
    ).run()
    rig.done()
    assert result["changed"] is False
    assert result["instance"]["status"] == "available"


def test_restore_refuses_smaller_storage_than_the_snapshot():
    rig = Rig()
    describe_inst(rig.stub(), "new-db", None)
    describe_snap(rig.stub(), "s1", snap("s1", AllocatedStorage=100))
    with pytest.raises(api_mod.RdsError, match="smaller than the 100 GiB"):
        rig.runbook(
            state="restored", snapshot_identifier="s1", target_db_instance_identifier="new-db",
            allocated_storage=50,
        ).run()  # fmt: skip


def test_restore_wait_timeout_names_the_instance_state():
    rig = Rig()
    stub = rig.stub()
    describe_inst(stub, "new-db", None)
    describe_snap(stub, "s1", snap("s1"))
    stub.add_response(
        "restore_db_instance_from_db_snapshot", {"DBInstance": inst("new-db", status="creating")}
    )
    describe_inst(stub, "new-db", *[inst("new-db", status="creating")] * 7)
    with pytest.raises(api_mod.WaitTimeout, match="restore of instance new-db.*'creating'"):
        rig.runbook(
            state="restored", snapshot_identifier="s1", target_db_instance_identifier="new-db"
        ).run()


# ---------------------------------------------------------------------------- absent / pruned


def test_absent_of_a_missing_snapshot_is_unchanged():
    rig = Rig()
    describe_snap(rig.stub(), "gone", None)
    result = rig.runbook(state="absent", snapshot_identifier="gone").run()
    assert result["changed"] is False


def test_absent_deletes_and_waits_until_gone():
    rig = Rig()
    stub = rig.stub()
    old = snap("old", created=NOW - datetime.timedelta(days=3))
    describe_snap(stub, "old", old)
    stub.add_response(
        "describe_db_snapshots",
        {"DBSnapshots": [old, snap("new")]},
        {"DBInstanceIdentifier": "db1", "SnapshotType": "manual"},
    )
    stub.add_response("delete_db_snapshot", {"DBSnapshot": old}, {"DBSnapshotIdentifier": "old"})
    describe_snap(stub, "old", snap("old", status="deleting"), None)
    result = rig.runbook(state="absent", snapshot_identifier="old").run()
    rig.done()
    assert result["actions"] == ["delete snapshot old"]
    assert [e["status"] for e in result["events"]] == ["deleting", "deleted"]


def test_pruned_check_mode_lists_without_deleting():
    rig = Rig()
    day = datetime.timedelta(days=1)
    rig.stub().add_response(
        "describe_db_snapshots",
        {"DBSnapshots": [snap("a", created=NOW - day), snap("b", created=NOW - 2 * day),
                         snap("x", created=NOW - 9 * day, tags={})]},
        {"DBInstanceIdentifier": "db1", "SnapshotType": "manual"},
    )  # fmt: skip
    result = rig.runbook(True, state="pruned", db_instance_identifier="db1", keep_count=1).run()
    rig.done()
    assert result["pruned"] == ["b"]
    assert result["actions"] == ["would delete snapshot b (beyond the 1 newest managed snapshots)"]
    assert result["diff"]["after"]["managed_snapshots"] == ["a"]


# ---------------------------------------------------------------------------- sanity


def test_documentation_matches_the_argument_spec():
    """What ansible-test's validate-modules checks: every option documented as it is parsed."""
    import yaml

    fragment = importlib.util.spec_from_file_location(
        "aws_connection", ROOT / "doc_fragments" / "aws_connection.py"
    )
    frag = importlib.util.module_from_spec(fragment)
    fragment.loader.exec_module(frag)
    doc = yaml.safe_load(module.DOCUMENTATION)
    assert doc["extends_documentation_fragment"] == ["aws_connection"]
    options = {**yaml.safe_load(frag.ModuleDocFragment.DOCUMENTATION)["options"], **doc["options"]}
    assert set(options) == set(module.ARGUMENT_SPEC)
    for name, spec in module.ARGUMENT_SPEC.items():
        documented = options[name]
        assert documented["type"] == spec["type"], name
        assert documented.get("default") == spec.get("default"), name
        assert documented.get("choices") == spec.get("choices"), name
        assert documented.get("elements") == spec.get("elements"), name
    secret = {name for name, spec in module.ARGUMENT_SPEC.items() if spec.get("no_log")}
    assert secret == {"access_key", "secret_key", "session_token"}
    for section in (module.EXAMPLES, module.RETURN):
        assert yaml.safe_load(section)
    for task in yaml.safe_load(module.EXAMPLES):
        assert set(task["rds_snapshot"]) <= set(module.ARGUMENT_SPEC), task["name"]
