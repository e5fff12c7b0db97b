"""The step record of a resumable runbook (DR failover, server recovery): one JSON file.

The record lives on the control node and says, for each phase of one run, whether it is
``running``, ``done``, ``skipped`` or ``failed``, when it started and finished, how long it
took (the measured RTO per phase) and what it produced (``data``: the copy's name, the new
instance's endpoint...), so a later phase, or a rerun, reads its inputs from it. Every
write replaces the whole file atomically (fileops.write_json_atomic): a run killed at any
moment leaves the previous record or the new one, never half of one.

A rerun resumes at the first phase that is neither ``done`` nor ``skipped``. The record
carries the run's ``key`` (source, regions, target): a run with another key refuses the
file instead of resuming somebody else's failover.

Pure functions over the record dict plus :func:`load` and :func:`save`; time is passed in,
so unit tests need no clock.
"""

from __future__ import annotations

import datetime
import json
import os

from ansible.module_utils.fileops import ensure_directory, write_json_atomic
from ansible.module_utils.ops_errors import OpsError

VERSION = 1
FINISHED = ("done", "skipped")
STATUSES = ("running", "done", "skipped", "failed")


class RecordError(OpsError):
    """The step record cannot be read, belongs to another run, or a step is out of order."""


def iso(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_record(key, now):
    return {"version": VERSION, "key": dict(key), "created": iso(now), "phases": {}, "log": []}


def load(path):
    """The record at ``path``, or None when there is none yet."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RecordError(
            f"cannot read the step record {path} ({exc}): fix or move it away; without it the "
            f"run starts from the first phase"
        ) from None
    if not isinstance(record, dict) or record.get("version") != VERSION:
        raise RecordError(
            f"{path} is not a step record of this project (version {VERSION}): move it away or "
            f"give another state file"
        )
    return record


def save(path, record):
    ensure_directory(os.path.dirname(os.path.abspath(path)))
    write_json_atomic(path, record)


def check_key(record, key, path):
    """Refuse a record made for another run (other source, region or target)."""
    stored = record.get("key") or {}
    differs = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
    if differs:
        shown = ", ".join(f"{k}: recorded {stored.get(k)!r}, now {key.get(k)!r}" for k in differs)
        raise RecordError(
            f"the step record {path} belongs to another run ({shown}). Resume that run with the "
            f"same variables, or give another state file (or move this one away) to start anew"
        )


def finished(record):
    """Phases done or skipped, in the order they finished."""
    phases = record.get("phases") or {}
    done = [(name, step) for name, step in phases.items() if step.get("status") in FINISHED]
    # The file is written with sorted keys: order by when each phase started.
    done.sort(key=lambda item: (item[1].get("started_epoch") or 0, item[1].get("finished", "")))
    return [name for name, _ in done]


def next_phase(record, order):
    """The first phase of ``order`` not done or skipped; None when all are."""
    done = set(finished(record))
    for name in order:
        if name not in done:
            return name
    return None


def mark(record, phase, status, now, data=None, msg=None):
    """Record ``phase`` as ``status`` at ``now``; returns True when the record changed."""
    if status not in STATUSES:
        raise RecordError(f"unknown step status {status!r}: one of {', '.join(STATUSES)}")
    phases = record.setdefault("phases", {})
    step = phases.get(phase)
    if step is not None and step.get("status") in FINISHED:
        if status in FINISHED:
            return False  # already recorded: a rerun of the same step changes nothing
        raise RecordError(
            f"phase {phase} is already {step['status']} in the step record: a rerun skips it. "
            f"To run it again, give another state file"
        )
    step = dict(step or {})
    stamp = iso(now)
    if status == "running":
        step.update(status="running", started=stamp, started_epoch=now.timestamp())
        step["attempts"] = int(step.get("attempts") or 0) + 1
        step.pop("error", None)
    else:
        if step.get("started_epoch") is None:  # finished without a start (a skipped phase)
            step.update(started=stamp, started_epoch=now.timestamp())
        step["status"] = status
        step["finished"] = stamp
        started = step.get("started_epoch")
        step["seconds"] = round(now.timestamp() - started, 2) if started is not None else 0.0
        if data:
            step["data"] = {**(step.get("data") or {}), **data}
        if msg:
            step["error" if status == "failed" else "note"] = msg
    phases[phase] = step
    record.setdefault("log", []).append(
        {"t": stamp, "phase": phase, "status": status, **({"msg": msg} if msg else {})}
    )
    return True


def report(record, order):
    """Per-phase status and seconds, in ``order``, and the total wall time of the phases."""
    phases = record.get("phases") or {}
    rows = []
    total = 0.0
    for name in order:
        step = phases.get(name) or {}
        seconds = step.get("seconds")
        if seconds is not None and step.get("status") in FINISHED:
            total += seconds
        rows.append(
            {
                "phase": name,
                "status": step.get("status", "pending"),
                "seconds": seconds,
                "attempts": step.get("attempts", 0),
            }
        )
    return {"phases": rows, "total_seconds": round(total, 2)}
