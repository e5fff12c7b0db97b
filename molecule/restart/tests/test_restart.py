"""Verify the state-based and rolling restarts under load on the Molecule Docker host."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

from stack_checks import (  # noqa: E402
    answering_hostnames,
    assert_all_healthy,
    assert_no_failed_requests,
    containers,
    evidence,
)


def test_no_request_failed_during_restarts(host):
    assert_no_failed_requests(host)


def test_every_container_runs_and_is_healthy(host):
    assert_all_healthy(host)


def test_rolling_restart_replaced_both_backend_replicas(host):
    names = sorted(c["Name"] for c in containers(host) if c["Service"] == "backend")
    assert len(names) == 2, evidence(host)
    # replicas 1 and 2 were deployed; the rolling restart started new ones before removing them
    assert not {"fastapi-monolith-backend-1", "fastapi-monolith-backend-2"} & set(names), names


def test_nginx_spreads_requests_over_both_replicas(host):
    hostnames = answering_hostnames(host)
    assert len(hostnames) == 2, f"only {hostnames} answered" + evidence(host)
