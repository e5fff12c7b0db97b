"""Verify the deployed reference stack on the Molecule Docker host."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

from stack_checks import (  # noqa: E402
    HTTP,
    PROJECT_DIR,
    PROMETHEUS,
    answering_hostnames,
    assert_all_healthy,
    backend_image_id,
    containers,
    evidence,
    http_get,
    ledger,
    wait_for,
)


def test_every_service_runs_and_is_healthy(host):
    found = assert_all_healthy(host)
    assert len([c for c in found if c["Service"] == "backend"]) == 2, evidence(host)


def test_backend_runs_the_deployed_tag(host):
    images = {c["Image"] for c in containers(host) if c["Service"] == "backend"}
    assert images == {"fastapi-monolith/backend:1.1.0"}, evidence(host)


def test_health_answers_200_through_nginx(host):
    status, body = http_get(host, f"{HTTP}/health")
    assert status == 200, body + evidence(host)
    assert json.loads(body)["database"] == "ok"


def test_nginx_spreads_requests_over_both_replicas(host):
    hostnames = answering_hostnames(host)
    assert len(hostnames) == 2, f"only {hostnames} answered" + evidence(host)


def test_items_are_stored_in_postgres(host):
    name = "molecule-item"
    created = host.run(
        f"curl -sS -m 5 -X POST -H 'Content-Type: application/json' "
        f'-d \'{{"name": "{name}", "value": 7}}\' {HTTP}/items'
    )
    item = json.loads(created.stdout)
    rows = host.check_output(
        "docker compose -p fastapi-monolith exec -T db psql -U app -d appdb -tAc "
        f'"SELECT name, value FROM items WHERE id = {int(item["id"])}"'
    )
    assert rows.strip() == f"{name}|7"


def test_prometheus_reports_every_target_up(host):
    def targets():
        status, body = http_get(host, f"{PROMETHEUS}/api/v1/targets")
        if status != 200:
            return None
        active = json.loads(body)["data"]["activeTargets"]
        jobs = [t["labels"]["job"] for t in active]
        if (
            jobs.count("backend") == 2
            and "prometheus" in jobs
            and all(t["health"] == "up" for t in active)
        ):
            return active
        return None

    assert wait_for(targets, timeout=60), http_get(host, f"{PROMETHEUS}/api/v1/targets")[1]


def test_env_file_is_private(host):
    env = host.file(f"{PROJECT_DIR}/.env")
    assert env.is_file
    assert env.mode == 0o600
    assert env.user == "root"
    assert "DB_PASSWORD='molecule-db-password-1'" in env.content_string


def test_ledger_records_the_deployment(host):
    entries = ledger(host)
    assert len(entries) == 1, entries  # the idempotence run must not add an entry
    last = entries[-1]
    assert last["tag"] == "1.1.0"
    assert last["status"] == "good"
    assert last["health"] == "healthy"
    assert last["image_id"] == backend_image_id(host, "1.1.0")
    assert host.file(f"{PROJECT_DIR}/ledger/releases.jsonl").mode == 0o600
