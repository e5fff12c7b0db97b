"""Polling for RDS: one phase at a time, each with its own timeout, progress recorded.

botocore's waiters neither report ``PercentProgress`` nor say in which state they gave
up, so the module polls itself. ``sleep`` and ``clock`` are injected (as in
compose_rollout) so unit tests drive the timeouts in milliseconds.
"""

from __future__ import annotations

import time

from ansible.module_utils.rds_api import RdsError, WaitTimeout


class Poller:
    """Polls until a phase is done; appends what it saw to ``events`` (the timeline)."""

    def __init__(self, interval, timeout, sleep=time.sleep, clock=time.monotonic):
        if interval <= 0 or timeout <= 0:
            raise RdsError("poll_interval and wait_timeout must be greater than 0")
        self.interval = interval
        self.timeout = timeout
        self.sleep = sleep
        self.clock = clock
        self.started = clock()
        self.events = []

    def note(self, phase, status, percent=None):
        event = {"t": round(self.clock() - self.started, 2), "phase": phase, "status": status}
        if percent is not None:
            event["percent"] = percent
        self.events.append(event)

    def until(self, phase, fetch, done, state, failed=None, fix=""):
        """Call ``fetch()`` until ``done(current)``; return the last ``current``.

        state(current) -> (status text, percent or None) for the timeline and the messages;
        failed(current) -> True when the phase can no longer succeed.
        Raises WaitTimeout after ``self.timeout`` seconds of this phase, naming the state.
        """
        start = self.clock()
        seen = None
        while True:
            current = fetch()
            status, percent = state(current)
            if (status, percent) != seen:
                self.note(phase, status, percent)
                seen = (status, percent)
            if done(current):
                return current
            if failed is not None and failed(current):
                raise RdsError(f"{phase} failed: the resource is in state {status!r}. {fix}")
            elapsed = self.clock() - start
            if elapsed >= self.timeout:
                shown = status if percent is None else f"{status}, {percent}% done"
                raise WaitTimeout(
                    f"timed out after {int(elapsed)} s waiting for {phase}; the last state "
                    f"was {shown!r}. AWS goes on working on it: run the task again later "
                    f"(it picks up the same operation) or raise wait_timeout",
                    last=status,
                )
            self.sleep(min(self.interval, self.timeout - elapsed))
