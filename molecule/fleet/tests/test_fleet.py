"""Verify the fleet diagnosis: one report naming the four hosts, each from its own host."""

import json
import os
from pathlib import Path

HOSTS = [f"opsauto-dockerhost-fleet-{n}" for n in range(1, 5)]


def fleet_report() -> dict:
    path = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "diagnose" / "fleet.json"
    return json.loads(path.read_text())


def test_the_fleet_report_names_every_host_and_passes():
    fleet = fleet_report()
    assert fleet["schema"] == "opsauto.diagnose-fleet/1"
    assert sorted(fleet["hosts"]) == HOSTS
    assert fleet["status"] == "PASS", [(r["host"], r["summary"]) for r in fleet["reports"]]


def test_each_host_has_its_own_report_file(host):
    name = host.backend.get_hostname()
    path = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "diagnose" / f"{name}.json"
    report = json.loads(path.read_text())
    assert report["host"] == name
    assert report["summary"]["status"] == "PASS", report["summary"]
    running = next(c for c in report["checks"] if c["id"] == "containers.running")
    assert running["status"] == "PASS", running
