"""Unit tests of the rollout planning in module_utils/compose_rollout.py.

The rollout itself (containers started, health-gated, nginx switched, old ones removed) is
tested against a real engine in tests/integration/test_rollout_local.py and the Molecule
rollback, restart and scale scenarios.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import ansible.module_utils

MODULE_UTILS = Path(__file__).resolve().parents[2] / "module_utils"
if str(MODULE_UTILS) not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(MODULE_UTILS))
cr = importlib.import_module("ansible.module_utils.compose_rollout")


def container(name, created, config_hash="new", status="running", health="healthy"):
    state = {"Status": status}
    if health is not None:
        state["Health"] = {"Status": health}
    return {
        "Name": f"/{name}",
        "Created": created,
        "State": state,
        "Config": {"Labels": {cr.HASH_LABEL: config_hash}},
    }


def test_up_to_date_service_needs_nothing():
    cs = [container("b-1", "2026-01-01T10:00:00.5Z"), container("b-2", "2026-01-01T10:00:01Z")]
    assert cr.plan(cs, "new", 2) == {
        "before": ["b-1", "b-2"],
        "keep": ["b-1", "b-2"],
        "remove": [],
        "missing": 0,
    }


def test_new_config_replaces_every_old_container():
    cs = [
        container("b-1", "2026-01-01T10:00:00Z", "old"),
        container("b-2", "2026-01-01T10:00:01Z", "old"),
    ]
    steps = cr.plan(cs, "new", 2)
    assert steps["keep"] == []
    assert steps["remove"] == ["b-1", "b-2"]
    assert steps["missing"] == 2


def test_unhealthy_or_exited_containers_are_replaced_and_healthy_ones_kept():
    cs = [
        container("b-1", "2026-01-01T10:00:00Z", health="unhealthy"),
        container("b-2", "2026-01-01T10:00:01Z"),
        container("b-3", "2026-01-01T10:00:02Z", status="exited", health=None),
    ]
    steps = cr.plan(cs, "new", 2)
    assert steps == {
        "before": ["b-1", "b-2", "b-3"],
        "keep": ["b-2"],
        "remove": ["b-1", "b-3"],
        "missing": 1,
    }


def test_scale_down_keeps_the_oldest_and_scale_up_starts_the_difference():
    # Docker trims trailing zeros from the fraction: .5 is later than .123456789 here.
    cs = [
        container("b-3", "2026-01-01T10:00:00.5Z"),
        container("b-1", "2026-01-01T10:00:00.123456789Z"),
        container("b-2", "2026-01-01T10:00:01Z"),
    ]
    assert cr.plan(cs, "new", 1) == {
        "before": ["b-1", "b-3", "b-2"],
        "keep": ["b-1"],
        "remove": ["b-3", "b-2"],
        "missing": 0,
    }
    assert cr.plan(cs, "new", 5)["missing"] == 2


def test_replace_all_replaces_even_up_to_date_containers():
    cs = [container("b-1", "2026-01-01T10:00:00Z"), container("b-2", "2026-01-01T10:00:01Z")]
    steps = cr.plan(cs, "new", 2, replace_all=True)
    assert steps["keep"] == []
    assert steps["remove"] == ["b-1", "b-2"]
    assert steps["missing"] == 2


def test_a_container_without_health_check_counts_as_up_to_date_while_running():
    cs = [container("b-1", "2026-01-01T10:00:00Z", health=None)]
    assert cr.plan(cs, "new", 1)["keep"] == ["b-1"]


def test_upstream_lists_explicit_servers_during_a_rollout_and_the_service_otherwise():
    during = cr.upstream_text("backend", 8000, ["p-backend-3", "p-backend-4"])
    assert "server p-backend-3:8000 max_fails=1 fail_timeout=5s;" in during
    assert "server p-backend-4:8000" in during
    assert "server backend:8000" not in during
    steady = cr.upstream_text("backend", 8000)
    servers = [line for line in steady.splitlines() if line.startswith("server ")]
    assert servers == ["server backend:8000 max_fails=1 fail_timeout=5s;"]
