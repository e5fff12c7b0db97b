"""What library/rds_snapshot.py does for each state: read, compare, act, re-read, wait.

``api_for(region)`` returns an :class:`~ansible.module_utils.rds_api.RdsApi`; sleep, clock
and now are injected so unit tests run the waits in milliseconds. Check mode is handled in
one place, :meth:`SnapshotRunbook.act`: every change goes through it and is reported as
"would ..." instead of being made; the reads and checks before it run in both modes, so
a check run finds the same refusals as a real one.
"""

from __future__ import annotations

import datetime
import time

from ansible.module_utils.rds_api import RdsError
from ansible.module_utils.rds_snapshots import (
    INSTANCE_FAILED,
    OWNER_TAG,
    RESTORED_FROM_TAG,
    SNAPSHOT_FAILED,
    SOURCE_TAG,
    check_copy_key,
    check_delete,
    check_restore_time,
    check_retention,
    check_storage,
    desired_tags,
    instance_summary,
    is_ours,
    iso,
    missing_tags,
    parse_time,
    prune_plan,
    summary,
    tag_list,
)
from ansible.module_utils.rds_waits import Poller


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def snapshot_name(identifier):
    """The name part of a snapshot ARN (arn:aws:rds:REGION:ACCOUNT:snapshot:NAME), or the name."""
    if identifier.startswith("arn:") and ":snapshot:" in identifier:
        return identifier.split(":snapshot:", 1)[1]
    return identifier


def arn_region(identifier):
    if identifier.startswith("arn:"):
        fields = identifier.split(":")
        if len(fields) > 3 and fields[3]:
            return fields[3]
    return None


def snapshot_state(snapshot):
    if snapshot is None:
        return "deleted", None
    return snapshot.get("Status") or "unknown", snapshot.get("PercentProgress")


def instance_state(instance):
    if instance is None:
        return "not found", None
    status = instance.get("DBInstanceStatus") or "unknown"
    pending = instance.get("PendingModifiedValues") or {}
    if pending:
        shown = ", ".join(f"{key}={value}" for key, value in sorted(pending.items()))
        status = f"{status} (pending: {shown})"
    return status, None


class SnapshotRunbook:
    def __init__(
        self, api_for, params, check_mode=False, sleep=time.sleep, clock=time.monotonic, now=None
    ):
        self.api_for = api_for
        self.p = params
        self.region = params["region"]
        self.api = api_for(self.region)
        self.check_mode = check_mode
        self.poller = Poller(params["poll_interval"], params["wait_timeout"], sleep, clock)
        self.now = now or utc_now
        self.actions = []
        self.before = {}
        self.after = {}

    # ------------------------------------------------------------------ helpers
    def act(self, description, call):
        """Make one change, or in check mode only say that it would be made."""
        if self.check_mode:
            self.actions.append(f"would {description}")
            return None
        self.actions.append(description)
        return call()

    def waiting(self):
        return self.p["wait"] and not self.check_mode

    def result(self, **values):
        changed = bool(self.actions)
        if self.actions:
            msg = "; ".join(self.actions)
        else:
            msg = "nothing to change"
        return {
            "changed": changed,
            "msg": msg,
            "actions": list(self.actions),
            "events": self.poller.events,
            "diff": {"before": self.before, "after": self.after},
            **values,
        }

    def run(self):
        state = self.p["state"]
        check_retention(self.p.get("backup_retention_days"), self.p.get("allow_disable_pitr"))
        return getattr(self, f"state_{state}")()

    def ensure_tags(self, api, resource, arn, current, desired, what):
        add = missing_tags(current, desired)
        if add:
            self.act(
                f"add tags {', '.join(sorted(add))} to {what}",
                lambda: api.call(
                    "add_tags_to_resource", f"tagging {what}", ResourceName=arn, Tags=tag_list(add)
                ),
            )
            self.before.setdefault("tags", dict(current))
            self.after["tags"] = {**current, **add}
        return {**current, **add}

    def wait_snapshot(self, api, identifier, phase):
        return self.poller.until(
            phase,
            lambda: api.snapshot(identifier),
            lambda snap: snap is not None and snap.get("Status") == "available",
            snapshot_state,
            failed=lambda snap: snap is None or snap.get("Status") in SNAPSHOT_FAILED,
            fix="Look at the RDS events of the snapshot (aws rds describe-events) and try again",
        )

    def wait_instance(self, identifier, phase, done):
        return self.poller.until(
            phase,
            lambda: self.api.instance(identifier),
            lambda inst: inst is not None and done(inst),
            instance_state,
            failed=lambda inst: inst is None or inst.get("DBInstanceStatus") in INSTANCE_FAILED,
            fix="Look at the instance's RDS events (aws rds describe-events) for the cause",
        )

    # ------------------------------------------------------------------ present
    def state_present(self):
        name = self.p["snapshot_identifier"]
        instance_id = self.p["db_instance_identifier"]
        desired = desired_tags(self.p.get("tags"))
        snap = self.api.snapshot(name)
        if snap is not None:
            owner = snap.get("DBInstanceIdentifier")
            if owner != instance_id:
                raise RdsError(
                    f"snapshot {name} already exists in {self.region} for another instance "
                    f"({owner}), not {instance_id}: snapshot identifiers are unique per region "
                    f"and account. Choose another snapshot_identifier"
                )
            tags = self.api.tags(snap)
            if not is_ours(tags):
                raise RdsError(
                    f"snapshot {name} of {instance_id} already exists but has no {OWNER_TAG} "
                    f"tag: another tool made it, so it was not adopted. Choose another "
                    f"snapshot_identifier"
                )
            self.ensure_tags(self.api, snap, snap["DBSnapshotArn"], tags, desired, name)
        else:
            instance = self.api.instance(instance_id)
            if instance is None:
                raise RdsError(
                    f"DB instance {instance_id} not found in {self.region}: check "
                    f"db_instance_identifier and region (aws rds describe-db-instances "
                    f"--region {self.region})"
                )
            self.retention(instance)
            instance = self.api.instance(instance_id) or instance
            status = instance.get("DBInstanceStatus")
            if status != "available":
                raise RdsError(
                    f"DB instance {instance_id} is {status!r}, not 'available': RDS takes "
                    f"snapshots only of available instances. Wait until it is available "
                    f"(aws rds wait db-instance-available --db-instance-identifier "
                    f"{instance_id}) and run again; nothing was changed"
                )
            self.before["snapshot"] = None
            self.after["snapshot"] = {
                "snapshot_identifier": name,
                "db_instance_identifier": instance_id,
                "tags": desired,
            }
            snap = self.act(
                f"create snapshot {name} of instance {instance_id}",
                lambda: self.api.call(
                    "create_db_snapshot",
                    f"creating snapshot {name}",
                    DBSnapshotIdentifier=name,
                    DBInstanceIdentifier=instance_id,
                    Tags=tag_list(desired),
                )["DBSnapshot"],
            )
            if snap is None:  # check mode
                return self.result(snapshot=None)
        if snap.get("Status") != "available" and self.waiting():
            snap = self.wait_snapshot(self.api, name, f"snapshot {name}")
        elif not self.check_mode:
            snap = self.api.snapshot(name) or snap
        if snap is not None and self.p.get("backup_retention_days") is not None:
            instance = self.api.instance(instance_id)
            if instance is not None:
                self.retention(instance)
        return self.result(snapshot=self.describe(snap))

    def describe(self, snap, api=None, region=None):
        api = api or self.api
        return summary(snap, api.tags(snap), self.now(), region or self.region)

    # ------------------------------------------------------------------ copied
    def state_copied(self):
        source_id = self.p["source_snapshot_identifier"]
        source_region = self.p.get("source_region") or arn_region(source_id) or self.region
        if arn_region(source_id) and arn_region(source_id) != source_region:
            raise RdsError(
                f"source_snapshot_identifier {source_id} is in {arn_region(source_id)} but "
                f"source_region is {source_region}: make them agree"
            )
        name = self.p["snapshot_identifier"]
        source_api = self.api_for(source_region)
        source = source_api.snapshot(snapshot_name(source_id))
        if source is None:
            raise RdsError(
                f"source snapshot {source_id} not found in {source_region}: check "
                f"source_snapshot_identifier and source_region (state=info with "
                f"region={source_region} lists them)"
            )
        source_arn = source["DBSnapshotArn"]
        if source_region == self.region and snapshot_name(source_id) == name:
            raise RdsError(f"a copy in the same region needs another name than {name}")
        source_tags = source_api.tags(source)
        inherited = {}
        if self.p["copy_tags"]:
            inherited = {k: v for k, v in source_tags.items() if not k.startswith("opsauto:")}
        user = {**inherited, **(self.p.get("tags") or {})}
        desired = desired_tags(user, **{SOURCE_TAG: source_arn})
        target = self.api.snapshot(name)
        if target is not None:
            tags = self.api.tags(target)
            if tags.get(SOURCE_TAG) != source_arn:
                made_from = tags.get(SOURCE_TAG) or "no recorded source (not made by this module)"
                raise RdsError(
                    f"snapshot {name} already exists in {self.region} but is not a copy of "
                    f"{source_arn} (its {SOURCE_TAG}: {made_from}). Choose another "
                    f"snapshot_identifier"
                )
            self.ensure_tags(self.api, target, target["DBSnapshotArn"], tags, desired, name)
        else:
            status = source.get("Status")
            if status != "available":
                raise RdsError(
                    f"source snapshot {source_arn} is {status!r}: only an available snapshot "
                    f"can be copied. Wait for it (state=present waits) and run again"
                )
            kms_key_id = self.p.get("kms_key_id")
            check_copy_key(source, source_region, self.region, kms_key_id)
            request = {
                "SourceDBSnapshotIdentifier": source_arn,
                "TargetDBSnapshotIdentifier": name,
                "CopyTags": self.p["copy_tags"],
                "Tags": tag_list(desired),
            }
            if kms_key_id:
                request["KmsKeyId"] = kms_key_id
            if source_region != self.region:
                request["SourceRegion"] = source_region  # botocore presigns the source URL
            self.before["snapshot"] = None
            self.after["snapshot"] = {
                "snapshot_identifier": name,
                "region": self.region,
                "source": source_arn,
                "kms_key_id": kms_key_id or source.get("KmsKeyId"),
                "tags": desired,
            }
            target = self.act(
                f"copy snapshot {source_arn} to {name} in {self.region}",
                lambda: self.api.call(
                    "copy_db_snapshot", f"copying {source_arn} to {self.region}", **request
                )["DBSnapshot"],
            )
            if target is None:  # check mode
                return self.result(
                    snapshot=None, source=self.describe(source, source_api, source_region)
                )
            # The copy's tags are written again when RDS kept only some of them (CopyTags
            # and Tags together behave differently across engines and endpoints).
            copied_tags = self.api.tags(self.api.snapshot(name) or target)
            self.ensure_tags(self.api, target, target["DBSnapshotArn"], copied_tags, desired, name)
        if target.get("Status") != "available" and self.waiting():
            target = self.wait_snapshot(self.api, name, f"copy {name} in {self.region}")
        elif not self.check_mode:
            target = self.api.snapshot(name) or target
        return self.result(
            snapshot=self.describe(target),
            source=self.describe(source, source_api, source_region),
        )

    # ------------------------------------------------------------------ absent
    def state_absent(self):
        name = self.p["snapshot_identifier"]
        snap = self.api.snapshot(name)
        if snap is None:
            return self.result(snapshot=None)
        if snap.get("Status") != "deleting":
            tags = self.api.tags(snap)
            siblings = self.api.snapshots(snap.get("DBInstanceIdentifier"), "manual")
            check_delete(
                snap, tags, siblings, self.p["allow_foreign"], self.p["allow_newest"]
            )  # fmt: skip
            self.before["snapshot"] = summary(snap, tags, self.now(), self.region)
            self.after["snapshot"] = None
            self.act(
                f"delete snapshot {name}",
                lambda: self.api.call(
                    "delete_db_snapshot", f"deleting snapshot {name}", DBSnapshotIdentifier=name
                ),
            )
        if self.waiting():
            self.poller.until(
                f"deletion of snapshot {name}",
                lambda: self.api.snapshot(name),
                lambda found: found is None,
                snapshot_state,
            )
        return self.result(snapshot=None)

    # ------------------------------------------------------------------ pruned
    def state_pruned(self):
        instance_id = self.p.get("db_instance_identifier")
        snaps = self.api.snapshots(instance_id, "manual")
        pairs = [(snap, self.api.tags(snap)) for snap in snaps]
        decisions = prune_plan(
            pairs, self.now(), self.p.get("keep_count"), self.p.get("max_age_days")
        )
        doomed = [d["snapshot_identifier"] for d in decisions if d["delete"]]
        managed = sorted(snap["DBSnapshotIdentifier"] for snap, tags in pairs if is_ours(tags))
        self.before["managed_snapshots"] = managed
        self.after["managed_snapshots"] = [name for name in managed if name not in doomed]
        for decision in decisions:
            if decision["delete"]:
                name = decision["snapshot_identifier"]
                self.act(
                    f"delete snapshot {name} ({decision['reason']})",
                    lambda name=name: self.api.call(
                        "delete_db_snapshot",
                        f"deleting snapshot {name}",
                        DBSnapshotIdentifier=name,
                    ),
                )
        if doomed and self.waiting():
            self.poller.until(
                f"deletion of {len(doomed)} pruned snapshot(s)",
                lambda: [s for s in self.api.snapshots(instance_id, "manual")
                         if s["DBSnapshotIdentifier"] in doomed],
                lambda left: not left,
                lambda left: (f"{len(left)} left", None),
            )  # fmt: skip
        return self.result(
            pruned=doomed,
            kept=[d["snapshot_identifier"] for d in decisions if not d["delete"]],
            decisions=decisions,
        )

    # ------------------------------------------------------------------ info
    def state_info(self):
        name = self.p.get("snapshot_identifier")
        if name:
            found = self.api.snapshot(name)
            snaps = [found] if found else []
        else:
            kind = self.p["snapshot_type"]
            snaps = self.api.snapshots(
                self.p.get("db_instance_identifier"), None if kind == "all" else kind
            )
        listed = [self.describe(snap) for snap in snaps]
        listed.sort(key=lambda item: item["created"] or "", reverse=True)
        return self.result(snapshots=listed)

    # ------------------------------------------------------------------ restored
    def state_restored(self):
        target_id = self.p["target_db_instance_identifier"]
        snapshot_id = self.p.get("snapshot_identifier")
        source_id = self.p.get("db_instance_identifier")
        restore_time = self.p.get("restore_time")
        if snapshot_id:
            origin = f"snapshot:{snapshot_id}"
        elif restore_time:
            origin = f"instance:{source_id}@{iso(parse_time(restore_time))}"
        else:
            origin = f"instance:{source_id}@latest"
        existing = self.api.instance(target_id)
        if existing is not None:
            tags = self.api.tags(existing)
            if tags.get(RESTORED_FROM_TAG) != origin:
                raise RdsError(
                    f"restore target name taken: DB instance {target_id} already exists in "
                    f"{self.region} and was not restored from {origin} by this module (its "
                    f"{RESTORED_FROM_TAG}: {tags.get(RESTORED_FROM_TAG) or 'none'}). Choose "
                    f"another target_db_instance_identifier; the existing instance was not "
                    f"touched"
                )
            instance = existing
        else:
            instance = self.start_restore(target_id, origin, snapshot_id, source_id, restore_time)
            if instance is None:  # check mode
                if self.p.get("backup_retention_days") is not None:
                    self.act(
                        f"set the backup retention of {target_id} to "
                        f"{self.p['backup_retention_days']} days",
                        lambda: None,
                    )
                return self.result(instance=None)
        if self.waiting() and instance.get("DBInstanceStatus") != "available":
            instance = self.wait_instance(
                target_id,
                f"restore of instance {target_id}",
                lambda inst: inst.get("DBInstanceStatus") == "available",
            )
        elif existing is None and not self.check_mode:
            instance = self.api.instance(target_id) or instance  # the restore call's answer is thin
        if self.p.get("backup_retention_days") is not None:
            instance = self.retention(instance)
        return self.result(instance=instance_summary(instance))

    def start_restore(self, target_id, origin, snapshot_id, source_id, restore_time):
        p = self.p
        request = {}
        if p.get("db_instance_class"):
            request["DBInstanceClass"] = p["db_instance_class"]
        if p.get("db_subnet_group_name"):
            request["DBSubnetGroupName"] = p["db_subnet_group_name"]
        if p.get("vpc_security_group_ids"):
            request["VpcSecurityGroupIds"] = p["vpc_security_group_ids"]
        if p.get("db_parameter_group_name"):
            request["DBParameterGroupName"] = p["db_parameter_group_name"]
        if p.get("allocated_storage") is not None:
            request["AllocatedStorage"] = p["allocated_storage"]
        request["Tags"] = tag_list(desired_tags(p.get("tags"), **{RESTORED_FROM_TAG: origin}))
        if snapshot_id:
            snap = self.api.snapshot(snapshot_id)
            if snap is None:
                raise RdsError(
                    f"snapshot {snapshot_id} not found in {self.region}: check "
                    f"snapshot_identifier and region (state=info lists the snapshots)"
                )
            if snap.get("Status") != "available":
                raise RdsError(
                    f"snapshot {snapshot_id} is {snap.get('Status')!r}: only an available "
                    f"snapshot can be restored. Wait for it and run again"
                )
            check_storage(p.get("allocated_storage"), snap.get("AllocatedStorage"), snapshot_id)
            request.update(DBInstanceIdentifier=target_id, DBSnapshotIdentifier=snapshot_id)
            operation, what = "restore_db_instance_from_db_snapshot", f"snapshot {snapshot_id}"
        else:
            source = self.api.instance(source_id)
            if source is None:
                raise RdsError(
                    f"source DB instance {source_id} not found in {self.region}: check "
                    f"db_instance_identifier and region"
                )
            earliest, latest, where = self.api.restore_window(source)
            if restore_time:
                check_restore_time(parse_time(restore_time), earliest, latest, source_id, where)
                request["RestoreTime"] = parse_time(restore_time)
            else:
                if latest is None:
                    check_restore_time(self.now(), earliest, latest, source_id, where)
                request["UseLatestRestorableTime"] = True
            check_storage(p.get("allocated_storage"), source.get("AllocatedStorage"), source_id)
            request.update(
                SourceDBInstanceIdentifier=source_id, TargetDBInstanceIdentifier=target_id
            )
            when = iso(parse_time(restore_time)) if restore_time else "its latest restorable time"
            operation, what = "restore_db_instance_to_point_in_time", f"{source_id} at {when}"
        self.before["instance"] = None
        self.after["instance"] = {
            "db_instance_identifier": target_id,
            "restored_from": origin,
            "db_instance_class": p.get("db_instance_class") or "as the source",
        }
        return self.act(
            f"restore instance {target_id} from {what}",
            lambda: self.api.call(operation, f"restoring {target_id} from {what}", **request)[
                "DBInstance"
            ],
        )

    # ------------------------------------------------------------------ retention
    def state_configured(self):
        instance_id = self.p["db_instance_identifier"]
        instance = self.api.instance(instance_id)
        if instance is None:
            raise RdsError(
                f"DB instance {instance_id} not found in {self.region}: check "
                f"db_instance_identifier and region"
            )
        instance = self.retention(instance)
        return self.result(instance=instance_summary(instance))

    def retention(self, instance):
        """Set the automated backup retention and wait until RDS no longer holds it pending."""
        days = self.p.get("backup_retention_days")
        if days is None:
            return instance
        instance_id = instance["DBInstanceIdentifier"]
        current = instance.get("BackupRetentionPeriod")
        pending = (instance.get("PendingModifiedValues") or {}).get("BackupRetentionPeriod")
        if current == days and pending is None:
            return instance
        if pending != days:
            status = instance.get("DBInstanceStatus")
            if status != "available":
                raise RdsError(
                    f"DB instance {instance_id} is {status!r}, not 'available': its backup "
                    f"retention cannot be changed now. Wait until it is available and run again"
                )
            self.before["backup_retention_days"] = current
            self.after["backup_retention_days"] = days
            done = self.act(
                f"set the backup retention of {instance_id} from {current} to {days} days",
                lambda: self.api.call(
                    "modify_db_instance",
                    f"setting the backup retention of {instance_id}",
                    DBInstanceIdentifier=instance_id,
                    BackupRetentionPeriod=days,
                    ApplyImmediately=True,
                ),
            )
            if done is None:  # check mode
                return instance
        if self.check_mode:
            return instance
        # Confirmed only when the value is applied, not merely when the status reads available.
        return self.wait_instance(
            instance_id,
            f"backup retention {days} days on {instance_id}",
            lambda inst: (
                inst.get("DBInstanceStatus") == "available"
                and "BackupRetentionPeriod" not in (inst.get("PendingModifiedValues") or {})
                and inst.get("BackupRetentionPeriod") == days
            ),
        )
