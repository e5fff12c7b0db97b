"""The AWS playbooks' faults against moto's server (no Docker engine): no credentials, the
wrong region, a wait that times out. Each run must fail with a message naming the cause and
the fix, and leave no half state: no backup record, no restored instance, no DR copy, a DR
step record that says where to resume.

moto answers every wait at once, so the stuck AWS operation is played by a small proxy in
front of it that reports the resources of one test as still in progress (status
`creating`), as AWS does for a snapshot or restore that takes longer than the wait.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import (
    AWS_TEST_CREDENTIALS,
    create_postgres_instance,
    moto_client,
    run_playbook,
    unique_name,
)

SOURCE = "us-east-1"
OTHER = "us-west-1"
DR = "us-west-2"


@pytest.fixture
def credentials(monkeypatch):
    """ansible-runner passes this process's environment on: fake keys for moto."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_TEST_CREDENTIALS["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_TEST_CREDENTIALS["secret_key"])
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """No key anywhere boto3 looks: environment, files, instance metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def play(tmp_path, playbook, extravars, name="run"):
    """Run a playbook through ansible-runner; (status, the failure messages as one text)."""
    result, failures = run_playbook(tmp_path / name, playbook, extravars, timeout=300)
    return result.status, " ".join(failures)


@pytest.fixture
def world(moto_endpoint):
    """An instance with a snapshot in SOURCE (made with the real keys, before a test may
    remove them)."""
    rds = moto_client(moto_endpoint, "rds", SOURCE)
    db = create_postgres_instance(rds, unique_name("db"), BackupRetentionPeriod=7)
    rds.create_db_snapshot(DBInstanceIdentifier=db, DBSnapshotIdentifier=f"{db}-nightly")
    return {"rds": rds, "db": db, "snapshot": f"{db}-nightly", "endpoint": moto_endpoint}


def backup_vars(world, tmp_path, **extra):
    return {
        "backup_target": "rds",
        "backup_id": "fault-1",
        "stack_project_name": "opsauto-it-aws-faults",
        "stack_db_password": "not-used-by-the-rds-path",
        "stack_rds_instance_identifier": world["db"],
        "stack_rds_region": SOURCE,
        "stack_rds_endpoint_url": world["endpoint"],
        "stack_backup_dir": str(tmp_path / "backups"),
        "backup_metrics_dir": str(tmp_path / "metrics"),
        **extra,
    }


def restore_vars(world, **extra):
    return {
        "rds_restore_region": SOURCE,
        "rds_restore_endpoint_url": world["endpoint"],
        "rds_restore_snapshot": world["snapshot"],
        "rds_restore_target": f"{world['db']}-restored",
        "rds_restore_poll_interval": 1,
        **extra,
    }


def instances(world, region=SOURCE) -> set[str]:
    rds = moto_client(world["endpoint"], "rds", region)
    return {i["DBInstanceIdentifier"] for i in rds.describe_db_instances()["DBInstances"]}


def manual_snapshots(world, region=SOURCE) -> set[str]:
    rds = moto_client(world["endpoint"], "rds", region)
    found = rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]
    return {s["DBSnapshotIdentifier"] for s in found if s["DBInstanceIdentifier"] == world["db"]}


def no_set_left(tmp_path) -> bool:
    backups = tmp_path / "backups"
    return not backups.exists() or not any(p.name != ".lock" for p in backups.iterdir())


# ------------------------------------------------------------------------- no credentials


def test_no_credentials_backup_and_restore_say_so_and_change_nothing(
    world, tmp_path, no_credentials
):
    before = manual_snapshots(world)
    status, message = play(tmp_path, "backup.yml", backup_vars(world, tmp_path), "backup")
    assert status == "failed"
    assert "no AWS credentials found" in message, message
    assert "AWS_ACCESS_KEY_ID" in message or "profile" in message, message
    assert manual_snapshots(world) == before
    assert no_set_left(tmp_path)

    status, message = play(tmp_path, "rds_restore.yml", restore_vars(world), "restore")
    assert status == "failed"
    assert "no AWS credentials found" in message, message
    assert f"{world['db']}-restored" not in instances(world)


def dr_vars(world, tmp_path, **extra):
    """Enough for the DR run to reach its preflight; the DR network is never reached."""
    return {
        "dr_failover_source_region": SOURCE,
        "dr_failover_region": DR,
        "dr_failover_db_instance": world["db"],
        "dr_failover_kms_key_id": "alias/not-checked-here",
        "dr_failover_db_subnet_group": "dr-subnets",
        "dr_failover_db_security_group_ids": ["sg-0123456789abcdef0"],
        "dr_failover_launch_template": "app",
        "dr_failover_subnet_id": "subnet-0123456789abcdef0",
        "dr_failover_app_security_group_ids": ["sg-0123456789abcdef0"],
        "dr_failover_dns_zone": "example.test",
        "dr_failover_dns_record": "app.example.test",
        "dr_failover_state_file": str(tmp_path / "dr-state.json"),
        "dr_failover_endpoint_url": world["endpoint"],
        "dr_failover_poll_interval": 1,
        **extra,
    }


def test_no_credentials_dr_failover_stops_in_preflight_with_the_way_to_resume(
    world, tmp_path, no_credentials
):
    status, message = play(tmp_path, "dr_failover.yml", dr_vars(world, tmp_path))
    assert status == "failed"
    assert "stopped in phase preflight" in message, message
    assert "no AWS credentials found" in message, message
    assert "Resume: fix the cause and run the same command again" in message
    assert manual_snapshots(world, DR) == set()
    # One clear cause, not one misleading fix per preflight check.
    assert "create a customer managed key" not in message
    record = json.loads((tmp_path / "dr-state.json").read_text())
    assert record["phases"]["preflight"]["status"] == "failed"
    assert [p for p, s in record["phases"].items() if s["status"] != "failed"] == []


# --------------------------------------------------------------------------- wrong region


def test_wrong_region_names_the_region_and_changes_nothing(world, tmp_path, credentials):
    status, message = play(
        tmp_path, "backup.yml", backup_vars(world, tmp_path, stack_rds_region=OTHER), "backup"
    )
    assert status == "failed"
    assert world["db"] in message, message
    assert OTHER in message, message
    assert "not found" in message, message
    assert no_set_left(tmp_path)
    assert manual_snapshots(world, OTHER) == set()

    status, message = play(
        tmp_path, "rds_restore.yml", restore_vars(world, rds_restore_region=OTHER), "restore"
    )
    assert status == "failed"
    assert world["snapshot"] in message, message
    assert OTHER in message, message
    assert "not found" in message, message
    assert f"{world['db']}-restored" not in instances(world, OTHER)

    status, message = play(
        tmp_path, "rds_restore.yml", restore_vars(world, rds_restore_region="eu-westt-1"), "typo"
    )
    assert status == "failed"
    assert "region 'eu-westt-1' is not an AWS region name" in message, message
    assert "did you mean eu-west-1" in message, message


# ---------------------------------------------------------------------------- wait timeout


class StuckProxy:
    """HTTP proxy to moto that shows the DB instances and snapshots whose names contain
    ``marker`` as still being created (AWS's status while a long operation runs)."""

    def __init__(self, upstream: str, marker: str):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = urllib.request.Request(
                    upstream + self.path, data=body, method="POST",
                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                )  # fmt: skip
                try:
                    with urllib.request.urlopen(request, timeout=30) as resp:
                        status, headers, data = resp.status, resp.headers, resp.read()
                except urllib.error.HTTPError as exc:
                    status, headers, data = exc.code, exc.headers, exc.read()
                data = proxy.rewrite(data)
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.marker = marker.encode()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def rewrite(self, data: bytes) -> bytes:
        def stuck(match):
            block = match.group(0)
            if self.marker not in block:
                return block
            block = re.sub(rb"<Status>available</Status>", b"<Status>creating</Status>", block)
            block = re.sub(
                rb"<DBInstanceStatus>available</DBInstanceStatus>",
                b"<DBInstanceStatus>creating</DBInstanceStatus>",
                block,
            )
            return re.sub(rb"<PercentProgress>\d+</PercentProgress>",
                          b"<PercentProgress>40</PercentProgress>", block)  # fmt: skip

        return re.sub(rb"<(DBSnapshot|DBInstance)>.*?</\1>", stuck, data, flags=re.S)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stuck(moto_endpoint):
    proxies = []

    def make(marker):
        proxies.append(StuckProxy(moto_endpoint, marker))
        return proxies[-1].url

    yield make
    for proxy in proxies:
        proxy.close()


def test_a_snapshot_wait_that_times_out_leaves_no_record(world, tmp_path, credentials, stuck):
    endpoint = stuck(f"{world['db']}-fault-1")
    status, message = play(
        tmp_path,
        "backup.yml",
        backup_vars(world, tmp_path, stack_rds_endpoint_url=endpoint, backup_rds_wait_timeout=3),
    )
    assert status == "failed"
    assert "timed out after" in message, message
    assert "the last state was 'creating" in message, message
    assert "run the task again later" in message
    assert no_set_left(tmp_path)  # no SET.json for a snapshot that is not available


def test_a_restore_wait_that_times_out_says_how_to_pick_it_up(world, tmp_path, credentials, stuck):
    target = f"{world['db']}-slow"
    endpoint = stuck(target)
    status, message = play(
        tmp_path,
        "rds_restore.yml",
        restore_vars(
            world,
            rds_restore_endpoint_url=endpoint,
            rds_restore_target=target,
            rds_restore_wait_timeout=3,
        ),
    )
    assert status == "failed"
    assert "timed out after" in message, message
    assert "the last state was 'creating'" in message, message
    # The old instance is not touched before the new one is available.
    tags = world["rds"].list_tags_for_resource(
        ResourceName=world["rds"].describe_db_instances(DBInstanceIdentifier=world["db"])[
            "DBInstances"
        ][0]["DBInstanceArn"]
    )["TagList"]
    assert "opsauto:restored-to" not in {t["Key"] for t in tags}

    # The rerun with the operation finished (no proxy) picks the same instance up.
    status, message = play(
        tmp_path, "rds_restore.yml", restore_vars(world, rds_restore_target=target), "rerun"
    )
    assert status == "successful", message
