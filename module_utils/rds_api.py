"""Amazon RDS through boto3: clients, reads, and AWS errors turned into clear messages.

Used by library/rds_snapshot.py through module_utils/rds_actions.py, and by
library/aws_runbook.py. Every call the
project makes to RDS goes through :class:`RdsApi`, so one place decides how a botocore
error reads for the operator: what AWS refused, why, and what fixes it.

The client is made by the caller (``make_client``) and handed in, so unit tests give a
botocore client wrapped in ``botocore.stub.Stubber``.
"""

from __future__ import annotations

from ansible.module_utils.ops_errors import OpsError

try:
    import boto3

    HAS_BOTO3 = True
except ImportError:  # reported by aws_module through missing_required_lib
    boto3 = None
    HAS_BOTO3 = False

try:
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ProfileNotFound,
    )
except ImportError:  # reported by the module through missing_required_lib
    BotoCoreError = ClientError = EndpointConnectionError = Exception
    NoCredentialsError = NoRegionError = PartialCredentialsError = ProfileNotFound = Exception

CREDENTIALS_FIX = (
    "give access_key and secret_key, or profile, or set AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for the task, or run on a host with an IAM role"
)
DENIED_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "AuthorizationError",
    "NotAuthorized",
}
BAD_CREDENTIAL_CODES = {
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "AuthFailure",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidAccessKeyId",
}


class RdsError(OpsError):
    """An RDS request failed or was refused; the message names the cause and the fix."""


class WaitTimeout(RdsError):
    """A wait ran out of time; ``last`` is the last state seen."""

    def __init__(self, message, last=None):
        super().__init__(message)
        self.last = last


# The connection options of every AWS module (documented in doc_fragments/aws_connection.py).
AWS_CONNECTION_ARGUMENT_SPEC = {
    "region": {"type": "str"},
    "profile": {"type": "str"},
    "endpoint_url": {"type": "str"},
    "access_key": {"type": "str", "no_log": True},
    "secret_key": {"type": "str", "no_log": True},
    "session_token": {"type": "str", "no_log": True},
}


def aws_module(argument_spec, required_if):
    """The AnsibleModule of an AWS module and its params, with the region resolved.

    ``argument_spec`` includes :data:`AWS_CONNECTION_ARGUMENT_SPEC`. Fails the module when
    boto3 is missing or no region is given (option, AWS_REGION or AWS_DEFAULT_REGION).
    Check mode is supported.
    """
    import os

    from ansible.module_utils.basic import AnsibleModule, missing_required_lib

    module = AnsibleModule(
        argument_spec=argument_spec,
        required_if=required_if,
        required_together=[("access_key", "secret_key")],
        mutually_exclusive=[("profile", "access_key")],
        supports_check_mode=True,
    )
    if not HAS_BOTO3:
        module.fail_json(msg=missing_required_lib("boto3"))
    params = dict(module.params)
    params["region"] = (
        params["region"] or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    )
    if not params["region"]:
        module.fail_json(msg="no AWS region: set region (or AWS_REGION for the task)")
    problem = region_problem(boto3, params) or credentials_problem(boto3, params)
    if problem:
        module.fail_json(msg=problem)
    return module, params


def region_problem(boto3, params):
    """A message when ``region`` (or ``source_region``) is no region botocore knows.

    With a region typo, real AWS fails on a DNS lookup of a host name that does not exist
    and an endpoint_url (a test server) accepts anything: both hide the typo.
    """
    import difflib

    session = boto3.session.Session()
    known = set()
    for partition in session.get_available_partitions():
        known.update(session.get_available_regions("ec2", partition_name=partition))
    for option in ("region", "source_region"):
        value = params.get(option)
        if value and known and value not in known:
            near = difflib.get_close_matches(value, sorted(known), n=3)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            return (
                f"{option} {value!r} is not an AWS region name{hint}. Nothing was called. "
                f"Give a region such as eu-west-1 (aws ec2 describe-regions lists them); a "
                f"region newer than this botocore needs `pip install -U botocore`"
            )
    return None


def credentials_problem(boto3, params):
    """A message when boto3 finds no credentials for these options (checked before any
    call, so a runbook stops at its first task instead of failing every check with it)."""
    if params.get("access_key") or params.get("profile"):
        return None  # given explicitly; a missing profile is explained by make_client
    if boto3.session.Session().get_credentials() is None:
        return f"no AWS credentials found. Nothing was called. Fix: {CREDENTIALS_FIX}"
    return None


def module_client(params, region, service="rds", attempts=5):
    """:func:`make_client` with the boto3 this module found (see :func:`aws_module`)."""
    return make_client(boto3, params, region, service, attempts)


def make_client(boto3, params, region, service="rds", attempts=5):
    """A boto3 client of ``service`` in ``region`` from the module's connection options.

    ``attempts``: tries per call (botocore's standard retry mode); 1 for a read whose
    failure is only a warning.
    """
    from botocore.config import Config

    session_args = {}
    if params.get("profile"):
        session_args["profile_name"] = params["profile"]
    if params.get("access_key"):
        session_args["aws_access_key_id"] = params["access_key"]
        session_args["aws_secret_access_key"] = params["secret_key"]
        if params.get("session_token"):
            session_args["aws_session_token"] = params["session_token"]
    try:
        session = boto3.session.Session(**session_args)
    except ProfileNotFound as exc:
        raise RdsError(
            f"AWS profile {params['profile']!r} is not in the AWS config files "
            f"(~/.aws/config, ~/.aws/credentials): create it or give another profile"
        ) from exc
    client_args = {
        "region_name": region,
        # botocore's standard retry mode retries throttling and 5xx answers with backoff.
        "config": Config(retries={"mode": "standard", "max_attempts": attempts}),
    }
    if params.get("endpoint_url"):
        client_args["endpoint_url"] = params["endpoint_url"]
    return session.client(service, **client_args)


def explain(exc, action, region):
    """An :class:`RdsError` for a botocore exception raised while doing ``action``."""
    where = f"in region {region}"
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return RdsError(f"no AWS credentials found while {action}: {CREDENTIALS_FIX}")
    if isinstance(exc, NoRegionError):
        return RdsError(f"no AWS region while {action}: set region (or AWS_REGION)")
    if isinstance(exc, EndpointConnectionError):
        return RdsError(
            f"cannot reach the RDS endpoint while {action} ({exc}): check region "
            f"{region!r}, endpoint_url and the network path to AWS"
        )
    if not isinstance(exc, ClientError):
        return RdsError(f"AWS client error while {action} {where}: {exc}")
    error = exc.response.get("Error", {})
    code = error.get("Code", "Unknown")
    message = error.get("Message", "")
    operation = getattr(exc, "operation_name", "") or "the call"
    if code in DENIED_CODES:
        return RdsError(
            f"AccessDenied while {action} {where}: the AWS identity may not call "
            f"rds:{operation} ({message}). Grant rds:{operation} on this resource in its IAM "
            f"policy (see the module's notes for the minimal policy)"
        )
    if code in BAD_CREDENTIAL_CODES:
        return RdsError(
            f"AWS rejected the credentials while {action} ({code}: {message}): they are "
            f"wrong or expired; {CREDENTIALS_FIX}"
        )
    if code == "DBSnapshotNotFound":
        return RdsError(
            f"snapshot not found {where} while {action} ({message}): check the identifier "
            f"and region; state=info lists the snapshots of a region"
        )
    if code == "DBInstanceNotFound":
        return RdsError(
            f"DB instance not found {where} while {action} ({message}): check "
            f"db_instance_identifier and region"
        )
    if code == "SnapshotQuotaExceeded":
        return RdsError(
            f"SnapshotQuotaExceeded {where} while {action}: the account's quota of manual DB "
            f"snapshots is used up. Delete old manual snapshots (state=pruned) or ask for a "
            f"higher 'Manual DB instance snapshots' quota in Service Quotas"
        )
    if code == "InvalidDBInstanceState":
        return RdsError(
            f"the DB instance is not in a state that allows {action} ({message}): wait until "
            f"it is 'available' (aws rds describe-db-instances) and run again"
        )
    if code == "InvalidDBSnapshotState":
        return RdsError(
            f"the snapshot is not in a state that allows {action} ({message}): wait until it "
            f"is 'available' (state=info shows its status) and run again"
        )
    if code == "DBInstanceAlreadyExists":
        return RdsError(
            f"a DB instance with that identifier already exists {where} ({message}): choose "
            f"another target_db_instance_identifier"
        )
    if code in ("KMSKeyNotAccessibleFault", "KMSKeyNotAccessible", "InvalidKMSKey"):
        return RdsError(
            f"the KMS key cannot be used {where} while {action} ({message}): give a key "
            f"that exists in {region}, is enabled, and whose key policy allows this identity"
        )
    if code in ("StorageQuotaExceeded", "InstanceQuotaExceeded"):
        return RdsError(f"{code} {where} while {action}: raise the quota in Service Quotas")
    return RdsError(f"AWS refused {action} {where} ({code}: {message})")


class RdsApi:
    """The RDS calls the project makes, in one region, with errors explained."""

    def __init__(self, client, region):
        self.client = client
        self.region = region

    def call(self, operation, action, **kwargs):
        try:
            return getattr(self.client, operation)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise explain(exc, action, self.region) from exc

    def _not_found(self, exc, code):
        return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == code

    def snapshot(self, identifier):
        """The snapshot (DescribeDBSnapshots entry) or None when it does not exist."""
        try:
            found = self.client.describe_db_snapshots(DBSnapshotIdentifier=identifier)
        except (ClientError, BotoCoreError) as exc:
            if self._not_found(exc, "DBSnapshotNotFound"):
                return None
            raise explain(exc, f"reading snapshot {identifier}", self.region) from exc
        items = found.get("DBSnapshots") or []
        return items[0] if items else None

    def instance(self, identifier):
        """The DB instance (DescribeDBInstances entry) or None when it does not exist."""
        try:
            found = self.client.describe_db_instances(DBInstanceIdentifier=identifier)
        except (ClientError, BotoCoreError) as exc:
            if self._not_found(exc, "DBInstanceNotFound"):
                return None
            raise explain(exc, f"reading DB instance {identifier}", self.region) from exc
        items = found.get("DBInstances") or []
        return items[0] if items else None

    def snapshots(self, instance=None, snapshot_type=None):
        """Every snapshot of the region (or of one instance), all pages."""
        kwargs = {}
        if instance:
            kwargs["DBInstanceIdentifier"] = instance
        if snapshot_type:
            kwargs["SnapshotType"] = snapshot_type
        items = []
        marker = None
        while True:
            page_args = dict(kwargs, Marker=marker) if marker else kwargs
            page = self.call("describe_db_snapshots", "listing snapshots", **page_args)
            items.extend(page.get("DBSnapshots") or [])
            marker = page.get("Marker")
            if not marker:
                return items

    def tags(self, resource):
        """Tags of a snapshot or instance dict as a plain dict (TagList when it came with it)."""
        tag_list = resource.get("TagList")
        if tag_list is None:
            arn = resource.get("DBSnapshotArn") or resource.get("DBInstanceArn")
            tag_list = self.call(
                "list_tags_for_resource", f"reading the tags of {arn}", ResourceName=arn
            ).get("TagList", [])
        return {tag["Key"]: tag["Value"] for tag in tag_list}

    def restore_window(self, instance):
        """(earliest, latest) restorable times of an instance, and where earliest came from.

        The earliest time comes from the instance's automated backups (RestoreWindow); when
        AWS does not report one, it is the later of the instance's creation and
        ``LatestRestorableTime`` minus the retention period.
        """
        import datetime

        latest = instance.get("LatestRestorableTime")
        earliest = None
        source = "the automated backups' RestoreWindow"
        try:
            found = self.client.describe_db_instance_automated_backups(
                DBInstanceIdentifier=instance["DBInstanceIdentifier"]
            )
            for backup in found.get("DBInstanceAutomatedBackups") or []:
                window = backup.get("RestoreWindow") or {}
                if window.get("EarliestTime"):
                    earliest = window["EarliestTime"]
                    latest = window.get("LatestTime") or latest
                    break
        except (ClientError, BotoCoreError) as exc:
            if not self._not_found(exc, "DBInstanceAutomatedBackupNotFound"):
                raise explain(
                    exc, f"reading the restore window of {instance['DBInstanceIdentifier']}",
                    self.region,
                ) from exc  # fmt: skip
        if earliest is None and latest is not None:
            source = "the instance's creation time and backup retention period"
            retention = datetime.timedelta(days=instance.get("BackupRetentionPeriod") or 0)
            earliest = latest - retention
            created = instance.get("InstanceCreateTime")
            if created is not None and created > earliest:
                earliest = created
        return earliest, latest, source
