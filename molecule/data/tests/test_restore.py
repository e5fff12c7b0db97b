"""Verify the restores (new and replace, converge) and the restore drill (side_effect) on the
Molecule Docker host."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

from stack_checks import HTTP, PROJECT, evidence, http_get  # noqa: E402


def psql(host, sql: str, db: str = "appdb") -> str:
    return host.check_output(
        f'docker compose -p {PROJECT} exec -T db psql -U app -d {db} -tAc "{sql}"'
    ).strip()


def backed_up_rows(host) -> str:
    return host.file("/root/items-backed-up.txt").content_string.strip()


ROWS = "SELECT id, name, value FROM items ORDER BY id"


def test_backup_had_all_rows(host):
    assert len(backed_up_rows(host).splitlines()) == 25


def test_replace_restored_every_row(host):
    assert psql(host, ROWS) == backed_up_rows(host), evidence(host)


def test_new_mode_restored_a_copy_beside_the_live_database(host):
    assert psql(host, ROWS, db="appdb_copy") == backed_up_rows(host)


def test_previous_database_kept_with_the_data_as_it_was(host):
    names = psql(host, "SELECT datname FROM pg_database WHERE datname LIKE 'appdb__pre_%'")
    assert len(names.splitlines()) == 1, names
    assert psql(host, "SELECT count(*) FROM items", db=names.splitlines()[0]) == "10"


def test_safety_backup_taken_before_replace(host):
    sets = host.check_output("ls /var/backups/fastapi-monolith").split()
    safety = [s for s in sets if s.startswith("pre-restore-")]
    assert len(safety) == 1, sets  # one: the idempotence run took none
    meta = json.loads(
        host.file(f"/var/backups/fastapi-monolith/{safety[0]}/SET.json").content_string
    )
    assert meta["verified"] is True


def test_backend_healthy_after_replace(host):
    status, body = http_get(host, f"{HTTP}/health")
    assert status == 200, body + evidence(host)
    status, body = http_get(host, f"{HTTP}/items")
    assert status == 200
    assert len(json.loads(body)) == 25


def test_drill_ran_and_cleaned_up(host):
    # the drill writes its metrics only after pg_backup_restore matched the restored row counts
    # against the manifest; "latest" is the newest set, the scheduled run's
    text = host.file("/var/lib/prometheus/node-exporter/opsauto_restore_drill.prom").content_string
    metrics = {
        line.split("{")[0]: (line.split("{")[1].split("}")[0], float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    labels, seconds = metrics["opsauto_restore_drill_duration_seconds"]
    assert 'backup_id="molecule-scheduled"' in labels, text
    assert seconds > 0, text
    assert metrics["opsauto_restore_drill_last_success_timestamp_seconds"][1] > 1.7e9, text
    leftovers = host.check_output("docker ps -a --filter name=restore-drill --format '{{.Names}}'")
    assert leftovers.strip() == ""
