"""playbooks/incident.yml through ansible-runner (as AWX runs it) on the local inventory:
open -> update -> resolve, with a Slack-compatible webhook receiver on 127.0.0.1.

These actions run on the control node only and touch no container. The collect test deploys
a reference stack of its own (own compose project and ports) and bundles its evidence.
Run it under the engine lock (flock /tmp/opsauto-engine.lock pytest tests/integration/...).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import stat
import tarfile
import threading
import time
import urllib.parse
import urllib.request

import pytest

from tests.conftest import AWS_TEST_CREDENTIALS, compose_down, run_playbook


class Receiver(http.server.BaseHTTPRequestHandler):
    calls: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls.append((self.path, self.headers["Content-Type"], json.loads(body)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    Receiver.calls = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/XXXX"
    server.shutdown()
    thread.join(5)


def incident(tmp_path, name, **extravars):
    result, failures = run_playbook(tmp_path / name, "incident.yml", extravars, timeout=300)
    return result, failures


def test_open_update_resolve_notifies_three_times_and_writes_the_postmortem(tmp_path, webhook):
    incident_dir = tmp_path / "incidents"
    common = {
        "incident_dir": str(incident_dir),
        "incident_webhook_url": webhook,
        "incident_author": "alice",
    }

    result, failures = incident(
        tmp_path,
        "open",
        incident_action="open",
        incident_severity="sev2",
        incident_summary="API returns 502 for every request",
        incident_impact={"users_affected": "all API clients"},
        **common,
    )
    assert result.rc == 0, failures
    (record_file,) = incident_dir.glob("INC-*.json")
    incident_id = record_file.stem
    assert stat.S_IMODE(record_file.stat().st_mode) == 0o600
    record = json.loads(record_file.read_text())
    assert record["status"] == "open"
    assert record["severity"] == "sev2"
    assert record["affected_hosts"] == ["localhost"]

    # What a runbook's follow-up does: -e incident_action=update -e incident_id=...
    result, failures = incident(
        tmp_path,
        "update",
        incident_action="update",
        incident_id=incident_id,
        incident_text="rolled back to 1.0.0 with playbooks/rollback.yml",
        **common,
    )
    assert result.rc == 0, failures

    result, failures = incident(
        tmp_path,
        "resolve",
        incident_action="resolve",
        incident_id=incident_id,
        incident_resolution="rollback to 1.0.0",
        incident_root_cause="release 1.1.0 read a missing setting",
        incident_action_items=["add the setting to the deploy preflight"],
        **common,
    )
    assert result.rc == 0, failures

    record = json.loads(record_file.read_text())
    assert record["status"] == "resolved"
    assert record["duration_seconds"] >= 0
    assert [e["kind"] for e in record["timeline"]] == ["open", "update", "resolve"]
    assert record["timeline"][1]["author"] == "alice"

    texts = [body["text"] for _, _, body in Receiver.calls]
    assert len(Receiver.calls) == 3, Receiver.calls
    assert all(path == "/services/T000/B000/XXXX" for path, _, _ in Receiver.calls)
    assert all(ctype == "application/json" for _, ctype, _ in Receiver.calls)
    assert (
        texts[0]
        == f"[SEV2] {incident_id} opened: API returns 502 for every request (hosts: localhost)"
    )
    assert (
        texts[1]
        == f"[SEV2] {incident_id} update by alice: rolled back to 1.0.0 with playbooks/rollback.yml"
    )
    assert texts[2].startswith(f"[SEV2] {incident_id} resolved after ")

    postmortem = (incident_dir / f"{incident_id}-postmortem.md").read_text()
    for section in ("Summary", "Impact", "Timeline", "Root cause", "Resolution", "Action items"):
        assert f"\n## {section}\n" in postmortem
    assert "- **users_affected**: all API clients" in postmortem
    assert "rolled back to 1.0.0 with playbooks/rollback.yml" in postmortem
    assert "release 1.1.0 read a missing setting" in postmortem
    assert "- [ ] add the setting to the deploy preflight" in postmortem

    # A resolved incident refuses another update, with the reason.
    result, failures = incident(
        tmp_path,
        "late",
        incident_action="update",
        incident_id=incident_id,
        incident_text="late",
        **common,
    )
    assert result.rc != 0
    assert any("was resolved at" in msg for msg in failures), failures
    assert len(Receiver.calls) == 3


def test_a_failing_webhook_is_a_warning_and_the_incident_is_opened(tmp_path):
    incident_dir = tmp_path / "incidents"
    result, failures = incident(
        tmp_path,
        "open",
        incident_action="open",
        incident_summary="disk full",
        incident_dir=str(incident_dir),
        incident_webhook_url="http://127.0.0.1:9/unreachable",
    )
    assert result.rc == 0, failures
    assert len(list(incident_dir.glob("INC-*.json"))) == 1
    warnings = [
        w
        for e in result.events
        if e.get("event") == "runner_on_ok"
        for w in e["event_data"]["res"].get("warnings", [])
    ]
    assert any("notification to the webhook failed" in w for w in warnings), warnings
    assert not any("127.0.0.1:9" in w for w in warnings)


def test_open_refuses_an_unknown_severity(tmp_path):
    result, failures = incident(
        tmp_path,
        "bad",
        incident_action="open",
        incident_severity="critical",
        incident_summary="x",
        incident_dir=str(tmp_path / "incidents"),
    )
    assert result.rc != 0
    assert any("incident_severity" in msg and "sev1" in msg for msg in failures), failures


# --------------------------------------------------------------------------- collect (Docker)

PROJECT = "opsauto-it-incident"
HTTP_PORT = 18480
PROM_PORT = 19480
PASSWORD = "integration-password-1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_ready):
    base = tmp_path_factory.mktemp("incident")
    project_dir, backup_dir = base / PROJECT, base / "backups"
    backup_dir.mkdir(mode=0o700)
    variables = {
        "stack_project_name": PROJECT,
        "stack_project_dir": str(project_dir),
        "stack_http_port": HTTP_PORT,
        "stack_prometheus_port": PROM_PORT,
        "stack_db_password": PASSWORD,
        "stack_backup_dir": str(backup_dir),
    }
    result, failures = run_playbook(
        base / "deploy-run", "deploy.yml", {**variables, "deploy_health_timeout": 90}
    )
    assert result.rc == 0, failures
    wait_for_scraped_series()
    yield {"base": base, "vars": variables}
    compose_down(PROJECT)


def prometheus_value(query: str) -> float:
    url = f"http://127.0.0.1:{PROM_PORT}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as resp:
        result = json.loads(resp.read())["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def wait_for_scraped_series(timeout: float = 120) -> None:
    """Until the fresh stack's Prometheus has what the collect's range queries read at the
    incident's start: every target up and two samples of the backend's request counter (a
    rate needs two). Without this the collect, run seconds after the deploy, raced the first
    scrapes (it failed once in a full run and passed alone)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
            rates = prometheus_value('count(rate(http_requests_total{job="backend"}[1m]))')
            if prometheus_value("count(up == 1)") >= 3 and rates >= 1:
                return
        assert time.monotonic() < deadline, "Prometheus never scraped the fresh stack twice"
        time.sleep(1)


def test_collect_bundles_redacted_evidence_of_the_running_stack(
    stack, tmp_path, moto_endpoint, s3_client
):
    incident_dir = tmp_path / "incidents"
    common = {**stack["vars"], "incident_dir": str(incident_dir)}
    bucket = "opsauto-it-incidents"
    s3_client.create_bucket(Bucket=bucket)
    offsite = {
        "incident_s3_bucket": bucket,
        "incident_s3_endpoint_url": moto_endpoint,
        "incident_s3_access_key": AWS_TEST_CREDENTIALS["access_key"],
        "incident_s3_secret_key": AWS_TEST_CREDENTIALS["secret_key"],
    }
    result, failures = incident(
        tmp_path, "open", incident_action="open", incident_summary="slow API", **common
    )
    assert result.rc == 0, failures
    (record_file,) = incident_dir.glob("INC-*.json")
    incident_id = record_file.stem

    result, failures = incident(
        tmp_path,
        "collect",
        incident_action="collect",
        incident_id=incident_id,
        diagnose_load_warn_per_core=50.0,
        diagnose_load_fail_per_core=100.0,
        **common,
        **offsite,
    )
    assert result.rc == 0, failures
    (bundle,) = incident_dir.glob(f"{incident_id}-evidence-*.tar.gz")
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    # the copy in S3, next to the backups, is the same bytes
    head = s3_client.head_object(Bucket=bucket, Key=f"incidents/{incident_id}/{bundle.name}")
    assert head["Metadata"]["sha256"] == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert head["ServerSideEncryption"] == "AES256"
    with tarfile.open(bundle) as tar:
        contents = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()}
    for name in ("compose-ps.txt", "inspect.json", "stats-1.txt", "ledger.jsonl", "env.redacted"):
        assert f"localhost/{name}" in contents, sorted(contents)
    for service in ("db", "backend", "nginx"):
        assert f"localhost/logs/{service}.log" in contents, sorted(contents)
    assert "diagnose/fleet.json" in contents
    # Prometheus range queries over the incident's window, from the stack's own Prometheus.
    queries = json.loads(contents["localhost/prometheus/queries.json"])
    assert [q["name"] for q in queries] == [
        "backend_requests_per_second", "backend_5xx_ratio", "backend_p95_seconds", "targets_up",
    ]  # fmt: skip
    assert not [q for q in queries if "error" in q], queries
    by_name = {q["name"]: q for q in queries}
    assert by_name["targets_up"]["series"] >= 3  # prometheus and the backend replicas
    assert by_name["backend_requests_per_second"]["series"] >= 1  # health checks count too
    rates = json.loads(contents["localhost/prometheus/backend_requests_per_second.json"])
    assert rates["status"] == "success"
    assert rates["data"]["resultType"] == "matrix"
    assert b"DB_PASSWORD=<redacted>" in contents["localhost/env.redacted"]
    # the reference stack's database password is the application role's (APP_DB_PASSWORD)
    assert b"APP_DB_PASSWORD=<redacted>" in contents["localhost/inspect.json"]
    assert PASSWORD.encode() not in contents["localhost/inspect.json"]
    for line in contents["MANIFEST.sha256"].decode().splitlines():
        digest, name = line.split("  ", 1)
        assert hashlib.sha256(contents[name]).hexdigest() == digest, name
    for name, data in contents.items():
        assert PASSWORD.encode() not in data, name
    record = json.loads(record_file.read_text())
    assert record["evidence"][0]["hosts"] == ["localhost"]
    assert record["diagnose"]["status"] in ("PASS", "WARN", "FAIL")
    assert record["timeline"][-1]["kind"] == "evidence"
