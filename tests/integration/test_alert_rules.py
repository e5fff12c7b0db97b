"""The backup alert rules, checked and unit-tested with the real promtool."""

from __future__ import annotations

from tests.conftest import ROOT, run

RULES = ROOT / "roles" / "deploy" / "files" / "prometheus-rules"


def promtool(*args: str):
    return run(
        [
            "docker", "run", "--rm", "-v", f"{RULES}:/rules:ro", "-w", "/rules",
            "--entrypoint", "promtool", "fastapi-monolith/prometheus:2.42", *args,
        ],
        timeout=120,
    )  # fmt: skip


def test_rules_are_valid(docker_ready):
    proc = promtool("check", "rules", "backup-alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 3 rules found" in proc.stdout


def test_backup_missing_fires_after_26_hours(docker_ready):
    proc = promtool("test", "rules", "backup-alerts.test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
