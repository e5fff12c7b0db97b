#!/usr/bin/python
"""Ansible module: change an EC2 instance's type (vertical scaling) with a preflight and undo."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ec2_instance_type
short_description: Change an EC2 instance's type, keeping the instance; undo on failure
description:
  - Vertical scaling of the application host, the guide's "Scaling Up/Down, Vertical
    Scaling, EC2" without replacing the instance - the same instance id, volumes, private
    address and Elastic IP.
  - First a preflight that changes nothing - the instance exists, O(instance_type) exists,
    is offered in the instance's availability zone and supports the instance's architecture
    (an AMI runs on one architecture only). A failed check fails the task naming the fix.
  - Then, when the type differs - stop and wait until C(stopped), change the type, start,
    wait until C(running) with both status checks C(ok). When changing the type or starting
    fails after the stop, the previous type is put back and the instance started again;
    the task fails saying what failed and that the old type runs again (or the commands to
    finish by hand when putting it back failed too).
  - The instance already of O(instance_type) and running is left alone (changed=false).
  - Stopping the application before the stop and the health check after the start are the
    C(scale) role's (roles/scale/tasks/instance.yml), not this module's.
options:
  instance_id:
    description: The EC2 instance (C(i-...)).
    type: str
    required: true
  instance_type:
    description: The type the instance gets, for example C(t3.large).
    type: str
    required: true
  wait_timeout:
    description: Seconds each wait (stopped, running, status checks) may take before failing.
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
    description: Runs the preflight and reports what would change; stops nothing.
  diff_mode:
    support: full
    description: The instance type before and after.
  platform:
    platforms: posix
notes:
  - "IAM: C(ec2:DescribeInstances), C(ec2:DescribeInstanceStatus),
    C(ec2:DescribeInstanceTypes), C(ec2:DescribeInstanceTypeOfferings),
    C(ec2:StopInstances), C(ec2:ModifyInstanceAttribute), C(ec2:StartInstances)."
  - A public IP address that is not an Elastic IP changes when the instance stops; the
    module returns the new addresses.
  - Against moto every instance passes its status checks at once; real stops and starts take
    minutes.
author:
  - opsauto
"""

EXAMPLES = r"""
- name: Give the application host more memory
  ec2_instance_type:
    instance_id: i-0123456789abcdef0
    instance_type: t3.large
    region: eu-west-1
  delegate_to: localhost
"""

RETURN = r"""
previous_type:
  description: The instance's type before the task.
  returned: always
  type: str
instance:
  description: The instance after the task (state, type, zone, addresses, status checks).
  returned: always
  type: dict
checks:
  description: The preflight's checks (architecture, offered in the zone).
  returned: always
  type: list
  elements: dict
events:
  description: Timeline of the waits (seconds since the start, phase, state).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.ec2_resize import preflight, resize
from ansible.module_utils.ops_errors import OpsError
from ansible.module_utils.rds_api import AWS_CONNECTION_ARGUMENT_SPEC, aws_module, module_client
from ansible.module_utils.rds_waits import Poller

ARGUMENT_SPEC = {
    "instance_id": {"type": "str", "required": True},
    "instance_type": {"type": "str", "required": True},
    "wait_timeout": {"type": "int", "default": 900},
    "poll_interval": {"type": "int", "default": 10},
    **AWS_CONNECTION_ARGUMENT_SPEC,  # documented by doc_fragments/aws_connection.py
}


def run(module, params):
    region = params["region"]
    ec2 = module_client(params, region, "ec2")
    instance_id, target = params["instance_id"], params["instance_type"]
    poller = Poller(params["poll_interval"], params["wait_timeout"])
    plan = preflight(ec2, instance_id, target, region)
    previous = plan["current_type"]
    changed = previous != target or plan["instance"]["state"] == "stopped"
    result = {
        "changed": changed,
        "previous_type": previous,
        "instance": plan["instance"],
        "checks": plan["checks"],
        "events": poller.events,
        "diff": {"before": {"instance_type": previous}, "after": {"instance_type": target}},
    }
    if module.check_mode:
        result["msg"] = (
            f"would stop {instance_id}, change it from {previous} to {target} and start it"
            if previous != target
            else f"{instance_id} is already {target} ({plan['instance']['state']})"
        )
        return result
    try:
        result["instance"] = resize(ec2, instance_id, target, region, poller, plan)
    except OpsError as exc:
        module.fail_json(msg=str(exc), previous_type=previous, events=poller.events)
    result["msg"] = (
        f"{instance_id} changed from {previous} to {target}, running, status checks ok"
        if previous != target
        else f"{instance_id} is already {target}, running, status checks ok"
    )
    return result


def main() -> None:
    module, params = aws_module(ARGUMENT_SPEC, [])
    try:
        result = run(module, params)
    except OpsError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
