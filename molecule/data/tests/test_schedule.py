"""Verify the scheduled backup: the set on the Molecule Docker host, the run's log and the
ansible-runner artifacts on the control node (where this test runs)."""

import json
import os
from pathlib import Path

SET = "/var/backups/fastapi-monolith/molecule-scheduled"
CONTROL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "schedule"


def test_cron_entry_runs_the_wrapper_as_root():
    entry = Path("/etc/cron.d/opsauto-backup-molecule").read_text()
    assert f"15 4 * * * root {CONTROL}/scheduled-backup" in entry


def test_scheduled_run_logged_its_success():
    logs = sorted((CONTROL / "logs").glob("backup-*.log"))
    assert len(logs) == 1
    assert logs[0].read_text().rstrip().endswith("exit status 0")
    assert len(list((CONTROL / "runner" / "artifacts").iterdir())) == 1


def test_scheduled_run_left_a_verified_set_on_the_docker_host(host):
    meta = json.loads(host.file(f"{SET}/SET.json").content_string)
    assert meta["verified"] is True
    assert meta["backup_id"] == "molecule-scheduled"
    for dump in meta["dumps"]:
        path = f"{SET}/{dump['file']}"
        assert host.file(path).mode == 0o600
        assert host.check_output(f"sha256sum {path}").split()[0] == dump["sha256"]


def test_no_secret_in_the_run_log():
    text = next((CONTROL / "logs").glob("backup-*.log")).read_text()
    assert "molecule-db-password-1" not in text


def test_a_run_while_another_holds_the_lock_skipped_and_said_so():
    # side_effect ran the wrapper a second time under a held lock; it exited 75 (asserted there)
    assert "skipped" in (CONTROL / "logs" / "skipped.log").read_text()
