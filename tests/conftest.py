"""Shared helpers for the project's tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for the project's tools: the venv first on PATH, the project's ansible.cfg."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["PY_COLORS"] = "0"
    env.update(extra)
    return env


def run(argv: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run a command from the repository root; output captured as text, ANSI codes removed."""
    proc = subprocess.run(
        argv,
        cwd=kwargs.pop("cwd", ROOT),
        env=kwargs.pop("env", tool_env()),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    proc.stdout = ANSI.sub("", proc.stdout)
    proc.stderr = ANSI.sub("", proc.stderr)
    return proc


def tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def docker_ready() -> None:
    """The bootstrap must have started an engine; fail (not skip) when it is missing."""
    proc = run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30)
    assert proc.returncode == 0, (
        "no Docker engine answers: run `bash scripts/bootstrap.sh` first\n" + proc.stderr
    )


def run_playbook(private_dir: Path, playbook: str, extravars: dict, timeout: int = 900):
    """Run playbooks/<playbook> on the local inventory through ansible-runner, as AWX does.

    Returns (runner result, messages of the failed tasks).
    """
    import ansible_runner  # imported here: only the integration tests need it

    private_dir.mkdir(parents=True, exist_ok=True)

    result = ansible_runner.run(
        private_data_dir=str(private_dir),
        project_dir=str(ROOT),
        playbook=str(ROOT / "playbooks" / playbook),
        inventory=str(ROOT / "inventories" / "local" / "hosts.yml"),
        extravars=extravars,
        envvars={
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        },
        quiet=True,
        timeout=timeout,
    )
    failures = [
        e["event_data"]["res"].get("msg", "")
        for e in result.events
        if e.get("event") == "runner_on_failed" and not e["event_data"].get("ignore_errors")
    ]
    return result, failures
