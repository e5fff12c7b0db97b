"""Rollouts under a client that never retries (issue 12, docs/rollout.md).

scripts/loadgen.py --no-retry: 4 threads, one keep-alive connection each, GET and POST, no
retry of any kind. Every routine switch of the backend (rolling restart, scale out and in,
deploy of another release, rollback) must leave it with 0 failed GETs and 0 failed POSTs.
Also: one-off containers are never replicas, a request longer than the old fixed 2 s drain
finishes, nginx's configuration reload is confirmed by a new worker generation.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.conftest import ROOT, compose_down, run, run_playbook

PROJECT = "opsauto-it-strict"
HTTP_PORT = 18490
PROM_PORT = 19490
ROUNDS = 2  # rolling restarts in the load test
# nginx's proxy_read_timeout, the longest request the stack allows (default 30 s); raised so a
# request can outlive the old rollout's 2 s drain plus the 15 s stop grace period with room.
READ_TIMEOUT = 60
SLOW = 29  # seconds of the long request: under the old fixed 30 s read timeout


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory, docker_ready):
    path = tmp_path_factory.mktemp("strict") / PROJECT
    yield path
    compose_down(PROJECT)


def play(tmp_path, project_dir, playbook, **extravars):
    variables = {
        "stack_project_name": PROJECT,
        "stack_project_dir": str(project_dir),
        "stack_http_port": HTTP_PORT,
        "stack_prometheus_port": PROM_PORT,
        "stack_db_password": "integration-password-5",
        "deploy_backend_replicas": 2,
        "deploy_health_timeout": 90,
        "stack_nginx_proxy_read_timeout": READ_TIMEOUT,
    }
    variables.update(extravars)
    return run_playbook(tmp_path, f"{playbook}.yml", variables)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, project_dir):
    result, failures = play(tmp_path_factory.mktemp("deploy"), project_dir, "deploy")
    assert result.rc == 0, failures
    return project_dir


def backends() -> list[str]:
    out = run(
        ["docker", "ps", "--filter", f"label=com.docker.compose.project={PROJECT}",
         "--filter", "label=com.docker.compose.service=backend", "--format", "{{.Names}}"]
    ).stdout  # fmt: skip
    return sorted(out.split())


class Load:
    """scripts/loadgen.py in the background as the strict client; stop() returns its summary."""

    def __init__(self, tmp_path, path="/version"):
        self.stop_file = tmp_path / "loadgen.stop"
        self.out = tmp_path / "loadgen.json"
        argv = [sys.executable, str(ROOT / "scripts" / "loadgen.py"),
                "--url", f"http://127.0.0.1:{HTTP_PORT}{path}", "--workers", "4",
                "--duration", "600", "--interval", "0.01", "--no-retry", "--post-every", "3",
                "--stop-file", str(self.stop_file), "--out", str(self.out)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.5)

    def stop(self) -> dict:
        self.stop_file.touch()
        _, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return json.loads(self.out.read_text())


def test_routine_switches_fail_no_request_of_a_client_that_never_retries(tmp_path, stack):
    load = Load(tmp_path)
    try:
        steps = [("restart", {"restart_services": ["backend"], "restart_mode": "rolling"})]
        steps *= ROUNDS
        steps += [
            ("scale", {"scale_replicas": {"backend": 3}}),
            ("scale", {"scale_replicas": {"backend": 2}}),
            ("deploy", {"deploy_backend_tag": "1.0.0"}),
            ("rollback", {}),
        ]
        for number, (playbook, extravars) in enumerate(steps):
            result, failures = play(tmp_path / f"step{number}", stack, playbook, **extravars)
            assert result.rc == 0, (playbook, failures)
    finally:
        summary = load.stop()
    print(json.dumps(summary))
    assert summary["retries"] == "none"
    assert summary["get"]["total"] > 200, summary
    assert summary["post"]["total"] > 100, summary
    # Keep-alive: far fewer connections than requests (one per worker plus reconnects).
    assert summary["connections"] < summary["total"] / 10, summary
    assert (summary["get"]["failed"], summary["post"]["failed"]) == (0, 0), summary


def test_one_off_containers_are_not_replicas(tmp_path, stack):
    oneoff = f"{PROJECT}-oneoff-test"
    proc = run(
        ["docker", "compose", "--project-directory", str(stack), "-p", PROJECT, "run", "-d",
         "--no-deps", "--name", oneoff, "backend", "sleep", "300"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    try:
        before = backends()
        assert oneoff in before
        result, failures = play(tmp_path, stack, "scale", scale_replicas={"backend": 2})
        assert result.rc == 0, failures
        assert backends() == before  # nothing to do: the one-off is not a third replica
        result, failures = play(
            tmp_path / "rolling", stack, "restart", restart_services=["backend"],
            restart_mode="rolling",
        )  # fmt: skip
        assert result.rc == 0, failures
        after = backends()
        assert oneoff in after  # left alone, still running
        assert len(after) == 3
        assert not (set(before) - {oneoff}) & set(after)  # both replicas were replaced
    finally:
        run(["docker", "rm", "-f", oneoff])


def test_a_request_longer_than_the_old_drain_and_grace_finishes_in_a_rolling_restart(
    tmp_path, stack
):
    # Before: 2 s drain, then docker stop with the compose stop_grace_period of 15 s.
    answer = {}

    def slow():
        url = f"http://127.0.0.1:{HTTP_PORT}/slow?seconds={SLOW}"
        try:
            with urllib.request.urlopen(url, timeout=READ_TIMEOUT + 10) as resp:
                answer["status"] = resp.status
        except OSError as exc:
            answer["error"] = repr(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(1)
    result, failures = play(
        tmp_path, stack, "restart", restart_services=["backend"], restart_mode="rolling"
    )
    thread.join(READ_TIMEOUT + 10)
    assert result.rc == 0, failures
    assert answer == {"status": 200}


def nginx_processes() -> dict:
    """{'master': pid, 'workers': {pids}} of the nginx container, read from its /proc."""
    script = ('for d in /proc/[0-9]*; do t=$(tr "\\000" " " < "$d/cmdline" 2>/dev/null) '
              '|| continue; echo "${d#/proc/} $t"; done')  # fmt: skip
    out = run(["docker", "compose", "-p", PROJECT, "exec", "-T", "nginx", "sh", "-c", script])
    procs = [line.split(" ", 1) for line in out.stdout.splitlines() if " " in line]
    return {
        "master": next(pid for pid, cmd in procs if cmd.startswith("nginx: master")),
        "workers": {pid for pid, cmd in procs if cmd.startswith("nginx: worker")},
    }


def rollout_events(result) -> list[str]:
    return [
        event["event"]
        for e in result.events
        if e.get("event") in ("runner_on_ok", "runner_on_failed")
        and str(e["event_data"].get("task_action", "")).endswith("compose_rollout")
        for event in e["event_data"]["res"].get("events", [])
    ]


def test_a_configuration_change_is_reloaded_and_confirmed_by_new_workers(tmp_path, stack):
    # A deploy that changes nginx.conf: nginx -t, a graceful reload (same master, same
    # container), and the module waits for a worker generation that did not exist before.
    before = nginx_processes()
    try:
        result, failures = play(tmp_path / "valid2", stack, "deploy", stack_nginx_resolver_valid=2)
        assert result.rc == 0, failures
        after = nginx_processes()
        assert after["master"] == before["master"]  # reloaded, not restarted
        assert after["workers"]
        assert not after["workers"] & before["workers"]  # a new generation serves
        said = " ".join(rollout_events(result))
        assert "nginx reloaded" in said, said
        assert "nginx runs the new configuration (workers" in said, said
        # the configuration the running master was started with (-c), as nginx reads it now
        conf = run(["docker", "compose", "-p", PROJECT, "exec", "-T", "nginx", "nginx", "-T",
                    "-c", "/etc/nginx/opsauto/nginx.conf"])  # fmt: skip
        assert "valid=2s" in conf.stdout
    finally:
        result, failures = play(tmp_path / "valid1", stack, "deploy")  # back to the default
    assert result.rc == 0, failures
    with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/health", timeout=5) as resp:
        assert resp.status == 200


def test_a_replica_that_dies_during_the_soak_is_removed_and_the_old_ones_keep_serving(
    tmp_path, stack
):
    before = backends()
    outcome: dict = {}

    def restart() -> None:
        outcome["result"] = play(tmp_path / "soak", stack, "restart", restart_mode="rolling",
                                 restart_services=["backend"], rollout_soak_seconds=40)  # fmt: skip

    worker = threading.Thread(target=restart)
    worker.start()
    try:
        # the new replicas come up beside the old ones; one of them dies once it is healthy
        deadline = time.monotonic() + 180
        victim = None
        while victim is None:
            assert worker.is_alive(), outcome
            assert time.monotonic() < deadline, "no new replica became healthy"
            for name in set(backends()) - set(before):
                state = run(["docker", "inspect", "--format", "{{.State.Health.Status}}", name])
                if state.stdout.strip() == "healthy":
                    victim = name
                    break
            time.sleep(0.5)
        time.sleep(3)  # routed by now (the alias is attached right after the health gate)
        run(["docker", "kill", victim])
    finally:
        worker.join(timeout=600)
    result, failures = outcome["result"]
    message = " ".join(failures)
    assert result.rc != 0
    assert "did not stay healthy for the soak of 40 s" in message, message
    assert victim in message
    assert backends() == before  # the new ones removed, the old ones untouched
    for _ in range(20):
        with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/version", timeout=5) as resp:
            assert resp.status == 200
