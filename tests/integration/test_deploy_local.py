"""The deploy playbook against this machine's Docker engine, run the way AWX runs it
(ansible-runner), on its own compose project and ports so it never touches the demo stack."""

from __future__ import annotations

import json
import stat
import urllib.error
import urllib.request

import pytest

from tests.conftest import compose_down, run, run_playbook

PROJECT = "opsauto-it-deploy"
HTTP_PORT = 18080
PROM_PORT = 19090


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory, docker_ready):
    path = tmp_path_factory.mktemp("deploy") / PROJECT
    yield path
    compose_down(PROJECT)


def deploy(tmp_path, project_dir, **extravars):
    """Run playbooks/deploy.yml through ansible-runner; return (runner, failure messages)."""
    variables = {
        "stack_project_name": PROJECT,
        "stack_project_dir": str(project_dir),
        "stack_http_port": HTTP_PORT,
        "stack_prometheus_port": PROM_PORT,
        "stack_db_password": "integration-password-1",
        "deploy_backend_replicas": 2,
        "deploy_health_timeout": 60,
    }
    variables.update(extravars)
    return run_playbook(tmp_path, "deploy.yml", variables)


def http(path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def containers() -> dict[str, str]:
    """Container name -> container ID of the test project."""
    out = run(["docker", "compose", "-p", PROJECT, "ps", "--format", "{{.Name}} {{.ID}}"]).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def ledger(project_dir) -> list[dict]:
    path = project_dir / "ledger" / "releases.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_deploy_brings_up_a_healthy_stack(tmp_path, project_dir):
    result, failures = deploy(tmp_path, project_dir)
    assert result.rc == 0, failures
    status, body = http("/health")
    assert status == 200
    assert body["database"] == "ok"
    assert http("/version")[1]["version"] == "1.1.0"
    assert stat.S_IMODE((project_dir / ".env").stat().st_mode) == 0o600
    entries = ledger(project_dir)
    assert [(e["tag"], e["status"]) for e in entries] == [("1.1.0", "good")]


def test_missing_tag_is_refused_before_anything_stops(tmp_path, project_dir):
    before = containers()
    result, failures = deploy(tmp_path, project_dir, deploy_backend_tag="9.9.9")
    assert result.rc != 0
    message = " ".join(failures)
    assert "fastapi-monolith/backend:9.9.9" in message
    assert "Nothing was changed" in message
    assert "1.1.0" in message  # the tags that do exist are listed
    assert containers() == before
    assert http("/health")[0] == 200
    assert len(ledger(project_dir)) == 1


def test_broken_release_is_rolled_back_automatically(tmp_path, project_dir):
    result, failures = deploy(tmp_path, project_dir, deploy_backend_tag="1.2.0-broken")
    assert result.rc != 0
    message = " ".join(failures)
    assert "fastapi-monolith/backend:1.2.0-broken failed" in message
    assert "Rolled back automatically to 1.1.0, which is healthy" in message
    assert http("/health")[0] == 200
    assert http("/version")[1]["version"] == "1.1.0"
    entries = ledger(project_dir)
    assert [(e["tag"], e["status"]) for e in entries] == [
        ("1.1.0", "good"),
        ("1.2.0-broken", "bad"),
        ("1.1.0", "good"),
    ]
    assert entries[1]["health"] == "unhealthy"
    # the automatic rollback went through the switch: compose.yaml names the good release again
    compose = (project_dir / "compose.yaml").read_text()
    assert "image: fastapi-monolith/backend:1.1.0\n" in compose
    assert "1.2.0-broken" not in compose

    result, failures = deploy(tmp_path, project_dir, deploy_backend_tag="1.0.0")
    assert result.rc == 0, failures
    assert http("/health")[0] == 200
    assert http("/version")[1]["version"] == "1.0.0"
    assert [e["tag"] for e in ledger(project_dir)] == ["1.1.0", "1.2.0-broken", "1.1.0", "1.0.0"]
