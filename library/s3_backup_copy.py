#!/usr/bin/python
"""Ansible module: copy a backup set to or from S3, verified by checksum."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: s3_backup_copy
short_description: Copy a backup set to or from S3, verified by checksum
description:
  - O(direction=upload) copies every file of a backup set directory to
    C(s3://bucket/prefix/), SET.json last, with Content-MD5 on every request and the file's
    sha256 in the object's metadata; after each upload the object's size and ETag must
    match what was computed locally, or the task fails (the local set is never changed).
  - With O(sse=aws:kms) the ETag is not an MD5 of the content, so every request also carries
    S3's SHA-256 checksum and the object's C(ChecksumSHA256) (HEAD in checksum mode) must
    match the one computed locally instead.
  - O(object_lock_days) retains every uploaded object for that many days (O(object_lock_mode));
    the bucket must have Object Lock enabled, checked before anything is uploaded.
  - O(direction=download) first refuses any key whose name in the set is empty or absolute, or
    has an empty, C(.) or C(..) segment, a backslash or a NUL byte, or would be written
    outside O(set_dir) through a symbolic link; nothing is written then. It reads SET.json
    from the bucket and checks every file against the sha256 recorded there (not the object
    metadata, which anyone who can write to the bucket controls), and each dump's manifest
    against SET.json's description of the dump; objects SET.json does not describe are not
    downloaded (RV(ignored), with a warning). Files go through partial files, are checked,
    then renamed into place; SET.json, the bytes that were checked, is written last.
  - Files already present on the other side with the expected content are skipped.
  - SET.json itself is trusted as found in the bucket; see docs/offsite.md for protecting the
    bucket from a host that is compromised.
  - Single PUT up to O(part_size_mb); above that a multipart upload of fixed-size parts.
options:
  direction:
    description: V(upload) sends O(set_dir) to S3; V(download) fetches it from S3.
    type: str
    choices: [upload, download]
    default: upload
  set_dir:
    description: Local directory of the backup set (source of an upload, destination of a download).
    type: path
    required: true
  bucket:
    description: S3 bucket.
    type: str
    required: true
  prefix:
    description:
      - Key prefix of this set in the bucket, for example C(fastapi-monolith/20261128T030000Z).
    type: str
    required: true
  endpoint_url:
    description: S3 endpoint (for S3-compatible stores or a local test endpoint); default AWS.
    type: str
  region:
    description: AWS region.
    type: str
    default: us-east-1
  access_key:
    description: Access key id; default the usual boto3 chain (environment, instance profile).
    type: str
  secret_key:
    description: Secret access key.
    type: str
  sse:
    description: Server-side encryption of uploaded objects.
    type: str
    choices: [AES256, "aws:kms", none]
    default: AES256
  kms_key_id:
    description:
      - KMS key (id, ARN or alias) for O(sse=aws:kms); default the bucket's or S3's own key.
    type: str
  object_lock_days:
    description:
      - Retain every uploaded object for this many days (S3 Object Lock); 0 sets no retention.
      - The bucket must have Object Lock enabled, or the upload is refused before it starts.
      - Objects already in the bucket (skipped) keep the retention they have.
    type: int
    default: 0
  object_lock_mode:
    description:
      - V(GOVERNANCE) can be lifted by a principal allowed s3:BypassGovernanceRetention;
        V(COMPLIANCE) by nobody, the root account included, until the date passes.
    type: str
    choices: [GOVERNANCE, COMPLIANCE]
    default: GOVERNANCE
  files:
    description:
      - With O(direction=upload), upload only these files (names relative to O(set_dir)) of a
        directory that is not a backup set, such as an incident's evidence bundle - no SET.json
        is needed, each file is verified as a set's files are.
    type: list
    elements: str
  part_size_mb:
    description: Files larger than this go up as multipart uploads of parts of this size.
    type: int
    default: 16
requirements:
  - boto3
attributes:
  check_mode:
    support: full
    description: Reports the files it would transfer; transfers nothing.
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - opsauto
"""

EXAMPLES = r"""
- name: Copy the backup set off-site
  s3_backup_copy:
    set_dir: /var/backups/fastapi-monolith/20261128T030000Z
    bucket: acme-db-backups
    prefix: fastapi-monolith/20261128T030000Z

- name: Fetch a set from S3 before restoring it
  s3_backup_copy:
    direction: download
    set_dir: /var/backups/fastapi-monolith/20261128T030000Z
    bucket: acme-db-backups
    prefix: fastapi-monolith/20261128T030000Z

- name: Copy the set off-site under SSE-KMS, retained for 35 days
  s3_backup_copy:
    set_dir: /var/backups/fastapi-monolith/20261128T030000Z
    bucket: acme-db-backups-locked
    prefix: fastapi-monolith/20261128T030000Z
    sse: aws:kms
    kms_key_id: alias/db-backups
    object_lock_days: 35
"""

RETURN = r"""
transferred:
  description: Keys uploaded or downloaded (or that would be, in check mode).
  returned: always
  type: list
  elements: str
skipped:
  description: Keys already identical on the other side.
  returned: always
  type: list
  elements: str
ignored:
  description: Keys under the prefix that SET.json does not describe, not downloaded.
  returned: always
  type: list
  elements: str
bytes:
  description: Bytes transferred.
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import boto3

    HAS_BOTO3 = True
except ImportError:
    HAS_BOTO3 = False

from ansible.module_utils.ops_errors import OpsError
from ansible.module_utils.s3_transfer import TransferError, download_set, upload_set


def client_for(params: dict):
    kwargs = {"region_name": params["region"]}
    if params["endpoint_url"]:
        kwargs["endpoint_url"] = params["endpoint_url"]
    if params["access_key"]:
        kwargs["aws_access_key_id"] = params["access_key"]
        kwargs["aws_secret_access_key"] = params["secret_key"]
    return boto3.client("s3", **kwargs)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "direction": {"type": "str", "choices": ["upload", "download"], "default": "upload"},
            "set_dir": {"type": "path", "required": True},
            "bucket": {"type": "str", "required": True},
            "prefix": {"type": "str", "required": True},
            "endpoint_url": {"type": "str"},
            "region": {"type": "str", "default": "us-east-1"},
            "access_key": {"type": "str", "no_log": True},
            "secret_key": {"type": "str", "no_log": True},
            "sse": {"type": "str", "choices": ["AES256", "aws:kms", "none"], "default": "AES256"},
            "part_size_mb": {"type": "int", "default": 16},
            "files": {"type": "list", "elements": "str"},
            "kms_key_id": {"type": "str"},
            "object_lock_days": {"type": "int", "default": 0},
            "object_lock_mode": {
                "type": "str",
                "choices": ["GOVERNANCE", "COMPLIANCE"],
                "default": "GOVERNANCE",
            },
        },
        required_together=[["access_key", "secret_key"]],
        supports_check_mode=True,
    )
    if not HAS_BOTO3:
        module.fail_json(msg=missing_required_lib("boto3"))
    params = module.params
    if params["part_size_mb"] < 5:
        module.fail_json(msg="part_size_mb must be 5 or more (S3's smallest multipart part).")
    if params["object_lock_days"] < 0:
        module.fail_json(msg="object_lock_days must be 0 (no retention) or more.")
    if params["kms_key_id"] and params["sse"] != "aws:kms":
        module.fail_json(msg="kms_key_id applies to sse=aws:kms only: set sse or drop the key.")
    prefix = params["prefix"].strip("/")
    try:
        client = client_for(params)
        if params["direction"] == "upload":
            result = upload_set(
                client,
                params["set_dir"],
                params["bucket"],
                prefix,
                params["part_size_mb"] * 1024 * 1024,
                None if params["sse"] == "none" else params["sse"],
                dry_run=module.check_mode,
                kms_key_id=params["kms_key_id"],
                lock_days=params["object_lock_days"],
                lock_mode=params["object_lock_mode"],
                files=params["files"],
            )
            moved = result["uploaded"]
        else:
            result = download_set(
                client, params["bucket"], prefix, params["set_dir"], dry_run=module.check_mode
            )
            moved = result["downloaded"]
    except (TransferError, OpsError) as exc:
        module.fail_json(msg=str(exc))
    ignored = result.get("ignored", [])
    if ignored:
        module.warn(
            f"Not downloaded, as SET.json does not describe them: {', '.join(ignored)}. "
            "Find out who wrote them to the bucket."
        )
    module.exit_json(
        changed=bool(moved),
        transferred=moved,
        skipped=result["skipped"],
        ignored=ignored,
        bytes=result["bytes"],
    )


if __name__ == "__main__":
    main()
