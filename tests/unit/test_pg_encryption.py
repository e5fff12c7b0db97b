"""Unit tests of the age encryption: module_utils/age.py and the age stage of pipelines.py.

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
age = importlib.import_module("ansible.module_utils.age")
ops_errors = importlib.import_module("ansible.module_utils.ops_errors")
pg_artifacts = importlib.import_module("ansible.module_utils.pg_artifacts")
pg_dump = importlib.import_module("ansible.module_utils.pg_dump")
pipelines = importlib.import_module("ansible.module_utils.pipelines")

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
    assert age.check_recipients(None) == []
    assert age.check_recipients([]) == []
    assert age.check_recipients([KEY, KEY2, KEY]) == [KEY, KEY2]
    assert age.check_recipients(KEY) == [KEY]


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
    with pytest.raises(ops_errors.PgError) as exc:
        age.check_recipients([KEY, value])
    assert f"{value!r} is not an age public key" in str(exc.value)
    assert "age-keygen" in str(exc.value)


def test_secret_key_given_as_recipient_is_refused_without_echo():
    secret = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
    with pytest.raises(ops_errors.PgError) as exc:
        age.check_recipients([secret])
    assert "secret key" in str(exc.value)
    assert secret not in str(exc.value)


def test_encrypted_artifacts_get_the_age_suffix_and_keep_their_label():
    assert pg_artifacts.artifact_name("app", "custom", encrypted=True) == "app.dump.age"
    assert pg_artifacts.artifact_name("app", "plain", "zstd", encrypted=True) == "app.sql.zst.age"
    assert pg_artifacts.label_from_artifact("app.dump.age") == "app"
    assert pg_artifacts.label_from_artifact("app.dir.tar.age") == "app"
    assert pg_artifacts.label_from_artifact("app.sql.gz.age") == "app"
    assert pg_artifacts.label_from_artifact("app.age") is None


def test_backup_plan_with_recipients():
    plan = pg_dump.backup_plan(
        {"database": "app", "dest_dir": "/b", "backup_id": "x", "encrypt_recipients": [KEY]}
    )
    assert plan["recipients"] == [KEY]
    assert plan["path"] == "/b/x/app.dump.age"
    manifest = pg_artifacts.build_manifest(plan)
    assert manifest["encryption"] == {"tool": "age", "recipients": [KEY]}
    plain = pg_dump.backup_plan({"database": "app", "dest_dir": "/b", "backup_id": "x"})
    assert pg_artifacts.build_manifest(plain)["encryption"] is None


def test_missing_age_binary_names_the_package(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ops_errors.PgError, match="apt-get install age"):
        pipelines.find_binary("age")


def test_encrypted_backup_needs_an_identity_file(tmp_path):
    manifest = {"encryption": {"tool": "age", "recipients": [KEY]}}
    age.require_identity({"encryption": None}, None, "/b/x/app.dump")
    with pytest.raises(ops_errors.PgError, match="set decrypt_identity_file") as exc:
        age.require_identity(manifest, None, "/b/x/app.dump.age")
    assert KEY in str(exc.value)
    with pytest.raises(ops_errors.PgError, match="does not exist or is not readable"):
        age.require_identity(manifest, str(tmp_path / "missing.txt"), "/b/x/app.dump.age")


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_stream_to_file_encrypted_writes_only_ciphertext(tmp_path, identity, compression):
    if compression == "zstd" and shutil.which("zstd") is None:
        pytest.fail("zstd missing: apt-get install zstd")
    path, public = identity
    payload = b"INSERT secret row;\n" * 200_000 + TRAILER
    out = tmp_path / "out.age"
    argv = producer(f"{payload[:19]!r} * 200_000 + {TRAILER!r}")
    result = pipelines.stream_to_file(argv, str(out), None, compression, [public])
    data = out.read_bytes()
    assert data.startswith(b"age-encryption.org/v1\n")
    assert b"secret row" not in data
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.size == len(data)
    assert result.check_error is None
    assert pg_artifacts.tail_has_trailer(result.tail, "-- PostgreSQL database dump complete")
    with age.decrypted(str(out), path) as stream:
        plain = stream.read()
    assert hashlib.sha256(plain).hexdigest() == result.plaintext_sha256
    assert len(plain) == result.plaintext_size
    if compression == "none":
        assert plain == payload


def test_stream_to_file_encrypted_reports_a_failing_check(tmp_path, identity):
    _, public = identity
    check = [sys.executable, "-c", "import sys; sys.stdin.read(10); sys.exit('unreadable')"]
    result = pipelines.stream_to_file(
        producer("b'x' * 3_000_000"), str(tmp_path / "o.age"), recipients=[public], check_argv=check
    )
    assert result.check_error == "unreadable"


def test_stream_to_file_encrypted_raises_when_the_producer_fails(tmp_path, identity):
    _, public = identity
    with pytest.raises(ops_errors.CommandError, match="exited with status 3"):
        pipelines.stream_to_file(
            producer("b'partial'", 3), str(tmp_path / "o.age"), recipients=[public]
        )


def test_wrong_identity_and_damage_are_told_apart(tmp_path, identity):
    path, public = identity
    out = tmp_path / "o.age"
    pipelines.stream_to_file(producer("b'y' * 500_000"), str(out), recipients=[public])
    other = tmp_path / "other.txt"
    subprocess.run(["age-keygen", "-o", str(other)], capture_output=True, check=True)
    with pytest.raises(ops_errors.PgError, match="no identity matched") as exc:
        with age.decrypted(str(out), str(other)) as stream:
            stream.read()
    assert not isinstance(exc.value, ops_errors.CorruptBackupError)
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x01
    out.write_bytes(bytes(data))
    with pytest.raises(ops_errors.CorruptBackupError, match="age decryption failed"):
        with age.decrypted(str(out), path) as stream:
            stream.read()
