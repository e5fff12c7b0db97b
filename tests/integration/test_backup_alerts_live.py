"""The backup alerts live (issue 11): the reference stack's node_exporter publishes the
backup role's textfile metrics, Prometheus scrapes them and evaluates the rules the deploy
role installs. A real backup sets the success time Prometheus reads; a failed backup run
makes BackupRunFailed fire (its `for` is 0m: it fires at the next evaluation, 15 s).

The promtool unit tests of the rules (timings such as BackupMissing after 26 h) are in
test_alert_rules.py; this proves the wiring: directory, mount, scrape job, rule_files.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import pytest

from tests.conftest import compose_down, run_playbook

PROJECT = "opsauto-it-alerts"
HTTP_PORT = 18780
PROM_PORT = 19780


def play(tmp_path, base, playbook, **extra):
    variables = {
        "stack_project_name": PROJECT,
        "stack_project_dir": str(base / PROJECT),
        "stack_http_port": HTTP_PORT,
        "stack_prometheus_port": PROM_PORT,
        "stack_db_password": "integration-password-alerts",
        "stack_backup_dir": str(base / "backups"),
        "stack_metrics_textfile_dir": str(base / "metrics"),
        "deploy_backend_replicas": 1,
        "deploy_health_timeout": 60,
        **extra,
    }
    return run_playbook(tmp_path, f"{playbook}.yml", variables)


@pytest.fixture(scope="module")
def base(tmp_path_factory, docker_ready):
    base = tmp_path_factory.mktemp("alerts")
    result, failures = play(tmp_path_factory.mktemp("deploy"), base, "deploy")
    assert result.rc == 0, failures
    yield base
    compose_down(PROJECT)


def prometheus(path: str, **query) -> dict:
    url = f"http://127.0.0.1:{PROM_PORT}/api/v1/{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())["data"]


def wait_for(what, fetch, done, timeout=90):
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what} not seen within {timeout} s: {value}"
        time.sleep(2)


def test_rules_are_loaded(base):
    groups = prometheus("rules")["groups"]
    names = {rule["name"] for group in groups for rule in group["rules"]}
    assert {"BackupMissing", "BackupNotVerified", "BackupRunFailed"} <= names


def test_backup_metrics_reach_prometheus_and_a_failed_run_fires(tmp_path, base):
    result, failures = play(tmp_path / "ok", base, "backup")
    assert result.rc == 0, failures
    set_json = next((base / "backups").glob("*/SET.json"))
    created = json.loads(set_json.read_text())["created"]
    query = f'opsauto_backup_last_success_timestamp_seconds{{project="{PROJECT}"}}'
    found = wait_for("the success metric", lambda: prometheus("query", query=query)["result"],
                     lambda r: len(r) == 1)  # fmt: skip
    seen = int(float(found[0]["value"][1]))
    assert abs(seen - _epoch(created)) <= 1, (seen, created)
    assert found[0]["metric"]["job"] == "node"
    verified = prometheus("query", query=f'opsauto_backup_verified{{project="{PROJECT}"}}')
    assert verified["result"][0]["value"][1] == "1"
    assert _firing() == set()

    # A run that fails (a database that does not exist) writes the failure metric.
    result, failures = play(tmp_path / "bad", base, "backup", backup_databases=["no_such_db"])
    assert result.rc != 0
    firing = wait_for("BackupRunFailed firing", _firing, lambda f: "BackupRunFailed" in f)
    assert "BackupMissing" not in firing


def _firing() -> set[str]:
    alerts = prometheus("alerts")["alerts"]
    return {
        a["labels"]["alertname"]
        for a in alerts
        if a["state"] == "firing" and a["labels"].get("project") == PROJECT
    }


def _epoch(text: str) -> int:
    import datetime

    return int(datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
