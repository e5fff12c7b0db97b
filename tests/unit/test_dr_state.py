"""Unit tests of the resumable runbooks' step record (module_utils/dr_record.py).

The record decides where a DR rerun resumes and whether a phase runs again, so its rules
are tested on their own: resume point, refusal of another run's record, a finished phase
not started again, per-phase wall time, atomic writes, unreadable files.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
from pathlib import Path

import ansible.module_utils
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))
rec = importlib.import_module("ansible.module_utils.dr_record")

T0 = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)
KEY = {"source": "app-prod", "region": "us-west-2"}
ORDER = ["preflight", "snapshot", "copy", "restore"]


def at(seconds):
    return T0 + datetime.timedelta(seconds=seconds)


def run_phase(record, phase, start, end, data=None):
    assert rec.mark(record, phase, "running", at(start))
    assert rec.mark(record, phase, "done", at(end), data)


def test_resume_point_is_the_first_phase_not_finished():
    record = rec.new_record(KEY, T0)
    assert rec.next_phase(record, ORDER) == "preflight"
    run_phase(record, "preflight", 0, 2)
    run_phase(record, "snapshot", 2, 3, {"copy_identifier": "c1"})
    rec.mark(record, "copy", "running", at(3))
    rec.mark(record, "copy", "failed", at(9), msg="AccessDenied")
    assert rec.finished(record) == ["preflight", "snapshot"]
    assert rec.next_phase(record, ORDER) == "copy"
    step = record["phases"]["copy"]
    assert step["status"] == "failed"
    assert step["error"] == "AccessDenied"
    assert step["seconds"] == 6.0
    # the retry counts its attempts and clears the old error
    rec.mark(record, "copy", "running", at(20))
    assert record["phases"]["copy"]["attempts"] == 2
    assert "error" not in record["phases"]["copy"]
    rec.mark(record, "copy", "done", at(25))
    assert rec.next_phase(record, ORDER) == "restore"
    assert record["phases"]["snapshot"]["data"] == {"copy_identifier": "c1"}


def test_a_skipped_phase_counts_as_finished_and_is_ordered_by_its_time():
    record = rec.new_record(KEY, T0)
    run_phase(record, "preflight", 0, 1)
    assert rec.mark(record, "snapshot", "skipped", at(5), msg="not needed")
    assert record["phases"]["snapshot"]["seconds"] == 0.0
    assert record["phases"]["snapshot"]["note"] == "not needed"
    # the file is written with sorted keys: order still follows the phases' times
    reread = json.loads(json.dumps(record, sort_keys=True))
    assert rec.finished(reread) == ["preflight", "snapshot"]


def test_a_finished_phase_is_not_started_again_and_marking_it_again_changes_nothing():
    record = rec.new_record(KEY, T0)
    run_phase(record, "copy", 0, 4, {"snapshot_identifier": "c1"})
    before = json.dumps(record, sort_keys=True)
    assert rec.mark(record, "copy", "done", at(50), {"snapshot_identifier": "c2"}) is False
    assert json.dumps(record, sort_keys=True) == before
    with pytest.raises(rec.RecordError, match="phase copy is already done"):
        rec.mark(record, "copy", "running", at(60))
    with pytest.raises(rec.RecordError, match="unknown step status"):
        rec.mark(record, "restore", "half-done", at(60))


def test_a_record_of_another_run_is_refused_naming_the_differences():
    record = rec.new_record(KEY, T0)
    rec.check_key(record, dict(KEY), "/x.json")
    with pytest.raises(rec.RecordError) as err:
        rec.check_key(record, {**KEY, "region": "eu-central-1"}, "/x.json")
    assert "region: recorded 'us-west-2', now 'eu-central-1'" in str(err.value)
    assert "give another state file" in str(err.value)


def test_report_sums_the_wall_time_of_finished_phases():
    record = rec.new_record(KEY, T0)
    run_phase(record, "preflight", 0, 1.5)
    run_phase(record, "snapshot", 1.5, 2)
    rec.mark(record, "copy", "running", at(2))
    rec.mark(record, "copy", "failed", at(100))
    report = rec.report(record, ORDER)
    assert report["total_seconds"] == 2.0  # the failed attempt is not part of the RTO
    assert [(r["phase"], r["status"]) for r in report["phases"]] == [
        ("preflight", "done"), ("snapshot", "done"), ("copy", "failed"), ("restore", "pending")
    ]  # fmt: skip


def test_save_is_atomic_and_private_and_load_reads_it_back(tmp_path):
    path = tmp_path / "dr" / "state.json"
    assert rec.load(str(path)) is None
    record = rec.new_record(KEY, T0)
    run_phase(record, "preflight", 0, 1)
    rec.save(str(path), record)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert oct(os.stat(path.parent).st_mode & 0o777) == "0o700"
    assert rec.load(str(path)) == json.loads(json.dumps(record))
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no partial left


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "cannot read the step record"), ('{"version": 99}', "not a step record")],
)
def test_an_unreadable_record_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(rec.RecordError, match=message):
        rec.load(str(path))
