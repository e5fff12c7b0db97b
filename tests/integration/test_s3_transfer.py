"""Backup sets to and from a real local S3 endpoint (moto server on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from ansible.module_utils.backup_sets import BackupSetError
from ansible.module_utils.s3_transfer import (
    TransferError,
    download_set,
    file_digests,
    set_files,
    upload_set,
)

from tests.conftest import AWS_TEST_CREDENTIALS, ROOT, free_port

MIB = 1024 * 1024


@pytest.fixture
def s3(s3_client):
    bucket = f"opsauto-test-{os.urandom(4).hex()}"
    s3_client.create_bucket(Bucket=bucket)
    return s3_client, bucket


@pytest.fixture
def backup_set(tmp_path):
    path = tmp_path / "set-1"
    (path / "config").mkdir(parents=True)
    (path / "appdb.dump").write_bytes(os.urandom(12 * MIB + 123))  # multipart at 5 MiB parts
    (path / "appdb.manifest.json").write_text('{"sha256": "x"}')
    (path / "config" / "compose.yaml").write_text("services: {}\n")
    (path / ".appdb.lock").write_text("")
    (path / "SET.json").write_text(json.dumps({"backup_id": "set-1", "verified": True}))
    return path


def test_set_files_sealed_last_without_hidden_files(backup_set):
    names = set_files(str(backup_set))
    assert names[-1] == "SET.json"
    assert ".appdb.lock" not in names
    assert "config/compose.yaml" in names


def test_upload_verifies_etag_and_skips_on_rerun(s3, backup_set):
    client, bucket = s3
    result = upload_set(client, str(backup_set), bucket, "proj/set-1", 5 * MIB, "AES256")
    assert len(result["uploaded"]) == 4
    head = client.head_object(Bucket=bucket, Key="proj/set-1/appdb.dump")
    digests = file_digests(str(backup_set / "appdb.dump"), 5 * MIB)
    assert digests["parts"] == 3
    assert head["ETag"].strip('"') == digests["etag"]  # S3's own multipart ETag
    assert (
        head["Metadata"]["sha256"]
        == hashlib.sha256((backup_set / "appdb.dump").read_bytes()).hexdigest()
    )
    assert head["ServerSideEncryption"] == "AES256"
    again = upload_set(client, str(backup_set), bucket, "proj/set-1", 5 * MIB, "AES256")
    assert again["uploaded"] == []
    assert len(again["skipped"]) == 4


def test_download_round_trip_and_rerun(s3, backup_set, tmp_path):
    client, bucket = s3
    upload_set(client, str(backup_set), bucket, "proj/set-1", 5 * MIB, None)
    dest = tmp_path / "restored"
    result = download_set(client, bucket, "proj/set-1", str(dest))
    assert sorted(result["downloaded"]) == sorted(
        f"proj/set-1/{n}" for n in set_files(str(backup_set))
    )
    for name in set_files(str(backup_set)):
        assert (dest / name).read_bytes() == (backup_set / name).read_bytes()
    assert download_set(client, bucket, "proj/set-1", str(dest))["downloaded"] == []


def test_corrupt_object_is_refused_and_leaves_no_file(s3, backup_set, tmp_path):
    client, bucket = s3
    upload_set(client, str(backup_set), bucket, "proj/set-1", 5 * MIB, None)
    good = client.head_object(Bucket=bucket, Key="proj/set-1/appdb.dump")["Metadata"]
    client.put_object(Bucket=bucket, Key="proj/set-1/appdb.dump", Body=b"garbage", Metadata=good)
    dest = tmp_path / "restored"
    with pytest.raises(TransferError, match="is corrupt: sha256"):
        download_set(client, bucket, "proj/set-1", str(dest))
    assert not (dest / "appdb.dump").exists()
    assert not [p for p in dest.iterdir() if ".partial-" in p.name]


def test_incomplete_set_in_bucket_is_refused(s3, backup_set, tmp_path):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="proj/half/appdb.dump", Body=b"x")
    with pytest.raises(TransferError, match="no complete backup set"):
        download_set(client, bucket, "proj/half", str(tmp_path / "d"))


def test_endpoint_down_names_the_fix(backup_set):
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
        config=boto3.session.Config(connect_timeout=1, retries={"max_attempts": 1}),
    )
    with pytest.raises(TransferError, match="check the endpoint"):
        upload_set(client, str(backup_set), "bucket-x", "p", 5 * MIB, None)
    assert (backup_set / "appdb.dump").exists()  # the local copy is kept


def test_module_check_mode_uploads_nothing(s3, backup_set, moto_endpoint):
    client, bucket = s3
    args = {
        "set_dir": str(backup_set),
        "bucket": bucket,
        "prefix": "proj/set-1",
        "endpoint_url": moto_endpoint,
        "part_size_mb": 5,
        **AWS_TEST_CREDENTIALS,
    }
    ansible = str(Path(sys.executable).parent / "ansible")
    cmd = [ansible, "localhost", "-m", "s3_backup_copy", "-a", json.dumps(args), "-o"]
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    checked = subprocess.run([*cmd, "--check"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert "CHANGED" in checked.stdout, checked.stdout + checked.stderr
    assert "testing-secret" not in checked.stdout
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert "CHANGED" in done.stdout, done.stdout + done.stderr
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 4


def test_a_set_whose_set_json_is_not_a_set_description_is_not_uploaded(s3, backup_set):
    client, bucket = s3
    (backup_set / "SET.json").write_text(json.dumps({"backup_id": "set-1"}))  # no verified
    with pytest.raises(BackupSetError, match="not a valid backup set description"):
        upload_set(client, str(backup_set), bucket, "proj/set-1", 5 * MIB, "AES256")
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
