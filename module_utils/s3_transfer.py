"""Copy a backup set to and from S3, verified end to end.

Upload: every file of the set (SET.json last, so a set in the bucket is complete only when
its SET.json is there) goes up as a single PUT, or as a multipart upload of fixed-size
parts for large files, with Content-MD5 on every request. Each object carries its sha256
in metadata (used only to skip files already there). After each upload HEAD must show the
size and a checksum matching what was computed locally while reading, or it is an error:

* without SSE-KMS, the ETag S3 computes from the bytes it stored (MD5 for a single PUT;
  MD5 of the part MD5s plus "-N" for multipart);
* with SSE-KMS the ETag is not an MD5 of the content, so every request also carries S3's
  SHA-256 checksum (of the body, or of each part) and HEAD in checksum mode must return
  the same SHA-256 (of the object; for multipart, of the parts' SHA-256 digests, "-N").

Optional Object Lock retention (governance or compliance, N days) is set on every object
uploaded; the bucket must have Object Lock enabled, which is checked before anything goes up.

Download: every key under prefix/ is checked before anything is written: a name (relative
to the set) that is empty or absolute, or has an empty, '.' or '..' segment, a backslash or
a NUL byte is refused, and so is a path that would leave the set's directory through a
symbolic link. SET.json is read first and is the only source of the expected checksums
(object metadata is written by whoever can write to the bucket): each dump and config file
must have the sha256 SET.json records, each dump's manifest must agree with SET.json's
description of that dump, and objects SET.json does not describe are not downloaded
(returned as ``ignored``). Each file goes through a partial file, is verified, then
renamed into place; SET.json is written last from the very bytes that were checked, so a
directory holding it is a complete copy that matched its description.

Limit: SET.json is trusted as found in the bucket. Someone able to rewrite every object of
a set, SET.json included, can make a consistent false set; Object Lock and a credential
that cannot overwrite or delete protect against that (docs/offsite.md).

Files already present on the other side with the expected content are skipped, so a
repeated run transfers nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import datetime, timedelta, timezone

from ansible.module_utils.backup_sets import SET_FILE, SET_MODE, check_set, read_set
from ansible.module_utils.fileops import (
    CHUNK_SIZE,
    ensure_directory,
    produce_file,
    sha256_file,
    write_bytes_atomic,
)
from ansible.module_utils.ops_errors import OpsError
from ansible.module_utils.pg_artifacts import manifest_name

META_SHA256 = "sha256"
KMS = "aws:kms"
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
# SET.json and the manifests are read whole; anything larger is not one of them.
MAX_DESCRIPTION_BYTES = 64 * 1024 * 1024


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


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def file_digests(path: str, part_size: int) -> dict:
    """sha256, size, and the ETag and SHA-256 checksum S3 will report for this file
    uploaded in part_size parts."""
    sha = hashlib.sha256()
    part_md5s = []
    part_shas = []
    size = 0
    with open(path, "rb") as handle:
        while True:
            part = hashlib.md5(usedforsecurity=False)
            part_sha = hashlib.sha256()
            read = 0
            while read < part_size:
                chunk = handle.read(min(CHUNK_SIZE, part_size - read))
                if not chunk:
                    break
                part.update(chunk)
                part_sha.update(chunk)
                sha.update(chunk)
                read += len(chunk)
            if read == 0 and part_md5s:
                break
            part_md5s.append(part.digest())
            part_shas.append(part_sha.digest())
            size += read
            if read < part_size:
                break
    if len(part_md5s) == 1:
        etag = part_md5s[0].hex()
        checksum = _b64(sha.digest())
    else:
        combined = hashlib.md5(b"".join(part_md5s), usedforsecurity=False).hexdigest()
        etag = f"{combined}-{len(part_md5s)}"
        checksum = f"{_b64(hashlib.sha256(b''.join(part_shas)).digest())}-{len(part_shas)}"
    return {
        "sha256": sha.hexdigest(),
        "size": size,
        "etag": etag,
        "checksum_sha256": checksum,
        "parts": len(part_md5s),
    }


def same_checksum(remote: str, local: str) -> bool:
    """S3's ChecksumSHA256 ``remote`` is the one computed ``local``ly ("B64" or "B64-N").

    S3 reports a multipart checksum as "B64-N"; some endpoints leave out the "-N".
    """
    remote_sum, _, remote_parts = (remote or "").partition("-")
    local_sum, _, local_parts = local.partition("-")
    return bool(remote_sum) and remote_sum == local_sum and remote_parts in ("", local_parts)


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


def remote_state(client, bucket: str, key: str, checksums: bool = False) -> dict | None:
    """HEAD of an object: size, ETag, sha256 metadata and (``checksums``: HEAD in checksum
    mode) S3's SHA-256 checksum; None when it does not exist."""
    from botocore.exceptions import ClientError

    extra = {"ChecksumMode": "ENABLED"} if checksums else {}
    try:
        head = client.head_object(Bucket=bucket, Key=key, **extra)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise _client_error(exc, f"HEAD s3://{bucket}/{key}", bucket) from None
    return {
        "size": head["ContentLength"],
        "etag": head["ETag"].strip('"'),
        "sha256": head.get("Metadata", {}).get(META_SHA256, ""),
        "checksum_sha256": head.get("ChecksumSHA256", ""),
        "lock_mode": head.get("ObjectLockMode", ""),
        "lock_until": head.get("ObjectLockRetainUntilDate"),
    }


def _b64md5(data: bytes) -> str:
    return _b64(hashlib.md5(data, usedforsecurity=False).digest())


def _sha256_args(data: bytes) -> dict:
    return {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": _b64(hashlib.sha256(data).digest())}


def _put(client, bucket, key, path, digests, part_size, extra, checksums):
    metadata = {META_SHA256: digests["sha256"]}
    if digests["parts"] == 1:
        with open(path, "rb") as handle:
            body = handle.read()
        sums = _sha256_args(body) if checksums else {}
        client.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentMD5=_b64md5(body),
            Metadata=metadata,
            **sums,
            **extra,
        )
        return
    algorithm = {"ChecksumAlgorithm": "SHA256"} if checksums else {}
    upload = client.create_multipart_upload(
        Bucket=bucket, Key=key, Metadata=metadata, **algorithm, **extra
    )
    parts = []
    try:
        with open(path, "rb") as handle:
            number = 1
            while chunk := handle.read(part_size):
                sums = _sha256_args(chunk) if checksums else {}
                answer = client.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload["UploadId"],
                    PartNumber=number,
                    Body=chunk,
                    ContentMD5=_b64md5(chunk),
                    **sums,
                )
                part = {"ETag": answer["ETag"], "PartNumber": number}
                if checksums:
                    part["ChecksumSHA256"] = sums["ChecksumSHA256"]
                parts.append(part)
                number += 1
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
        )
    except BaseException:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
        raise


def check_object_lock(client, bucket: str) -> None:
    """TransferError unless ``bucket`` has Object Lock enabled."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = client.get_object_lock_configuration(Bucket=bucket)
        enabled = answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ObjectLockConfigurationNotFoundError":
            raise _client_error(exc, f"reading the Object Lock of {bucket}", bucket) from None
        enabled = False
    except BotoCoreError as exc:
        raise _client_error(exc, f"reading the Object Lock of {bucket}", bucket) from None
    if not enabled:
        raise TransferError(
            f"bucket {bucket} has no Object Lock, so object_lock_days cannot protect the copies. "
            "Nothing was uploaded. Fix: use a bucket created with Object Lock (aws s3api "
            "create-bucket --object-lock-enabled-for-bucket ...) or enable it on this versioned "
            "bucket (aws s3api put-object-lock-configuration --bucket "
            f"{bucket} --object-lock-configuration ObjectLockEnabled=Enabled); or set "
            "object_lock_days to 0."
        )


def upload_set(
    client,
    set_dir,
    bucket,
    prefix,
    part_size,
    sse,
    dry_run=False,
    *,
    kms_key_id=None,
    lock_days=0,
    lock_mode="GOVERNANCE",
    now=None,
    files=None,
) -> dict:
    """Upload a set; returns {"uploaded": [...], "skipped": [...], "bytes": n}.

    ``sse`` AES256, aws:kms (``kms_key_id``: a key other than S3's default) or None;
    ``lock_days`` > 0 retains every object uploaded in ``lock_mode`` for that many days.
    ``files`` (names relative to ``set_dir``) uploads just these files of a directory that
    is not a backup set (an incident's evidence bundle), verified the same way.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    result = {"uploaded": [], "skipped": [], "bytes": 0}
    extra = {"ServerSideEncryption": sse} if sse else {}
    if kms_key_id:
        extra["SSEKMSKeyId"] = kms_key_id
    checksums = sse == KMS  # under SSE-KMS the ETag is not an MD5 of the content
    if files is not None:
        names = [_plain_file(set_dir, name) for name in files]
    else:
        if not dry_run or os.path.isdir(set_dir):  # check mode of a backup not yet taken
            read_set(set_dir)  # only a sealed set, with a valid SET.json, goes off-site
        names = set_files(set_dir)
    if lock_days > 0:
        check_object_lock(client, bucket)
        now = datetime.now(timezone.utc) if now is None else now
        extra["ObjectLockMode"] = lock_mode
        extra["ObjectLockRetainUntilDate"] = (now + timedelta(days=lock_days)).replace(
            microsecond=0
        )
    for name in names:
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
            _put(client, bucket, key, path, digests, part_size, extra, checksums)
            after = remote_state(client, bucket, key, checksums=checksums)
            if lock_days > 0 and after and not _retained(after, extra):
                # Some endpoints ignore the lock headers of a multipart upload: set it now.
                client.put_object_retention(
                    Bucket=bucket,
                    Key=key,
                    Retention={
                        "Mode": lock_mode,
                        "RetainUntilDate": extra["ObjectLockRetainUntilDate"],
                    },
                )
                after = remote_state(client, bucket, key, checksums=checksums)
        except (ClientError, BotoCoreError) as exc:
            raise _client_error(exc, f"upload of {path} to s3://{bucket}/{key}", bucket) from None
        if checksums:
            matches = after and same_checksum(after["checksum_sha256"], digests["checksum_sha256"])
            local = f"SHA-256 checksum {digests['checksum_sha256']}"
        else:
            matches = after and after["etag"] == digests["etag"]
            local = f"ETag {digests['etag']}"
        if not matches or after["size"] != digests["size"]:
            raise TransferError(
                f"s3://{bucket}/{key} does not match {path} after upload (local size "
                f"{digests['size']}, {local}; remote {after}). The local copy is "
                "kept. Re-run the backup to upload again; if it persists, check the endpoint."
            )
        if lock_days > 0 and not _retained(after, extra):
            raise TransferError(
                f"s3://{bucket}/{key} was uploaded but is not retained ({lock_mode} until "
                f"{extra['ObjectLockRetainUntilDate']:%Y-%m-%dT%H:%M:%SZ}; S3 reports "
                f"{after['lock_mode'] or 'no retention'}). Check that the credential may "
                "s3:PutObjectRetention, then re-run the backup."
            )
        result["uploaded"].append(key)
        result["bytes"] += digests["size"]
    return result


def _plain_file(base: str, name: str) -> str:
    """``name`` if it is a regular file inside ``base`` (no absolute path, no '..', no link)."""
    path = os.path.join(base, name)
    if os.path.isabs(name) or ".." in name.split("/") or not os.path.isfile(path):
        raise TransferError(
            f"{name} is not a file in {base}: give names of regular files inside that directory"
        )
    if os.path.islink(path):
        raise TransferError(f"{path} is a symbolic link: upload the file it points to instead")
    return name


def _retained(remote: dict, extra: dict) -> bool:
    """The object's retention is the one asked for: the mode, until the date or later."""
    until = remote.get("lock_until")
    if remote.get("lock_mode") != extra["ObjectLockMode"] or until is None:
        return False
    return until >= extra["ObjectLockRetainUntilDate"]


# --------------------------------------------------------------------------- download


def name_problem(name: str) -> str | None:
    """Why ``name`` (a key relative to the set) could leave the set's directory, or None."""
    if not name:
        return "is empty"
    if "\x00" in name:
        return "contains a NUL byte"
    if "\\" in name:
        return "contains a backslash"
    if name.startswith("/"):
        return "is an absolute path"
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            return f"has a segment {segment!r}"
    return None


def _confined(real_dest: str, dest_dir: str, name: str, key: str) -> str:
    """The path of ``name`` in ``dest_dir``; TransferError if it resolves outside it."""
    final = os.path.join(dest_dir, name)
    real = os.path.realpath(final)
    if not real.startswith(real_dest + os.sep):
        raise TransferError(
            f"s3 object {key!r} would be written to {real}, outside the set's directory "
            f"{real_dest} (a symbolic link on the way). Nothing was downloaded. Remove the "
            "link or choose another set_dir."
        )
    return final


def _get_small(client, bucket: str, key: str) -> bytes:
    answer = client.get_object(Bucket=bucket, Key=key)
    if answer.get("ContentLength", 0) > MAX_DESCRIPTION_BYTES:
        raise TransferError(
            f"s3://{bucket}/{key} is {answer['ContentLength']} bytes: too large for a set "
            "description. Restore another backup id."
        )
    return answer["Body"].read()


def manifest_problem(data: bytes, entry: dict) -> str | None:
    """Where a manifest's content disagrees with SET.json's ``entry`` for its dump, or None."""
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        return f"it is not JSON ({exc})"
    if not isinstance(manifest, dict):
        return "it is not a JSON object"
    for key, value in entry.items():
        if manifest.get(key) != value:
            return f"its {key} {manifest.get(key)!r} differs from {value!r} recorded in {SET_FILE}"
    return None


def _description(client, bucket: str, prefix: str) -> tuple[bytes, dict]:
    """SET.json of the set in the bucket: its bytes and its checked content."""
    key = f"{prefix}/{SET_FILE}"
    data = _get_small(client, bucket, key)
    try:
        meta = json.loads(data)
    except ValueError as exc:
        raise TransferError(
            f"s3://{bucket}/{key} is not JSON ({exc}): the set is damaged. Restore another "
            "backup id or an earlier object version."
        ) from None
    return data, check_set(meta, f"s3://{bucket}/{key}")


def _plan_download(names: list[str], meta: dict, bucket: str, prefix: str) -> dict:
    """What each object of the set is checked against: {name: ("sha256", digest) or
    ("manifest", SET.json's entry of its dump)}; names SET.json does not describe are left
    out. TransferError when a file SET.json describes is not in the bucket."""
    expected = {d["file"]: ("sha256", d["sha256"]) for d in meta.get("dumps", [])}
    expected.update({n: ("sha256", digest) for n, digest in meta.get("config", {}).items()})
    for dump in meta.get("dumps", []):
        if isinstance(dump.get("label"), str):
            expected[manifest_name(dump["label"])] = ("manifest", dump)
    missing = sorted(set(expected) - set(names))
    if missing:
        raise TransferError(
            f"s3://{bucket}/{prefix}/ is not a complete backup set: {SET_FILE} describes "
            f"{', '.join(missing)}, which the bucket does not hold. Nothing was downloaded. "
            "Restore another backup id or an earlier object version."
        )
    return {name: expected[name] for name in names if name in expected}


def _matches(path: str, check: tuple) -> bool:
    kind, want = check
    if kind == "sha256":
        return sha256_file(path)[0] == want
    with open(path, "rb") as handle:
        return manifest_problem(handle.read(MAX_DESCRIPTION_BYTES + 1), want) is None


def _fetch(client, bucket: str, key: str, final: str, check: tuple) -> int:
    """Download ``key`` to ``final`` through a partial file, published only if it passes
    ``check``; the size written."""
    kind, want = check
    with produce_file(final) as partial:
        sha = hashlib.sha256()
        size = 0
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        with open(partial, "wb") as handle:
            while chunk := body.read(CHUNK_SIZE):
                sha.update(chunk)
                size += len(chunk)
                handle.write(chunk)
        if kind == "sha256" and sha.hexdigest() != want:
            problem = f"sha256 {sha.hexdigest()} differs from {want} recorded in {SET_FILE}"
        elif kind == "manifest":
            with open(partial, "rb") as handle:
                problem = manifest_problem(handle.read(MAX_DESCRIPTION_BYTES + 1), want)
        else:
            problem = None
        if problem:
            raise TransferError(
                f"s3://{bucket}/{key} is corrupt: {problem}. It was not kept, and the set "
                f"was not sealed (no {SET_FILE} written). Restore from another backup id or an "
                "earlier object version; someone or something changed the object in the bucket."
            )
    return size


def download_set(client, bucket, prefix, dest_dir, dry_run=False) -> dict:
    """Download the set under prefix/ into dest_dir, every file verified against SET.json.

    Returns {"downloaded": [...], "skipped": [...], "ignored": [...], "bytes": n}; ignored
    are the keys SET.json does not describe (not downloaded).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    result = {"downloaded": [], "skipped": [], "ignored": [], "bytes": 0}
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    except (ClientError, BotoCoreError) as exc:
        raise _client_error(exc, f"listing s3://{bucket}/{prefix}/", bucket) from None
    names = [k[len(prefix) + 1 :] for k in keys]
    for key, name in zip(keys, names, strict=True):
        problem = name_problem(name)
        if problem:
            raise TransferError(
                f"Refused the object {key!r} of s3://{bucket}/: its name in the set {problem}, "
                "so it could be written outside the set's directory. Nothing was downloaded. "
                "Someone with write access to the bucket put it there: inspect and remove it, "
                "or restore another backup id."
            )
    if SET_FILE not in names:
        raise TransferError(
            f"s3://{bucket}/{prefix}/ holds no complete backup set (no {SET_FILE}; found "
            f"{len(names)} objects). Choose another backup id."
        )
    try:
        sealed, meta = _description(client, bucket, prefix)
        plan = _plan_download(names, meta, bucket, prefix)
        ignored = sorted(n for n in names if n not in plan and n != SET_FILE)
        result["ignored"] = [f"{prefix}/{n}" for n in ignored]
        real_dest = os.path.realpath(dest_dir)
        finals = {n: _confined(real_dest, dest_dir, n, f"{prefix}/{n}") for n in plan}
        sealed_final = _confined(real_dest, dest_dir, SET_FILE, f"{prefix}/{SET_FILE}")
        if not dry_run:
            ensure_directory(dest_dir)
        for name in sorted(plan):
            key, final = f"{prefix}/{name}", finals[name]
            if os.path.isfile(final) and _matches(final, plan[name]):
                result["skipped"].append(key)
                continue
            if not dry_run:
                ensure_directory(os.path.dirname(final))
                result["bytes"] += _fetch(client, bucket, key, final, plan[name])
            result["downloaded"].append(key)
        key = f"{prefix}/{SET_FILE}"
        if os.path.isfile(sealed_final) and _read(sealed_final) == sealed:
            result["skipped"].append(key)
        else:
            if not dry_run:
                write_bytes_atomic(sealed_final, sealed, SET_MODE)  # the bytes checked above
                result["bytes"] += len(sealed)
            result["downloaded"].append(key)
    except (ClientError, BotoCoreError) as exc:
        raise _client_error(exc, f"download of s3://{bucket}/{prefix}/", bucket) from None
    if not dry_run:
        read_set(dest_dir)  # the downloaded SET.json describes a set (raises otherwise)
    return result


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(MAX_DESCRIPTION_BYTES + 1)
