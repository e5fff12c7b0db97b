#!/usr/bin/python
"""Ansible module: take or release a lock that spans a whole run (the stack's operation lock)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: op_lock
short_description: Take or release a lock held across the tasks of a run, with stale-lock breaking
description:
  - Takes or releases a lock on the managed host that spans several tasks, the stack's
    operation lock held by deploy, rollback, restart, scale and a replace restore, so two
    of them never act on the same stack at once.
  - The lock is the directory O(path) holding C(holder.json), the holder record (operation,
    controller host, C(ansible-playbook) pid and its start time, the host's boot id, start
    time, a token). It appears with its record in one rename, so of two runs exactly one
    gets it.
  - A lock held by a live run makes O(state=acquired) fail at once, naming the holder, or,
    with O(wait_timeout), after waiting that long for it.
  - A stale lock is broken with a warning and taken - its record is missing or unreadable, the
    host rebooted since it was taken (boot id), or its controller process has ended on this
    same controller (pid and the pid's start time, checked by the action plugin on the
    controller). A holder on another controller blocks until it releases the lock.
  - A run that holds the lock already (same controller process, for example deploy included by
    another role under the lock) gets RV(reentrant) and does not own it; only the owner's
    O(state=released) removes it.
  - Reports C(changed=false) - the lock is bookkeeping of the run, gone when it ends, so a
    converge run twice stays idempotent; broken stale locks are reported as warnings.
  - Needs the action plugin of the same name (C(action_plugins/op_lock.py)), which fills in
    O(controller) and checks the holder's controller process.
author:
  - Operations automation team
options:
  path:
    description: The lock directory on the managed host; its parent is created (0700) if missing.
    type: path
    required: true
  state:
    description:
      - V(acquired) takes the lock (see above). V(released) removes it if it is still the one
        taken with O(token); a lock that is now another run's is left in place.
    type: str
    choices: [acquired, released]
    default: acquired
  operation:
    description: What the run does, recorded and shown to a run that is refused (V(deploy 1.2.0)).
    type: str
    default: ""
  token:
    description: With O(state=released), the token of RV(holder) returned when the lock was taken.
    type: str
  wait_timeout:
    description: Seconds to wait for a live holder to release the lock; V(0) refuses at once.
      Waiting is done by the action plugin.
    type: int
    default: 0
  controller:
    description: The controller's identity (C(host), C(pid), C(pid_start)); set by the action
      plugin.
    type: dict
  break_token:
    description: Set by the action plugin - the token of a holder whose controller process has
      ended; that lock is broken as stale.
    type: str
  force_break:
    description:
      - The token of a lock to break although its holder may be alive - for a holder on another
        controller that crashed, which cannot be declared dead from here. A refused run prints
        the token. Breaks that lock only; a lock taken since (another token) still refuses.
        Broken with a warning naming the holder.
    type: str
attributes:
  check_mode:
    support: full
    details: Nothing is written; a live holder or a stale lock is reported as a warning.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Take the operation lock
  op_lock:
    path: /var/lib/opsauto/locks/fastapi-monolith
    operation: restart rolling
    wait_timeout: 60
  register: lock

- name: Release it
  op_lock:
    path: /var/lib/opsauto/locks/fastapi-monolith
    state: released
    token: "{{ lock.holder.token }}"
  when: lock.acquired
"""

RETURN = r"""
acquired:
  description: This task took the lock (the run owns it and must release it).
  returned: when O(state=acquired)
  type: bool
reentrant:
  description: The same controller process holds the lock already (an outer task owns it).
  returned: when O(state=acquired)
  type: bool
holder:
  description: The record of the lock's holder after the task (token, operation, controller,
    boot_id, started).
  returned: when O(state=acquired)
  type: dict
held_by:
  description: The record of the live holder that refused this run (also on failure), or of the
    run that holds the lock now when O(state=released) found it another run's.
  returned: when a live holder has the lock
  type: dict
broken:
  description: The stale locks broken before taking it, each with its reason.
  returned: when O(state=acquired)
  type: list
  elements: str
released:
  description: The lock was removed.
  returned: when O(state=released)
  type: bool
waited_seconds:
  description: How long the action plugin waited for a live holder.
  returned: when O(state=acquired)
  type: float
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.op_lock import LockHeld, acquire, new_holder, release
from ansible.module_utils.ops_errors import OpsError


def run(module: AnsibleModule) -> dict:
    params = module.params
    if params["state"] == "released":
        result = release(params["path"], params["token"])
        if result["held_by"]:
            module.warn(
                f"The lock {params['path']} was not released: it is held by another run now "
                "(this run's lock had been broken as stale)."
            )
        return dict(result, changed=False)
    holder = new_holder(params["operation"], params["controller"] or {})
    result = acquire(
        params["path"],
        holder,
        params["break_token"],
        module.check_mode,
        forced_token=params["force_break"],
    )
    for note in result["broken"]:
        module.warn(note[0].upper() + note[1:] + ".")
    if result.get("held_by"):
        module.warn(f"Check mode: the lock {params['path']} is held by a live run; a real run "
                    "would be refused or wait.")  # fmt: skip
    # A lock is bookkeeping of the run, gone when it ends: taking or releasing it is not a
    # change of the host (a converge run twice stays idempotent); broken locks are warned.
    return dict(result, changed=False)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "state": {"type": "str", "choices": ["acquired", "released"], "default": "acquired"},
            "operation": {"type": "str", "default": ""},
            "token": {"type": "str", "no_log": False},
            "wait_timeout": {"type": "int", "default": 0},
            "controller": {"type": "dict"},
            "break_token": {"type": "str", "no_log": False},
            "force_break": {"type": "str", "no_log": False},
        },
        supports_check_mode=True,
    )
    try:
        module.exit_json(**run(module))
    except LockHeld as exc:
        module.fail_json(msg=str(exc), held_by=exc.holder, acquired=False)
    except OpsError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
