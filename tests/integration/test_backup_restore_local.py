"""Backup and restore playbooks against this machine's Docker engine through ansible-runner:
the faults an operator meets (a backup already running, wrong password, restore without
confirmation, unknown or corrupted backup), each with a clear error and nothing lost."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time

import pytest
from ansible.module_utils.op_lock import acquire, new_holder

from tests.conftest import (
    AWS_TEST_CREDENTIALS,
    compose_down,
    free_port,
    moto_client,
    run,
    run_playbook,
)

PROJECT = "opsauto-it-backup"
PASSWORD = "integration-password-2"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_ready):
    base = tmp_path_factory.mktemp("backup")
    common = {
        "stack_project_name": PROJECT,
        "stack_project_dir": str(base / PROJECT),
        "stack_http_port": 18180,
        "stack_prometheus_port": 19190,
        "stack_db_password": PASSWORD,
        "deploy_backend_replicas": 1,
        "deploy_health_timeout": 90,
        "stack_backup_dir": str(base / "backups"),
        "backup_metrics_dir": str(base / "metrics"),
        "restore_drill_metrics_dir": "",
    }
    result, failures = run_playbook(base / "runner", "deploy.yml", common)
    assert result.rc == 0, failures
    psql_exec("CREATE TABLE IF NOT EXISTS notes (id int PRIMARY KEY, body text)")
    psql_exec("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 500) g")
    yield base, common
    compose_down(PROJECT)


def psql_exec(sql: str, db: str = "appdb") -> str:
    proc = run(
        ["docker", "compose", "-p", PROJECT, "exec", "-T", "db"]
        + ["psql", "-U", "app", "-d", db, "-v", "ON_ERROR_STOP=1", "-tAc", sql]
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


HELD_LOCK_SQL = (
    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
    " WHERE c.relname = 'notes' AND l.mode = 'AccessExclusiveLock' AND l.granted"
)


def play(stack, tmp_path, playbook: str, **extra):
    _, common = stack
    return run_playbook(tmp_path, playbook, {**common, **extra})


def module_results(result, module: str) -> list[dict]:
    """The results of the tasks that ran ``module``, in order."""
    return [
        e["event_data"]["res"]
        for e in result.events
        if e.get("event") == "runner_on_ok"
        and str(e["event_data"].get("task_action", "")).endswith(module)
    ]


def sets(stack) -> list[str]:
    base, _ = stack
    path = base / "backups"
    return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.exists() else []


def test_backup_then_second_run_changes_nothing(stack, tmp_path):
    result, failures = play(stack, tmp_path / "a", "backup.yml", backup_id="it-1")
    assert result.rc == 0, failures
    meta = json.loads((stack[0] / "backups" / "it-1" / "SET.json").read_text())
    assert meta["verified"] is True
    result, failures = play(stack, tmp_path / "b", "backup.yml", backup_id="it-1")
    assert result.rc == 0, failures
    assert result.stats["changed"].get("localhost", 0) == 0, result.stats


def test_long_dump_shows_progress_and_still_verifies(stack, tmp_path):
    # A session holding an exclusive lock on a table makes pg_dump wait for it: a real
    # dump that waits several seconds, during which Ansible must print progress lines.
    locker = subprocess.Popen(
        ["docker", "compose", "-p", PROJECT, "exec", "-T", "db", "psql", "-U", "app", "-d",
         "appdb", "-c", "BEGIN; LOCK TABLE notes IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(12);"
         " COMMIT;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # Start the backup only once the lock is held: on a busy machine `compose exec` can
        # take longer to get it than the backup takes to read the table.
        deadline = time.monotonic() + 30
        while psql_exec(HELD_LOCK_SQL) != "1":
            assert time.monotonic() < deadline, "the test's table lock was not taken in 30 s"
            time.sleep(0.2)
        result, failures = play(
            stack, tmp_path, "backup.yml", backup_id="it-progress", backup_progress_interval=1
        )
    finally:
        locker.wait(timeout=60)
    assert result.rc == 0, failures
    polls = [e for e in result.events if e.get("event") == "runner_on_async_poll"]
    assert len(polls) >= 2, [e.get("event") for e in result.events]
    meta = json.loads((stack[0] / "backups" / "it-progress" / "SET.json").read_text())
    assert meta["verified"] is True
    assert [d["label"] for d in meta["dumps"]] == ["appdb", "globals"]
    manifest = json.loads(
        (stack[0] / "backups" / "it-progress" / "appdb.manifest.json").read_text()
    )
    assert manifest["row_counts"]["public.notes"] == 500
    assert manifest["timings"]["dump_seconds"] >= 3


def test_backup_refused_while_another_holds_the_lock(stack, tmp_path):
    # A live holder: this test process on this host (module_utils/op_lock.py's record).
    lock = stack[0] / "backups" / ".lock"
    live = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": None}
    assert acquire(str(lock), new_holder("backup it-earlier", live))["acquired"]
    try:
        result, failures = play(stack, tmp_path, "backup.yml", backup_id="it-locked")
    finally:
        shutil.rmtree(lock)
    assert result.rc != 0
    assert "Another backup is running" in " ".join(failures)
    assert f"backup it-earlier (controller pid {os.getpid()}" in " ".join(failures)
    assert "it-locked" not in sets(stack)


def test_wrong_password_fails_clearly_and_leaves_no_set(stack, tmp_path):
    # the backup connects as the admin identity (the reference stack's: postgres, no password)
    result, failures = play(
        stack, tmp_path, "backup.yml", backup_id="it-badpw",
        stack_db_admin_password="wrong-password-9",
    )  # fmt: skip
    assert result.rc != 0
    message = " ".join(failures).lower()
    assert "password" in message, failures
    assert "it-badpw" not in sets(stack)
    assert "it-1" in sets(stack)  # earlier backups untouched


def test_rds_target_without_an_instance_is_refused_with_the_fix(stack, tmp_path):
    # backup_target=rds is built (tests/integration/test_backup_rds.py); without the RDS
    # instance it is refused before AWS is called, naming the variable, and no set is written.
    before = sets(stack)
    result, failures = play(stack, tmp_path, "backup.yml", backup_target="rds", backup_id="it-rds")
    assert result.rc != 0
    assert "stack_rds_instance_identifier" in " ".join(failures)
    assert sets(stack) == before


def test_backup_before_deploy_takes_a_set_first(stack, tmp_path):
    result, failures = play(
        stack, tmp_path, "deploy.yml", backup_before_deploy=True, backup_id="it-predeploy"
    )
    assert result.rc == 0, failures
    assert "it-predeploy" in sets(stack)
    base, _ = stack
    meta = json.loads((base / "backups" / "it-predeploy" / "SET.json").read_text())
    assert meta["verified"] is True
    assert meta["databases"] == ["appdb"]


def test_replace_without_confirmation_is_refused(stack, tmp_path):
    before = psql_exec("SELECT count(*) FROM notes")
    result, failures = play(stack, tmp_path, "restore.yml", restore_mode="replace")
    assert result.rc != 0
    assert "-e restore_confirm=appdb" in " ".join(failures)
    assert psql_exec("SELECT count(*) FROM notes") == before


def test_unknown_backup_id_lists_what_exists(stack, tmp_path):
    result, failures = play(stack, tmp_path, "restore.yml", restore_backup_id="nope")
    assert result.rc != 0
    message = " ".join(failures)
    assert "No complete, verified backup set 'nope'" in message
    assert "it-1" in message


def test_corrupted_backup_is_refused_before_touching_the_database(stack, tmp_path):
    result, failures = play(stack, tmp_path / "a", "backup.yml", backup_id="it-corrupt")
    assert result.rc == 0, failures
    dump = stack[0] / "backups" / "it-corrupt" / "appdb.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    psql_exec("DELETE FROM notes WHERE id > 400")
    result, failures = play(
        stack, tmp_path / "b", "restore.yml",
        restore_backup_id="it-corrupt", restore_mode="replace", restore_confirm="appdb",
    )  # fmt: skip
    assert result.rc != 0
    assert "sha256" in " ".join(failures).lower() or "corrupt" in " ".join(failures).lower()
    assert psql_exec("SELECT count(*) FROM notes") == "400"  # live database untouched


def test_encrypted_set_backup_then_replace_restore(stack, tmp_path):
    identity = tmp_path / "age-identity.txt"
    run(["age-keygen", "-o", str(identity)])
    public = run(["age-keygen", "-y", str(identity)]).stdout.strip()
    assert public.startswith("age1"), "install age (apt-get install age)"
    backed_up = psql_exec("SELECT count(*) FROM notes")
    result, failures = play(
        stack, tmp_path / "a", "backup.yml", backup_id="it-enc", backup_encrypt_recipients=[public]
    )
    assert result.rc == 0, failures
    set_dir = stack[0] / "backups" / "it-enc"
    meta = json.loads((set_dir / "SET.json").read_text())
    assert meta["verified"] is True
    assert sorted(d["file"] for d in meta["dumps"]) == ["appdb.dump.age", "globals.sql.age"]
    assert all(d["encryption"]["recipients"] == [public] for d in meta["dumps"])
    assert b"note 42" not in (set_dir / "appdb.dump.age").read_bytes()
    assert "config/env.age" in meta["config"]
    assert not (set_dir / "config" / "env.masked").exists()
    env_age = set_dir / "config" / "env.age"
    assert PASSWORD.encode() not in env_age.read_bytes()
    env = run(["age", "-d", "-i", str(identity), str(env_age)])
    assert PASSWORD in env.stdout  # kept whole, since only ciphertext is on disk

    psql_exec("DELETE FROM notes WHERE id > 20")
    replace = {
        "restore_backup_id": "it-enc",
        "restore_mode": "replace",
        "restore_confirm": "appdb",
    }
    result, failures = play(stack, tmp_path / "b", "restore.yml", **replace)
    assert result.rc != 0
    assert "decrypt_identity_file" in " ".join(failures)
    assert psql_exec("SELECT count(*) FROM notes") == "20"  # live database untouched
    result, failures = play(
        stack, tmp_path / "c", "restore.yml", restore_decrypt_identity_file=str(identity), **replace
    )
    assert result.rc == 0, failures
    assert psql_exec("SELECT count(*) FROM notes") == backed_up
    assert "AGE-SECRET-KEY" not in json.dumps([e.get("event_data") for e in result.events])
    # the dump is decrypted and verified once, by the plan step; the restore takes that over
    planned, restored = module_results(result, "pg_backup_restore")
    assert "reused" not in planned["verification"]["backup"]
    assert planned["verification"]["backup"]["plaintext_sha256"]
    assert "not read again" in restored["verification"]["backup"]["reused"]


def s3_vars(endpoint: str, bucket: str) -> dict:
    return {
        "stack_backup_s3_bucket": bucket,
        "stack_backup_s3_endpoint_url": endpoint,
        "stack_backup_s3_access_key": AWS_TEST_CREDENTIALS["access_key"],
        "stack_backup_s3_secret_key": AWS_TEST_CREDENTIALS["secret_key"],
    }


def test_offsite_copy_to_s3_then_restore_from_s3(stack, tmp_path, moto_endpoint, s3_client):
    extra = s3_vars(moto_endpoint, "opsauto-it-offsite")
    backed_up = psql_exec("SELECT count(*) FROM notes")
    result, failures = play(stack, tmp_path / "a", "backup.yml", backup_id="it-s3", **extra)
    assert result.rc == 0, failures
    client = s3_client
    bucket = "opsauto-it-offsite"
    assert client.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rules[0]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    local = stack[0] / "backups" / "it-s3" / "appdb.dump"
    head = client.head_object(Bucket=bucket, Key=f"{PROJECT}/it-s3/appdb.dump")
    assert head["Metadata"]["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
    assert head["ServerSideEncryption"] == "AES256"

    shutil.rmtree(stack[0] / "backups" / "it-s3")  # the host lost its local copy
    psql_exec("DELETE FROM notes WHERE id > 50")
    result, failures = play(
        stack, tmp_path / "b", "restore.yml", restore_source="s3", restore_backup_id="it-s3",
        restore_mode="replace", restore_confirm="appdb", **extra,
    )  # fmt: skip
    assert result.rc == 0, failures
    assert psql_exec("SELECT count(*) FROM notes") == backed_up


def test_offsite_copy_with_a_kms_key_and_object_lock(stack, tmp_path, moto_endpoint, s3_client):
    # The role passes the KMS key and the retention through: a bucket it creates gets Object
    # Lock and the key as default encryption; every object carries both.
    key = moto_client(moto_endpoint, "kms", "us-east-1").create_key()["KeyMetadata"]["Arn"]
    bucket = "opsauto-it-locked"
    extra = {**s3_vars(moto_endpoint, bucket), "backup_s3_sse": "aws:kms",
             "backup_s3_kms_key_id": key, "backup_s3_object_lock_days": 3}  # fmt: skip
    result, failures = play(stack, tmp_path / "a", "backup.yml", backup_id="it-lock", **extra)
    assert result.rc == 0, failures
    lock = s3_client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled"
    rule = s3_client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    default = rule["Rules"][0]["ApplyServerSideEncryptionByDefault"]
    assert (default["SSEAlgorithm"], default["KMSMasterKeyID"]) == ("aws:kms", key)
    head = s3_client.head_object(Bucket=bucket, Key=f"{PROJECT}/it-lock/appdb.dump")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["ObjectLockMode"] == "GOVERNANCE"
    days = (head["ObjectLockRetainUntilDate"].timestamp() - time.time()) / 86400
    assert 2.9 < days <= 3.01
    # A bucket that exists without Object Lock: refused, naming the command that enables it.
    s3_client.create_bucket(Bucket="opsauto-it-unlocked")
    extra = {**s3_vars(moto_endpoint, "opsauto-it-unlocked"), "backup_s3_object_lock_days": 3}
    result, failures = play(stack, tmp_path / "b", "backup.yml", backup_id="it-nolock", **extra)
    assert result.rc != 0
    message = " ".join(failures)
    assert "put-object-lock-configuration --bucket opsauto-it-unlocked" in message, message
    assert "was kept" in message
    assert s3_client.list_objects_v2(Bucket="opsauto-it-unlocked").get("KeyCount") == 0


def test_s3_down_keeps_the_local_set_and_says_so(stack, tmp_path):
    extra = s3_vars(f"http://127.0.0.1:{free_port()}", "opsauto-it-down")
    result, failures = play(stack, tmp_path, "backup.yml", backup_id="it-s3down", **extra)
    assert result.rc != 0
    message = " ".join(failures)
    assert "is complete and verified" in message
    assert "was kept" in message
    meta = json.loads((stack[0] / "backups" / "it-s3down" / "SET.json").read_text())
    assert meta["verified"] is True
    flag = (stack[0] / "metrics" / "opsauto_backup_offsite.prom").read_text()
    assert 'opsauto_backup_offsite_success{project="opsauto-it-backup"} 0' in flag


def test_retention_deletes_only_this_projects_oldest_sets(stack, tmp_path):
    # Real sets made by the role in their own backup directory, beside a foreign directory and
    # a safety set: keep-last 2 removes the oldest scheduled set only.
    backups = tmp_path / "retention"
    backups.mkdir(mode=0o700)
    foreign = backups / "operator-copy"
    foreign.mkdir()
    (foreign / "prod.sql").write_text("-- a dump the operator put here by hand\n")
    policy = {
        "stack_backup_dir": str(backups), "backup_keep_last": 2, "backup_keep_daily": 0,
        "backup_keep_weekly": 0, "backup_keep_monthly": 0, "backup_keep_safety": 1,
    }  # fmt: skip
    result, failures = play(stack, tmp_path / "safety", "backup.yml", backup_id="pre-restore-r0",
                            backup_purpose="safety", **policy)  # fmt: skip
    assert result.rc == 0, failures
    for n in (1, 2, 3):
        result, failures = play(stack, tmp_path / f"r{n}", "backup.yml", backup_id=f"r{n}",
                                **policy)  # fmt: skip
        assert result.rc == 0, failures
        time.sleep(1.1)  # distinct creation times (second resolution)
    left = sorted(p.name for p in backups.iterdir() if not p.name.startswith("."))
    assert left == ["operator-copy", "pre-restore-r0", "r2", "r3"], left
    assert (foreign / "prod.sql").read_text().startswith("-- a dump")
    # the deleted set is gone whole, the kept ones are intact and verified
    for name in ("r2", "r3"):
        meta = json.loads((backups / name / "SET.json").read_text())
        assert meta["verified"] is True
        for dump in meta["dumps"]:
            data = (backups / name / dump["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == dump["sha256"]
