"""Rollback, restart and scale against this machine's Docker engine (ansible-runner, as AWX
runs them), on their own compose project and ports: the faults are refused before anything
stops, with a message naming the cause, and a ledger-based rollback works."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.conftest import compose_down, run, run_playbook

PROJECT = "opsauto-it-rollout"
HTTP_PORT = 18480
PROM_PORT = 19480


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory, docker_ready):
    path = tmp_path_factory.mktemp("rollout") / PROJECT
    yield path
    compose_down(PROJECT)


def play(tmp_path, project_dir, playbook, cmdline="", **extravars):
    """Run playbooks/<playbook>.yml through ansible-runner; return (runner, failure messages)."""
    variables = {
        "stack_project_name": PROJECT,
        "stack_project_dir": str(project_dir),
        "stack_http_port": HTTP_PORT,
        "stack_prometheus_port": PROM_PORT,
        "stack_db_password": "integration-password-2",
        "deploy_backend_replicas": 2,
        "deploy_health_timeout": 60,
    }
    variables.update(extravars)
    return run_playbook(tmp_path, f"{playbook}.yml", variables, cmdline=cmdline)


def version() -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/version", timeout=5) as resp:
            return json.loads(resp.read())["version"]
    except (urllib.error.URLError, OSError) as exc:
        return f"unreachable: {exc}"


def containers() -> dict[str, str]:
    """Container name -> container ID of the test project."""
    out = run(["docker", "compose", "-p", PROJECT, "ps", "--format", "{{.Name}} {{.ID}}"]).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def ledger(project_dir) -> list[tuple[str, str]]:
    path = project_dir / "ledger" / "releases.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(e["tag"], e["status"]) for e in entries]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, project_dir):
    result, failures = play(tmp_path_factory.mktemp("deploy"), project_dir, "deploy")
    assert result.rc == 0, failures
    assert version() == "1.1.0"
    return project_dir


def refused(tmp_path, project_dir, playbook, **extravars) -> str:
    """Run a playbook that must fail without touching a container; return its message."""
    before = containers()
    result, failures = play(tmp_path, project_dir, playbook, **extravars)
    assert result.rc != 0, f"{playbook} {extravars} did not fail"
    assert containers() == before
    assert version() == "1.1.0"
    return " ".join(failures)


def test_rollback_with_no_good_release_in_the_ledger_is_refused(tmp_path, stack):
    message = refused(tmp_path, stack, "rollback")
    assert "no good release other than the current one (1.1.0)" in message
    assert "rollback_backend_tag" in message
    assert ledger(stack) == [("1.1.0", "good")]


def test_rollback_to_a_missing_tag_is_refused(tmp_path, stack):
    message = refused(tmp_path, stack, "rollback", rollback_backend_tag="9.9.9")
    assert "fastapi-monolith/backend:9.9.9 is not on" in message
    assert "Nothing was changed" in message


@pytest.mark.parametrize("count", [0, -1])
def test_scale_to_zero_or_negative_is_refused(tmp_path, stack, count):
    message = refused(tmp_path, stack, "scale", scale_replicas={"backend": count})
    assert "scale_replicas must map backend to a whole number between 1 and 16" in message


def test_memory_limit_too_small_to_start_is_refused(tmp_path, stack):
    message = refused(
        tmp_path, stack, "scale", scale_resources={"backend": {"cpus": "0.5", "memory": "16m"}}
    )
    assert "memory of backend is below what the service needs to start (48m at least" in message
    assert not (stack / "compose.override.yaml").exists()


def test_restart_of_an_unknown_service_is_refused(tmp_path, stack):
    message = refused(tmp_path, stack, "restart", restart_services=["backend", "worker"])
    assert "unknown service(s) worker" in message
    assert "db, backend, prometheus, nginx" in message


def state(name: str) -> str:
    fmt = "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}"
    return run(["docker", "inspect", "-f", fmt, name]).stdout.strip()


def test_restart_check_mode_reports_a_stopped_replica_then_restart_brings_it_back(tmp_path, stack):
    replica = sorted(name for name in containers() if "-backend-" in name)[0]
    run(["docker", "stop", "-t", "2", replica])
    # restart_services as a string, the way `-e restart_services=backend` passes it
    result, failures = play(
        tmp_path, stack, "restart", cmdline="--check", restart_services="backend"
    )
    assert result.rc == 0, failures
    assert state(replica).startswith("exited")  # check mode touched nothing
    would = [
        e["event_data"]["res"]
        for e in result.events
        if e.get("event") == "runner_on_ok"
        and "Would restart" in str(e["event_data"]["res"].get("msg"))
    ]
    assert would
    assert would[0]["changed"]
    assert replica in would[0]["msg"]

    result, failures = play(tmp_path / "real", stack, "restart", restart_services="backend")
    assert result.rc == 0, failures
    # a backend replica is restarted by the rollout role's restart entry point, not docker restart
    restarted = [
        name
        for e in result.events
        if e.get("event") == "runner_on_ok" and e["event_data"]["res"].get("changed")
        for name in e["event_data"]["res"].get("restarted") or []
    ]
    assert replica in restarted
    assert state(replica) == "running healthy"
    # routed again (only once healthy): it carries the alias nginx resolves
    networks = json.loads(run(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}",
                               replica]).stdout)  # fmt: skip
    assert any("backend-live" in (n.get("Aliases") or []) for n in networks.values()), networks
    assert version() == "1.1.0"


def test_rollback_to_the_previous_good_release_from_the_ledger(tmp_path, stack):
    result, failures = play(tmp_path, stack, "deploy", deploy_backend_tag="1.0.0")
    assert result.rc == 0, failures
    assert version() == "1.0.0"

    result, failures = play(tmp_path, stack, "rollback")
    assert result.rc == 0, failures
    assert version() == "1.1.0"
    assert ledger(stack) == [("1.1.0", "good"), ("1.0.0", "bad"), ("1.1.0", "good")]
    report = [
        e["event_data"]["res"]["msg"]
        for e in result.events
        if e.get("event") == "runner_on_ok" and e["event_data"].get("task") == "Report the rollback"
    ]
    assert report, "no rollback report"
    assert "rolled back from 1.0.0 to 1.1.0" in report[0]
    assert "routed to" in report[0]  # the switch's timeline from compose_rollout
    assert "stopped and removed" in report[0]
