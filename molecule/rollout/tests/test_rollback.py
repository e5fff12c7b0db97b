"""Verify the rollback from 1.1.0 to 1.0.0 (converge) on the Molecule Docker host; the scaling
and restarts after it keep the release."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

from stack_checks import (  # noqa: E402
    HTTP,
    backend_image_id,
    containers,
    evidence,
    http_gets,
    ledger,
)


def test_backend_runs_the_previous_release(host):
    backends = [c for c in containers(host) if c["Service"] == "backend"]
    assert len(backends) == 2, evidence(host)
    assert {c["Image"] for c in backends} == {"fastapi-monolith/backend:1.0.0"}, evidence(host)
    assert all(c["Health"] == "healthy" for c in backends), evidence(host)
    for status, body in http_gets(host, f"{HTTP}/version", 6):
        assert status == 200, body
        assert json.loads(body)["version"] == "1.0.0"


def test_ledger_marks_the_abandoned_release(host):
    entries = ledger(host)
    assert [(e["tag"], e["status"]) for e in entries] == [
        ("1.0.0", "good"),
        ("1.1.0", "bad"),
        ("1.0.0", "good"),
    ], entries  # the idempotence run added nothing
    assert entries[-1]["image_id"] == backend_image_id(host, "1.0.0")
