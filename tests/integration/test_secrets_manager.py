"""Secrets from AWS Secrets Manager instead of a vault file (issue 13): the database
password comes from the bundled amazon.aws.secretsmanager_secret lookup, as
inventories/example-production shows, here against moto's server on 127.0.0.1.

Proven on the local engine: the deploy uses the secret's value (the application's role logs
in with it over TCP), the value appears in no event of the run (with --diff and -vv), and a
missing secret stops the run before any container exists, naming the secret and never a
value.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import compose_down, moto_client, run, run_playbook
from tests.integration.test_aws_runbooks import fake_credentials  # noqa: F401 (autouse)

PROJECT = "opsauto-it-secrets"
HTTP_PORT = 18680
PROM_PORT = 19680
REGION = "us-east-1"
PASSWORD = "sm-Value-7f3e2a91-not-in-logs"


def lookup(endpoint: str, term: str) -> str:
    return (
        f"{{{{ lookup('amazon.aws.secretsmanager_secret', '{term}', nested=true, "
        f"region='{REGION}', endpoint_url='{endpoint}') }}}}"
    )


@pytest.fixture(scope="module")
def secret(moto_endpoint):
    client = moto_client(moto_endpoint, "secretsmanager", REGION)
    name = f"{PROJECT}/db"
    client.create_secret(
        Name=name, SecretString=json.dumps({"username": "app", "password": PASSWORD})
    )
    yield name
    client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory, docker_ready):
    yield tmp_path_factory.mktemp("secrets") / PROJECT
    compose_down(PROJECT)


def play(tmp_path, project_dir, password_expr, cmdline=""):
    variables = {
        "stack_project_name": PROJECT,
        "stack_project_dir": str(project_dir),
        "stack_http_port": HTTP_PORT,
        "stack_prometheus_port": PROM_PORT,
        "stack_db_password": password_expr,
        "deploy_backend_replicas": 1,
        "deploy_health_timeout": 60,
    }
    return run_playbook(tmp_path, "deploy.yml", variables, cmdline=cmdline)


def containers() -> list[str]:
    return run(["docker", "compose", "-p", PROJECT, "ps", "-aq"]).stdout.split()


def test_missing_secret_stops_before_any_container(tmp_path, project_dir, moto_endpoint):
    result, failures = play(
        tmp_path, project_dir, lookup(moto_endpoint, f"{PROJECT}/nope.password")
    )
    assert result.rc != 0
    text = json.dumps(list(result.events))
    assert f"{PROJECT}/nope" in text
    assert "ResourceNotFound" in text
    assert containers() == []


def test_deploy_uses_the_secret_and_never_shows_it(tmp_path, project_dir, moto_endpoint, secret):
    result, failures = play(
        tmp_path, project_dir, lookup(moto_endpoint, f"{secret}.password"), cmdline="--diff -vv"
    )
    assert result.rc == 0, failures
    # The application's role logs in with the secret's value over TCP (not the socket).
    login = run([
        "docker", "compose", "-p", PROJECT, "exec", "-T", "-e", f"PGPASSWORD={PASSWORD}", "db",
        "psql", "-h", "127.0.0.1", "-U", "app", "-d", "appdb", "-tAc", "select 1",
    ])  # fmt: skip
    assert login.stdout.strip() == "1", login.stderr
    wrong = run([
        "docker", "compose", "-p", PROJECT, "exec", "-T", "-e", "PGPASSWORD=wrong", "db",
        "psql", "-h", "127.0.0.1", "-U", "app", "-d", "appdb", "-tAc", "select 1",
    ])  # fmt: skip
    assert wrong.returncode != 0
    events = json.dumps(list(result.events))
    assert PASSWORD not in events
    for path in (tmp_path / "artifacts").rglob("*"):
        if path.is_file():
            assert PASSWORD not in path.read_text(errors="replace"), path
