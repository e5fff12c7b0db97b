"""The configuration snapshot (module_utils/config_snapshot.py, library/config_snapshot.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess

import pytest
from ansible.module_utils.config_snapshot import (
    Snapshot,
    SnapshotError,
    mask_env,
    take_snapshot,
)

from tests.ansible_cli import run_module

ENV = (
    "POSTGRES_USER=app\n"
    "POSTGRES_PASSWORD=s3cret-value\n"
    "export API_TOKEN = tok-123\n"
    "aws_secret_access_key=abc\n"
    "# SECRET_IN_COMMENT=kept\n"
    "BACKEND_TAG=1.2.0\n"
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def project(tmp_path):
    src = tmp_path / "project"
    (src / "nginx" / "conf.d").mkdir(parents=True)
    (src / "ledger").mkdir()
    (src / ".git").mkdir()
    (src / "compose.yaml").write_text("services: {}\n")
    (src / "nginx" / "conf.d" / "site.conf").write_text("server {}\n")
    (src / "ledger" / "releases.jsonl").write_text('{"id": 1}\n')
    (src / "ledger" / "releases.jsonl.lock").write_text("")
    (src / ".git" / "HEAD").write_text("ref\n")
    (src / ".hidden").write_text("x\n")
    (src / ".env").write_text(ENV)
    dest = tmp_path / "set" / "config"
    dest.parent.mkdir()
    return src, dest


def test_mask_env_masks_secret_names_only():
    masked = mask_env(ENV, "PASSWORD|SECRET|TOKEN|KEY")
    assert masked.splitlines() == [
        "POSTGRES_USER=app",
        "POSTGRES_PASSWORD=***MASKED***",
        "export API_TOKEN =***MASKED***",
        "aws_secret_access_key=***MASKED***",
        "# SECRET_IN_COMMENT=kept",
        "BACKEND_TAG=1.2.0",
    ]
    assert mask_env("A_KEY=1\r\nB=2", "KEY") == "A_KEY=***MASKED***\r\nB=2"


def test_snapshot_copies_masks_and_checksums(project):
    src, dest = project
    snap = take_snapshot(Snapshot(str(src), str(dest)), check_mode=False)
    stored = sorted(
        str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()
    )  # fmt: skip
    assert stored == [
        "compose.yaml",
        "env.masked",
        "ledger/releases.jsonl",
        "nginx/conf.d/site.conf",
    ]
    assert snap.env_stored == "masked"
    for name in stored:
        assert snap.checksums[name] == sha((dest / name).read_bytes())
        assert mode(dest / name) == 0o600
    for directory in [dest, dest / "nginx", dest / "nginx" / "conf.d", dest / "ledger"]:
        assert mode(directory) == 0o700
    assert (dest / "compose.yaml").read_bytes() == (src / "compose.yaml").read_bytes()
    env = (dest / "env.masked").read_text()
    assert "s3cret-value" not in env
    assert "tok-123" not in env
    assert "BACKEND_TAG=1.2.0" in env
    assert not list(dest.rglob("*.partial-*"))


def test_rerun_changes_nothing_and_repairs_what_differs(project):
    src, dest = project
    take_snapshot(Snapshot(str(src), str(dest)), check_mode=False)
    assert take_snapshot(Snapshot(str(src), str(dest)), check_mode=False).changes == []
    (src / "compose.yaml").write_text("services: {backend: {}}\n")
    os.chmod(dest / "ledger" / "releases.jsonl", 0o644)
    os.chmod(dest / "nginx", 0o755)
    again = take_snapshot(Snapshot(str(src), str(dest)), check_mode=False)
    assert sorted(again.changes) == ["compose.yaml", "ledger/releases.jsonl", "nginx/"]
    assert (dest / "compose.yaml").read_text() == "services: {backend: {}}\n"
    assert mode(dest / "ledger" / "releases.jsonl") == 0o600
    assert mode(dest / "nginx") == 0o700


def test_check_mode_writes_nothing_and_reports_would_be_checksums(project):
    src, dest = project
    snap = take_snapshot(Snapshot(str(src), str(dest)), check_mode=True)
    assert not dest.exists()
    assert "compose.yaml" in snap.changes
    assert "./" in snap.changes
    assert snap.checksums["compose.yaml"] == sha((src / "compose.yaml").read_bytes())
    masked = mask_env(ENV, "PASSWORD|SECRET|TOKEN|KEY").encode()
    assert snap.checksums["env.masked"] == sha(masked)


def test_missing_project_dir_names_the_variable(tmp_path):
    with pytest.raises(SnapshotError, match="stack_project_dir"):
        take_snapshot(Snapshot(str(tmp_path / "nope"), str(tmp_path / "d")), check_mode=False)


def test_missing_set_dir_fails_cleanly(project, tmp_path):
    src, _ = project
    dest = tmp_path / "no-such-set" / "config"
    with pytest.raises(SnapshotError, match="free space and permissions"):
        take_snapshot(Snapshot(str(src), str(dest)), check_mode=False)


def test_missing_env_is_skipped(project):
    src, dest = project
    (src / ".env").unlink()
    snap = take_snapshot(Snapshot(str(src), str(dest)), check_mode=False)
    assert snap.env_stored == "absent"
    assert not (dest / "env.masked").exists()


@pytest.mark.skipif(shutil.which("age-keygen") is None, reason="age is not installed")
def test_encrypted_env_round_trips_and_is_kept_on_rerun(project, tmp_path):
    src, dest = project
    identity = tmp_path / "id.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True
    ).stdout.strip()
    snap = take_snapshot(Snapshot(str(src), str(dest), recipients=[recipient]), False)
    assert snap.env_stored == "encrypted"
    assert not (dest / "env.masked").exists()
    cipher = (dest / "env.age").read_bytes()
    assert b"s3cret-value" not in cipher
    assert snap.checksums["env.age"] == sha(cipher)
    assert mode(dest / "env.age") == 0o600
    plain = subprocess.run(
        ["age", "-d", "-i", str(identity), str(dest / "env.age")],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert plain == ENV
    again = take_snapshot(Snapshot(str(src), str(dest), recipients=[recipient]), False)
    assert again.changes == []
    assert (dest / "env.age").read_bytes() == cipher


def test_age_failure_leaves_no_env_file(project, tmp_path):
    src, dest = project
    fake = tmp_path / "age"
    fake.write_text("#!/bin/sh\necho 'age: boom' >&2\nexit 1\n")
    fake.chmod(0o755)
    snap = Snapshot(str(src), str(dest), recipients=["age1x"], age_binary=str(fake))
    with pytest.raises(SnapshotError, match="age could not encrypt .env"):
        take_snapshot(snap, check_mode=False)
    assert sorted(p.name for p in dest.iterdir() if p.is_file()) == ["compose.yaml"]


def test_module_check_then_apply_then_idempotent(project):
    src, dest = project
    args = {"src": str(src), "dest": str(dest)}
    checked = run_module("config_snapshot", args, "--check")
    assert checked["status"] == "CHANGED"
    assert not dest.exists()
    done = run_module("config_snapshot", args)
    assert done["status"] == "CHANGED"
    assert done["checksums"]["env.masked"] == sha((dest / "env.masked").read_bytes())
    again = run_module("config_snapshot", args)
    assert again["status"] == "SUCCESS"
    assert again["checksums"] == done["checksums"]


def test_module_refuses_an_identity_as_recipient(project):
    src, dest = project
    args = {"src": str(src), "dest": str(dest), "encrypt_recipients": ["AGE-SECRET-KEY-1XYZ"]}
    failed = run_module("config_snapshot", args)
    assert failed["status"] == "FAILED!"
    assert "public key" in failed["msg"]
    assert "1XYZ" not in failed["msg"]
    assert not dest.exists()
