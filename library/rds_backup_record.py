#!/usr/bin/python
"""Ansible module: the backup set record (SET.json, kind rds) of an RDS manual snapshot."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rds_backup_record
short_description: Record an RDS manual snapshot as a backup set beside the container dumps
description:
  - Writes O(path)C(/)O(backup_id)C(/SET.json) describing the RDS manual snapshot O(snapshot)
    (and its O(copies) in other regions), as returned by M(rds_snapshot). The record has
    C(kind=rds), the set keys every set has (C(databases), C(dumps) and C(config) empty, the
    data stays in RDS) and the instance, engine version, encryption, KMS key, snapshot ARN
    and copies, so one listing (M(backup_sets)) shows container dumps and RDS snapshots.
  - The set directory is created with mode C(0700), SET.json written atomically with mode
    C(0600); a record that already says the same is left alone.
  - With O(metrics_dir), writes the same node_exporter metrics as the container backups
    (C(opsauto_backup.prom), from the newest complete set of O(path)); the size and duration
    gauges are C(0) for an RDS set (no dump on the host).
options:
  path:
    description: Backup directory holding one sub-directory per set.
    type: path
    required: true
  backup_id:
    description: Id of the set ([A-Za-z0-9._-]), the directory name.
    type: str
    required: true
  snapshot:
    description: The snapshot, RV(rds_snapshot#module:snapshot) of M(rds_snapshot) C(state=present).
    type: dict
    required: true
  copies:
    description: Its copies, RV(rds_snapshot#module:snapshot) of each M(rds_snapshot)
      C(state=copied).
    type: list
    elements: dict
    default: []
  project:
    description: Compose project name, recorded and used as the metrics' C(project) label.
    type: str
    default: ""
  host:
    description: Host recorded in the set; empty means this machine's name.
    type: str
    default: ""
  metrics_dir:
    description: node_exporter textfile collector directory; empty writes no metrics.
    type: path
    default: ""
attributes:
  check_mode:
    support: full
    description: Reports whether the record or the metrics would change; writes nothing.
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - opsauto
"""

EXAMPLES = r"""
- name: Record the snapshot as backup set 20261129T030000Z
  rds_backup_record:
    path: /var/backups/fastapi-monolith
    backup_id: 20261129T030000Z
    snapshot: "{{ snap.snapshot }}"
    copies: "{{ [dr_copy.snapshot] }}"
    project: fastapi-monolith
    metrics_dir: /var/lib/prometheus/node-exporter
"""

RETURN = r"""
record:
  description: The content of SET.json.
  returned: success
  type: dict
  sample:
    backup_id: 20261129T030000Z
    kind: rds
    instance: app-prod
    engine_version: "16.3"
    encrypted: true
    snapshot_arn: arn:aws:rds:eu-west-1:123456789012:snapshot:app-prod-20261129t030000z
set_dir:
  description: Directory of the set.
  returned: success
  type: str
sets:
  description: The complete sets of O(path), newest first (as M(backup_sets) lists them).
  returned: success
  type: list
  elements: dict
msg:
  description: What was done.
  returned: always
  type: str
"""

import os
import platform

from ansible.module_utils.backup_run import finish
from ansible.module_utils.backup_sets import (
    BackupSetError,
    build_rds_record,
    set_path,
    write_set,
)
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.fileops import ensure_directory
from ansible.module_utils.ops_errors import OpsError


def run(module: AnsibleModule) -> dict:
    params = module.params
    snapshot = params["snapshot"]
    if not snapshot.get("snapshot_identifier") or not snapshot.get("db_instance_identifier"):
        raise BackupSetError(
            "snapshot must be the 'snapshot' result of rds_snapshot state=present (it has no "
            "snapshot_identifier or db_instance_identifier). Nothing was written."
        )
    set_dir = set_path(params["path"], params["backup_id"])
    record = build_rds_record(
        params["backup_id"],
        params["host"] or platform.node(),
        params["project"],
        snapshot,
        params["copies"],
    )
    changed = False
    if not os.path.isdir(set_dir):
        changed = True
        if not module.check_mode:
            ensure_directory(set_dir)
    if os.path.isdir(set_dir):
        changed = write_set(set_dir, record, module.check_mode) or changed
    verb = "would record" if module.check_mode else "recorded"
    name = snapshot["snapshot_identifier"]
    result = {
        "changed": changed,
        "record": record,
        "set_dir": set_dir,
        "msg": f"{verb} RDS snapshot {name} as set {params['backup_id']}."
        if changed
        else f"set {params['backup_id']} already records {name}.",
    }
    return finish(
        {
            "path": params["path"],
            "project": params["project"],
            "metrics_dir": params["metrics_dir"],
        },
        module.check_mode,
        result,
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "backup_id": {"type": "str", "required": True},
            "snapshot": {"type": "dict", "required": True},
            "copies": {"type": "list", "elements": "dict", "default": []},
            "project": {"type": "str", "default": ""},
            "host": {"type": "str", "default": ""},
            "metrics_dir": {"type": "path", "default": ""},
        },
        supports_check_mode=True,
    )
    try:
        module.exit_json(**run(module))
    except OpsError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
