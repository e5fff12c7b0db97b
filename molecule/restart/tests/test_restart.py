"""Verify the state-based and rolling restarts under load on the Molecule Docker host."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

from stack_checks import (  # noqa: E402
    HTTP,
    containers,
    evidence,
    http_get,
    loadgen_stop,
)


def test_no_request_failed_during_restarts(host):
    summary = loadgen_stop(host)
    assert summary["total"] > 100, summary
    assert summary["failed"] == 0, json.dumps(summary) + evidence(host)


def test_every_container_runs_and_is_healthy(host):
    found = containers(host)
    assert sorted({c["Service"] for c in found}) == ["backend", "db", "nginx", "prometheus"]
    for c in found:
        assert c["State"] == "running", f"{c['Name']}: {c['Status']}" + evidence(host)
        assert c["Health"] == "healthy", f"{c['Name']}: {c['Status']}" + evidence(host)


def test_rolling_restart_replaced_both_backend_replicas(host):
    names = sorted(c["Name"] for c in containers(host) if c["Service"] == "backend")
    assert len(names) == 2, evidence(host)
    # replicas 1 and 2 were deployed; the rolling restart started new ones before removing them
    assert not {"fastapi-monolith-backend-1", "fastapi-monolith-backend-2"} & set(names), names


def test_nginx_spreads_requests_over_both_replicas(host):
    hostnames = set()
    for _ in range(20):
        status, body = http_get(host, f"{HTTP}/version")
        assert status == 200, body
        hostnames.add(json.loads(body)["hostname"])
    assert len(hostnames) == 2, f"only {hostnames} answered" + evidence(host)
