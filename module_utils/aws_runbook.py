"""Steps of the AWS runbooks that amazon.aws does not offer: which snapshot a DR run restores,
waiting for an EC2 instance's status checks, and tagging a DB instance.

Reads go through :class:`~ansible.module_utils.rds_api.RdsApi` (RDS) or a boto3 EC2 client;
the decisions (:func:`choose_snapshot`, :func:`instance_view`) are pure and unit tested. The
waits use :class:`~ansible.module_utils.rds_waits.Poller` (own polling, timeout per phase,
the last state named on timeout).
"""

from __future__ import annotations

from ansible.module_utils.rds_api import RdsError
from ansible.module_utils.rds_snapshots import (
    SOURCE_TAG,
    is_ours,
    iso,
    missing_tags,
    summary,
    tag_list,
    utc,
)

try:
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:  # reported by the module through missing_required_lib
    BotoCoreError = ClientError = Exception


def original_created(snapshot):
    """When the data of a snapshot (or of the snapshot it was copied from) was taken."""
    return snapshot.get("OriginalSnapshotCreateTime") or snapshot.get("SnapshotCreateTime")


def copy_name(instance, snapshot):
    """The DR copy's name: the instance and the source's creation time (a rerun finds it)."""
    created = utc(original_created(snapshot)).strftime("%Y%m%dt%H%M%Sz")
    return f"{instance}-dr-{created}"


def newest(snapshots):
    ready = [s for s in snapshots if s.get("Status") == "available" and original_created(s)]
    return max(ready, key=lambda s: utc(original_created(s)), default=None)


def choose_snapshot(instance, source_snaps, dr_snaps, dr_tags, source_error=None):
    """What the DR run restores: ``(decision, source, copy)``.

    decision is ``copy`` (copy ``source`` to the DR region) or ``use_copy`` (the newest copy
    already in the DR region is as new as anything the source region has, or the source
    region cannot be read). ``dr_tags`` maps a DR snapshot's identifier to its tags; only
    managed copies of ``instance`` count. Raises RdsError when there is nothing to restore.
    """
    copies = [
        s
        for s in dr_snaps
        if s.get("DBInstanceIdentifier") == instance
        and is_ours(dr_tags.get(s["DBSnapshotIdentifier"], {}))
        and dr_tags[s["DBSnapshotIdentifier"]].get(SOURCE_TAG)
    ]
    copy = newest(copies)
    source = newest(source_snaps)
    if source is None:
        if copy is not None:
            return "use_copy", None, copy
        why = f"the source region could not be read ({source_error})" if source_error else ""
        raise RdsError(
            f"no available snapshot of {instance} to restore: none in the source region"
            f"{' (' + why + ')' if why else ''} and no copy made by this project in the DR "
            f"region. Take one (rds_snapshot state=present) or give the right instance and "
            f"regions"
        )
    if copy is not None and utc(original_created(copy)) >= utc(original_created(source)):
        return "use_copy", source, copy
    return "copy", source, None


def pick(source_api, dr_api, instance, now):
    """Read both regions and choose; the result the module returns."""
    source_error = None
    try:
        source_snaps = source_api.snapshots(instance)
    except RdsError as exc:
        source_snaps, source_error = [], str(exc)
    dr_snaps = dr_api.snapshots(instance, "manual")
    dr_tags = {s["DBSnapshotIdentifier"]: dr_api.tags(s) for s in dr_snaps}
    decision, source, copy = choose_snapshot(
        instance, source_snaps, dr_snaps, dr_tags, source_error
    )
    data = copy or source
    taken = original_created(data)
    return {
        "decision": decision,
        "source": summary(source, source_api.tags(source), now, source_api.region)
        if source
        else None,
        "copy": summary(copy, dr_tags[copy["DBSnapshotIdentifier"]], now, dr_api.region)
        if copy
        else None,
        "copy_identifier": copy["DBSnapshotIdentifier"] if copy else copy_name(instance, data),
        "encrypted": bool(data.get("Encrypted")),
        "data_taken_at": iso(taken),
        "rpo_seconds": int((utc(now) - utc(taken)).total_seconds()),
        "source_error": source_error,
    }


# ------------------------------------------------------------------------------ EC2


def instance_view(instance, statuses):
    """The fields the runbooks report of an EC2 instance and its status checks."""
    status = statuses[0] if statuses else {}
    return {
        "instance_id": instance["InstanceId"],
        "state": instance.get("State", {}).get("Name"),
        "instance_type": instance.get("InstanceType"),
        "availability_zone": instance.get("Placement", {}).get("AvailabilityZone"),
        "public_ip": instance.get("PublicIpAddress"),
        "private_ip": instance.get("PrivateIpAddress"),
        "public_dns": instance.get("PublicDnsName") or None,
        "instance_status": status.get("InstanceStatus", {}).get("Status"),
        "system_status": status.get("SystemStatus", {}).get("Status"),
    }


def read_instance(ec2, instance_id, region):
    try:
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        statuses = ec2.describe_instance_status(
            InstanceIds=[instance_id], IncludeAllInstances=True
        )["InstanceStatuses"]
    except (ClientError, BotoCoreError) as exc:
        raise RdsError(f"cannot read EC2 instance {instance_id} in {region}: {exc}") from exc
    found = [i for r in reservations for i in r.get("Instances") or []]
    if not found:
        raise RdsError(f"EC2 instance {instance_id} not found in {region}: check the id")
    return instance_view(found[0], statuses)


def wait_ready(ec2, instance_id, region, poller):
    """Wait until the instance runs and both status checks are ``ok``; its view."""
    return poller.until(
        f"status checks of {instance_id}",
        lambda: read_instance(ec2, instance_id, region),
        lambda v: v["state"] == "running"
        and v["instance_status"] == "ok"
        and v["system_status"] == "ok",
        lambda v: (f"{v['state']}, instance {v['instance_status']}, system {v['system_status']}",
                   None),
        failed=lambda v: v["state"] in ("shutting-down", "terminated", "stopped")
        or "impaired" in (v["instance_status"], v["system_status"]),
        fix="Look at the instance's system log (aws ec2 get-console-output) and replace it",
    )  # fmt: skip


# ------------------------------------------------------------------------------ RDS tags


def tag_db_instance(api, instance_id, tags, act):
    """Add the missing ``tags`` to a DB instance; ``act`` makes the change (or reports it).

    Returns the tags added. The instance is only tagged: never modified or deleted, and it
    does not get the ownership tag (this project did not make it).
    """
    instance = api.instance(instance_id)
    if instance is None:
        raise RdsError(f"DB instance {instance_id} not found in {api.region}: check its name")
    current = api.tags(instance)
    add = missing_tags(current, {str(k): str(v) for k, v in (tags or {}).items()})
    if add:
        act(
            f"tag DB instance {instance_id} with {', '.join(sorted(add))}",
            lambda: api.call(
                "add_tags_to_resource",
                f"tagging {instance_id}",
                ResourceName=instance["DBInstanceArn"],
                Tags=tag_list(add),
            ),
        )
    return add
