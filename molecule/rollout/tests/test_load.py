"""Verify that no request failed while every operation of the scenario ran: one load
generator, started at the end of prepare, ran through check, converge (state-based restart,
rollback, scale out), idempotence and side_effect (scale in, rolling restart)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

from stack_checks import assert_no_failed_requests  # noqa: E402


def test_no_request_failed_during_any_operation(host):
    assert_no_failed_requests(host)
