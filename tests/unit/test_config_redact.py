"""Unit tests of module_utils/config_redact.py and its use by the configuration snapshot:
no known secret reaches any stored file, not only .env."""

from __future__ import annotations

from ansible.module_utils.config_redact import REDACTED, redact
from ansible.module_utils.config_snapshot import Snapshot, take_snapshot

PATTERN = "PASSWORD|SECRET|TOKEN|KEY"

COMPOSE = """services:
  db:
    environment:
      POSTGRES_PASSWORD: ${DB_PASSWORD:-s3cret-db-pw}
      POSTGRES_USER: app
      API_TOKEN: "tok-123456"
      DB_PASSWORD_FILE: /run/secrets/db
      REPLICA_PASSWORD: ${REPLICA_PASSWORD}
  backend:
    environment:
      - DATABASE_URL=postgres://app:s3cret-db-pw@db/appdb
      - AWS_SECRET_ACCESS_KEY=${AWS_SECRET:=aws-secret-9}
    command: ["uvicorn", "--port", "8000"]
"""


def test_known_values_defaults_and_secret_settings_are_redacted():
    data, hits = redact(COMPOSE.encode(), ["s3cret-db-pw"], PATTERN)
    text = data.decode()
    for secret in ("s3cret-db-pw", "tok-123456", "aws-secret-9"):
        assert secret not in text
    assert "${DB_PASSWORD:-" + REDACTED + "}" in text
    assert f'API_TOKEN: "{REDACTED}"' in text
    assert "postgres://app:" + REDACTED + "@db/appdb" in text
    # what is no secret stays as it was
    assert "POSTGRES_USER: app" in text
    assert "DB_PASSWORD_FILE: /run/secrets/db" in text
    assert "REPLICA_PASSWORD: ${REPLICA_PASSWORD}" in text
    assert 'command: ["uvicorn", "--port", "8000"]' in text
    assert hits >= 4


def test_binary_files_get_the_exact_values_only_and_short_values_are_ignored():
    blob = b"\xff\xfe" + b"pw=s3cret-db-pw\x00abc"
    data, hits = redact(blob, ["s3cret-db-pw", "abc", ""], PATTERN)
    assert b"s3cret-db-pw" not in data
    assert data.endswith(b"\x00abc")  # a 3-character value is not searched for
    assert hits == 1


def test_nothing_to_redact_leaves_the_bytes_alone():
    text = b"upstream backend { server backend-1:8000; }\n"
    assert redact(text, ["s3cret-db-pw"], PATTERN) == (text, 0)


def test_snapshot_stores_every_file_redacted_and_reruns_change_nothing(tmp_path):
    src, dest = tmp_path / "project", tmp_path / "set" / "config"
    (src / "nginx").mkdir(parents=True)
    dest.parent.mkdir()
    (src / "compose.yaml").write_text(COMPOSE)
    (src / "nginx" / "nginx.conf").write_text("# upstream key: s3cret-db-pw\n")
    (src / "prometheus.yml").write_text("basic_auth:\n  password: prom-pass-77\n")
    (src / ".env").write_text("DB_PASSWORD=s3cret-db-pw\nDB_URL=postgres://app:s3cret-db-pw@db\n")
    first = take_snapshot(Snapshot(str(src), str(dest), redact_values=["s3cret-db-pw"]), False)
    stored = {
        p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()
    }
    assert set(stored) == {"compose.yaml", "nginx/nginx.conf", "prometheus.yml", "env.masked"}
    for name, content in stored.items():
        for secret in (b"s3cret-db-pw", b"prom-pass-77", b"tok-123456", b"aws-secret-9"):
            assert secret not in content, name
    assert sorted(first.redacted) == sorted(stored)
    again = take_snapshot(Snapshot(str(src), str(dest), redact_values=["s3cret-db-pw"]), False)
    assert again.changes == []
    assert again.checksums == first.checksums
