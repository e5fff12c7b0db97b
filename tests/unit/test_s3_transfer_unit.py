"""Unit tests of the pure checks of module_utils/s3_transfer.py (no S3 endpoint)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from ansible.module_utils.s3_transfer import (
    file_digests,
    manifest_problem,
    name_problem,
    same_checksum,
)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "is empty"),
        ("../x", "has a segment '..'"),
        ("config/../../x", "has a segment '..'"),
        ("/etc/cron.d/x", "is an absolute path"),
        ("a//b", "has a segment ''"),
        ("a/", "has a segment ''"),
        ("./a", "has a segment '.'"),
        ("a\\..\\b", "contains a backslash"),
        ("a\x00b", "contains a NUL byte"),
    ],
)
def test_names_that_could_leave_the_set_dir(name, problem):
    assert name_problem(name) == problem


@pytest.mark.parametrize("name", ["SET.json", "appdb.dump", "config/compose.yaml", "a..b/c.d"])
def test_plain_names_pass(name):
    assert name_problem(name) is None


def test_sha256_checksum_of_single_and_multipart_files(tmp_path):
    data = bytes(range(256)) * 100  # 25,600 bytes
    path = tmp_path / "f"
    path.write_bytes(data)
    single = file_digests(str(path), 1 << 20)
    assert single["checksum_sha256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    multi = file_digests(str(path), 10_000)
    parts = [hashlib.sha256(data[i : i + 10_000]).digest() for i in (0, 10_000, 20_000)]
    composite = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    assert multi["parts"] == 3
    assert multi["checksum_sha256"] == f"{composite}-3"


def test_same_checksum_accepts_s3_forms_only():
    assert same_checksum("abc=-3", "abc=-3")
    assert same_checksum("abc=", "abc=-3")  # endpoints that leave out the part count
    assert not same_checksum("abc=-2", "abc=-3")
    assert not same_checksum("abd=-3", "abc=-3")
    assert not same_checksum("", "abc=")
    assert not same_checksum(None, "abc=")


def test_manifest_must_agree_with_set_json():
    entry = {"label": "appdb", "file": "appdb.dump", "sha256": "aa", "size": 3}
    good = json.dumps({**entry, "row_counts": {"public.t": 1}}).encode()
    assert manifest_problem(good, entry) is None
    assert "its sha256 'bb' differs from 'aa'" in manifest_problem(
        json.dumps({**entry, "sha256": "bb"}).encode(), entry
    )
    assert "not JSON" in manifest_problem(b"{", entry)
    assert "not a JSON object" in manifest_problem(b"[]", entry)
