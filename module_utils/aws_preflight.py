"""Preflight of a recovery region: does everything the runbook will use exist there?

Each check reads one thing with boto3 and returns a :class:`Check`: ``ok`` True, False
(the run must not start) or None (could not be read, a warning: for example the snapshot
quota, which not every identity may read). :func:`run_checks` runs those that apply to
the given options and never changes anything, so a failing preflight stops the DR run
before any snapshot is copied.

The clients are passed in (``clients(service, attempts=5)``), so unit tests hand in stubbed ones.
"""

from __future__ import annotations

import re

from ansible.module_utils.rds_api import DENIED_CODES

try:
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:  # reported by the module through missing_required_lib
    BotoCoreError = ClientError = Exception

TEMPLATE_ID = re.compile(r"^lt-[0-9a-f]{8,17}$")
NOT_FOUND_CODES = {
    "NotFoundException",
    "DBSubnetGroupNotFoundFault",
    "InvalidGroup.NotFound",
    "InvalidGroupId.Malformed",
    "InvalidAMIID.NotFound",
    "InvalidAMIID.Malformed",
    "InvalidLaunchTemplateName.NotFoundException",
    "InvalidLaunchTemplateId.NotFound",
    "InvalidLaunchTemplateId.Malformed",
    "InvalidInstanceID.NotFound",
    "InvalidInstanceID.Malformed",
    "InvalidSubnetID.NotFound",
}


def check(name, ok, detail, fix=""):
    return {"check": name, "ok": ok, "detail": detail, "fix": fix}


def error_code(exc):
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code", "")
    return ""


def failed_read(name, exc, what, region, fix):
    """A check result for an AWS error: not found and denied are failures with their fix."""
    code = error_code(exc)
    if code in NOT_FOUND_CODES:
        return check(name, False, f"{what} not found in {region}", fix)
    if code in DENIED_CODES:
        return check(
            name,
            False,
            f"AccessDenied reading {what} in {region}",
            "grant the read permission of docs/aws.md's policy for this playbook",
        )
    return check(name, False, f"cannot read {what} in {region}: {exc}", fix)


def kms_key(kms, key_id, region):
    name = "kms_key"
    fix = (
        f"create a customer managed key in {region} (aws kms create-key --region {region}) and "
        f"give its id, ARN or alias, or enable the key"
    )
    try:
        meta = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    except (ClientError, BotoCoreError) as exc:
        return failed_read(name, exc, f"KMS key {key_id}", region, fix)
    state = meta.get("KeyState")
    if state != "Enabled" or meta.get("Enabled") is False:
        return check(name, False, f"KMS key {key_id} in {region} is {state}", fix)
    return check(name, True, f"KMS key {key_id} ({meta.get('Arn')}) is enabled")


def db_subnet_group(rds, group, region):
    name = "db_subnet_group"
    fix = f"create the DB subnet group {group} in {region} (subnets in two AZs of the DR VPC)"
    try:
        found = rds.describe_db_subnet_groups(DBSubnetGroupName=group)["DBSubnetGroups"]
    except (ClientError, BotoCoreError) as exc:
        return failed_read(name, exc, f"DB subnet group {group}", region, fix)
    zones = sorted(
        {s["SubnetAvailabilityZone"]["Name"] for g in found for s in g.get("Subnets") or []}
    )
    return check(name, True, f"DB subnet group {group} exists (AZs: {', '.join(zones) or '?'})")


def security_groups(ec2, group_ids, region, what):
    name = f"{what}_security_groups"
    fix = f"create the security groups in {region} or give ids that exist there"
    try:
        found = ec2.describe_security_groups(GroupIds=list(group_ids))["SecurityGroups"]
    except (ClientError, BotoCoreError) as exc:
        return failed_read(name, exc, f"security groups {', '.join(group_ids)}", region, fix)
    missing = sorted(set(group_ids) - {g["GroupId"] for g in found})
    if missing:
        return check(name, False, f"security groups {', '.join(missing)} not in {region}", fix)
    return check(name, True, f"security groups {', '.join(group_ids)} exist")


def image(ec2, image_id, region):
    """(check, architecture) of an AMI."""
    name = "ami"
    fix = f"copy the AMI to {region} (aws ec2 copy-image) and give the copy's id"
    try:
        found = ec2.describe_images(ImageIds=[image_id])["Images"]
    except (ClientError, BotoCoreError) as exc:
        return failed_read(name, exc, f"AMI {image_id}", region, fix), None
    if not found:
        return check(name, False, f"AMI {image_id} not found in {region}", fix), None
    state = found[0].get("State", "available")
    arch = found[0].get("Architecture")
    if state != "available":
        return check(name, False, f"AMI {image_id} is {state}", fix), arch
    return check(name, True, f"AMI {image_id} is available ({arch})"), arch


def launch_template(ec2, template, region):
    """(check, data of its default version) of a launch template given by name or id."""
    name = "launch_template"
    fix = f"create the launch template {template} in {region} or give one that exists there"
    by = "LaunchTemplateId" if TEMPLATE_ID.match(template) else "LaunchTemplateName"
    try:
        versions = ec2.describe_launch_template_versions(**{by: template}, Versions=["$Default"])[
            "LaunchTemplateVersions"
        ]
    except (ClientError, BotoCoreError) as exc:
        return failed_read(name, exc, f"launch template {template}", region, fix), {}
    if not versions:
        return check(name, False, f"launch template {template} has no default version", fix), {}
    data = versions[0].get("LaunchTemplateData") or {}
    return check(name, True, f"launch template {template} exists"), data


def existing_instance(ec2, instance_id, region):
    name = "app_instance"
    fix = f"give the id of an instance in {region} (aws ec2 describe-instances)"
    try:
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    except (ClientError, BotoCoreError) as exc:
        return failed_read(name, exc, f"instance {instance_id}", region, fix), {}
    found = [i for r in reservations for i in r.get("Instances") or []]
    if not found:
        return check(name, False, f"instance {instance_id} not found in {region}", fix), {}
    state = found[0]["State"]["Name"]
    if state in ("shutting-down", "terminated"):
        return check(name, False, f"instance {instance_id} is {state}", fix), found[0]
    return check(name, True, f"instance {instance_id} is {state}"), found[0]


def subnet_zone(ec2, subnet_id, region):
    """(check, availability zone) of a subnet."""
    try:
        found = ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"]
    except (ClientError, BotoCoreError) as exc:
        return failed_read("subnet", exc, f"subnet {subnet_id}", region, "give a DR subnet"), None
    zone = found[0]["AvailabilityZone"] if found else None
    return check("subnet", bool(found), f"subnet {subnet_id} in {zone}"), zone


def instance_type_offered(ec2, instance_type, zone, region):
    name = "instance_type_offered"
    where, location = ("availability-zone", zone) if zone else ("region", region)
    fix = (
        f"choose an instance type offered in {location} (aws ec2 "
        f"describe-instance-type-offerings --location-type {where} --region {region}) or "
        f"another availability zone"
    )
    try:
        offers = ec2.describe_instance_type_offerings(
            LocationType=where,
            Filters=[
                {"Name": "instance-type", "Values": [instance_type]},
                {"Name": "location", "Values": [location]},
            ],
        )["InstanceTypeOfferings"]
    except (ClientError, BotoCoreError) as exc:
        return failed_read(name, exc, f"the offerings of {instance_type}", region, fix)
    if not offers:
        return check(name, False, f"{instance_type} is not offered in {location}", fix)
    return check(name, True, f"{instance_type} is offered in {location}")


def snapshot_quota(rds, region):
    """Manual snapshot quota of the account in the region; None (warning) when unreadable."""
    name = "snapshot_quota"
    try:
        quotas = rds.describe_account_attributes()["AccountQuotas"]
    except Exception as exc:  # noqa: BLE001 - any answer but the quotas means "not readable"
        first = str(exc).splitlines()[0][:120] if str(exc) else ""
        return check(
            name,
            None,
            f"the RDS account quotas of {region} are not readable ({type(exc).__name__}: {first})",
        )
    for quota in quotas:
        if quota.get("AccountQuotaName") == "ManualSnapshots":
            used, limit = quota.get("Used", 0), quota.get("Max", 0)
            if used >= limit:
                return check(
                    name,
                    False,
                    f"manual DB snapshots in {region}: {used} of {limit} used",
                    "delete old manual snapshots there or raise the quota in Service Quotas",
                )
            return check(name, True, f"manual DB snapshots in {region}: {used} of {limit} used")
    return check(name, None, f"no ManualSnapshots quota reported in {region}")


def run_checks(clients, region, opts):
    """Every check that applies to ``opts``; returns the list of results."""
    rds, ec2 = clients("rds"), clients("ec2")
    results = []
    if opts.get("kms_key_id"):
        results.append(kms_key(clients("kms"), opts["kms_key_id"], region))
    if opts.get("db_subnet_group_name"):
        results.append(db_subnet_group(rds, opts["db_subnet_group_name"], region))
    if opts.get("vpc_security_group_ids"):
        results.append(security_groups(ec2, opts["vpc_security_group_ids"], region, "db"))
    if opts.get("app_security_group_ids"):
        results.append(security_groups(ec2, opts["app_security_group_ids"], region, "app"))
    instance_type = opts.get("instance_type")
    image_id = opts.get("image_id")
    zone = opts.get("availability_zone")
    if opts.get("instance_id"):
        found, instance = existing_instance(ec2, opts["instance_id"], region)
        results.append(found)
    else:
        if opts.get("launch_template"):
            found, data = launch_template(ec2, opts["launch_template"], region)
            results.append(found)
            image_id = image_id or data.get("ImageId")
            instance_type = instance_type or data.get("InstanceType")
        if image_id:
            results.append(image(ec2, image_id, region)[0])
        if opts.get("subnet_id"):
            found, subnet_az = subnet_zone(ec2, opts["subnet_id"], region)
            results.append(found)
            zone = zone or subnet_az
        if instance_type:
            results.append(instance_type_offered(ec2, instance_type, zone, region))
    if opts.get("check_snapshot_quota", True):
        results.append(snapshot_quota(clients("rds", attempts=1), region))
    return results


def verdict(results, region):
    """(message, failed) summarising the checks: failures first, each with its fix."""
    failures = [r for r in results if r["ok"] is False]
    if failures:
        lines = "; ".join(f"{r['check']}: {r['detail']} (fix: {r['fix']})" for r in failures)
        return (
            f"preflight in {region} failed ({len(failures)} of {len(results)} checks): {lines}. "
            f"Nothing was changed"
        ), True
    unknown = [r["check"] for r in results if r["ok"] is None]
    tail = f"; not readable: {', '.join(unknown)}" if unknown else ""
    return f"preflight in {region}: {len(results) - len(unknown)} checks passed{tail}", False
