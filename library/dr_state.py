#!/usr/bin/python
"""Ansible module: the step record of a resumable runbook (read, mark a phase, report)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dr_state
short_description: Step record of a resumable runbook (DR failover, server recovery)
description:
  - Reads and writes the JSON step record of one runbook run on the control node. Each phase is
    C(running), C(done), C(skipped) or C(failed), with its start, end, wall time in seconds (the
    measured RTO of the phase) and the data it produced, which later phases and reruns read.
  - Every write replaces the file atomically (partial file, fsync, rename), mode 0600.
  - O(action=read) returns the record, the phases finished and the first one not finished
    (where a rerun resumes). A record made for another run (another O(key)) is refused.
  - O(action=start), O(action=done), O(action=skipped) and O(action=failed) record one
    O(phase). Marking a finished phase finished again changes nothing; starting a finished
    phase again is refused (the rerun must skip it).
options:
  path:
    description: The step record file on the control node; its directory is created (0700).
    type: path
    required: true
  action:
    description: Read the record, or record O(phase) as started, done, skipped or failed.
    type: str
    choices: [read, start, done, skipped, failed]
    default: read
  key:
    description:
      - What identifies the run (source instance, regions, target names). Stored with a new
        record; a record with another key is refused, naming the differences.
    type: dict
    default: {}
  phase:
    description: The phase to record; required unless O(action=read).
    type: str
  phases:
    description: All phases in their order, for RV(next_phase) and RV(report).
    type: list
    elements: str
    default: []
  data:
    description: What the phase produced (names, addresses); merged into the phase's data.
    type: dict
    default: {}
  msg:
    description: The error of a failed phase, or a note on a done or skipped one.
    type: str
attributes:
  check_mode:
    support: full
    description: Reads as in a real run; reports a write as "would record ..." and makes none.
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - opsauto
"""

EXAMPLES = r"""
- name: Where does this run resume?
  dr_state:
    path: /var/lib/opsauto/dr/app-prod-us-west-2.json
    key: {source: app-prod, region: us-west-2}
    phases: [preflight, snapshot, copy, restore]
  register: dr

- name: Record the copy
  dr_state:
    path: /var/lib/opsauto/dr/app-prod-us-west-2.json
    key: {source: app-prod, region: us-west-2}
    action: done
    phase: copy
    data: {snapshot_identifier: app-prod-dr-20261128}
"""

RETURN = r"""
record:
  description: The whole record after the action (empty phases before the first write).
  returned: always
  type: dict
finished:
  description: Phases done or skipped.
  returned: always
  type: list
  elements: str
next_phase:
  description: The first phase of O(phases) not done or skipped; null when all are.
  returned: always
  type: str
exists:
  description: Whether the record file existed before this action.
  returned: always
  type: bool
report:
  description: Status, seconds and attempts of each phase of O(phases), and total_seconds.
  returned: always
  type: dict
"""

import datetime

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.dr_record import (
    check_key,
    finished,
    load,
    mark,
    new_record,
    next_phase,
    report,
    save,
)
from ansible.module_utils.ops_errors import OpsError

STATUS_OF = {"start": "running", "done": "done", "skipped": "skipped", "failed": "failed"}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "action": {
                "type": "str",
                "default": "read",
                "choices": ["read", "start", "done", "skipped", "failed"],
            },
            "key": {"type": "dict", "default": {}},
            "phase": {"type": "str"},
            "phases": {"type": "list", "elements": "str", "default": []},
            "data": {"type": "dict", "default": {}},
            "msg": {"type": "str"},
        },
        required_if=[("action", action, ("phase",)) for action in STATUS_OF],
        supports_check_mode=True,
    )
    p = module.params
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        record = load(p["path"])
        exists = record is not None
        if exists:
            check_key(record, p["key"], p["path"])
        else:
            record = new_record(p["key"], now)
        changed = False
        msg = "read"
        if p["action"] != "read":
            status = STATUS_OF[p["action"]]
            changed = mark(record, p["phase"], status, now, p["data"], p["msg"])
            msg = f"record phase {p['phase']} as {status}" if changed else "already recorded"
            if changed and module.check_mode:
                msg = f"would {msg}"
            elif changed:
                save(p["path"], record)
    except OpsError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(
        changed=changed,
        msg=msg,
        record=record,
        exists=exists,
        finished=finished(record),
        next_phase=next_phase(record, p["phases"]),
        report=report(record, p["phases"]),
    )


if __name__ == "__main__":
    main()
