"""Verify the backup set written by the backup role (converge) on the Molecule Docker host."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

from stack_checks import PROJECT, evidence  # noqa: E402

SET = "/var/backups/fastapi-monolith/molecule-1"


def psql(host, sql: str) -> str:
    return host.check_output(
        f'docker compose -p {PROJECT} exec -T db psql -U app -d appdb -tAc "{sql}"'
    ).strip()


def set_meta(host) -> dict:
    return json.loads(host.file(f"{SET}/SET.json").content_string)


def test_set_is_sealed_verified_and_private(host):
    assert host.file("/var/backups/fastapi-monolith").mode == 0o700
    assert host.file(SET).mode == 0o700
    meta = set_meta(host)
    assert meta["backup_id"] == "molecule-1"
    assert meta["verified"] is True
    assert meta["databases"] == ["appdb"]
    assert sorted(d["label"] for d in meta["dumps"]) == ["appdb", "globals"]


def test_dump_checksum_matches_manifest(host):
    for dump in set_meta(host)["dumps"]:
        path = f"{SET}/{dump['file']}"
        assert host.file(path).mode == 0o600
        digest = host.check_output(f"sha256sum {path}").split()[0]
        assert digest == dump["sha256"], dump
        assert int(host.check_output(f"stat -c %s {path}")) == dump["size"]


def test_dump_is_readable_by_pg_restore(host):
    listing = host.run(
        f"docker compose -p {PROJECT} exec -T db pg_restore --list < {SET}/appdb.dump"
    )
    assert listing.rc == 0, listing.stderr + evidence(host)
    assert "TABLE DATA public items" in listing.stdout


def test_manifest_row_counts_match_the_database(host):
    manifest = json.loads(host.file(f"{SET}/appdb.manifest.json").content_string)
    assert manifest["row_counts"]["public.items"] == int(psql(host, "SELECT count(*) FROM items"))
    assert manifest["row_counts"]["public.items"] == 25


def test_config_snapshot_has_no_secret(host):
    env = host.file(f"{SET}/config/env.masked")
    assert env.mode == 0o600
    assert "DB_PASSWORD=***MASKED***" in env.content_string
    assert "molecule-db-password-1" not in env.content_string
    project = host.check_output("cd /srv/fastapi-monolith && find . -type f ! -name '.*'")
    names = [n[2:] for n in project.split() if not n.endswith(".lock")]
    assert "compose.yaml" in names
    for name in names:
        snap = host.file(f"{SET}/config/{name}")
        assert snap.mode == 0o600
        assert snap.content_string == host.file(f"/srv/fastapi-monolith/{name}").content_string
    assert host.file(f"{SET}/config").mode == 0o700


def test_set_json_checksums_every_config_file(host):
    recorded = set_meta(host)["config"]
    stored = host.check_output(f"cd {SET} && find config -type f").split()
    assert sorted(recorded) == sorted(stored)
    assert "config/env.masked" in recorded
    for name, digest in recorded.items():
        assert host.check_output(f"sha256sum {SET}/{name}").split()[0] == digest, name


def test_metrics_for_node_exporter(host):
    text = host.file("/var/lib/prometheus/node-exporter/opsauto_backup.prom").content_string
    metrics = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert metrics["opsauto_backup_verified"] == 1
    # the newest run (the scheduled one) counted every complete set on the host
    sealed = host.check_output("ls /var/backups/fastapi-monolith/*/SET.json").split()
    assert len(sealed) == 4, sealed  # before-delete, pre-restore-*, molecule-1, scheduled
    assert metrics["opsauto_backup_sets"] == len(sealed)
    assert metrics["opsauto_backup_size_bytes"] > 0
    assert metrics["opsauto_backup_last_success_timestamp_seconds"] > 1.7e9


def test_lock_released(host):
    assert not host.file("/var/backups/fastapi-monolith/.lock").exists
