"""build_rds_record: the SET.json of an RDS manual snapshot, listed beside container sets."""

from __future__ import annotations

import os

from ansible.module_utils.backup_sets import (
    build_rds_record,
    check_set,
    list_sets,
    read_set,
    write_set,
)

SNAPSHOT = {
    "snapshot_identifier": "app-prod-20261129t030000z",
    "snapshot_arn": "arn:aws:rds:eu-west-1:123456789012:snapshot:app-prod-20261129t030000z",
    "db_instance_identifier": "app-prod",
    "engine": "postgres",
    "engine_version": "16.3",
    "encrypted": True,
    "kms_key_id": "arn:aws:kms:eu-west-1:123456789012:key/source",
    "region": "eu-west-1",
    "status": "available",
    "created": "2026-11-29T03:00:05Z",
    "allocated_storage_gb": 20,
    "tags": {"backup_id": "20261129T030000Z"},
    "managed": True,
}
COPY = dict(
    SNAPSHOT,
    region="eu-central-1",
    snapshot_arn="arn:aws:rds:eu-central-1:123456789012:snapshot:app-prod-20261129t030000z",
    kms_key_id="arn:aws:kms:eu-central-1:123456789012:key/dr",
)


def test_record_names_the_snapshot_instance_engine_and_encryption():
    record = build_rds_record("20261129T030000Z", "web1", "shop", SNAPSHOT, [COPY])
    assert record["kind"] == "rds"
    assert record["backup_id"] == "20261129T030000Z"
    assert record["created"] == "2026-11-29T03:00:05Z"
    assert (record["host"], record["project"]) == ("web1", "shop")
    assert record["instance"] == "app-prod"
    assert (record["engine"], record["engine_version"]) == ("postgres", "16.3")
    assert record["encrypted"] is True
    assert record["kms_key_id"] == SNAPSHOT["kms_key_id"]
    assert record["snapshot_arn"] == SNAPSHOT["snapshot_arn"]
    assert record["verified"] is True
    assert (record["databases"], record["dumps"], record["config"]) == ([], [], {})
    assert record["copies"] == [
        {
            "region": "eu-central-1",
            "snapshot_identifier": "app-prod-20261129t030000z",
            "snapshot_arn": COPY["snapshot_arn"],
            "encrypted": True,
            "kms_key_id": "arn:aws:kms:eu-central-1:123456789012:key/dr",
        }
    ]
    assert check_set(record, "test") is record


def test_unencrypted_snapshot_without_copies_and_not_yet_available():
    snapshot = dict(SNAPSHOT, encrypted=False, kms_key_id=None, status="creating")
    record = build_rds_record("b1", "web1", "shop", snapshot)
    assert record["encrypted"] is False
    assert record["kms_key_id"] is None
    assert record["copies"] == []
    assert record["verified"] is False


def test_one_listing_shows_container_dumps_and_rds_snapshots(tmp_path):
    dumps = {
        "backup_id": "20261128T030000Z",
        "created": "2026-11-28T03:00:00Z",
        "verified": True,
        "databases": ["appdb"],
        "dumps": [{"file": "appdb.dump", "sha256": "ab" * 32, "size": 10}],
        "config": {},
    }
    for meta in (dumps, build_rds_record("20261129T030000Z", "web1", "shop", SNAPSHOT)):
        directory = tmp_path / meta["backup_id"]
        os.mkdir(directory)
        assert write_set(str(directory), meta, check_mode=False) is True
    rds_dir = str(tmp_path / "20261129T030000Z")
    assert read_set(rds_dir)["kind"] == "rds"
    again = build_rds_record("20261129T030000Z", "web1", "shop", SNAPSHOT)
    assert write_set(rds_dir, again, check_mode=False) is False  # same record: not rewritten
    listed = list_sets(str(tmp_path))
    assert [s.backup_id for s in listed] == ["20261129T030000Z", "20261128T030000Z"]
    assert all(s.complete and s.verified for s in listed)
    assert listed[0].meta["snapshot_arn"] == SNAPSHOT["snapshot_arn"]
