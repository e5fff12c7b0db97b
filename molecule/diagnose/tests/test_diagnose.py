"""Verify the diagnosis on the Molecule Docker host: read-only, and a stopped database found."""

import json


def test_the_diagnosis_changed_nothing_on_the_host(host):
    before = host.file("/root/state-before.txt").content_string
    after = host.file("/root/state-after.txt").content_string
    assert "db-1" in before
    assert "releases.jsonl" in before
    assert after == before


def test_the_stopped_database_is_a_fail_with_its_remedy(host):
    report = json.loads(host.file("/root/diagnose-db-down.json").content_string)
    assert report["summary"]["status"] == "FAIL", report["summary"]
    failed = [c for c in report["checks"] if c["status"] == "FAIL"]
    text = json.dumps(failed)
    assert "db" in text, failed
    root = [c for c in failed if "symptom_of" not in c]
    assert root, failed
    assert any("playbooks/" in json.dumps(c) for c in root), root
