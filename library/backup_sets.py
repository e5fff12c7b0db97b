#!/usr/bin/python
"""Ansible module: backup sets, from the run lock to the seal; listing and retention."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_sets
short_description: Own a backup set from the run lock to the seal; list sets, apply retention
description:
  - Lists the backup sets under O(path) (directories holding C(SET.json), written last),
    newest first, and finds the latest complete one.
  - With O(state=locked), starts a backup run in one step. It creates O(path) (mode C(0700),
    owned by root when run as root) and takes the run lock O(path)C(/.lock), a directory
    with its holder record (controller host, C(ansible-playbook) pid, the host's boot id,
    start time) published in one rename (module_utils/op_lock.py, as the stack's operation
    lock M(op_lock)). It returns the set's id (a UTC timestamp when O(backup_id) is empty)
    and directory, and whether the set exists already. A stale lock (no record, the host
    rebooted since, or its controller process has ended on this controller, checked by the
    action plugin) is broken with a warning. When a live run holds the lock, the module
    fails naming it (RV(held_by)), and advises removing the lock by hand only when it is
    older than O(lock_stale_hours). It also checks O(encrypt_recipients) and, when there are
    any, that C(age) is installed, before anything is written.
  - With O(state=failed), records a failed run for monitoring (the failure metric in
    O(metrics_dir)); the backup role runs it when any step fails (the lock and the pre-flight
    included).
  - With O(state=sealed), takes the set O(backup_id) in one module run. It dumps each of
    O(databases) and, with O(globals), the cluster globals (as M(pg_backup) does; streamed,
    verified with C(pg_restore --list) or the plain dump's trailer, sha256 and row counts in
    a manifest beside each dump; a dump already there that verifies is kept). It snapshots
    O(config_src) into C(config/) (as M(config_snapshot) does). Last, it writes C(SET.json)
    from the manifests on disk and the snapshot's checksums, atomically, mode C(0600).
    Under the run lock of O(state=locked) (O(lock_held)) that lock is the only one.
  - A O(state=sealed) run that fails removes the set it started (a set that existed before
    is left as it was), writes the failure metric to O(metrics_dir) and, with O(lock_held),
    releases the run lock; the message names the cause.
  - After O(state=sealed) (unless O(offsite_pending)), O(state=pruned) or O(state=query), the
    module applies the retention policy (O(state=pruned), or O(prune) with
    O(state=sealed)), writes the
    node_exporter metrics of the newest set to O(metrics_dir) and, with O(lock_held),
    releases the run lock.
  - O(state=sealed) first writes the start marker C(.opsauto-set.json) into the set's
    directory (its O(purpose), time, host, project); an existing directory that is not a
    set of this project is refused. Retention deletes only sets it recognises as its own,
    a start marker, or (sets made before the marker existed) a C(SET.json) with every key
    of this project's schema whose C(backup_id) is the directory's name. Foreign
    directories and RDS snapshot records (C(kind=rds), pruned with their snapshots) are
    left alone (RV(left_alone)). See docs/backup.md.
  - Retention keeps scheduled sets by the keep-last/daily/weekly/monthly policy counted
    among scheduled sets only, and safety sets (taken before a replace restore) by their
    own count O(keep_safety), so safety sets never displace scheduled ones. It deletes
    our incomplete sets (no C(SET.json)) older than O(incomplete_max_age_hours). The
    newest verified scheduled set is never deleted, whatever the policy.
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
      - V(sealed) dumps, snapshots and writes C(SET.json) (see above).
      - V(failed) writes the failure metric (see above).
    type: str
    choices: [query, pruned, locked, sealed, failed]
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
  space_check:
    description:
      - With O(state=sealed), check before the first dump that the backup directory's file
        system has room for the run (each database's last dump size, else its
        C(pg_database_size); a directory-format dump twice; plus 10%), and refuse with the
        figures otherwise. See docs/backup.md.
    type: bool
    default: true
  keep_safety:
    description: Keep the newest N safety sets (O(purpose=safety), taken before a replace
      restore); at least 1. They do not count towards the other keep options.
    type: int
    default: 3
  purpose:
    description: With O(state=sealed), what the set is for, recorded in its start marker
      and used by retention. V(safety) is the restore role's backup before a replace.
    type: str
    choices: [scheduled, safety]
    default: scheduled
  incomplete_max_age_hours:
    description: Delete incomplete sets of ours (a run that died before sealing) older than this.
    type: float
    default: 24
  backup_id:
    description:
      - The set this run writes. Required with O(state=sealed).
      - With O(state=locked), empty chooses the current UTC time (C(20261129T030000Z)).
      - With O(state=query), the set to restore (RV(selected)); V(latest) is the newest set
        that is neither a safety set (C(pre-restore-*)) nor an RDS snapshot record
        (C(kind=rds)). The module fails, listing the sets, when it is not complete and
        verified; for an RDS record (named, or the only sets there are) it names the
        C(playbooks/rds_restore.yml) command that restores the snapshot.
    type: str
  lock_stale_hours:
    description: With O(state=locked), a live holder's lock older than this gets the advice to
      remove it by hand if that run is gone (a holder on another controller is never broken
      automatically).
    type: float
    default: 6
  controller:
    description: With O(state=locked), the controller's identity (C(host), C(pid), C(pid_start))
      recorded in the lock; set by the action plugin C(action_plugins/backup_sets.py).
    type: dict
  break_token:
    description: Set by the action plugin - the token of a lock whose controller process has
      ended; that lock is broken as stale.
    type: str
  force_break:
    description: With O(state=locked), the token of a run lock to break although its holder may
      be alive (a run on another controller that crashed); a refused run prints it. Breaks that
      lock only, with a warning.
    type: str
  lock_held:
    description: This run holds the run lock (RV(locked) of O(state=locked)); the module
      releases it when the run ends here (see above).
    type: bool
    default: false
  databases:
    description: With O(state=sealed), the databases to dump, one C(pg_dump) each.
    type: list
    elements: str
    default: []
  globals:
    description: With O(state=sealed), also dump roles and tablespaces
      (C(pg_dumpall --globals-only)).
    type: bool
    default: true
  format:
    description: C(pg_dump) format of each database dump (see M(pg_backup)).
    type: str
    choices: [custom, directory, plain]
    default: custom
  jobs:
    description: Parallel C(pg_dump) jobs (O(format=directory) only).
    type: int
    default: 1
  compression:
    description: Compression of plain dumps on the host (see M(pg_backup)).
    type: str
    choices: [none, gzip, zstd]
    default: none
  compress_level:
    description: C(pg_dump -Z) for custom and directory dumps; omitted, pg_dump's default.
    type: int
  container:
    description: With O(state=sealed), name or ID of the running PostgreSQL container.
    type: str
  docker_cli:
    description: The docker CLI to run, a name looked up in PATH or a full path.
    type: path
    default: docker
  login_user:
    description: With O(state=sealed), PostgreSQL role to connect as (a superuser for the globals).
    type: str
  login_password:
    description: Password of O(login_user); it reaches the clients only through the environment.
    type: str
  encrypt_recipients:
    description:
      - age public keys to encrypt every dump and the C(.env) snapshot to (see M(pg_backup)
        and M(config_snapshot)); empty, nothing is encrypted.
      - Checked by O(state=locked) too, with the presence of C(age) on the host.
    type: list
    elements: str
    default: []
  config_src:
    description: With O(state=sealed), the deployed project directory to snapshot into the
      set's C(config/); omitted, no snapshot.
    type: path
  config_redact_values:
    description:
      - Secret values (database passwords, S3 keys, the operator's list) replaced by
        C(***REDACTED***) wherever they occur in any file of the configuration snapshot, not
        only in C(.env). Secret-named settings (C(NAME=value), and YAML or JSON keys) and variable
        defaults (C(${NAME:-value})) of text files are redacted too. Values shorter than 4
        characters are not searched for.
    type: list
    elements: str
    default: []
  project:
    description: Project name, in C(SET.json), in the metrics' C(project) label and in messages.
    type: str
    default: ""
  host:
    description: Host name recorded in C(SET.json); empty, the host's own name.
    type: str
    default: ""
  prune:
    description: With O(state=sealed), apply the retention policy after sealing.
    type: bool
    default: false
  offsite_pending:
    description: With O(state=sealed), an off-site copy follows; retention, metrics and the
      release of the lock wait for a later O(state=pruned) or O(state=query).
    type: bool
    default: false
  metrics_dir:
    description:
      - node_exporter textfile directory for C(opsauto_backup.prom) (the newest set's time,
        size, duration, verification, the number of sets); empty, no metrics.
      - A failed O(state=sealed) run writes C(opsauto_backup_failure.prom) there.
    type: path
    default: ""
  offsite_success:
    description: The newest set was copied off-site and verified; adds the off-site gauge to
      the metrics and removes an earlier failure flag (C(opsauto_backup_offsite.prom)).
      Omitted, no off-site gauge.
    type: bool
attributes:
  check_mode:
    support: full
    description:
      - Reports the sets it would delete and deletes nothing; the lock is not taken.
      - O(state=sealed) connects to the server read-only and verifies existing dumps; for a
        set that does not exist it reports what it would write, and writes nothing.
  diff_mode:
    support: partial
    description: Shows the list of set ids before and after pruning.
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
  register: run

- name: Dump, snapshot and seal the set; retention, metrics, release the lock
  backup_sets:
    path: /var/backups/fastapi-monolith
    state: sealed
    backup_id: "{{ run.backup_id }}"
    lock_held: "{{ run.locked }}"
    databases: [appdb]
    container: fastapi-monolith-db-1
    login_user: app
    login_password: "{{ vault_db_password }}"
    config_src: /srv/fastapi-monolith
    project: fastapi-monolith
    prune: true
    metrics_dir: /var/lib/prometheus/node-exporter
"""

RETURN = r"""
sets:
  description: Complete sets, newest first (after pruning when pruning).
  returned: unless O(state=locked), or O(state=sealed) with O(offsite_pending)
  type: list
  elements: dict
  sample: [{"backup_id": "20261128T120000Z", "created": "2026-11-28T12:00:00Z", "verified": true}]
latest:
  description: The newest complete set, or null when there is none.
  returned: unless O(state=locked), or O(state=sealed) with O(offsite_pending)
  type: dict
incomplete:
  description: Ids of incomplete sets (no SET.json) still present.
  returned: unless O(state=locked), or O(state=sealed) with O(offsite_pending)
  type: list
  elements: str
deleted:
  description: Ids of the sets deleted (or that would be, in check mode).
  returned: unless O(state=locked), or O(state=sealed) with O(offsite_pending)
  type: list
  elements: str
kept:
  description: Kept set ids with the reasons (last, daily, weekly, monthly, newest-verified,
    safety).
  returned: when pruning
  type: dict
left_alone:
  description: Directories retention does not judge, with the reason (foreign, RDS record).
  returned: when pruning
  type: dict
backup_id:
  description: The set's id (chosen by O(state=locked) when O(backup_id) is empty).
  returned: when O(state=locked) or O(state=sealed)
  type: str
  sample: 20261129T030000Z
set_dir:
  description: The set's directory.
  returned: when O(state=locked) or O(state=sealed)
  type: str
  sample: /var/backups/fastapi-monolith/20261129T030000Z
set_exists:
  description: Whether the set's directory existed before this run (before the dumps).
  returned: when O(state=locked) or O(state=sealed)
  type: bool
locked:
  description: Whether this run took the lock (false only in check mode).
  returned: when O(state=locked)
  type: bool
holder:
  description: The record of the run lock taken (token, operation, controller, boot_id, started).
  returned: when O(state=locked)
  type: dict
broken:
  description: The stale locks broken before taking it, each with its reason.
  returned: when O(state=locked)
  type: list
  elements: str
held_by:
  description: On failure of O(state=locked), the record of the live run that holds the lock.
  returned: when another run holds the lock
  type: dict
lock:
  description: Path of the lock directory.
  returned: when O(state=locked)
  type: str
  sample: /var/backups/fastapi-monolith/.lock
set:
  description: The content of C(SET.json) (null in check mode when the set does not exist).
  returned: when O(state=sealed)
  type: dict
  sample:
    backup_id: 20261129T030000Z
    created: "2026-11-29T03:00:01Z"
    host: app1
    project: fastapi-monolith
    databases: [appdb]
    verified: true
    dumps: [{label: appdb, file: appdb.dump, mode: database, format: custom, size: 48213,
             sha256: 9b1d3f5a..., duration_seconds: 0.8, compression: none, encryption: null}]
    config: {config/compose.yaml: 3f2a...}
selected:
  description: The set O(backup_id) (as in RV(sets), with its C(path) and C(dumps)).
  returned: when O(state=query) with O(backup_id)
  type: dict
space:
  description: The free space check (needed and free bytes, the backup directory and its
    file system); null when skipped (O(space_check=false), or the set is complete already).
  returned: when O(state=sealed)
  type: dict
cleaned:
  description: What killed earlier runs of this backup directory had left and this run
    removed (processes, server sessions, temp dirs and containers, incomplete sets).
  returned: when O(state=sealed)
  type: list
  elements: str
dumps:
  description: Per dump, its path, whether it was written (changed) and what was done.
  returned: when O(state=sealed)
  type: list
  elements: dict
config_changes:
  description: Files of the configuration snapshot written (or that would be).
  returned: when O(state=sealed)
  type: list
  elements: str
config_redacted:
  description: Files of the configuration snapshot stored with secrets redacted.
  returned: when O(state=sealed) with O(config_src)
  type: list
  elements: str
released:
  description: Whether the run lock was released by this task (also on a failed O(state=sealed)).
  returned: with O(lock_held), unless O(offsite_pending)
  type: bool
msg:
  description: What was done (or would be, in check mode).
  returned: when O(state=sealed), O(state=pruned) or O(state=query)
  type: str
"""

import platform

from ansible.module_utils.backup_run import RunFailed, finish, take_set
from ansible.module_utils.backup_sets import (
    BackupSetError,
    list_sets,
    new_backup_id,
    open_run,
    record_failure,
    select_set,
)
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.op_lock import LockHeld
from ansible.module_utils.ops_errors import OpsError


def check_run_inputs(params: dict) -> None:
    """Refuse bad recipients (a secret key is not echoed) and a missing age, before writing."""
    from ansible.module_utils.age import check_recipients
    from ansible.module_utils.pipelines import find_binary

    if check_recipients(params["encrypt_recipients"]):
        find_binary("age")


def run(module: AnsibleModule) -> dict:
    params = dict(module.params, host=module.params["host"] or platform.node())
    params["diff"] = module._diff
    state = params["state"]
    if state == "locked":
        check_run_inputs(params)
        result = open_run(
            params["path"],
            params["backup_id"] or new_backup_id(),
            params["lock_stale_hours"],
            module.check_mode,
            controller=params["controller"],
            break_token=params["break_token"],
            forced_token=params["force_break"],
        )
        for note in result["broken"]:
            module.warn(note[0].upper() + note[1:] + ".")
        return result
    if state == "failed":
        return {"changed": record_failure(params["metrics_dir"], params["project"],
                                          module.check_mode)}  # fmt: skip
    if state == "sealed":
        missing = [n for n in ("backup_id", "container", "login_user") if not params[n]]
        if missing:
            raise BackupSetError(f"state=sealed needs {', '.join(missing)}.")
        result = take_set(params, module.check_mode)
        if params["offsite_pending"]:
            return result
        return finish(dict(params, retention=params["prune"]), module.check_mode, result)
    result = finish(
        dict(params, retention=state == "pruned"), module.check_mode, {"changed": False}
    )
    if state == "query" and params["backup_id"]:
        where = f"{params['path']} on {params['host']}"
        result["selected"] = select_set(list_sets(params["path"]), params["backup_id"], where)
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "state": {
                "type": "str",
                "choices": ["query", "pruned", "locked", "sealed", "failed"],
                "default": "query",
            },
            "keep_last": {"type": "int", "default": 7},
            "keep_daily": {"type": "int", "default": 7},
            "keep_weekly": {"type": "int", "default": 4},
            "keep_monthly": {"type": "int", "default": 6},
            "keep_safety": {"type": "int", "default": 3},
            "space_check": {"type": "bool", "default": True},
            "purpose": {"type": "str", "choices": ["scheduled", "safety"], "default": "scheduled"},
            "incomplete_max_age_hours": {"type": "float", "default": 24},
            "backup_id": {"type": "str"},
            "lock_stale_hours": {"type": "float", "default": 6},
            "lock_held": {"type": "bool", "default": False},
            "controller": {"type": "dict"},
            "break_token": {"type": "str", "no_log": False},
            "force_break": {"type": "str", "no_log": False},
            "databases": {"type": "list", "elements": "str", "default": []},
            "globals": {"type": "bool", "default": True},
            "format": {
                "type": "str",
                "choices": ["custom", "directory", "plain"],
                "default": "custom",
            },
            "jobs": {"type": "int", "default": 1},
            "compression": {"type": "str", "choices": ["none", "gzip", "zstd"], "default": "none"},
            "compress_level": {"type": "int"},
            "container": {"type": "str"},
            "docker_cli": {"type": "path", "default": "docker"},
            "login_user": {"type": "str"},
            "login_password": {"type": "str", "no_log": True},
            "encrypt_recipients": {"type": "list", "elements": "str", "default": []},
            "config_src": {"type": "path"},
            "config_redact_values": {
                "type": "list",
                "elements": "str",
                "default": [],
                "no_log": True,
            },
            "project": {"type": "str", "default": ""},
            "host": {"type": "str", "default": ""},
            "prune": {"type": "bool", "default": False},
            "offsite_pending": {"type": "bool", "default": False},
            "metrics_dir": {"type": "path", "default": ""},
            "offsite_success": {"type": "bool"},
        },
        supports_check_mode=True,
    )
    try:
        module.exit_json(**run(module))
    except RunFailed as exc:
        module.fail_json(msg=str(exc), released=exc.released)
    except LockHeld as exc:
        module.fail_json(msg=str(exc), held_by=exc.holder)
    except OpsError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
