"""Runbooks note themselves in an incident's timeline (issue 11): any playbook run with
``-e incident_id=...`` appends one entry when it ends, ok or failed, through the
opsauto_incident callback (playbooks/callback_plugins), also under ansible-runner as AWX
runs it. No Docker engine: the failed run is refused by its argument spec, the successful
one is an RDS backup against moto's server on 127.0.0.1.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import (
    AWS_TEST_CREDENTIALS,
    create_postgres_instance,
    moto_client,
    run_playbook,
    unique_name,
)


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_TEST_CREDENTIALS["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_TEST_CREDENTIALS["secret_key"])


@pytest.fixture
def incident(tmp_path):
    incident_dir = tmp_path / "incidents"
    result, failures = run_playbook(tmp_path / "open", "incident.yml", {
        "incident_action": "open", "incident_severity": "sev2",
        "incident_summary": "API returns 502", "incident_dir": str(incident_dir),
    })  # fmt: skip
    assert result.rc == 0, failures
    (record,) = incident_dir.glob("INC-*.json")
    return incident_dir, record.stem


def timeline(incident_dir, incident_id) -> list[dict]:
    return json.loads((incident_dir / f"{incident_id}.json").read_text())["timeline"]


def test_failed_and_successful_runs_are_noted(tmp_path, incident, moto_endpoint):
    incident_dir, incident_id = incident
    note = {"incident_id": incident_id, "incident_dir": str(incident_dir)}

    result, _ = run_playbook(tmp_path / "bad", "restart.yml", {"restart_mode": "bogus", **note})
    assert result.rc != 0
    entry = timeline(incident_dir, incident_id)[-1]
    assert entry["kind"] == "runbook"
    assert entry["text"].startswith("playbooks/restart.yml FAILED on localhost at ")
    assert "restart_mode must be one of" in entry["text"]

    rds = moto_client(moto_endpoint, "rds")
    db = create_postgres_instance(rds, unique_name("inc"))
    result, failures = run_playbook(tmp_path / "ok", "backup.yml", {
        "backup_target": "rds", "stack_rds_instance_identifier": db,
        "stack_rds_region": "us-east-1", "stack_rds_endpoint_url": moto_endpoint,
        "stack_db_password": "not-used-by-rds", "stack_backup_dir": str(tmp_path / "backups"),
        "backup_metrics_dir": "", **note,
    })  # fmt: skip
    assert result.rc == 0, failures
    entries = timeline(incident_dir, incident_id)
    assert [e["kind"] for e in entries] == ["open", "runbook", "runbook"]
    assert entries[-1]["text"].startswith("playbooks/backup.yml ok on localhost (")


def test_runs_without_an_incident_or_with_a_wrong_one_note_nothing(tmp_path, incident):
    incident_dir, incident_id = incident
    before = timeline(incident_dir, incident_id)
    result, _ = run_playbook(tmp_path / "plain", "restart.yml", {"restart_mode": "bogus"})
    assert result.rc != 0
    # A malformed id: a warning, the run's own result unchanged, the record untouched.
    result, _ = run_playbook(tmp_path / "wrong", "restart.yml", {
        "restart_mode": "bogus", "incident_id": "INC-nope", "incident_dir": str(incident_dir),
    })  # fmt: skip
    assert result.rc != 0
    assert "not noted in INC-nope" in result.stdout.read()
    assert timeline(incident_dir, incident_id) == before
