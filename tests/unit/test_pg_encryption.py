"""Unit tests of the age encryption helpers of module_utils/pg_docker.py.

Validation needs nothing; the streaming tests run the real ``age`` and ``age-keygen``
binaries (Debian package ``age``) with real producer processes and files under tmp_path.
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import ansible.module_utils
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))
pgd = importlib.import_module("ansible.module_utils.pg_docker")

KEY = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
KEY2 = "age1lggyhqrw2nlhcxprm67z43rta597azn8gknawjehu9d9dl0jq3yqqvfafg"
TRAILER = b"\n--\n-- PostgreSQL database dump complete\n--\n\n"


def producer(expr: str, exit_code: int = 0) -> list[str]:
    """argv of a real process writing ``expr`` (a Python bytes expression) to stdout."""
    code = f"import sys; sys.stdout.buffer.write({expr}); sys.exit({exit_code})"
    return [sys.executable, "-c", code]


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    if shutil.which("age-keygen") is None:
        pytest.fail("the age package is missing: apt-get install age (scripts/bootstrap.sh does)")
    path = tmp_path_factory.mktemp("age") / "id.txt"
    subprocess.run(["age-keygen", "-o", str(path)], capture_output=True, check=True)
    public = subprocess.run(
        ["age-keygen", "-y", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    return str(path), public


# --------------------------------------------------------------------------- validation


def test_recipients_are_validated_and_deduplicated():
    assert pgd.check_recipients(None) == []
    assert pgd.check_recipients([]) == []
    assert pgd.check_recipients([KEY, KEY2, KEY]) == [KEY, KEY2]
    assert pgd.check_recipients(KEY) == [KEY]


@pytest.mark.parametrize(
    "value",
    [
        "age1notakey",
        KEY.upper(),
        KEY[:-1],
        KEY + "q",
        "ssh-ed25519 AAAA",
        "",
        KEY[:10] + "b" + KEY[11:],
    ],
)
def test_bad_recipient_is_named_in_the_error(value):
    with pytest.raises(pgd.PgDockerError) as exc:
        pgd.check_recipients([KEY, value])
    assert f"{value!r} is not an age public key" in str(exc.value)
    assert "age-keygen" in str(exc.value)


def test_secret_key_given_as_recipient_is_refused_without_echo():
    secret = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
    with pytest.raises(pgd.PgDockerError) as exc:
        pgd.check_recipients([secret])
    assert "secret key" in str(exc.value)
    assert secret not in str(exc.value)


def test_encrypted_artifacts_get_the_age_suffix_and_keep_their_label():
    assert pgd.artifact_name("app", "custom", encrypted=True) == "app.dump.age"
    assert pgd.artifact_name("app", "plain", "zstd", encrypted=True) == "app.sql.zst.age"
    assert pgd.label_from_artifact("app.dump.age") == "app"
    assert pgd.label_from_artifact("app.dir.tar.age") == "app"
    assert pgd.label_from_artifact("app.sql.gz.age") == "app"
    assert pgd.label_from_artifact("app.age") is None


def test_backup_plan_with_recipients():
    plan = pgd.backup_plan(
        {"database": "app", "dest_dir": "/b", "backup_id": "x", "encrypt_recipients": [KEY]}
    )
    assert plan["recipients"] == [KEY]
    assert plan["path"] == "/b/x/app.dump.age"
    manifest = pgd.build_manifest(plan)
    assert manifest["encryption"] == {"tool": "age", "recipients": [KEY]}
    plain = pgd.backup_plan({"database": "app", "dest_dir": "/b", "backup_id": "x"})
    assert pgd.build_manifest(plain)["encryption"] is None


def test_missing_age_binary_names_the_package(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pgd.PgDockerError, match="apt-get install age"):
        pgd.find_binary("age")


def test_encrypted_backup_needs_an_identity_file(tmp_path):
    manifest = {"encryption": {"tool": "age", "recipients": [KEY]}}
    pgd.require_identity({"encryption": None}, None, "/b/x/app.dump")
    with pytest.raises(pgd.PgDockerError, match="set decrypt_identity_file") as exc:
        pgd.require_identity(manifest, None, "/b/x/app.dump.age")
    assert KEY in str(exc.value)
    with pytest.raises(pgd.PgDockerError, match="does not exist or is not readable"):
        pgd.require_identity(manifest, str(tmp_path / "missing.txt"), "/b/x/app.dump.age")


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_stream_encrypted_writes_only_ciphertext(tmp_path, identity, compression):
    if compression == "zstd" and shutil.which("zstd") is None:
        pytest.fail("zstd missing: apt-get install zstd")
    path, public = identity
    payload = b"INSERT secret row;\n" * 200_000 + TRAILER
    out = tmp_path / "out.age"
    argv = producer(f"{payload[:19]!r} * 200_000 + {TRAILER!r}")
    result = pgd.stream_encrypted(argv, str(out), [public], None, compression)
    data = out.read_bytes()
    assert data.startswith(b"age-encryption.org/v1\n")
    assert b"secret row" not in data
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["size"] == len(data)
    assert result["check_error"] is None
    assert pgd.tail_has_trailer(result["tail"], "-- PostgreSQL database dump complete")
    with pgd.decrypted(str(out), path) as stream:
        plain = stream.read()
    assert hashlib.sha256(plain).hexdigest() == result["plaintext_sha256"]
    assert len(plain) == result["plaintext_size"]
    if compression == "none":
        assert plain == payload


def test_stream_encrypted_reports_a_failing_check(tmp_path, identity):
    _, public = identity
    check = [sys.executable, "-c", "import sys; sys.stdin.read(10); sys.exit('unreadable')"]
    result = pgd.stream_encrypted(
        producer("b'x' * 3_000_000"), str(tmp_path / "o.age"), [public], check_argv=check
    )
    assert result["check_error"] == "unreadable"


def test_stream_encrypted_raises_when_the_producer_fails(tmp_path, identity):
    _, public = identity
    with pytest.raises(pgd.CommandError, match="exited with status 3"):
        pgd.stream_encrypted(producer("b'partial'", 3), str(tmp_path / "o.age"), [public])


def test_wrong_identity_and_damage_are_told_apart(tmp_path, identity):
    path, public = identity
    out = tmp_path / "o.age"
    pgd.stream_encrypted(producer("b'y' * 500_000"), str(out), [public])
    other = tmp_path / "other.txt"
    subprocess.run(["age-keygen", "-o", str(other)], capture_output=True, check=True)
    with pytest.raises(pgd.PgDockerError, match="no identity matched") as exc:
        with pgd.decrypted(str(out), str(other)) as stream:
            stream.read()
    assert not isinstance(exc.value, pgd.CorruptBackupError)
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x01
    out.write_bytes(bytes(data))
    with pytest.raises(pgd.CorruptBackupError, match="age decryption failed"):
        with pgd.decrypted(str(out), path) as stream:
            stream.read()
