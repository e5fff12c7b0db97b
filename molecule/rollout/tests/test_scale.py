"""Verify horizontal and vertical scaling under load on the Molecule Docker host."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

from stack_checks import (  # noqa: E402
    PROJECT_DIR,
    answering_hostnames,
    container_info,
    containers,
    evidence,
)


def test_backend_scaled_back_in_to_two_healthy_replicas(host):
    backends = [c for c in containers(host) if c["Service"] == "backend"]
    assert len(backends) == 2, evidence(host)
    assert all(c["State"] == "running" and c["Health"] == "healthy" for c in backends), evidence(
        host
    )


def test_backend_runs_with_the_new_limits(host):
    for c in containers(host):
        info = container_info(host, c["Name"])
        if c["Service"] == "backend":
            assert info["HostConfig"]["NanoCpus"] == 750_000_000, c["Name"]
            assert info["HostConfig"]["Memory"] == 192 * 1024 * 1024, c["Name"]
        elif c["Service"] == "nginx":  # untouched: the deploy role's limits
            assert info["HostConfig"]["NanoCpus"] == 250_000_000


def test_scaling_is_kept_in_the_override_file(host):
    override = host.file(f"{PROJECT_DIR}/compose.override.yaml").content_string
    assert "replicas: 2" in override
    assert "memory: 192m" in override


def test_nginx_spreads_requests_over_both_replicas(host):
    hostnames = answering_hostnames(host)
    assert len(hostnames) == 2, f"only {hostnames} answered" + evidence(host)
