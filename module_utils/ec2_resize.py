"""Vertical scaling of an EC2 instance: check, stop, change the type, start, status checks.

The guide's way (change ``instance_type`` in Terraform and apply) replaces the instance.
This keeps it: the same instance id, volumes and addresses (an Elastic IP or a private
address stay; a public IP without an Elastic IP changes at the stop, which the role's
docs say). The order is the one an operator follows by hand:

1. :func:`preflight` - the instance exists, the target type exists, is offered in the
   instance's availability zone and supports the instance's architecture. Nothing is
   changed when any of that fails.
2. :func:`resize` - stop (wait ``stopped``), ``ModifyInstanceAttribute InstanceType``,
   start, wait until running with both status checks ``ok``. When the change or the start
   fails after the stop, the previous type is put back and the instance started again, so
   a failed resize leaves the instance as it was; the error says what failed and what was
   restored (or, when the restore failed too, the commands to finish it by hand).

The EC2 client and the poller are passed in, so unit tests hand in fakes.
"""

from __future__ import annotations

from ansible.module_utils.aws_preflight import error_code, instance_type_offered
from ansible.module_utils.aws_runbook import read_instance, wait_ready
from ansible.module_utils.rds_api import RdsError

try:
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:  # reported by the module through missing_required_lib
    BotoCoreError = ClientError = Exception


class ResizeError(RdsError):
    """The resize was refused or failed; the message names the cause and the fix."""


def _architecture(ec2, instance_id, region):
    try:
        found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    except (ClientError, BotoCoreError) as exc:
        raise ResizeError(f"cannot read EC2 instance {instance_id} in {region}: {exc}") from exc
    instances = [i for r in found for i in r.get("Instances") or []]
    return instances[0].get("Architecture") if instances else None


def _type_architectures(ec2, instance_type, region):
    """The architectures ``instance_type`` supports; ResizeError when the type does not exist."""
    try:
        types = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    except (ClientError, BotoCoreError) as exc:
        if error_code(exc) == "InvalidInstanceType":
            raise ResizeError(
                f"instance type {instance_type} does not exist in {region}: check the name "
                f"(aws ec2 describe-instance-types --region {region})"
            ) from exc
        raise ResizeError(f"cannot read instance type {instance_type} in {region}: {exc}") from exc
    if not types:
        raise ResizeError(f"instance type {instance_type} does not exist in {region}")
    return list(types[0].get("ProcessorInfo", {}).get("SupportedArchitectures") or [])


def preflight(ec2, instance_id, target_type, region):
    """What the resize would do, or ResizeError naming why it cannot. Changes nothing.

    Returns ``{"instance": view, "architecture", "current_type", "target_type", "checks"}``.
    """
    view = read_instance(ec2, instance_id, region)
    architecture = _architecture(ec2, instance_id, region)
    checks = []
    supported = _type_architectures(ec2, target_type, region)
    arch_ok = architecture is None or architecture in supported
    checks.append({
        "check": "architecture",
        "ok": arch_ok,
        "detail": f"{target_type} supports {', '.join(supported) or 'nothing listed'}; "
                  f"{instance_id} runs {architecture or 'an unknown architecture'}",
        "fix": f"choose a type for {architecture} (an AMI runs on one architecture only)",
    })  # fmt: skip
    checks.append(instance_type_offered(ec2, target_type, view["availability_zone"], region))
    failed = [c for c in checks if c["ok"] is False]
    if failed:
        raise ResizeError(
            f"cannot change {instance_id} to {target_type}; nothing was changed: "
            + "; ".join(f"{c['detail']} ({c['fix']})" for c in failed)
        )
    return {
        "instance": view,
        "architecture": architecture,
        "current_type": view["instance_type"],
        "target_type": target_type,
        "checks": checks,
    }


def _call(ec2, method, what, **kwargs):
    try:
        return getattr(ec2, method)(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        code = error_code(exc)
        raise ResizeError(f"{what} failed{f' ({code})' if code else ''}: {exc}") from exc


def _wait_state(ec2, instance_id, region, poller, wanted):
    return poller.until(
        f"{instance_id} {wanted}",
        lambda: read_instance(ec2, instance_id, region),
        lambda v: v["state"] == wanted,
        lambda v: (v["state"], None),
        failed=lambda v: v["state"] in ("shutting-down", "terminated"),
        fix="look at the instance in the EC2 console (state reason)",
    )


def _set_type_and_start(ec2, instance_id, instance_type, region, poller):
    _call(
        ec2,
        "modify_instance_attribute",
        f"changing {instance_id} to {instance_type}",
        InstanceId=instance_id,
        InstanceType={"Value": instance_type},
    )
    _call(ec2, "start_instances", f"starting {instance_id}", InstanceIds=[instance_id])
    # Right after StartInstances AWS may still report "stopped", which wait_ready counts as
    # failed: wait for "running" first, then for the status checks.
    _wait_state(ec2, instance_id, region, poller, "running")
    return wait_ready(ec2, instance_id, region, poller)


def resize(ec2, instance_id, target_type, region, poller, plan=None):
    """Stop, change the type, start and wait for the status checks; the new view.

    ``plan`` is :func:`preflight`'s result (read again when not given). A failure after the
    stop restores the previous type and starts the instance, then raises ResizeError saying
    both what failed and what was restored.
    """
    plan = plan or preflight(ec2, instance_id, target_type, region)
    previous = plan["current_type"]
    if previous == target_type:
        if plan["instance"]["state"] == "stopped":  # a rerun after a stop: start it again
            _call(ec2, "start_instances", f"starting {instance_id}", InstanceIds=[instance_id])
            _wait_state(ec2, instance_id, region, poller, "running")
        return wait_ready(ec2, instance_id, region, poller)
    if plan["instance"]["state"] != "stopped":
        _call(ec2, "stop_instances", f"stopping {instance_id}", InstanceIds=[instance_id])
        _wait_state(ec2, instance_id, region, poller, "stopped")
    try:
        return _set_type_and_start(ec2, instance_id, target_type, region, poller)
    except RdsError as exc:
        cause = str(exc)
    try:
        current = read_instance(ec2, instance_id, region)
        if current["state"] not in ("stopped",):
            _call(ec2, "stop_instances", f"stopping {instance_id}", InstanceIds=[instance_id])
            _wait_state(ec2, instance_id, region, poller, "stopped")
        _set_type_and_start(ec2, instance_id, previous, region, poller)
    except RdsError as undo:
        raise ResizeError(
            f"changing {instance_id} to {target_type} failed: {cause}. Putting back "
            f"{previous} failed too: {undo}. Finish by hand: aws ec2 stop-instances "
            f"--instance-ids {instance_id}; aws ec2 modify-instance-attribute --instance-id "
            f"{instance_id} --instance-type {previous}; aws ec2 start-instances "
            f"--instance-ids {instance_id} (region {region})"
        ) from None
    raise ResizeError(
        f"changing {instance_id} to {target_type} failed: {cause}. The instance runs again as "
        f"{previous} (status checks ok). Choose another type or availability zone, or retry "
        f"later if AWS reported InsufficientInstanceCapacity"
    )
