"""Backup sets to and from a real local S3 endpoint (moto server on 127.0.0.1)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from ansible.module_utils.backup_sets import SET_FILE, BackupSetError, build_set
from ansible.module_utils.s3_transfer import (
    TransferError,
    download_set,
    file_digests,
    set_files,
    upload_set,
)
from botocore.exceptions import ClientError

from tests.conftest import AWS_TEST_CREDENTIALS, ROOT, free_port, run_playbook

MIB = 1024 * 1024


@pytest.fixture
def s3(s3_client):
    bucket = f"opsauto-test-{os.urandom(4).hex()}"
    s3_client.create_bucket(Bucket=bucket)
    return s3_client, bucket


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def backup_set(tmp_path):
    """A sealed set as the backup writes it: a dump, its manifest, a config snapshot and a
    SET.json (backup_sets.build_set) recording the sha256 of the dump and the config file."""
    path = tmp_path / "set-1"
    (path / "config").mkdir(parents=True)
    dump = os.urandom(12 * MIB + 123)  # multipart at 5 MiB parts
    (path / "appdb.dump").write_bytes(dump)
    manifest = {
        "manifest_format": 1, "backup_id": "set-1", "label": "appdb", "file": "appdb.dump",
        "mode": "database", "format": "custom", "compression": "none", "size": len(dump),
        "sha256": sha256(dump), "created": "2026-11-29T03:00:00Z", "verified": True,
    }  # fmt: skip
    (path / "appdb.manifest.json").write_text(json.dumps(manifest))
    compose = b"services: {}\n"
    (path / "config" / "compose.yaml").write_bytes(compose)
    (path / ".appdb.lock").write_text("")
    meta = build_set(
        "set-1", "host-1", "proj", ["appdb"], [manifest], {"compose.yaml": sha256(compose)}
    )
    (path / "SET.json").write_text(json.dumps(meta))
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


# ------------------------------------------------------------------ hostile objects (issue 12)


def planted_files(root: Path, content: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.read_bytes() == content]


@pytest.mark.parametrize(
    "name",
    [
        "../escape.txt",
        "config/../../escape.txt",
        "ABSOLUTE",  # replaced by an absolute path under tmp_path
        "config//double.txt",
        "config\\windows.txt",
        "nul\x00.txt",
        "./dot.txt",
    ],
)
def test_download_refuses_a_key_that_could_leave_the_set_dir(s3, backup_set, tmp_path, name):
    client, bucket = s3
    upload_set(client, str(backup_set), bucket, "proj/set-1", 5 * MIB, None)
    if name == "ABSOLUTE":
        name = str(tmp_path / "outside" / "abs.txt")  # key proj/set-1//tmp/.../abs.txt
    key = f"proj/set-1/{name}"
    planted = b"planted by a writer to the bucket"
    client.put_object(Bucket=bucket, Key=key, Body=planted, Metadata={"sha256": sha256(planted)})
    dest = tmp_path / "area" / "backups" / "set-1"
    with pytest.raises(TransferError) as caught:
        download_set(client, bucket, "proj/set-1", str(dest))
    assert repr(key) in str(caught.value)  # the message names the key
    assert "Nothing was downloaded" in str(caught.value)
    assert not dest.exists()  # refused before anything was written, even the good files
    assert planted_files(tmp_path, planted) == []


def test_download_confines_files_through_a_symlinked_directory(s3, backup_set, tmp_path):
    client, bucket = s3
    upload_set(client, str(backup_set), bucket, "proj/set-1", 5 * MIB, None)
    dest = tmp_path / "restored"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (dest / "config").symlink_to(elsewhere)  # config/compose.yaml would land in elsewhere/
    with pytest.raises(TransferError, match="outside"):
        download_set(client, bucket, "proj/set-1", str(dest))
    assert list(elsewhere.iterdir()) == []
    assert not (dest / "SET.json").exists()


@pytest.mark.parametrize("name", ["appdb.dump", "config/compose.yaml", "appdb.manifest.json"])
def test_object_replaced_with_consistent_metadata_is_refused(s3, backup_set, tmp_path, name):
    """A writer to the bucket replaces an object and its sha256 metadata together: only the
    checksums in SET.json (and the manifest's agreement with it) can tell."""
    client, bucket = s3
    upload_set(client, str(backup_set), bucket, "proj/set-1", 5 * MIB, None)
    if name.endswith(".manifest.json"):
        manifest = json.loads((backup_set / name).read_text())
        manifest["sha256"] = sha256(b"another dump")
        evil = json.dumps(manifest).encode()
    else:
        evil = b"consistent but different content"
    key = f"proj/set-1/{name}"
    client.put_object(Bucket=bucket, Key=key, Body=evil, Metadata={"sha256": sha256(evil)})
    dest = tmp_path / "restored"
    with pytest.raises(TransferError, match=f"{name} is corrupt: .*{SET_FILE}"):
        download_set(client, bucket, "proj/set-1", str(dest))
    assert not (dest / name).exists()
    assert not (dest / SET_FILE).exists()  # no set that looks complete
    assert planted_files(tmp_path / "restored", evil) == []
    assert not [p for p in dest.rglob("*") if ".partial-" in p.name]


def test_object_not_described_by_set_json_is_not_downloaded(s3, backup_set, tmp_path):
    client, bucket = s3
    upload_set(client, str(backup_set), bucket, "proj/set-1", 5 * MIB, None)
    extra = b"#!/bin/sh\necho planted\n"
    client.put_object(
        Bucket=bucket, Key="proj/set-1/hook.sh", Body=extra, Metadata={"sha256": sha256(extra)}
    )
    dest = tmp_path / "restored"
    result = download_set(client, bucket, "proj/set-1", str(dest))
    assert result["ignored"] == ["proj/set-1/hook.sh"]
    assert not (dest / "hook.sh").exists()
    for name in set_files(str(backup_set)):
        assert (dest / name).read_bytes() == (backup_set / name).read_bytes()


def test_restore_refuses_a_hostile_backup_id_before_anything_runs(s3, backup_set, tmp_path):
    client, bucket = s3
    # A complete set under proj/../escaped/: downloading it to <backup dir>/../escaped would
    # write outside the backup directory.
    upload_set(client, str(backup_set), bucket, "proj/../escaped", 5 * MIB, None)
    backups = tmp_path / "area" / "backups"
    extravars = {
        "restore_source": "s3",
        "restore_backup_id": "../escaped",
        "stack_project_name": "opsauto-it-s3-hostile",
        "stack_backup_dir": str(backups),
        "stack_backup_s3_bucket": bucket,
        "stack_backup_s3_prefix": "proj",
        "stack_backup_s3_endpoint_url": client.meta.endpoint_url,
        "stack_backup_s3_access_key": AWS_TEST_CREDENTIALS["access_key"],
        "stack_backup_s3_secret_key": AWS_TEST_CREDENTIALS["secret_key"],
    }
    for playbook in ("restore.yml", "restore_drill.yml"):
        result, failures = run_playbook(tmp_path / playbook, playbook, extravars, timeout=300)
        assert result.rc != 0
        message = " ".join(failures)
        assert "restore_backup_id '../escaped' is not allowed" in message, failures
        assert len(failures) == 1, failures
        started = [
            (e["event_data"].get("task", ""), e["event_data"].get("task_action", ""))
            for e in result.events
            if e.get("event") == "runner_on_start"
        ]
        # refused by the first task of the set selection: no container lookup, no download;
        # only the operation lock's release (the role's `always`) may follow
        after = [t for t, _ in started if "operation lock" not in t]
        assert after[-1] == "Refuse a backup id that is not a plain name", started
        assert not [a for _, a in started if "docker" in a or a.endswith("s3_backup_copy")]
    assert not (tmp_path / "area" / "escaped").exists()
    assert not backups.exists()


# ------------------------------------------------------------------ SSE-KMS and Object Lock


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def s3_client_for(endpoint: str, **handlers):
    """A fresh client of the moto endpoint; handlers rewrite parsed responses
    (after-call.s3.<Operation>), as AWS answers where moto does not."""
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=AWS_TEST_CREDENTIALS["access_key"],
        aws_secret_access_key=AWS_TEST_CREDENTIALS["secret_key"],
    )
    for operation, handler in handlers.items():
        client.meta.events.register(f"after-call.s3.{operation}", handler)
    return client


@pytest.fixture
def kms_key(moto_endpoint):
    kms = boto3.client(
        "kms",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id=AWS_TEST_CREDENTIALS["access_key"],
        aws_secret_access_key=AWS_TEST_CREDENTIALS["secret_key"],
    )
    return kms.create_key(Description="opsauto test")["KeyMetadata"]["KeyId"]


def kms_etag(http_response, parsed, **_kwargs):
    """Under SSE-KMS the ETag S3 reports is not the MD5 of the content."""
    if "ETag" in parsed:
        parsed["ETag"] = f'"{os.urandom(16).hex()}"'


def test_kms_upload_is_verified_by_sha256_checksums_not_etag(
    s3, backup_set, kms_key, moto_endpoint
):
    _, bucket = s3
    client = s3_client_for(moto_endpoint, HeadObject=kms_etag)
    result = upload_set(
        client, str(backup_set), bucket, "proj/set-1", 5 * MIB, "aws:kms", kms_key_id=kms_key
    )
    assert len(result["uploaded"]) == 4
    dump = (backup_set / "appdb.dump").read_bytes()
    head = client.head_object(Bucket=bucket, Key="proj/set-1/appdb.dump", ChecksumMode="ENABLED")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith(kms_key)
    parts = [hashlib.sha256(dump[i : i + 5 * MIB]).digest() for i in range(0, len(dump), 5 * MIB)]
    assert head["ChecksumSHA256"].split("-")[0] == b64(hashlib.sha256(b"".join(parts)).digest())
    sealed = client.head_object(Bucket=bucket, Key="proj/set-1/SET.json", ChecksumMode="ENABLED")
    assert sealed["ChecksumSHA256"] == b64(
        hashlib.sha256((backup_set / "SET.json").read_bytes()).digest()
    )
    again = upload_set(client, str(backup_set), bucket, "proj/set-1", 5 * MIB, "aws:kms")
    assert again["uploaded"] == []
    assert len(again["skipped"]) == 4


def test_kms_upload_whose_stored_checksum_differs_is_an_error(s3, backup_set, moto_endpoint):
    _, bucket = s3

    def wrong_checksum(http_response, parsed, **_kwargs):
        if "ChecksumSHA256" in parsed:
            parsed["ChecksumSHA256"] = b64(hashlib.sha256(b"other bytes").digest())

    client = s3_client_for(moto_endpoint, HeadObject=wrong_checksum)
    with pytest.raises(TransferError, match="does not match .* after upload"):
        upload_set(client, str(backup_set), bucket, "proj/set-1", 5 * MIB, "aws:kms")
    assert (backup_set / "appdb.dump").exists()


def test_object_lock_retention_is_set_on_every_object(s3_client, backup_set):
    bucket = f"opsauto-lock-{os.urandom(4).hex()}"
    s3_client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    before = datetime.now(UTC).replace(microsecond=0)
    result = upload_set(
        s3_client, str(backup_set), bucket, "proj/set-1", 5 * MIB, "AES256",
        lock_days=7, lock_mode="GOVERNANCE",
    )  # fmt: skip
    assert len(result["uploaded"]) == 4
    for key in result["uploaded"]:
        head = s3_client.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE"
        assert head["ObjectLockRetainUntilDate"] >= before + timedelta(days=7)
        assert head["ObjectLockRetainUntilDate"] <= before + timedelta(days=7, minutes=5)
    version = s3_client.head_object(Bucket=bucket, Key="proj/set-1/appdb.dump")["VersionId"]
    with pytest.raises(ClientError, match="AccessDenied"):
        s3_client.delete_object(Bucket=bucket, Key="proj/set-1/appdb.dump", VersionId=version)


def test_object_lock_on_a_bucket_without_it_is_refused_before_uploading(s3, backup_set):
    client, bucket = s3
    with pytest.raises(TransferError, match=f"{bucket} has no Object Lock"):
        upload_set(client, str(backup_set), bucket, "proj/set-1", 5 * MIB, "AES256", lock_days=7)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_module_kms_lock_upload_and_download_warning(s3_client, backup_set, kms_key, tmp_path):
    bucket = f"opsauto-lock-{os.urandom(4).hex()}"
    s3_client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    common = {
        "bucket": bucket,
        "prefix": "proj/set-1",
        "endpoint_url": s3_client.meta.endpoint_url,
        **AWS_TEST_CREDENTIALS,
    }
    up = {
        **common,
        "set_dir": str(backup_set),
        "part_size_mb": 5,
        "sse": "aws:kms",
        "kms_key_id": kms_key,
        "object_lock_days": 3,
        "object_lock_mode": "COMPLIANCE",
    }
    ansible = str(Path(sys.executable).parent / "ansible")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}

    def module(args):  # the default callback, which prints the module's warnings
        cmd = [ansible, "localhost", "-m", "s3_backup_copy", "-a", json.dumps(args)]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)

    done = module(up)
    assert "CHANGED" in done.stdout, done.stdout + done.stderr
    head = s3_client.head_object(Bucket=bucket, Key="proj/set-1/SET.json")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ServerSideEncryption"] == "aws:kms"
    planted = b"not part of the set"
    s3_client.put_object(
        Bucket=bucket,
        Key="proj/set-1/extra.bin",
        Body=planted,
        Metadata={"sha256": sha256(planted)},
    )
    dest = tmp_path / "restored"
    fetched = module({**common, "direction": "download", "set_dir": str(dest)})
    assert "CHANGED" in fetched.stdout, fetched.stdout + fetched.stderr
    assert '"ignored": [\n        "proj/set-1/extra.bin"\n    ]' in fetched.stdout
    assert "Not downloaded, as SET.json does not describe them: proj/set-1/extra.bin" in (
        fetched.stdout + fetched.stderr
    )
    assert not (dest / "extra.bin").exists()
    assert (dest / "appdb.dump").read_bytes() == (backup_set / "appdb.dump").read_bytes()


def test_named_files_of_a_directory_that_is_not_a_set_are_uploaded_verified(s3, tmp_path):
    # An incident's evidence bundle: one file of a directory without SET.json.
    client, bucket = s3
    bundle = tmp_path / "INC-1-evidence-20261129T190000Z.tar.gz"
    bundle.write_bytes(os.urandom(6 * MIB))  # a multipart upload, verified by its ETag
    (tmp_path / "INC-1.json").write_text("{}")  # beside it, not asked for
    result = upload_set(client, str(tmp_path), bucket, "incidents/INC-1", 5 * MIB, "AES256",
                        files=[bundle.name])  # fmt: skip
    assert result["uploaded"] == [f"incidents/INC-1/{bundle.name}"]
    head = client.head_object(Bucket=bucket, Key=f"incidents/INC-1/{bundle.name}")
    assert head["Metadata"]["sha256"] == sha256(bundle.read_bytes())
    assert head["ContentLength"] == 6 * MIB
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == [f"incidents/INC-1/{bundle.name}"]
    again = upload_set(client, str(tmp_path), bucket, "incidents/INC-1", 5 * MIB, "AES256",
                       files=[bundle.name])  # fmt: skip
    assert again["uploaded"] == []
    # only regular files inside the directory
    for name in ("../outside.txt", "/etc/hostname", "missing.tar.gz"):
        with pytest.raises(TransferError, match="is not a file in"):
            upload_set(client, str(tmp_path), bucket, "x", 5 * MIB, "AES256", files=[name])
