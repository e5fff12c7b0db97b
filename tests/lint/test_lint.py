"""Lint gates: ansible-lint (production profile), yamllint, ruff, module docs, syntax."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT, run, tail

PLAYBOOKS = sorted(p.relative_to(ROOT) for p in (ROOT / "playbooks").glob("*.yml"))
MODULES = sorted(p.stem for p in (ROOT / "library").glob("*.py"))
INVENTORIES = sorted(p.relative_to(ROOT) for p in (ROOT / "inventories").iterdir() if p.is_dir())


def test_ansible_lint_production_profile():
    proc = run(["ansible-lint", "--profile", "production", "--offline"], timeout=600)
    assert proc.returncode == 0, tail(proc.stdout + proc.stderr)


def test_yamllint_strict():
    proc = run(["yamllint", "--strict", "."])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_check():
    proc = run(["ruff", "check", "--output-format", "concise", "."])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format():
    proc = run(["ruff", "format", "--check", "."])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("module", MODULES)
def test_module_documentation_renders(module):
    proc = run(["ansible-doc", "-M", "library", module])
    assert proc.returncode == 0, proc.stderr
    for section in ("OPTIONS", "ATTRIBUTES", "EXAMPLES", "RETURN VALUES"):
        assert section in proc.stdout, f"{module}: no {section} in ansible-doc output"


@pytest.mark.parametrize("inventory", INVENTORIES, ids=str)
@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=str)
def test_playbook_syntax(playbook: Path, inventory: Path):
    proc = run(["ansible-playbook", "--syntax-check", "-i", str(inventory), str(playbook)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_collections_pinned_to_what_the_bundle_carries():
    """requirements.yml must install nothing: the `ansible` bundle already has these versions."""
    proc = run(["ansible-galaxy", "collection", "install", "-r", "requirements.yml"], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Nothing to do" in proc.stdout, proc.stdout


def test_role_readmes_match_argument_specs():
    """Each role's variables table is generated from meta/argument_specs.yml."""
    proc = run(["python", "scripts/role_docs.py", "--check"])
    assert proc.returncode == 0, proc.stderr
