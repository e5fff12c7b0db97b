"""Copy a backup set to and from S3, verified end to end.

Upload: every file of the set (SET.json last, so a set in the bucket is complete only when
its SET.json is there) goes up as a single PUT, or as a multipart upload of fixed-size
parts for large files, with Content-MD5 on every request. Each object carries its sha256
in metadata. After the upload, HEAD must show the size and the ETag S3 computes from the
bytes it stored (MD5 for a single PUT; MD5 of the part MD5s plus "-N" for multipart)
matching what was computed locally while reading: a copy that does not match is an error.

Download: each object is written to a partial file beside its final name while hashed,
compared with the object's sha256 metadata, then renamed into place.

Files already present on the other side with the same size and sha256 are skipped, so a
repeated run transfers nothing.
"""

from __future__ import annotations

import base64
import hashlib
import os

from ansible.module_utils.backup_sets import SET_FILE, read_set
from ansible.module_utils.fileops import (
    CHUNK_SIZE,
    discard,
    ensure_directory,
    new_partial_path,
    publish,
    sha256_file,
)
from ansible.module_utils.ops_errors import OpsError

META_SHA256 = "sha256"


class TransferError(OpsError):
    """A failed transfer, with a message that names the cause and the fix."""


def set_files(set_dir: str) -> list[str]:
    """Relative paths of the files of a set, SET.json last; lock and partial files left out."""
    names = []
    for root, _dirs, files in os.walk(set_dir):
        for name in files:
            if name.startswith("."):
                continue
            names.append(os.path.relpath(os.path.join(root, name), set_dir))
    names.sort(key=lambda n: (n == SET_FILE, n))
    return names


def file_digests(path: str, part_size: int) -> dict:
    """sha256, size, and the ETag S3 will report for this file uploaded in part_size parts."""
    sha = hashlib.sha256()
    part_md5s = []
    size = 0
    with open(path, "rb") as handle:
        while True:
            part = hashlib.md5(usedforsecurity=False)
            read = 0
            while read < part_size:
                chunk = handle.read(min(CHUNK_SIZE, part_size - read))
                if not chunk:
                    break
                part.update(chunk)
                sha.update(chunk)
                read += len(chunk)
            if read == 0 and part_md5s:
                break
            part_md5s.append(part.digest())
            size += read
            if read < part_size:
                break
    if len(part_md5s) == 1:
        etag = part_md5s[0].hex()
    else:
        combined = hashlib.md5(b"".join(part_md5s), usedforsecurity=False).hexdigest()
        etag = f"{combined}-{len(part_md5s)}"
    return {"sha256": sha.hexdigest(), "size": size, "etag": etag, "parts": len(part_md5s)}


def _client_error(exc, action: str, bucket: str) -> TransferError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
    hints = {
        "NoSuchBucket": f"create bucket {bucket} (the backup role does) or fix the bucket name",
        "AccessDenied": "check the credentials' IAM policy for s3:PutObject/GetObject/ListBucket",
        "InvalidAccessKeyId": "check the access key (aws_access_key / the instance profile)",
        "SignatureDoesNotMatch": "check the secret key",
    }
    hint = hints.get(code, "check the endpoint, credentials and network, then re-run")
    return TransferError(f"S3 {action} failed ({code}: {exc}). Fix: {hint}.")


def remote_state(client, bucket: str, key: str) -> dict | None:
    """HEAD of an object: size, ETag and sha256 metadata; None when it does not exist."""
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise _client_error(exc, f"HEAD s3://{bucket}/{key}", bucket) from None
    return {
        "size": head["ContentLength"],
        "etag": head["ETag"].strip('"'),
        "sha256": head.get("Metadata", {}).get(META_SHA256, ""),
    }


def _b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _put(client, bucket, key, path, digests, part_size, extra):
    metadata = {META_SHA256: digests["sha256"]}
    if digests["parts"] == 1:
        with open(path, "rb") as handle:
            body = handle.read()
        client.put_object(
            Bucket=bucket, Key=key, Body=body, ContentMD5=_b64md5(body), Metadata=metadata, **extra
        )
        return
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, Metadata=metadata, **extra)
    parts = []
    try:
        with open(path, "rb") as handle:
            number = 1
            while chunk := handle.read(part_size):
                answer = client.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload["UploadId"],
                    PartNumber=number,
                    Body=chunk,
                    ContentMD5=_b64md5(chunk),
                )
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
                number += 1
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
        )
    except BaseException:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
        raise


def upload_set(client, set_dir, bucket, prefix, part_size, sse, dry_run=False) -> dict:
    """Upload a set; returns {"uploaded": [...], "skipped": [...], "bytes": n}."""
    from botocore.exceptions import BotoCoreError, ClientError

    result = {"uploaded": [], "skipped": [], "bytes": 0}
    extra = {"ServerSideEncryption": sse} if sse else {}
    if not dry_run or os.path.isdir(set_dir):  # check mode of a backup not yet taken
        read_set(set_dir)  # only a sealed set, with a valid SET.json, goes off-site
    for name in set_files(set_dir):
        path = os.path.join(set_dir, name)
        key = f"{prefix}/{name}" if prefix else name
        digests = file_digests(path, part_size)
        try:
            remote = remote_state(client, bucket, key)
            if (
                remote
                and remote["size"] == digests["size"]
                and remote["sha256"] == digests["sha256"]
            ):
                result["skipped"].append(key)
                continue
            if dry_run:
                result["uploaded"].append(key)
                continue
            _put(client, bucket, key, path, digests, part_size, extra)
            after = remote_state(client, bucket, key)
        except (ClientError, BotoCoreError) as exc:
            raise _client_error(exc, f"upload of {path} to s3://{bucket}/{key}", bucket) from None
        if not after or after["size"] != digests["size"] or after["etag"] != digests["etag"]:
            raise TransferError(
                f"s3://{bucket}/{key} does not match {path} after upload (local size "
                f"{digests['size']}, ETag {digests['etag']}; remote {after}). The local copy is "
                "kept. Re-run the backup to upload again; if it persists, check the endpoint."
            )
        result["uploaded"].append(key)
        result["bytes"] += digests["size"]
    return result


def download_set(client, bucket, prefix, dest_dir, dry_run=False) -> dict:
    """Download every object under prefix/ into dest_dir, verified against sha256 metadata."""
    from botocore.exceptions import BotoCoreError, ClientError

    result = {"downloaded": [], "skipped": [], "bytes": 0}
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    except (ClientError, BotoCoreError) as exc:
        raise _client_error(exc, f"listing s3://{bucket}/{prefix}/", bucket) from None
    names = [k[len(prefix) + 1 :] for k in keys]
    if SET_FILE not in names:
        raise TransferError(
            f"s3://{bucket}/{prefix}/ holds no complete backup set (no {SET_FILE}; found "
            f"{len(names)} objects). Choose another backup id."
        )
    names.sort(key=lambda n: (n == SET_FILE, n))
    if not dry_run:
        ensure_directory(dest_dir)
    for name in names:
        key = f"{prefix}/{name}"
        final = os.path.join(dest_dir, name)
        try:
            remote = remote_state(client, bucket, key)
            if os.path.isfile(final):
                digest, size = sha256_file(final)
                if remote and size == remote["size"] and digest == remote["sha256"]:
                    result["skipped"].append(key)
                    continue
            if dry_run:
                result["downloaded"].append(key)
                continue
            ensure_directory(os.path.dirname(final))
            partial = new_partial_path(final)
            try:
                sha = hashlib.sha256()
                size = 0
                body = client.get_object(Bucket=bucket, Key=key)["Body"]
                with open(partial, "wb") as handle:
                    while chunk := body.read(CHUNK_SIZE):
                        sha.update(chunk)
                        size += len(chunk)
                        handle.write(chunk)
                if remote and remote["sha256"] and sha.hexdigest() != remote["sha256"]:
                    raise TransferError(
                        f"s3://{bucket}/{key} is corrupt: sha256 {sha.hexdigest()} differs from "
                        f"its recorded {remote['sha256']}. Restore from another backup id or "
                        "an earlier object version."
                    )
                publish(partial, final)
            except BaseException:
                discard(partial)
                raise
        except (ClientError, BotoCoreError) as exc:
            raise _client_error(exc, f"download of s3://{bucket}/{key}", bucket) from None
        result["downloaded"].append(key)
        result["bytes"] += size
    if not dry_run:
        read_set(dest_dir)  # the downloaded SET.json describes a set (raises otherwise)
    return result
