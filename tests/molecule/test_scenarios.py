"""Every Molecule scenario, each against its own docker-in-docker Docker host."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT, run, tail

SCENARIOS = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario, docker_ready):
    proc = run(["molecule", "test", "-s", scenario], timeout=1800)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, tail(output, 150)
    assert "verify: Executed: Successful" in output
    assert "idempotence: Executed: Successful" in output
