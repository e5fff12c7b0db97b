#!/usr/bin/python
"""Ansible module: AWS runbook steps amazon.aws lacks (region preflight, DR snapshot choice,
EC2 status checks, tagging a DB instance)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: aws_runbook
short_description: Region preflight, DR snapshot choice, EC2 status checks, DB instance tags
description:
  - Steps of the project's AWS runbooks (playbooks/dr_failover.yml, server_recovery.yml,
    rds_restore.yml) that the bundled amazon.aws modules do not offer.
  - O(action=preflight) checks, in O(region) and without changing anything, that what the run
    will use exists there - the KMS key (enabled), the DB subnet group, the DB and application
    security groups, the launch template, the AMI (available), the subnet, the instance type
    offered in the availability zone (C(DescribeInstanceTypeOfferings)), an existing instance
    given by id - and reads the manual snapshot quota (a warning when not readable). Any
    failed check fails the task, listing every failure with its fix.
  - O(action=pick_snapshot) chooses what a DR run restores - the newest available snapshot of
    O(db_instance_identifier) in O(source_region), or the newest copy this project already made
    in O(region) when it is at least as new (or the source region cannot be read) - and returns
    the name the copy gets and the measured RPO (age of the data).
  - O(action=instance_ready) waits until an EC2 instance is C(running) and both status checks
    are C(ok) and returns its addresses.
  - O(action=tag_db_instance) adds O(tags) to a DB instance (for example the instance a
    restore replaces); it never modifies or deletes the instance.
options:
  action:
    description: The step to run; see the description.
    type: str
    required: true
    choices: [preflight, pick_snapshot, instance_ready, tag_db_instance]
  source_region:
    description: Region of the source DB instance and its snapshots (O(action=pick_snapshot)).
    type: str
  db_instance_identifier:
    description:
      - The source DB instance (V(pick_snapshot)) or the instance to tag (V(tag_db_instance)).
    type: str
  kms_key_id:
    description: KMS key the DR copy will be encrypted with (V(preflight)).
    type: str
  db_subnet_group_name:
    description: DB subnet group of the restored instance (V(preflight)).
    type: str
  vpc_security_group_ids:
    description: Security groups of the restored DB instance (V(preflight)).
    type: list
    elements: str
  app_security_group_ids:
    description: Security groups of the application host (V(preflight)).
    type: list
    elements: str
  launch_template:
    description: Launch template (name or C(lt-) id) of the application host (V(preflight)).
    type: str
  image_id:
    description: AMI of the application host (V(preflight)); default the launch template's.
    type: str
  instance_type:
    description: Instance type of the application host (V(preflight)); default the template's.
    type: str
  subnet_id:
    description: Subnet of the application host; its availability zone is checked (V(preflight)).
    type: str
  availability_zone:
    description: Availability zone the instance type must be offered in (V(preflight)).
    type: str
  instance_id:
    description:
      - An existing EC2 instance to use as the application host (V(preflight) checks it) or to
        wait for (V(instance_ready)).
    type: str
  check_snapshot_quota:
    description: Read the manual snapshot quota of O(region) (V(preflight)).
    type: bool
    default: true
  tags:
    description: Tags to add (V(tag_db_instance)); existing tags are kept.
    type: dict
    default: {}
  wait_timeout:
    description: Seconds O(action=instance_ready) waits before failing, naming the last state.
    type: int
    default: 900
  poll_interval:
    description: Seconds between two reads while waiting.
    type: int
    default: 10
extends_documentation_fragment:
  - aws_connection
attributes:
  check_mode:
    support: full
    description:
      - V(preflight), V(pick_snapshot) and V(instance_ready) only read and run as usual;
        V(tag_db_instance) reports "would tag ..." and tags nothing.
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - "IAM: V(preflight) C(kms:DescribeKey), C(rds:DescribeDBSubnetGroups),
    C(rds:DescribeAccountAttributes), C(ec2:DescribeSecurityGroups), C(ec2:DescribeImages),
    C(ec2:DescribeLaunchTemplateVersions), C(ec2:DescribeSubnets), C(ec2:DescribeInstances),
    C(ec2:DescribeInstanceTypeOfferings); V(pick_snapshot) C(rds:DescribeDBSnapshots),
    C(rds:ListTagsForResource) in both regions; V(instance_ready) C(ec2:DescribeInstances),
    C(ec2:DescribeInstanceStatus); V(tag_db_instance) C(rds:DescribeDBInstances),
    C(rds:AddTagsToResource)."
  - Against moto every instance passes its status checks at once; real instances take minutes.
author:
  - opsauto
"""

EXAMPLES = r"""
- name: Preflight of the DR region
  aws_runbook:
    action: preflight
    region: us-west-2
    kms_key_id: alias/app-dr
    db_subnet_group_name: app-db-dr
    vpc_security_group_ids: [sg-0123456789abcdef0]
    launch_template: app-dr
    subnet_id: subnet-0123456789abcdef0

- name: Which snapshot does the DR run restore?
  aws_runbook:
    action: pick_snapshot
    source_region: us-east-1
    region: us-west-2
    db_instance_identifier: app-prod
  register: picked

- name: Wait for the status checks of the new host
  aws_runbook:
    action: instance_ready
    region: us-west-2
    instance_id: i-0123456789abcdef0
"""

RETURN = r"""
msg:
  description: What was found or done.
  returned: always
  type: str
checks:
  description:
    - Each preflight check - C(check), C(ok) (true, false, or null when not readable),
      C(detail), C(fix).
  returned: when action is preflight
  type: list
  elements: dict
snapshot:
  description:
    - The choice of O(action=pick_snapshot) - C(decision) (C(copy) or C(use_copy)), C(source) and
      C(copy) (snapshot summaries or null), C(copy_identifier), C(encrypted), C(data_taken_at),
      C(rpo_seconds) (age of the data now), C(source_error).
  returned: when action is pick_snapshot
  type: dict
instance:
  description:
    - The instance - C(instance_id), C(state), C(instance_type), C(availability_zone),
      C(public_ip), C(private_ip), C(public_dns), C(instance_status), C(system_status).
  returned: when action is instance_ready
  type: dict
added_tags:
  description: Tags added (or that would be) by O(action=tag_db_instance).
  returned: when action is tag_db_instance
  type: dict
events:
  description: Timeline of the wait of O(action=instance_ready).
  returned: always
  type: list
  elements: dict
"""

import datetime

from ansible.module_utils.aws_preflight import run_checks, verdict
from ansible.module_utils.aws_runbook import pick, tag_db_instance, wait_ready
from ansible.module_utils.ops_errors import OpsError
from ansible.module_utils.rds_api import (
    AWS_CONNECTION_ARGUMENT_SPEC,
    RdsApi,
    aws_module,
    module_client,
)
from ansible.module_utils.rds_waits import Poller

ARGUMENT_SPEC = {
    "action": {
        "type": "str",
        "required": True,
        "choices": ["preflight", "pick_snapshot", "instance_ready", "tag_db_instance"],
    },
    "source_region": {"type": "str"},
    "db_instance_identifier": {"type": "str"},
    "kms_key_id": {"type": "str"},
    "db_subnet_group_name": {"type": "str"},
    "vpc_security_group_ids": {"type": "list", "elements": "str"},
    "app_security_group_ids": {"type": "list", "elements": "str"},
    "launch_template": {"type": "str"},
    "image_id": {"type": "str"},
    "instance_type": {"type": "str"},
    "subnet_id": {"type": "str"},
    "availability_zone": {"type": "str"},
    "instance_id": {"type": "str"},
    "check_snapshot_quota": {"type": "bool", "default": True},
    "tags": {"type": "dict", "default": {}},
    "wait_timeout": {"type": "int", "default": 900},
    "poll_interval": {"type": "int", "default": 10},
    **AWS_CONNECTION_ARGUMENT_SPEC,  # documented by doc_fragments/aws_connection.py
}


def run(module, params):
    action = params["action"]
    region = params["region"]

    def client(service, where=region, attempts=5):
        return module_client(params, where, service, attempts)

    if action == "preflight":
        checks = run_checks(client, region, params)
        msg, failed = verdict(checks, region)
        if failed:
            module.fail_json(msg=msg, checks=checks)
        for item in checks:
            if item["ok"] is None:
                module.warn(f"preflight {item['check']}: {item['detail']}")
        return {"changed": False, "msg": msg, "checks": checks}
    if action == "pick_snapshot":
        source_region = params["source_region"] or region
        now = datetime.datetime.now(datetime.timezone.utc)
        chosen = pick(
            RdsApi(client("rds", source_region), source_region),
            RdsApi(client("rds"), region),
            params["db_instance_identifier"],
            now,
        )
        if chosen["source_error"]:
            module.warn(f"source region not readable, using the DR copy: {chosen['source_error']}")
        what = chosen["copy"] or chosen["source"]
        msg = (
            f"{chosen['decision']} {what['snapshot_identifier']} ({what['region']}), data taken "
            f"at {chosen['data_taken_at']}, RPO {chosen['rpo_seconds']} s"
        )
        return {"changed": False, "msg": msg, "snapshot": chosen}
    if action == "instance_ready":
        poller = Poller(params["poll_interval"], params["wait_timeout"])
        try:
            view = wait_ready(client("ec2"), params["instance_id"], region, poller)
        except OpsError as exc:
            module.fail_json(msg=str(exc), events=poller.events)
        return {
            "changed": False,
            "msg": f"{view['instance_id']} is running, status checks ok",
            "instance": view,
            "events": poller.events,
        }
    actions = []

    def act(description, call):
        if module.check_mode:
            actions.append(f"would {description}")
            return None
        actions.append(description)
        return call()

    added = tag_db_instance(
        RdsApi(client("rds"), region), params["db_instance_identifier"], params["tags"], act
    )
    return {
        "changed": bool(added),
        "msg": "; ".join(actions) or "nothing to change",
        "added_tags": added,
    }


def main() -> None:
    module, params = aws_module(
        ARGUMENT_SPEC,
        [
            ("action", "pick_snapshot", ("db_instance_identifier", "source_region")),
            ("action", "instance_ready", ("instance_id",)),
            ("action", "tag_db_instance", ("db_instance_identifier",)),
        ],
    )
    try:
        result = run(module, params)
    except OpsError as exc:
        module.fail_json(msg=str(exc))
    result.setdefault("events", [])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
