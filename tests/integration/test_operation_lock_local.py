"""The stack's operation lock (roles/oplock, module op_lock) and the backup's failure metric,
against this machine's Docker engine through ansible-runner: two overlapping operations (the
second is refused naming the first), a wait for a live holder, stale locks (holder process
dead, host rebooted) broken with a warning, and backups refused by the lock or failing their
pre-flight leaving the failure metric."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from ansible.module_utils.op_lock import HOLDER_FILE, acquire, new_holder, read_holder

from tests.conftest import ROOT, compose_down, run, run_playbook

PROJECT = "opsauto-it-oplock"
HTTP_PORT = 18680
PROM_PORT = 19680
LOCK = Path(f"/var/lib/opsauto/locks/{PROJECT}.lock")
FAILURE_METRIC = "opsauto_backup_last_failure_timestamp_seconds"


def _action():
    spec = importlib.util.spec_from_file_location(
        "opsauto_it_action_op_lock", ROOT / "action_plugins" / "op_lock.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def this_process() -> dict:
    """A live controller identity: this test process on this host."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _action().pid_start(os.getpid()),
    }


def dead_process() -> dict:
    """The identity of a process on this host that has ended."""
    child = subprocess.Popen(["true"])
    child.wait()
    return {"host": socket.gethostname(), "pid": child.pid, "pid_start": None}


def hold(path: Path, operation: str, controller: dict, boot: str | None = None) -> dict:
    """Take the lock at ``path`` as another run would (boot None: this boot)."""
    taken = acquire(str(path), new_holder(operation, controller, boot=boot))
    assert taken["acquired"], taken
    return taken["holder"]


def drop(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory, docker_ready):
    path = tmp_path_factory.mktemp("oplock") / PROJECT
    drop(LOCK)
    yield path
    drop(LOCK)
    compose_down(PROJECT)


def play(tmp_path, project_dir, playbook, **extravars):
    variables = {
        "stack_project_name": PROJECT,
        "stack_project_dir": str(project_dir),
        "stack_http_port": HTTP_PORT,
        "stack_prometheus_port": PROM_PORT,
        "stack_db_password": "integration-password-2",
        "deploy_backend_replicas": 2,
        "deploy_health_timeout": 90,
        "stack_backup_dir": str(project_dir.parent / "backups"),
        "backup_metrics_dir": str(project_dir.parent / "metrics"),
    }
    variables.update(extravars)
    return run_playbook(tmp_path, f"{playbook}.yml", variables)


def warnings(result) -> str:
    return " ".join(
        w for e in result.events for w in (e.get("event_data", {}).get("res") or {}).get(
            "warnings", []
        ) or []
    )  # fmt: skip


def containers() -> list[str]:
    out = run(["docker", "compose", "-p", PROJECT, "ps", "-q"]).stdout
    return sorted(out.split())


@pytest.fixture(scope="module")
def stack(tmp_path_factory, project_dir):
    result, failures = play(tmp_path_factory.mktemp("deploy"), project_dir, "deploy")
    assert result.rc == 0, failures
    assert not LOCK.exists(), "deploy did not release the operation lock"
    return project_dir


def test_an_operation_is_refused_while_a_live_run_holds_the_lock(tmp_path, stack):
    holder = hold(LOCK, "deploy 9.9.9", this_process())
    before = containers()
    try:
        result, failures = play(tmp_path, stack, "restart", restart_mode="rolling")
    finally:
        after_holder = read_holder(str(LOCK))
        drop(LOCK)
    message = " ".join(failures)
    assert result.rc != 0
    assert "restart rolling refused: the lock" in message, message
    assert f"deploy 9.9.9 (controller pid {os.getpid()} on {socket.gethostname()}" in message
    assert after_holder["token"] == holder["token"]  # the live holder's lock is untouched
    assert containers() == before


def test_a_run_waits_for_a_live_holder_up_to_its_timeout(tmp_path, stack):
    hold(LOCK, "scale", this_process())
    releaser = threading.Timer(5, drop, args=(LOCK,))
    releaser.start()
    try:
        result, failures = play(tmp_path, stack, "restart", oplock_wait_timeout=60)
    finally:
        releaser.cancel()
        drop(LOCK)
    assert result.rc == 0, failures
    waited = [
        e["event_data"]["res"]["waited_seconds"]
        for e in result.events
        if e.get("event") == "runner_on_ok"
        and str(e["event_data"].get("task_action", "")).endswith("op_lock")
        and "waited_seconds" in e["event_data"]["res"]
    ]
    assert waited
    assert waited[0] >= 3
    assert not LOCK.exists()


@pytest.mark.parametrize(
    ("controller", "boot", "reason"),
    [
        (dead_process, None, "its controller process has ended"),
        (this_process, "00000000-0000-0000-0000-000000000000", "the host rebooted since"),
    ],
    ids=["holder-process-dead", "host-rebooted"],
)
def test_a_stale_lock_is_broken_with_a_warning_and_the_run_succeeds(
    tmp_path, stack, controller, boot, reason
):
    stale = hold(LOCK, "rollback", controller(), boot=boot)
    try:
        result, failures = play(tmp_path, stack, "restart")
    finally:
        left = read_holder(str(LOCK))
        drop(LOCK)
    assert result.rc == 0, failures
    said = warnings(result)
    assert f"Broke the stale lock {LOCK} of rollback" in said, said
    assert reason in said
    assert left is None  # taken, then released by the run
    assert stale["token"] not in said


def test_a_lock_of_a_crashed_controller_elsewhere_is_broken_by_its_token(tmp_path, stack):
    # A holder on another controller is never judged dead from here: the run is refused with
    # the token, and a re-run naming that token breaks that lock (and only that one).
    foreign = {"host": "controller-that-crashed", "pid": 4242, "pid_start": 1}
    holder = hold(LOCK, "deploy 9.9.9", foreign)
    before = containers()
    try:
        refused, failures = play(tmp_path / "refused", stack, "restart")
        message = " ".join(failures)
        assert refused.rc != 0
        assert f"-e oplock_force_break={holder['token']}" in message, message
        assert read_holder(str(LOCK))["token"] == holder["token"]
        assert containers() == before
        wrong, failures = play(tmp_path / "wrong", stack, "restart",
                               oplock_force_break="0123456789abcdef")  # fmt: skip
        assert wrong.rc != 0
        assert "is not this lock's" in " ".join(failures)
        assert read_holder(str(LOCK))["token"] == holder["token"]
        result, failures = play(tmp_path / "forced", stack, "restart", restart_mode="rolling",
                                oplock_force_break=holder["token"])  # fmt: skip
    finally:
        left = read_holder(str(LOCK))
        drop(LOCK)
    assert result.rc == 0, failures
    said = warnings(result)
    assert f"Broke the stale lock {LOCK} of deploy 9.9.9" in said, said
    assert "the operator broke it by its token" in said
    assert left is None  # taken by the forced run, then released by it
    assert set(containers()) != set(before)  # the rolling restart replaced the backends


def test_two_overlapping_operations_the_second_is_refused_naming_the_first(tmp_path, stack):
    before = containers()
    first: dict = {}

    def rolling() -> None:
        first["result"] = play(tmp_path / "first", stack, "restart", restart_mode="rolling")

    worker = threading.Thread(target=rolling)
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while not (LOCK / HOLDER_FILE).exists() and worker.is_alive():
            assert time.monotonic() < deadline, "the rolling restart never took the lock"
            time.sleep(0.2)
        holder = read_holder(str(LOCK))
        assert holder is not None, "the rolling restart ended before the second run could start"
        second, failures = play(tmp_path / "second", stack, "scale",
                                scale_replicas={"backend": 3})  # fmt: skip
    finally:
        worker.join(timeout=600)
    message = " ".join(failures)
    assert second.rc != 0
    assert "scale refused: the lock" in message, message
    assert f"restart rolling (controller pid {holder['controller']['pid']}" in message
    result, first_failures = first["result"]
    assert result.rc == 0, first_failures
    assert not LOCK.exists()
    after = containers()
    assert len(after) == len(before)  # 2 backends + db + nginx + prometheus, not 3 backends
    assert set(after) != set(before)  # the rolling restart replaced the backends


def test_a_backup_refused_by_its_lock_writes_the_failure_metric(tmp_path, stack):
    backups = stack.parent / "backups"
    metric = stack.parent / "metrics" / "opsauto_backup_failure.prom"
    backups.mkdir(mode=0o700, exist_ok=True)
    metric.unlink(missing_ok=True)
    hold(backups / ".lock", "backup it-earlier", this_process())
    try:
        result, failures = play(tmp_path, stack, "backup", backup_id="it-locked")
    finally:
        drop(backups / ".lock")
    assert result.rc != 0
    assert "Another backup is running" in " ".join(failures)
    assert not (backups / "it-locked").exists()
    assert f'{FAILURE_METRIC}{{project="{PROJECT}"}}' in metric.read_text()


def test_a_backup_failing_its_preflight_writes_the_failure_metric(tmp_path, docker_ready):
    metrics = tmp_path / "metrics"
    result, failures = run_playbook(
        tmp_path / "runner",
        "backup.yml",
        {
            "stack_project_name": "opsauto-it-no-such-stack",
            "stack_backup_dir": str(tmp_path / "backups"),
            "backup_metrics_dir": str(metrics),
        },
    )
    assert result.rc != 0
    assert "Expected one running 'db' container" in " ".join(failures)
    text = (metrics / "opsauto_backup_failure.prom").read_text()
    assert f'{FAILURE_METRIC}{{project="opsauto-it-no-such-stack"}}' in text
    stamp = int(text.strip().splitlines()[-1].split()[-1])
    assert abs(stamp - time.time()) < 300
