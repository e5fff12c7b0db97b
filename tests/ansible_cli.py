"""Run one of the project's modules through the `ansible` CLI against localhost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_module(name: str, args: dict, *flags: str) -> dict:
    """The module's result, plus `status` (SUCCESS, CHANGED or FAILED) from the one-line output."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible"), "localhost", "-m", name,
         "-a", json.dumps(args), "-o", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip
    out = proc.stdout.strip()
    assert "=>" in out, proc.stdout + proc.stderr
    status = out.split("|")[1].strip().split(" ")[0]
    return {"status": status, **json.loads(out.split("=>", 1)[1])}
