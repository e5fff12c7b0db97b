"""Verify the state-based and rolling restarts under load on the Molecule Docker host."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

from stack_checks import (  # noqa: E402
    answering_hostnames,
    assert_all_healthy,
    containers,
    evidence,
)


def test_every_container_runs_and_is_healthy(host):
    assert_all_healthy(host)


def test_rolling_restart_replaced_both_backend_replicas(host):
    names = sorted(c["Name"] for c in containers(host) if c["Service"] == "backend")
    assert len(names) == 2, evidence(host)
    # side_effect saved the two replicas' names; the rolling restart started new ones before
    # removing them
    before = host.file("/root/backends-before-rolling-restart.txt").content_string.split()
    assert len(before) == 2, before
    assert not set(before) & set(names), (before, names)


def test_nginx_spreads_requests_over_both_replicas(host):
    hostnames = answering_hostnames(host)
    assert len(hostnames) == 2, f"only {hostnames} answered" + evidence(host)
