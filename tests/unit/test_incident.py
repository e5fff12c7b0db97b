"""Tests of module_utils/incident.py and the incident_record module (pytest, no Docker).

Evidence collection is tested with a fake command runner standing in for Docker: the
commands, the log cap, the failure handling and the redaction are real; the containers are
not (the integration test covers open, update and resolve through the playbook).
"""

from __future__ import annotations

import datetime
import hashlib
import http.server
import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from ansible.module_utils.incident import (
    REDACTED,
    IncidentError,
    add_timeline,
    attach_diagnose,
    attach_evidence,
    check_incident_id,
    gather_evidence,
    new_incident_id,
    open_record,
    record_path,
    redact,
    redact_env_file,
    redact_inspect,
    render_postmortem,
    resolve_record,
    secret_values_from_env,
    webhook_text,
    write_bundle,
)

from tests.ansible_cli import run_module

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "roles" / "incident" / "templates" / "postmortem.md.j2"
TEMPLATE = TEMPLATE_PATH.read_text()
T0 = datetime.datetime(2026, 1, 31, 9, 15, 0, tzinfo=datetime.UTC)
DB_PASSWORD = "s3cr3t-Db-Pa55"
ENV = (
    f"DB_HOST=db\nDB_NAME=app\nDB_USER=app\nDB_PASSWORD={DB_PASSWORD}\n"
    "# comment\nAPI_KEY=k-123456\n"
)


def minutes(n):
    return T0 + datetime.timedelta(minutes=n)


def new_record(**kwargs):
    args = dict(
        severity="sev2",
        summary="API returns 502",
        hosts=["app1", "app2"],
        moment=T0,
        author="alice",
    )
    args.update(kwargs)
    return open_record(new_incident_id(T0, "3fa2"), **args)


# --------------------------------------------------------------------------- ids


def test_id_carries_the_utc_open_time_and_four_hex_digits():
    assert new_incident_id(T0, "3fa2") == "INC-20260131-091500-3fa2"
    assert re.fullmatch(r"INC-20260131-091500-[0-9a-f]{4}", new_incident_id(T0))
    other_tz = T0.astimezone(datetime.timezone(datetime.timedelta(hours=2)))
    assert new_incident_id(other_tz, "0000") == "INC-20260131-091500-0000"


@pytest.mark.parametrize(
    "bad", ["", "INC-2026-1", "../INC-20260131-091500-3fa2", "INC-20260131-091500-3FA2x", None]
)
def test_malformed_ids_are_refused_before_they_become_file_names(bad, tmp_path):
    with pytest.raises(IncidentError, match="not an incident id"):
        record_path(str(tmp_path), bad)


def test_check_incident_id_accepts_a_real_id():
    assert check_incident_id("INC-20260131-091500-3fa2") == "INC-20260131-091500-3fa2"


# --------------------------------------------------------------------------- records


def test_open_record_holds_severity_summary_start_hosts_and_first_entry():
    record = new_record(impact={"users_affected": "all"})
    assert record["status"] == "open"
    assert record["severity"] == "sev2"
    assert record["started_at"] == "2026-01-31T09:15:00Z"
    assert record["affected_hosts"] == ["app1", "app2"]
    assert record["impact"] == {"users_affected": "all"}
    assert record["timeline"] == [
        {
            "time": "2026-01-31T09:15:00Z",
            "author": "alice",
            "kind": "open",
            "text": "Incident opened: API returns 502",
        }
    ]


@pytest.mark.parametrize("severity", ["critical", "sev0", "sev5", "SEV1", ""])
def test_open_refuses_an_unknown_severity(severity):
    with pytest.raises(IncidentError, match="sev1, sev2, sev3, sev4"):
        new_record(severity=severity)


def test_open_refuses_an_empty_summary():
    with pytest.raises(IncidentError, match="incident_summary"):
        new_record(summary="  ")


def test_update_appends_in_order_and_resolve_closes_with_duration():
    record = new_record()
    add_timeline(record, "rolled back to 1.0.0", minutes(5), "bob")
    add_timeline(record, "error rate back to 0", minutes(9), "alice")
    resolve_record(record, minutes(12), "alice", "rollback", "bad release 1.1.0", ["add a canary"])
    assert [e["text"] for e in record["timeline"][1:3]] == [
        "rolled back to 1.0.0",
        "error rate back to 0",
    ]
    assert record["timeline"][1]["author"] == "bob"
    assert record["status"] == "resolved"
    assert record["resolved_at"] == "2026-01-31T09:27:00Z"
    assert record["duration_seconds"] == 720
    assert record["resolution"] == {
        "text": "rollback",
        "root_cause": "bad release 1.1.0",
        "action_items": ["add a canary"],
    }
    assert record["timeline"][-1]["kind"] == "resolve"


def test_update_after_resolve_is_refused_with_a_clear_error():
    record = new_record()
    resolve_record(record, minutes(3), "alice")
    with pytest.raises(IncidentError) as err:
        add_timeline(record, "too late", minutes(4), "bob")
    assert str(err.value) == (
        "incident INC-20260131-091500-3fa2 was resolved at 2026-01-31T09:18:00Z: "
        "cannot append to its timeline; open a new incident (incident_action=open) for a recurrence"
    )
    with pytest.raises(IncidentError, match="cannot resolve it again"):
        resolve_record(record, minutes(5), "alice")
    with pytest.raises(IncidentError, match="cannot attach evidence"):
        attach_evidence(record, {"file": "x.tar.gz", "hosts": []}, minutes(5), "alice")
    assert len(record["timeline"]) == 2


def test_update_needs_text():
    with pytest.raises(IncidentError, match="incident_text"):
        add_timeline(new_record(), "", minutes(1), "bob")


def test_attach_diagnose_keeps_only_warn_and_fail_findings():
    fleet = {
        "status": "FAIL",
        "generated_at": "2026-01-31T09:16:00Z",
        "reports": [
            {
                "host": "app1",
                "checks": [
                    {
                        "id": "database.login",
                        "status": "FAIL",
                        "summary": "password refused",
                        "remedy": "deploy.yml",
                    },
                    {"id": "host.load", "status": "PASS", "summary": "ok", "remedy": None},
                    {
                        "id": "host.disk",
                        "status": "WARN",
                        "summary": "12% free",
                        "remedy": "free space",
                    },
                ],
            }
        ],
    }
    record = attach_diagnose(new_record(), fleet)
    assert [(f["id"], f["status"], f["host"]) for f in record["diagnose"]["findings"]] == [
        ("database.login", "FAIL", "app1"),
        ("host.disk", "WARN", "app1"),
    ]


# --------------------------------------------------------------------------- redaction


def test_redact_replaces_known_secret_values_wherever_they_appear():
    text = f"FATAL: password authentication failed; tried {DB_PASSWORD} and again{DB_PASSWORD}."
    out = redact(text, [DB_PASSWORD])
    assert DB_PASSWORD not in out
    assert out.count(REDACTED) == 2


def test_redact_replaces_url_encoded_secret_values():
    value = "p@ss/word:1"
    out = redact("dsn=postgresql://app:p%40ss%2Fword%3A1@db/app", [value])
    assert "p%40ss" not in out
    assert "word" not in out


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        ("DATABASE_URL=postgresql://app:hunter22@db:5432/app", "hunter22"),
        ("connecting to redis://:topsecret@cache:6379/0", "topsecret"),
        ("amqp://guest:guestpw@rabbit/", "guestpw"),
        ("psycopg2.connect('host=db user=app password=hunter22 dbname=app')", "hunter22"),
        ('dsn: host=db password="quoted-pw" dbname=app', "quoted-pw"),
        ("PGPASSWORD=envpw123 psql -h db", "envpw123"),
    ],
)
def test_redact_removes_passwords_in_urls_and_dsns_without_knowing_them(text, leaked):
    out = redact(text)
    assert leaked not in out
    assert REDACTED in out


def test_redact_keeps_the_user_host_and_ordinary_text():
    out = redact("postgresql://app:hunter22@db:5432/app GET /health 200")
    assert out == f"postgresql://app:{REDACTED}@db:5432/app GET /health 200"
    assert redact("GET https://example.org/a:b 200") == "GET https://example.org/a:b 200"


def test_short_known_values_are_ignored_so_ordinary_words_survive():
    assert redact("db is up", ["db"]) == "db is up"


def test_env_file_keeps_names_only_and_secret_values_are_found_by_name():
    assert redact_env_file(ENV) == "".join(
        f"{n}={REDACTED}\n" for n in ["DB_HOST", "DB_NAME", "DB_USER", "DB_PASSWORD", "API_KEY"]
    )
    assert secret_values_from_env(ENV) == [DB_PASSWORD, "k-123456"]


def test_inspect_environment_values_are_all_redacted():
    inspect = json.dumps(
        [
            {
                "Id": "abc",
                "Config": {"Env": [f"DB_PASSWORD={DB_PASSWORD}", "DB_HOST=db", "PATH=/usr/bin"]},
            }
        ]
    )
    out = redact_inspect(inspect, [])
    data = json.loads(out)
    assert data[0]["Config"]["Env"] == [
        f"DB_PASSWORD={REDACTED}",
        f"DB_HOST={REDACTED}",
        f"PATH={REDACTED}",
    ]
    assert DB_PASSWORD not in out


# --------------------------------------------------------------------------- evidence


class FakeDocker:
    """Stands in for the docker CLI: answers by argv, logs every call."""

    def __init__(self, fail=()):
        self.calls = []
        self.fail = fail

    def __call__(self, argv):
        self.calls.append(argv)
        joined = " ".join(argv)
        for pattern in self.fail:
            if pattern in joined:
                return 1, "", "Cannot connect to the Docker daemon"
        if argv[-2:] == ["--all", "--services"]:
            return 0, "backend\ndb\n", ""
        if "ps" in argv and "--all" in argv and "--services" not in argv and argv[1] == "compose":
            return (
                0,
                "NAME  IMAGE  COMMAND\n"
                f"fastapi-monolith-db-1 postgres  env POSTGRES_PASSWORD={DB_PASSWORD}\n",
                "",
            )
        if argv[:2] == ["docker", "ps"]:
            return 0, "c1\nc2\n", ""
        if argv[1] == "compose" and "logs" in argv:
            service = argv[-1]
            lines = [f"{service} line {i}\n" for i in range(5000)]
            lines.append(
                f"{service} | FATAL: password authentication failed for password={DB_PASSWORD}\n"
            )
            lines.append(f"{service} | DATABASE_URL=postgresql://app:{DB_PASSWORD}@db/app\n")
            return 0, "".join(lines), ""
        if argv[:2] == ["docker", "inspect"]:
            env = [f"DB_PASSWORD={DB_PASSWORD}", "DB_HOST=db"]
            return 0, json.dumps([{"Id": i, "Config": {"Env": env}} for i in argv[2:]]), ""
        if argv[:2] == ["docker", "stats"]:
            return 0, "CONTAINER ID  NAME  CPU %\nc1  backend  1.2%\n", ""
        return 127, "", f"unexpected {joined}"


def fake_files(ledger_lines=30):
    ledger = "".join(
        json.dumps({"id": i, "tag": f"1.{i}.0", "status": "good"}) + "\n"
        for i in range(ledger_lines)
    )
    files = {"/opt/app/.env": ENV, "/opt/app/ledger/releases.jsonl": ledger}
    return files.get


def gather(docker, **kwargs):
    args = dict(
        secret_values=[], log_lines=2000, stats_samples=2, ledger_entries=20, read_file=fake_files()
    )
    args.update(kwargs)
    return gather_evidence(
        docker,
        "fastapi-monolith",
        "/opt/app",
        "2026-01-31T09:15:00Z",
        "/opt/app/ledger/releases.jsonl",
        **args,
    )


def test_gather_runs_the_evidence_commands_for_the_window():
    docker = FakeDocker()
    result = gather(docker)
    assert [
        "docker",
        "compose",
        "--project-name",
        "fastapi-monolith",
        "ps",
        "--all",
    ] in docker.calls
    logs = [c for c in docker.calls if "logs" in c]
    assert [c[-1] for c in logs] == ["backend", "db"]
    assert all(c[c.index("--since") + 1] == "2026-01-31T09:15:00Z" and "--tail" in c for c in logs)
    assert sum(1 for c in docker.calls if c[:2] == ["docker", "stats"]) == 2
    assert sorted(result["files"]) == [
        "compose-ps.txt",
        "env.redacted",
        "errors.txt",
        "inspect.json",
        "ledger.jsonl",
        "logs/backend.log",
        "logs/db.log",
        "services.txt",
        "stats-1.txt",
        "stats-2.txt",
    ]
    assert result["errors"] == []


def test_gather_caps_each_log_and_keeps_the_newest_lines():
    result = gather(FakeDocker(), log_lines=100)
    log = result["files"]["logs/backend.log"]
    assert log.startswith("[... 4902 earlier lines cut, last 100 kept]\n")
    assert len(log.splitlines()) == 101
    assert "DATABASE_URL=postgresql://app:" in log


def test_gather_keeps_the_newest_ledger_entries():
    result = gather(FakeDocker(), ledger_entries=5)
    ids = [json.loads(line)["id"] for line in result["files"]["ledger.jsonl"].splitlines()]
    assert ids == [25, 26, 27, 28, 29]


def test_gathered_evidence_never_contains_the_database_password():
    # The password is not given: it is found in .env by its name, and caught in URLs and DSNs.
    result = gather(FakeDocker())
    for name, text in result["files"].items():
        assert DB_PASSWORD not in text, name
    assert f"POSTGRES_PASSWORD={REDACTED}" in result["files"]["compose-ps.txt"]


def test_a_failing_docker_command_is_recorded_not_fatal():
    result = gather(FakeDocker(fail=["docker stats"]))
    assert len(result["errors"]) == 2
    assert "Cannot connect to the Docker daemon" in result["files"]["errors.txt"]
    assert "[command failed, exit 1]" in result["files"]["stats-1.txt"]
    assert "logs/db.log" in result["files"]


def test_bundle_has_a_manifest_that_matches_and_no_database_password(tmp_path):
    gathered = gather(FakeDocker())
    files = {f"app1/{name}": text for name, text in gathered["files"].items()}
    files["app1/extra.txt"] = f"a secret the host did not know: {DB_PASSWORD}\n"
    path = tmp_path / "inc" / "INC-20260131-091500-3fa2-evidence-20260131-092000.tar.gz"
    bundle = write_bundle(str(path), files, [DB_PASSWORD])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    assert bundle["sha256"] == hashlib.sha256(raw).hexdigest()
    assert bundle["size"] == len(raw)
    with tarfile.open(path) as tar:
        contents = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    top = "INC-20260131-091500-3fa2-evidence-20260131-092000"
    assert set(contents) == {f"{top}/{n}" for n in files} | {f"{top}/MANIFEST.sha256"}
    manifest = contents[f"{top}/MANIFEST.sha256"].decode().splitlines()
    assert len(manifest) == len(files)
    for line in manifest:
        digest, name = line.split("  ", 1)
        assert hashlib.sha256(contents[f"{top}/{name}"]).hexdigest() == digest
    for name, data in contents.items():
        assert DB_PASSWORD.encode() not in data, name
    assert DB_PASSWORD.encode() not in io.BytesIO(raw).getvalue()


def test_bundle_refuses_member_names_that_escape(tmp_path):
    with pytest.raises(IncidentError, match="relative path"):
        write_bundle(str(tmp_path / "b.tar.gz"), {"../x": "y"})


# --------------------------------------------------------------------------- output


def resolved_record():
    record = new_record(impact={"users_affected": "all API clients", "data_at_risk": "no"})
    add_timeline(record, "rolled back | to 1.0.0", minutes(5), "bob")
    attach_evidence(
        record,
        {"file": "b.tar.gz", "sha256": "ab" * 32, "size": 10, "hosts": ["app1"]},
        minutes(6),
        "bob",
    )
    attach_diagnose(
        record,
        {"status": "FAIL", "generated_at": "x", "reports": [{"host": "app1", "checks": [
            {"id": "database.login", "status": "FAIL", "summary": "password refused",
             "remedy": "run deploy.yml"}]}]},
    )  # fmt: skip
    return resolve_record(record, minutes(65), "alice", "rolled back", "", ["add a canary stage"])


def test_postmortem_has_every_section_prefilled():
    text = render_postmortem(resolved_record(), TEMPLATE)
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert headings == [
        "Summary",
        "Impact",
        "Timeline",
        "Diagnosis",
        "Root cause",
        "Resolution",
        "Action items",
    ]
    assert text.startswith("# Post-mortem (draft): INC-20260131-091500-3fa2, API returns 502\n")
    assert "| Duration | 1h 05m 00s |" in text
    assert "- **users_affected**: all API clients" in text
    assert "| 2026-01-31T09:20:00Z | bob | rolled back \\| to 1.0.0 |" in text
    assert "- FAIL `database.login` on app1: password refused (remedy: run deploy.yml)" in text
    assert "_To be completed: the cause" in text  # root cause left empty: placeholder
    assert "- [ ] add a canary stage" in text
    assert "`b.tar.gz`" in text


def test_postmortem_of_a_record_without_evidence_says_so():
    record = resolve_record(new_record(), minutes(1), "alice")
    text = render_postmortem(record, TEMPLATE)
    assert "_No evidence was collected with diagnose" in text
    assert "- _Users and services affected" in text
    assert "| Duration | 1m 00s |" in text


def test_webhook_texts():
    record = new_record()
    assert (
        webhook_text(record, "open")
        == "[SEV2] INC-20260131-091500-3fa2 opened: API returns 502 (hosts: app1, app2)"
    )
    add_timeline(record, "rolled back", minutes(5), "bob")
    assert (
        webhook_text(record, "update")
        == "[SEV2] INC-20260131-091500-3fa2 update by bob: rolled back"
    )
    resolve_record(record, minutes(65), "alice")
    assert (
        webhook_text(record, "resolve")
        == "[SEV2] INC-20260131-091500-3fa2 resolved after 1h 05m 00s: API returns 502"
    )


# --------------------------------------------------------------------------- the module


class Receiver(http.server.BaseHTTPRequestHandler):
    bodies: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        type(self).bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_module_open_update_resolve_and_a_failing_webhook_is_only_a_warning(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.bodies = []
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        opened = run_module(
            "incident_record",
            {"action": "open", "incident_dir": str(tmp_path), "severity": "sev1", "summary": "down",
             "hosts": ["app1"], "webhook_url": url},
        )  # fmt: skip
        assert opened["status"] == "CHANGED", opened
        incident_id = opened["incident_id"]
        path = tmp_path / f"{incident_id}.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert json.loads(path.read_text())["severity"] == "sev1"
        assert opened["webhook"]["sent"] is True

        # A webhook that refuses connections: the update is still recorded.
        dead = "http://127.0.0.1:9/hook"
        updated = run_module(
            "incident_record",
            {"action": "update", "incident_dir": str(tmp_path), "incident_id": incident_id,
             "text": "restarted", "webhook_url": dead},
        )  # fmt: skip
        assert updated["status"] == "CHANGED", updated
        assert updated["webhook"]["sent"] is False
        assert updated["webhook"]["error"]
        assert dead not in json.dumps(updated)
        assert json.loads(path.read_text())["timeline"][-1]["text"] == "restarted"

        resolved = run_module(
            "incident_record",
            {"action": "resolve", "incident_dir": str(tmp_path), "incident_id": incident_id,
             "webhook_url": url, "postmortem_template": str(TEMPLATE_PATH)},
        )  # fmt: skip
        assert resolved["status"] == "CHANGED", resolved
        assert Path(resolved["postmortem_path"]).read_text().count("## ") == 7

        late = run_module(
            "incident_record",
            {
                "action": "update",
                "incident_dir": str(tmp_path),
                "incident_id": incident_id,
                "text": "late",
            },
        )
        assert late["status"].startswith("FAILED")
        assert "was resolved at" in late["msg"]
        assert "open a new incident" in late["msg"]
        assert [b["text"].split(" ")[2] for b in Receiver.bodies] == ["opened:", "resolved"]
    finally:
        server.shutdown()


def test_bundle_entry_point_bundles_every_host_and_the_diagnosis(tmp_path):
    """roles/incident/tasks/bundle.yml on the control node, the hosts' gather results given as
    inventory variables (what gather.yml registers), no Docker involved."""
    incident_id = "INC-20260131-091500-3fa2"
    incident_dir = tmp_path / "incidents"
    (incident_dir / f".{incident_id}-diagnose").mkdir(parents=True)
    (incident_dir / f".{incident_id}-diagnose" / "fleet.json").write_text(
        json.dumps(
            {
                "status": "FAIL",
                "generated_at": "2026-01-31T09:16:00Z",
                "reports": [
                    {
                        "host": "app1",
                        "checks": [
                            {
                                "id": "database.login",
                                "status": "FAIL",
                                "summary": "refused",
                                "remedy": "deploy.yml",
                            }
                        ],
                    }
                ],
            }
        )
    )
    (incident_dir / f"{incident_id}.json").write_text(json.dumps(new_record()))
    log = f"login failed for {DB_PASSWORD}\n"
    inventory = {
        "all": {
            "children": {
                "app_servers": {
                    "hosts": {
                        "app1": {
                            # what gather.yml leaves: the host's stack_secret_values as a fact
                            "incident_secret_values": [DB_PASSWORD],
                            "incident_evidence": {
                                "evidence": {"files": {"logs/backend.log": log}, "errors": []}
                            },
                        },
                        "app2": {
                            "incident_secret_values": [DB_PASSWORD],
                            "incident_evidence": {
                                "evidence": {"files": {"compose-ps.txt": "db up\n"}, "errors": []}
                            },
                        },
                        "app3": {"incident_secret_values": [DB_PASSWORD]},
                    }
                }
            }
        }
    }
    (tmp_path / "hosts.yml").write_text(json.dumps(inventory))
    (tmp_path / "play.yml").write_text(
        json.dumps(
            [
                {
                    "name": "Bundle",
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Bundle",
                            "ansible.builtin.include_role": {
                                "name": "incident",
                                "tasks_from": "bundle",
                            },
                        }
                    ],
                }
            ]
        )
    )
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(tmp_path / "hosts.yml"),
            str(tmp_path / "play.yml"),
            "-e",
            f"incident_dir={incident_dir}",
            "-e",
            f"incident_id={incident_id}",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (bundle,) = incident_dir.glob(f"{incident_id}-evidence-*.tar.gz")
    with tarfile.open(bundle) as tar:
        contents = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()}
    assert set(contents) == {
        "app1/logs/backend.log",
        "app2/compose-ps.txt",
        "diagnose/fleet.json",
        "MANIFEST.sha256",
    }
    assert all(DB_PASSWORD.encode() not in data for data in contents.values())
    record = json.loads((incident_dir / f"{incident_id}.json").read_text())
    assert record["evidence"][0]["hosts"] == ["app1", "app2"]
    assert record["diagnose"]["findings"][0]["id"] == "database.login"
    assert not (incident_dir / f".{incident_id}-diagnose").exists()
    assert DB_PASSWORD not in proc.stdout
