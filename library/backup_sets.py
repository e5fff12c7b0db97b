#!/usr/bin/python
"""Ansible module: list backup sets and apply the retention policy."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_sets
short_description: List backup sets, apply a keep-last/daily/weekly/monthly retention, start a run
description:
  - Lists the backup sets under O(path) (directories holding C(SET.json), written last by the
    backup role), newest first, and finds the latest complete one.
  - With O(state=pruned), deletes complete sets that the retention policy does not keep and
    incomplete sets (no C(SET.json)) older than O(incomplete_max_age_hours).
  - The newest verified set is never deleted, whatever the policy.
  - With O(state=locked), starts a backup run in one step. It creates O(path) (mode C(0700),
    owned by root when run as root) and takes the run lock O(path)C(/.lock), a directory
    made with C(mkdir), which is atomic. It reports whether the set O(backup_id) exists
    already (RV(set_exists)). When another run holds the lock, the module fails, says since
    when, and advises removing the lock only when it is older than O(lock_stale_hours).
    The caller removes the lock when the run ends.
options:
  path:
    description: Backup directory holding one sub-directory per set.
    type: path
    required: true
  state:
    description:
      - V(query) only reads; V(pruned) applies the retention policy.
      - V(locked) prepares the directory and takes the run lock (see above). In check mode
        the lock is not taken.
    type: str
    choices: [query, pruned, locked]
    default: query
  keep_last:
    description: Keep the newest N complete sets.
    type: int
    default: 7
  keep_daily:
    description: Keep the newest set of each of the last N days that have sets.
    type: int
    default: 7
  keep_weekly:
    description: Keep the newest set of each of the last N ISO weeks that have sets.
    type: int
    default: 4
  keep_monthly:
    description: Keep the newest set of each of the last N months that have sets.
    type: int
    default: 6
  incomplete_max_age_hours:
    description: Delete incomplete sets (a run that died before sealing) older than this.
    type: float
    default: 24
  backup_id:
    description: With O(state=locked), the set this run writes (RV(set_exists) reports on it).
    type: str
  lock_stale_hours:
    description: With O(state=locked), a held lock older than this is reported as probably stale.
    type: float
    default: 6
attributes:
  check_mode:
    support: full
    description: Reports the sets it would delete and deletes nothing.
  diff_mode:
    support: full
    description: Shows the list of set ids before and after pruning (not for V(locked)).
  platform:
    platforms: posix
author:
  - opsauto
"""

EXAMPLES = r"""
- name: Find the latest complete backup set
  backup_sets:
    path: /var/backups/fastapi-monolith
  register: sets

- name: Keep 7 last, 7 daily, 4 weekly and 6 monthly sets
  backup_sets:
    path: /var/backups/fastapi-monolith
    state: pruned
    keep_last: 7

- name: Create the backup directory and take the run lock
  backup_sets:
    path: /var/backups/fastapi-monolith
    state: locked
    backup_id: 20261129T010000Z
  register: run
"""

RETURN = r"""
sets:
  description: Complete sets, newest first (after pruning when O(state=pruned)).
  returned: always
  type: list
  elements: dict
  sample: [{"backup_id": "20261128T120000Z", "created": "2026-11-28T12:00:00Z", "verified": true}]
latest:
  description: The newest complete set, or null when there is none.
  returned: always
  type: dict
incomplete:
  description: Ids of incomplete sets (no SET.json) still present.
  returned: always
  type: list
  elements: str
deleted:
  description: Ids of the sets deleted (or that would be, in check mode).
  returned: always
  type: list
  elements: str
kept:
  description: Kept set ids with the reasons (last, daily, weekly, monthly, newest-verified).
  returned: when O(state=pruned)
  type: dict
set_exists:
  description: Whether the directory of the set O(backup_id) existed before this run.
  returned: when O(state=locked)
  type: bool
locked:
  description: Whether this run took the lock (false only in check mode).
  returned: when O(state=locked)
  type: bool
lock:
  description: Path of the lock directory; remove it when the run ends.
  returned: when O(state=locked)
  type: str
  sample: /var/backups/fastapi-monolith/.lock
"""

from ansible.module_utils.backup_sets import (
    BackupSetError,
    list_sets,
    open_run,
    prune,
    select_keep,
)
from ansible.module_utils.basic import AnsibleModule


def run(module: AnsibleModule) -> dict:
    params = module.params
    if params["state"] == "locked":
        if not params["backup_id"]:
            raise BackupSetError("state=locked needs backup_id, the id of the set this run writes.")
        return open_run(
            params["path"], params["backup_id"], params["lock_stale_hours"], module.check_mode
        )
    sets = list_sets(params["path"])
    result = {"changed": False, "deleted": [], "kept": {}}
    if params["state"] == "pruned":
        for name in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly"):
            if params[name] < 0:
                module.fail_json(msg=f"{name} must be 0 or more, got {params[name]}.")
        reasons = select_keep(
            sets,
            params["keep_last"],
            params["keep_daily"],
            params["keep_weekly"],
            params["keep_monthly"],
        )
        doomed = prune(sets, reasons, params["incomplete_max_age_hours"], module.check_mode)
        gone = {b.backup_id for b in doomed}
        result.update(changed=bool(doomed), deleted=sorted(gone), kept=reasons)
        if module._diff:
            result["diff"] = {
                "before": "\n".join(sorted(b.backup_id for b in sets)) + "\n",
                "after": "\n".join(sorted(b.backup_id for b in sets if b.backup_id not in gone))
                + "\n",
            }
        sets = [b for b in sets if b.backup_id not in gone]
    complete = [b.as_dict() for b in sets if b.complete]
    result.update(
        sets=complete,
        latest=complete[0] if complete else None,
        incomplete=[b.backup_id for b in sets if not b.complete],
    )
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "state": {"type": "str", "choices": ["query", "pruned", "locked"], "default": "query"},
            "keep_last": {"type": "int", "default": 7},
            "keep_daily": {"type": "int", "default": 7},
            "keep_weekly": {"type": "int", "default": 4},
            "keep_monthly": {"type": "int", "default": 6},
            "incomplete_max_age_hours": {"type": "float", "default": 24},
            "backup_id": {"type": "str"},
            "lock_stale_hours": {"type": "float", "default": 6},
        },
        supports_check_mode=True,
    )
    try:
        module.exit_json(**run(module))
    except BackupSetError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
