"""Pure decisions about RDS snapshots: tags, pruning, summaries and input checks.

No AWS calls here (module_utils/rds_api.py makes them): every function takes the
DescribeDBSnapshots / DescribeDBInstances dicts and returns a decision, so the rules
that protect data (which snapshot may be deleted, which restore time is valid) are unit
tested on their own.
"""

from __future__ import annotations

import datetime

from ansible.module_utils.rds_api import RdsError

OWNER_TAG = "opsauto:managed-by"
OWNER_VALUE = "opsauto"
SOURCE_TAG = "opsauto:source-snapshot"  # on a copy: the ARN it was copied from
RESTORED_FROM_TAG = "opsauto:restored-from"  # on a restored instance: what it came from
SNAPSHOT_FAILED = {"failed", "incompatible-restore", "incompatible-parameters"}
INSTANCE_FAILED = {
    "failed",
    "incompatible-restore",
    "incompatible-parameters",
    "incompatible-network",
    "inaccessible-encryption-credentials",
    "storage-full",
}
RETENTION_MAX = 35


def tag_list(tags):
    return [{"Key": key, "Value": str(value)} for key, value in sorted(tags.items())]


def desired_tags(user_tags, **extra):
    """The user's tags plus the ownership tag (and ``extra`` project tags); ours win."""
    tags = {str(key): str(value) for key, value in (user_tags or {}).items()}
    tags.update(extra)
    tags[OWNER_TAG] = OWNER_VALUE
    return tags


def missing_tags(current, desired):
    """Tags of ``desired`` absent from ``current`` or with another value (none are removed)."""
    return {key: value for key, value in desired.items() if current.get(key) != value}


def is_ours(tags):
    return tags.get(OWNER_TAG) == OWNER_VALUE


def utc(value):
    """An aware datetime in UTC (botocore gives aware datetimes; naive ones are UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc)


def iso(value):
    return utc(value).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def parse_time(text):
    """An ISO 8601 time (``2026-11-28T03:00:00Z`` or with an offset; none means UTC)."""
    try:
        value = datetime.datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise RdsError(
            f"restore_time {text!r} is not an ISO 8601 time: write it like 2026-11-28T03:00:00Z"
        ) from exc
    return utc(value)


def summary(snapshot, tags, now, region):
    """What state=info returns for one snapshot."""
    created = snapshot.get("SnapshotCreateTime")
    age = (utc(now) - utc(created)).total_seconds() if created else None
    return {
        "snapshot_identifier": snapshot["DBSnapshotIdentifier"],
        "snapshot_arn": snapshot.get("DBSnapshotArn"),
        "db_instance_identifier": snapshot.get("DBInstanceIdentifier"),
        "region": region,
        "status": snapshot.get("Status"),
        "snapshot_type": snapshot.get("SnapshotType"),
        "percent_progress": snapshot.get("PercentProgress"),
        "created": iso(created),
        "age_seconds": None if age is None else int(age),
        "age_days": None if age is None else round(age / 86400, 2),
        "allocated_storage_gb": snapshot.get("AllocatedStorage"),
        "encrypted": bool(snapshot.get("Encrypted")),
        "kms_key_id": snapshot.get("KmsKeyId"),
        "engine": snapshot.get("Engine"),
        "engine_version": snapshot.get("EngineVersion"),
        "managed": is_ours(tags),
        "tags": tags,
    }


def prune_plan(snapshots, now, keep_count=None, max_age_days=None):
    """Which snapshots to delete, each decision with its reason.

    ``snapshots``: (snapshot, tags) pairs. Only manual snapshots carrying the ownership tag
    and in status 'available' are candidates (automated and foreign ones are never deleted).
    Per instance, the newest available candidate is always kept; beyond that a candidate is
    deleted when it is not among the ``keep_count`` newest candidates or is older than
    ``max_age_days``.
    """
    if keep_count is None and max_age_days is None:
        raise RdsError("state=pruned needs keep_count, max_age_days or both")
    if keep_count is not None and keep_count < 1:
        raise RdsError("keep_count must be 1 or more (the newest snapshot is always kept)")
    if max_age_days is not None and max_age_days < 0:
        raise RdsError("max_age_days must be 0 or more")
    now = utc(now)
    by_instance = {}
    for snapshot, tags in snapshots:
        by_instance.setdefault(snapshot.get("DBInstanceIdentifier"), []).append((snapshot, tags))
    decisions = []
    for instance in sorted(by_instance, key=str):
        group = sorted(
            by_instance[instance],
            key=lambda pair: utc(pair[0].get("SnapshotCreateTime") or now),
            reverse=True,
        )
        newest = next(
            (
                s
                for s, t in group
                if s.get("Status") == "available" and s.get("SnapshotType") == "manual"
                and is_ours(t)
            ),
            None,
        )  # fmt: skip
        rank = 0
        for snapshot, tags in group:
            name = snapshot["DBSnapshotIdentifier"]
            created = utc(snapshot.get("SnapshotCreateTime") or now)
            age_days = (now - created).total_seconds() / 86400
            decision = {
                "snapshot_identifier": name,
                "db_instance_identifier": instance,
                "created": iso(created),
                "age_days": round(age_days, 2),
                "delete": False,
            }
            if snapshot.get("SnapshotType") != "manual":
                decision["reason"] = f"{snapshot.get('SnapshotType')} snapshot: never pruned"
            elif not is_ours(tags):
                decision["reason"] = f"no {OWNER_TAG}={OWNER_VALUE} tag: another tool's"
            elif snapshot.get("Status") != "available":
                decision["reason"] = f"status {snapshot.get('Status')}: only available ones"
            elif snapshot is newest:
                rank += 1
                decision["reason"] = (
                    "newest available managed snapshot of its instance: always kept"
                )
            else:
                rank += 1
                if keep_count is not None and rank > keep_count:
                    decision["delete"] = True
                    decision["reason"] = f"beyond the {keep_count} newest managed snapshots"
                elif max_age_days is not None and age_days > max_age_days:
                    decision["delete"] = True
                    decision["reason"] = f"older than {max_age_days} days"
                else:
                    decision["reason"] = "within keep_count and max_age_days"
            decisions.append(decision)
    return decisions


def newest_available(snapshots):
    """The newest 'available' snapshot of a list, or None."""
    ready = [s for s in snapshots if s.get("Status") == "available"]
    return max(ready, key=lambda s: utc(s["SnapshotCreateTime"]), default=None)


def check_delete(snapshot, tags, siblings, allow_foreign, allow_newest):
    """Refuse to delete an automated, foreign or newest available snapshot (RdsError)."""
    name = snapshot["DBSnapshotIdentifier"]
    if snapshot.get("SnapshotType") != "manual":
        raise RdsError(
            f"snapshot {name} is {snapshot.get('SnapshotType')}: RDS deletes automated "
            f"snapshots itself when they pass the instance's backup retention; nothing deleted"
        )
    if not is_ours(tags) and not allow_foreign:
        raise RdsError(
            f"snapshot {name} has no {OWNER_TAG}={OWNER_VALUE} tag: another tool or person "
            f"made it, so it was left alone. Delete it by hand "
            f"(aws rds delete-db-snapshot --db-snapshot-identifier {name}) or set "
            f"allow_foreign=true"
        )
    newest = newest_available(siblings)
    if newest is not None and newest["DBSnapshotIdentifier"] == name and not allow_newest:
        raise RdsError(
            f"snapshot {name} is the newest available snapshot of instance "
            f"{snapshot.get('DBInstanceIdentifier')}, possibly its last restore point: "
            f"nothing deleted. Take a newer one first, or set allow_newest=true"
        )


def check_retention(days, allow_disable_pitr):
    if days is None:
        return
    if days == 0 and not allow_disable_pitr:
        raise RdsError(
            "backup_retention_days=0 turns off automated backups and point-in-time recovery "
            "(and deletes the automated snapshots): refused. Set allow_disable_pitr=true if "
            "that is really wanted"
        )
    if not 0 <= days <= RETENTION_MAX:
        raise RdsError(
            f"backup_retention_days={days} is outside 1..{RETENTION_MAX}, the range RDS "
            f"accepts (0 only with allow_disable_pitr=true)"
        )


def check_copy_key(source, source_region, region, kms_key_id):
    """Refuse an encrypted cross-region copy without a key of the destination region."""
    name = source["DBSnapshotIdentifier"]
    if source.get("Encrypted") and source_region != region and not kms_key_id:
        raise RdsError(
            f"snapshot {name} is encrypted (KMS key {source.get('KmsKeyId')}) and KMS keys "
            f"are regional: a copy to {region} needs kms_key_id, a key (id, ARN or alias) that "
            f"exists in {region}. Create or choose one there (aws kms list-aliases "
            f"--region {region}) and pass it"
        )
    if kms_key_id and kms_key_id.startswith("arn:"):
        fields = kms_key_id.split(":")
        if len(fields) > 3 and fields[3] and fields[3] != region:
            raise RdsError(
                f"kms_key_id {kms_key_id} belongs to region {fields[3]}, but the copy is made "
                f"in {region}: give a key of {region}"
            )


def check_restore_time(requested, earliest, latest, instance, source):
    """Refuse a point-in-time outside the instance's restorable window, showing the window."""
    if latest is None:
        raise RdsError(
            f"instance {instance} has no restorable time (LatestRestorableTime is empty): "
            f"automated backups are off (backup retention 0) or not taken yet, so no "
            f"point-in-time restore is possible. Restore from a snapshot instead"
        )
    if requested < utc(earliest) or requested > utc(latest):
        raise RdsError(
            f"restore_time {iso(requested)} is outside the restorable window of instance "
            f"{instance}: earliest {iso(earliest)}, latest {iso(latest)} (earliest from "
            f"{source}). Pick a time inside it, or use_latest_restorable_time=true"
        )


def check_storage(requested, source_storage, source_name):
    if requested is not None and source_storage and requested < source_storage:
        raise RdsError(
            f"allocated_storage={requested} GiB is smaller than the {source_storage} GiB of "
            f"{source_name}: RDS cannot shrink storage on restore. Give {source_storage} or more"
        )


def instance_endpoint(instance):
    endpoint = instance.get("Endpoint") or {}
    return {"address": endpoint.get("Address"), "port": endpoint.get("Port")}


def instance_summary(instance):
    """What the module returns about a restored or configured instance."""
    pending = instance.get("PendingModifiedValues") or {}
    return {
        "db_instance_identifier": instance["DBInstanceIdentifier"],
        "status": instance.get("DBInstanceStatus"),
        "db_instance_class": instance.get("DBInstanceClass"),
        "engine": instance.get("Engine"),
        "engine_version": instance.get("EngineVersion"),
        "allocated_storage_gb": instance.get("AllocatedStorage"),
        "backup_retention_days": instance.get("BackupRetentionPeriod"),
        "pending_modified_values": pending,
        "endpoint": instance_endpoint(instance),
        "db_subnet_group_name": (instance.get("DBSubnetGroup") or {}).get("DBSubnetGroupName"),
        "vpc_security_group_ids": [
            group["VpcSecurityGroupId"] for group in instance.get("VpcSecurityGroups") or []
        ],
        "db_parameter_group_names": [
            group["DBParameterGroupName"] for group in instance.get("DBParameterGroups") or []
        ],
        "storage_encrypted": bool(instance.get("StorageEncrypted")),
        "latest_restorable_time": iso(instance.get("LatestRestorableTime")),
    }
