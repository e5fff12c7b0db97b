"""Run locks (module_utils/op_lock.py, action_plugins/op_lock.py): the holder record, the
staleness rule (boot id, the controller process, a missing record), breaking and releasing,
and the backup run lock built on them (backup_sets.open_run)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
from ansible.module_utils import op_lock
from ansible.module_utils.backup_sets import open_run, release_run
from ansible.module_utils.op_lock import (
    HOLDER_FILE,
    LockHeld,
    acquire,
    new_holder,
    read_holder,
    release,
    stale_reason,
)

ROOT = Path(__file__).resolve().parents[2]
ME = {"host": "ctl1", "pid": 4242, "pid_start": 1000}
OTHER = {"host": "ctl1", "pid": 4343, "pid_start": 2000}


def load_action():
    spec = importlib.util.spec_from_file_location(
        "opsauto_test_action_op_lock", ROOT / "action_plugins" / "op_lock.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def holder(controller=OTHER, boot="boot-a", operation="deploy 1.2.0"):
    return new_holder(operation, controller, now=1_800_000_000, boot=boot)


# --------------------------------------------------------------------------- the rule


def test_a_live_holder_is_not_stale():
    assert stale_reason(holder(), "boot-a") is None
    assert stale_reason(holder(), "boot-a", dead_token="another-token") is None


def test_a_holder_from_before_the_last_reboot_is_stale():
    reason = stale_reason(holder(boot="boot-a"), "boot-b")
    assert "rebooted" in reason
    assert "boot-a" in reason
    assert "boot-b" in reason


def test_a_holder_whose_controller_process_ended_is_stale():
    record = holder()
    reason = stale_reason(record, "boot-a", dead_token=record["token"])
    assert reason == "its controller process has ended without releasing it"


def test_a_lock_without_a_readable_record_is_stale():
    assert "no readable holder record" in stale_reason(None, "boot-a")


def test_the_controller_check_only_judges_its_own_processes():
    action = load_action()
    record = holder()
    dead = {"alive": lambda pid: False, "start_of": lambda pid: None}
    assert action.holder_gone(record, ME, **dead) is True
    assert action.holder_gone(record, dict(ME, host="ctl2"), **dead) is False  # another controller
    alive_same = {"alive": lambda pid: True, "start_of": lambda pid: 2000}
    assert action.holder_gone(record, ME, **alive_same) is False
    reused = {"alive": lambda pid: True, "start_of": lambda pid: 9999}  # pid reused since
    assert action.holder_gone(record, ME, **reused) is True
    assert action.holder_gone({"controller": {"host": "ctl1"}}, ME, **dead) is False


def test_the_controller_identity_is_a_live_process_with_its_start_time():
    action = load_action()
    me = action.controller_identity()
    assert me["pid"] == os.getppid()
    assert me["pid_start"] == action.pid_start(os.getppid())
    assert action.pid_alive(me["pid"])
    child = subprocess.Popen(["true"])
    child.wait()
    assert not action.pid_alive(child.pid)


# --------------------------------------------------------------------------- on disk


def test_acquire_publishes_the_record_and_refuses_a_live_holder(tmp_path):
    path = str(tmp_path / "locks" / "stack.lock")
    first = acquire(path, holder(OTHER), current_boot="boot-a")
    assert first["acquired"] is True
    assert read_holder(path) == first["holder"]
    assert oct((tmp_path / "locks").stat().st_mode & 0o777) == "0o700"
    with pytest.raises(LockHeld) as held:
        acquire(path, holder(ME, operation="restart rolling"), current_boot="boot-a")
    message = str(held.value)
    assert message.startswith("restart rolling refused: the lock")
    assert "deploy 1.2.0 (controller pid 4343 on ctl1, started 2027-01-15T08:00:00Z" in message
    assert f"rm -rf {path}" in message
    assert held.value.holder["token"] == first["holder"]["token"]
    assert read_holder(path)["token"] == first["holder"]["token"]  # untouched
    assert [p.name for p in (tmp_path / "locks").iterdir()] == ["stack.lock"]


def test_a_stale_lock_is_broken_with_its_reason_and_taken(tmp_path):
    path = str(tmp_path / "stack.lock")
    old = acquire(path, holder(OTHER, boot="boot-a"), current_boot="boot-a")["holder"]
    taken = acquire(path, holder(ME, boot="boot-b"), current_boot="boot-b")
    assert taken["acquired"] is True
    assert "broke the stale lock" in taken["broken"][0]
    assert "rebooted" in taken["broken"][0]
    assert read_holder(path)["controller"] == ME
    again = acquire(path, holder(OTHER, boot="boot-b"), dead_token=taken["holder"]["token"],
                    current_boot="boot-b")  # fmt: skip
    assert again["acquired"] is True
    assert "has ended" in again["broken"][0]
    assert old["token"] != again["holder"]["token"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack.lock"]  # nothing left over


def test_an_empty_lock_directory_of_an_older_version_is_broken(tmp_path):
    path = tmp_path / "stack.lock"
    path.mkdir()
    taken = acquire(str(path), holder(ME), current_boot="boot-a")
    assert taken["acquired"]
    assert "no readable holder record" in taken["broken"][0]
    assert (path / HOLDER_FILE).is_file()


def test_the_same_controller_process_nests_without_owning(tmp_path):
    path = str(tmp_path / "stack.lock")
    outer = acquire(path, holder(ME), current_boot="boot-a")
    inner = acquire(path, holder(ME, operation="inner"), current_boot="boot-a")
    assert inner["acquired"] is False
    assert inner["reentrant"] is True
    assert inner["holder"]["token"] == outer["holder"]["token"]


def test_check_mode_takes_nothing_and_reports_the_holder(tmp_path):
    path = str(tmp_path / "stack.lock")
    assert acquire(path, holder(ME), check_mode=True, current_boot="boot-a")["acquired"] is False
    assert not os.path.exists(path)
    live = acquire(path, holder(OTHER), current_boot="boot-a")["holder"]
    checked = acquire(path, holder(ME), check_mode=True, current_boot="boot-a")
    assert checked["held_by"]["token"] == live["token"]


def test_release_removes_only_its_own_lock(tmp_path):
    path = str(tmp_path / "stack.lock")
    mine = acquire(path, holder(ME), current_boot="boot-a")["holder"]
    assert release(path, "not-mine") == {"released": False, "held_by": mine}
    assert os.path.isdir(path)
    assert release(path, mine["token"]) == {"released": True, "held_by": None}
    assert not os.path.exists(path)
    assert release(path, mine["token"]) == {"released": False, "held_by": None}


# --------------------------------------------------------------------------- backup run lock


def test_the_backup_run_lock_uses_the_holder_record_and_the_rule(tmp_path, monkeypatch):
    monkeypatch.setattr(op_lock, "boot_id", lambda path=None: "boot-a")
    run = open_run(str(tmp_path), "s1", 6, check_mode=False, controller=OTHER)
    assert run["locked"] is True
    record = json.loads((tmp_path / ".lock" / HOLDER_FILE).read_text())
    assert record["operation"] == "backup s1"
    assert record["controller"] == OTHER
    with pytest.raises(LockHeld, match="Another backup is running") as held:
        open_run(str(tmp_path), "s2", 6, check_mode=False, controller=ME)
    assert "backup s1 (controller pid 4343 on ctl1" in str(held.value)
    assert held.value.holder["token"] == record["token"]
    broken = open_run(str(tmp_path), "s2", 6, check_mode=False, controller=ME,
                      break_token=record["token"])  # fmt: skip
    assert broken["locked"] is True
    assert "has ended" in broken["broken"][0]
    monkeypatch.setattr(op_lock, "boot_id", lambda path=None: "boot-b")  # the host rebooted
    rebooted = open_run(str(tmp_path), "s3", 6, check_mode=False, controller=OTHER)
    assert rebooted["locked"] is True
    assert "rebooted" in rebooted["broken"][0]
    assert release_run(str(tmp_path)) is True
    assert not (tmp_path / ".lock").exists()
    assert not (tmp_path / "s3").exists()


# --------------------------------------------------------------------------- operator's break

FOREIGN = {"host": "ctl2", "pid": 777, "pid_start": 5}  # another controller: never judged here


def test_a_foreign_holder_is_broken_only_by_its_own_token(tmp_path):
    path = str(tmp_path / "stack.lock")
    first = acquire(path, holder(FOREIGN), current_boot="boot-a")["holder"]
    # the refusal prints the token and the variable that breaks this lock
    with pytest.raises(LockHeld) as held:
        acquire(path, holder(ME, operation="restart rolling"), current_boot="boot-a")
    assert f"-e oplock_force_break={first['token']}" in str(held.value)
    # a wrong (or outdated) token breaks nothing and says so
    with pytest.raises(LockHeld, match="is not this lock's") as wrong:
        acquire(path, holder(ME), current_boot="boot-a", forced_token="not-the-token")
    assert wrong.value.holder["token"] == first["token"]
    assert read_holder(path)["token"] == first["token"]
    # in check mode the right token only says what would happen
    checked = acquire(path, holder(ME), check_mode=True, current_boot="boot-a",
                      forced_token=first["token"])  # fmt: skip
    assert checked["acquired"] is False
    assert "would break" in checked["broken"][0]
    assert read_holder(path)["token"] == first["token"]
    # the right token breaks it, with the reason
    taken = acquire(path, holder(ME), current_boot="boot-a", forced_token=first["token"])
    assert taken["acquired"] is True
    assert "the operator broke it by its token" in taken["broken"][0]
    assert "deploy 1.2.0 (controller pid 777 on ctl2" in taken["broken"][0]
    assert read_holder(path)["controller"] == ME
    # the same token does not break the lock taken since
    with pytest.raises(LockHeld, match="taken again since"):
        acquire(path, holder(FOREIGN), current_boot="boot-a", forced_token=first["token"])
    assert read_holder(path)["token"] == taken["holder"]["token"]


def test_the_backup_run_lock_names_its_own_force_variable(tmp_path, monkeypatch):
    monkeypatch.setattr(op_lock, "boot_id", lambda path=None: "boot-a")
    first = open_run(str(tmp_path), "s1", 6, check_mode=False, controller=FOREIGN)["holder"]
    with pytest.raises(LockHeld) as held:
        open_run(str(tmp_path), "s2", 6, check_mode=False, controller=ME)
    assert f"-e backup_lock_force_break={first['token']}" in str(held.value)
    broken = open_run(str(tmp_path), "s2", 6, check_mode=False, controller=ME,
                      forced_token=first["token"])  # fmt: skip
    assert broken["locked"] is True
    assert "the operator broke it" in broken["broken"][0]
    assert release_run(str(tmp_path)) is True
