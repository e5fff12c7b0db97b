#!/usr/bin/python
"""Ansible module: RDS snapshots (create, copy across regions, prune, list), restores, retention."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rds_snapshot
short_description: RDS manual snapshots, cross-region copies, pruning, restores and retention
description:
  - Manages manual snapshots of Amazon RDS DB instances for the project's backup and disaster
    recovery runbooks, with its own polling (a timeout per phase, C(PercentProgress) reported)
    and errors that name the cause and the fix.
  - Every snapshot or instance the module makes carries the ownership tag
    C(opsauto:managed-by=opsauto). Only snapshots with that tag are ever deleted or pruned;
    automated snapshots never are.
  - O(state=present) takes a manual snapshot O(snapshot_identifier) of O(db_instance_identifier),
    tagged with O(tags) and the ownership tag, and waits until it is C(available). An existing
    snapshot of the same instance made by this module is kept (missing tags are added); one of
    another instance, or one not made by this module, is an error. The instance must be
    C(available).
  - O(state=copied) copies O(source_snapshot_identifier) from O(source_region) to
    O(snapshot_identifier) in O(region) (C(CopyDBSnapshot) called in the destination region with
    the source ARN and C(SourceRegion)). An encrypted source copied to another region needs
    O(kms_key_id), a key of the destination region; without it the module refuses before calling
    AWS. The copy records its source in the tag C(opsauto:source-snapshot), which makes reruns
    idempotent.
  - O(state=absent) deletes the manual snapshot O(snapshot_identifier); it refuses automated
    snapshots, snapshots without the ownership tag (unless O(allow_foreign)) and the newest
    available manual snapshot of its instance (unless O(allow_newest)).
  - O(state=pruned) deletes managed manual snapshots (of O(db_instance_identifier) or of every
    instance) beyond the O(keep_count) newest or older than O(max_age_days). The newest
    available managed snapshot of each instance is always kept.
  - O(state=info) lists snapshots with age, size, status, encryption and region; it changes
    nothing.
  - O(state=restored) creates the new instance O(target_db_instance_identifier) from
    O(snapshot_identifier), or from O(db_instance_identifier) at a point in time (O(restore_time),
    checked against the instance's earliest and latest restorable time before AWS is called,
    or O(use_latest_restorable_time)), waits until it is C(available) and returns its endpoint.
    An existing instance of that name is accepted only when this module restored it from the
    same source (tag C(opsauto:restored-from)); otherwise the name is taken and the module fails.
  - O(backup_retention_days) (with O(state=present), O(state=restored) or O(state=configured))
    sets the automated backup retention of the instance and waits until RDS no longer lists it
    in C(PendingModifiedValues), not only until the status reads C(available).
  - Check mode runs every read and check and reports what would change ("would create snapshot
    X"); diff mode shows the snapshot, tags, retention or pruned list before and after.
options:
  state:
    description: What to do; see the description.
    type: str
    choices: [present, copied, absent, pruned, info, restored, configured]
    default: present
  snapshot_identifier:
    description:
      - The manual snapshot to create (V(present)), the copy to make (V(copied)), the snapshot
        to delete (V(absent)), to show (V(info)) or to restore from (V(restored)).
    type: str
  db_instance_identifier:
    description:
      - The DB instance to snapshot (V(present)), to prune or list snapshots of (V(pruned),
        V(info)), to restore to a point in time (V(restored)), or to configure (V(configured)).
    type: str
  tags:
    description:
      - Tags of a new snapshot, copy or restored instance. Missing ones are added to an existing
        resource; other tags are never removed. The ownership tag is always added.
    type: dict
    default: {}
  wait:
    description:
      - Wait until the snapshot or instance is C(available) (or deleted). Retention changes are
        always waited for, since the module confirms them.
    type: bool
    default: true
  wait_timeout:
    description:
      - Seconds each phase (snapshot, copy, restore, retention, deletion) may take before the
        module fails naming the state it was in. AWS goes on working; a rerun picks it up.
    type: int
    default: 3600
  poll_interval:
    description: Seconds between two reads while waiting.
    type: int
    default: 15
  source_snapshot_identifier:
    description: Name or ARN of the snapshot to copy (V(copied)).
    type: str
  source_region:
    description: Region of O(source_snapshot_identifier); default the ARN's region, else O(region).
    type: str
  kms_key_id:
    description:
      - KMS key (id, ARN or alias) of the destination region that encrypts the copy
        (V(copied)). Required for an encrypted source copied to another region.
    type: str
  copy_tags:
    description:
      - Copy the source snapshot's tags to the copy (V(copied)); the module writes them itself,
        so the result does not depend on how RDS combines C(CopyTags) with C(Tags).
    type: bool
    default: true
  allow_foreign:
    description: Let V(absent) delete a manual snapshot without the ownership tag.
    type: bool
    default: false
  allow_newest:
    description: Let V(absent) delete the newest available manual snapshot of its instance.
    type: bool
    default: false
  keep_count:
    description: V(pruned) keeps this many newest managed snapshots per instance (1 or more).
    type: int
  max_age_days:
    description: V(pruned) deletes managed snapshots older than this many days.
    type: float
  snapshot_type:
    description: Which snapshots V(info) lists.
    type: str
    choices: [manual, automated, all]
    default: all
  target_db_instance_identifier:
    description: The new DB instance V(restored) creates.
    type: str
  restore_time:
    description:
      - Point in time to restore O(db_instance_identifier) to (V(restored)), ISO 8601, for
        example C(2026-11-28T03:00:00Z); without a zone it is UTC. It must lie between the
        instance's earliest and latest restorable time; both are shown when it does not.
    type: str
  use_latest_restorable_time:
    description: Restore O(db_instance_identifier) to its latest restorable time (V(restored)).
    type: bool
    default: false
  db_instance_class:
    description: Instance class of the restored instance; default the source's.
    type: str
  db_subnet_group_name:
    description: DB subnet group of the restored instance.
    type: str
  vpc_security_group_ids:
    description: VPC security groups of the restored instance.
    type: list
    elements: str
  db_parameter_group_name:
    description: DB parameter group of the restored instance.
    type: str
  allocated_storage:
    description:
      - Storage of the restored instance in GiB; it may not be smaller than the source's
        (checked before AWS is called).
    type: int
  backup_retention_days:
    description:
      - Days of automated backups (and so of point-in-time recovery) to keep, 1 to 35, on the
        snapshotted (V(present)), restored (V(restored)) or given (V(configured)) instance.
      - V(0) disables automated backups and PITR and is refused unless O(allow_disable_pitr).
    type: int
  allow_disable_pitr:
    description: Accept O(backup_retention_days=0).
    type: bool
    default: false
extends_documentation_fragment:
  - aws_connection
attributes:
  check_mode:
    support: full
    description:
      - Reads and checks as in a real run and reports each change as "would ..."; makes none
        and does not wait.
  diff_mode:
    support: full
    description:
      - Shows the snapshot, tags, backup retention or managed snapshot list before and after.
  platform:
    platforms: posix
notes:
  - "Minimal IAM actions: V(present) C(rds:DescribeDBInstances), C(rds:DescribeDBSnapshots),
    C(rds:CreateDBSnapshot), C(rds:AddTagsToResource), C(rds:ListTagsForResource);
    V(copied) also C(rds:CopyDBSnapshot) in the destination region and, for encrypted
    snapshots, C(kms:CreateGrant) and C(kms:DescribeKey) on both keys;
    V(absent) and V(pruned) C(rds:DeleteDBSnapshot); V(restored)
    C(rds:RestoreDBInstanceFromDBSnapshot) or C(rds:RestoreDBInstanceToPointInTime),
    C(rds:DescribeDBInstanceAutomatedBackups); retention C(rds:ModifyDBInstance)."
  - Snapshot, copy and restore durations on real AWS are minutes to hours and depend on the
    data size and, for copies, the distance between regions; set O(wait_timeout) accordingly.
  - The tests run against moto's server, which answers every wait at once and accepts calls
    real AWS refuses; the module makes those checks itself (encrypted copy without a key,
    restore time outside the window, retention outside 0..35).
author:
  - opsauto
"""

EXAMPLES = r"""
- name: Snapshot the production database before a deployment
  rds_snapshot:
    region: eu-west-1
    db_instance_identifier: app-prod
    snapshot_identifier: app-prod-20261128t030000z
    tags:
      backup_id: 20261128T030000Z
    backup_retention_days: 14

- name: Copy it to the DR region, re-encrypted with a key of that region
  rds_snapshot:
    state: copied
    region: eu-central-1
    source_region: eu-west-1
    source_snapshot_identifier: app-prod-20261128t030000z
    snapshot_identifier: app-prod-20261128t030000z
    kms_key_id: alias/app-dr

- name: Keep the 7 newest managed snapshots and none older than 30 days
  rds_snapshot:
    state: pruned
    region: eu-west-1
    db_instance_identifier: app-prod
    keep_count: 7
    max_age_days: 30

- name: List the snapshots of the instance
  rds_snapshot:
    state: info
    region: eu-west-1
    db_instance_identifier: app-prod
  register: snapshots

- name: Restore a snapshot into a new instance
  rds_snapshot:
    state: restored
    region: eu-west-1
    snapshot_identifier: app-prod-20261128t030000z
    target_db_instance_identifier: app-restored
    db_instance_class: db.t3.medium
    db_subnet_group_name: app-db
    vpc_security_group_ids: [sg-0123456789abcdef0]
  register: restored

- name: Restore the instance as it was at 09:15 UTC
  rds_snapshot:
    state: restored
    region: eu-west-1
    db_instance_identifier: app-prod
    restore_time: "2026-11-28T09:15:00Z"
    target_db_instance_identifier: app-pitr

- name: Keep 14 days of point-in-time recovery
  rds_snapshot:
    state: configured
    region: eu-west-1
    db_instance_identifier: app-prod
    backup_retention_days: 14

- name: Delete one snapshot this project made
  rds_snapshot:
    state: absent
    region: eu-west-1
    snapshot_identifier: app-prod-20261101t030000z
"""

RETURN = r"""
msg:
  description: What was done, or would be done in check mode, or C(nothing to change).
  returned: always
  type: str
  sample: create snapshot app-prod-20261128t030000z of instance app-prod
actions:
  description: Each change made (or, in check mode, C(would ...)).
  returned: always
  type: list
  elements: str
events:
  description:
    - Timeline of the waits, one entry each time the observed state changed; C(t) is seconds
      since the module started, C(percent) the snapshot's C(PercentProgress) when RDS gives it.
  returned: always
  type: list
  elements: dict
  sample: [{"t": 0.1, "phase": "snapshot s1", "status": "creating", "percent": 40}]
snapshot:
  description:
    - The snapshot after the change; null when deleted, or in check mode before it exists.
  returned: when state is present, copied or absent
  type: dict
  contains:
    snapshot_identifier: {description: Name., type: str, returned: always}
    snapshot_arn: {description: ARN., type: str, returned: always}
    db_instance_identifier: {description: Instance it was taken of., type: str, returned: always}
    region: {description: Region it lives in., type: str, returned: always}
    status: {description: RDS status (C(available), C(creating)...)., type: str, returned: always}
    snapshot_type: {description: C(manual) or C(automated)., type: str, returned: always}
    percent_progress: {description: RDS's PercentProgress, if given., type: int, returned: always}
    created: {description: Creation time, UTC ISO 8601., type: str, returned: always}
    age_seconds: {description: Age in seconds., type: int, returned: always}
    age_days: {description: Age in days., type: float, returned: always}
    allocated_storage_gb:
      description: Size of the source volume in GiB.
      type: int
      returned: always
    encrypted: {description: Whether it is encrypted., type: bool, returned: always}
    kms_key_id: {description: KMS key that encrypts it., type: str, returned: always}
    engine: {description: Database engine., type: str, returned: always}
    engine_version: {description: Engine version., type: str, returned: always}
    managed: {description: Carries the ownership tag., type: bool, returned: always}
    tags: {description: Its tags., type: dict, returned: always}
source:
  description: The source snapshot of a copy, with the same keys as RV(snapshot).
  returned: when state is copied
  type: dict
snapshots:
  description: The snapshots listed, newest first, with the same keys as RV(snapshot).
  returned: when state is info
  type: list
  elements: dict
pruned:
  description: Snapshots deleted (or that would be, in check mode).
  returned: when state is pruned
  type: list
  elements: str
kept:
  description: Snapshots kept.
  returned: when state is pruned
  type: list
  elements: str
decisions:
  description: For each manual snapshot considered, C(delete) and the C(reason).
  returned: when state is pruned
  type: list
  elements: dict
instance:
  description: The restored or configured instance; null in check mode before it exists.
  returned: when state is restored or configured
  type: dict
  contains:
    db_instance_identifier: {description: Name., type: str, returned: always}
    status: {description: RDS status., type: str, returned: always}
    db_instance_class: {description: Instance class., type: str, returned: always}
    endpoint: {description: C(address) and C(port) to connect to., type: dict, returned: always}
    allocated_storage_gb: {description: Storage in GiB., type: int, returned: always}
    backup_retention_days:
      description: Automated backup retention in days.
      type: int
      returned: always
    pending_modified_values:
      description: Changes RDS has not applied yet.
      type: dict
      returned: always
    db_subnet_group_name: {description: DB subnet group., type: str, returned: always}
    vpc_security_group_ids: {description: VPC security groups., type: list, returned: always}
    db_parameter_group_names: {description: DB parameter groups., type: list, returned: always}
    storage_encrypted: {description: Whether storage is encrypted., type: bool, returned: always}
    latest_restorable_time:
      description: Latest point-in-time restore target, UTC.
      type: str
      returned: always
"""

from ansible.module_utils.ops_errors import OpsError
from ansible.module_utils.rds_actions import SnapshotRunbook
from ansible.module_utils.rds_api import (
    AWS_CONNECTION_ARGUMENT_SPEC,
    RdsApi,
    aws_module,
    module_client,
)

ARGUMENT_SPEC = {
    "state": {
        "type": "str",
        "default": "present",
        "choices": ["present", "copied", "absent", "pruned", "info", "restored", "configured"],
    },
    "snapshot_identifier": {"type": "str"},
    "db_instance_identifier": {"type": "str"},
    "tags": {"type": "dict", "default": {}},
    "wait": {"type": "bool", "default": True},
    "wait_timeout": {"type": "int", "default": 3600},
    "poll_interval": {"type": "int", "default": 15},
    "source_snapshot_identifier": {"type": "str"},
    "source_region": {"type": "str"},
    "kms_key_id": {"type": "str"},
    "copy_tags": {"type": "bool", "default": True},
    "allow_foreign": {"type": "bool", "default": False},
    "allow_newest": {"type": "bool", "default": False},
    "keep_count": {"type": "int"},
    "max_age_days": {"type": "float"},
    "snapshot_type": {"type": "str", "default": "all", "choices": ["manual", "automated", "all"]},
    "target_db_instance_identifier": {"type": "str"},
    "restore_time": {"type": "str"},
    "use_latest_restorable_time": {"type": "bool", "default": False},
    "db_instance_class": {"type": "str"},
    "db_subnet_group_name": {"type": "str"},
    "vpc_security_group_ids": {"type": "list", "elements": "str"},
    "db_parameter_group_name": {"type": "str"},
    "allocated_storage": {"type": "int"},
    "backup_retention_days": {"type": "int"},
    "allow_disable_pitr": {"type": "bool", "default": False},
    **AWS_CONNECTION_ARGUMENT_SPEC,  # documented by doc_fragments/aws_connection.py
}


def restore_source_problem(params):
    """Why the restore source options do not name exactly one source, or None."""
    if params["state"] != "restored":
        return None
    by_time = bool(params["restore_time"]) + bool(params["use_latest_restorable_time"])
    if params["snapshot_identifier"] and by_time:
        return "state=restored takes snapshot_identifier or a point in time, not both"
    if by_time > 1:
        return "give restore_time or use_latest_restorable_time, not both"
    if not params["snapshot_identifier"] and not by_time:
        return (
            "state=restored needs snapshot_identifier, or db_instance_identifier with "
            "restore_time or use_latest_restorable_time"
        )
    if by_time and not params["db_instance_identifier"]:
        return "a point-in-time restore needs db_instance_identifier (the source instance)"
    return None


def main() -> None:
    module, params = aws_module(
        ARGUMENT_SPEC,
        [
            ("state", "present", ("snapshot_identifier", "db_instance_identifier")),
            ("state", "copied", ("snapshot_identifier", "source_snapshot_identifier")),
            ("state", "absent", ("snapshot_identifier",)),
            ("state", "pruned", ("keep_count", "max_age_days"), True),
            ("state", "restored", ("target_db_instance_identifier",)),
            ("state", "configured", ("db_instance_identifier", "backup_retention_days")),
        ],
    )
    problem = restore_source_problem(params)
    if problem:
        module.fail_json(msg=problem)
    runbook = None
    try:
        runbook = SnapshotRunbook(
            lambda region: RdsApi(module_client(params, region), region),
            params,
            check_mode=module.check_mode,
        )
        result = runbook.run()
    except OpsError as exc:
        done = runbook.actions if runbook else []
        events = runbook.poller.events if runbook else []
        module.fail_json(msg=str(exc), changed=bool(done), actions=done, events=events)
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
