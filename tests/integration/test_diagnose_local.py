"""The diagnose playbook against this machine's Docker engine (ansible-runner, as AWX runs
it), on a reference stack of its own: a healthy stack yields no WARN and no FAIL (twice, and
in check mode) and is left untouched; then one fault at a time is injected, the right check
is the only root cause (everything else that is not PASS is marked as its symptom) and names
the right remedy, and that remedy's playbook restores the stack before the next fault.

Run it under the engine lock (flock /tmp/opsauto-engine.lock pytest tests/integration/...).
"""

from __future__ import annotations

import hashlib
import http.server
import importlib
import json
import socket
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import ansible.module_utils
import pytest

from tests.conftest import ROOT, compose_down, run, run_playbook

PROJECT = "opsauto-it-diagnose"
HTTP_PORT = 18380
PROM_PORT = 19380
PASSWORD = "integration-password-1"
NETWORK = f"{PROJECT}_default"
# Containers the fault tests create (removed by each test, and by the fixture as a fallback).
OOM, CRASH, NO_METRICS, SLOW = (
    f"{PROJECT}-oomtest-1",
    f"{PROJECT}-backend-crashloop",
    f"{PROJECT}-backend-nometrics",
    f"{PROJECT}-backend-slow",
)
STRAYS = (OOM, CRASH, NO_METRICS, SLOW)


def stack_vars(project_dir, backup_dir, metrics_dir):
    return {
        "stack_project_name": PROJECT,
        "stack_project_dir": str(project_dir),
        "stack_http_port": HTTP_PORT,
        "stack_prometheus_port": PROM_PORT,
        "stack_db_password": PASSWORD,
        "stack_backup_dir": str(backup_dir),
        # node_exporter publishes this test's own backup metrics (not the host's shared
        # directory): the backup alerts Prometheus evaluates see a fresh backup.
        "stack_metrics_textfile_dir": str(metrics_dir),
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_ready):
    base = tmp_path_factory.mktemp("diagnose")
    project_dir, backup_dir = base / PROJECT, base / "backups"
    backup_dir.mkdir(mode=0o700)
    # The backup metrics of a set made now, written by the backup role's own function,
    # for the backup freshness check (backup.age) and the alerts Prometheus evaluates.
    metrics = base / "metrics"
    metrics.mkdir()
    (metrics / "opsauto_backup.prom").write_text(fresh_backup_metrics())
    variables = stack_vars(project_dir, backup_dir, metrics)
    try:
        result, failures = run_playbook(
            base / "deploy-run",
            "deploy.yml",
            {**variables, "deploy_backend_replicas": 2, "deploy_health_timeout": 90},
        )
        assert result.rc == 0, failures
        yield {"base": base, "dir": project_dir, "vars": variables, "metrics": metrics}
    finally:
        for name in STRAYS:
            run(["docker", "rm", "-f", name])
        compose_down(PROJECT)


def fresh_backup_metrics():
    if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(str(ROOT / "module_utils"))
    backup_sets = importlib.import_module("ansible.module_utils.backup_sets")
    latest = {"created": now_utc(), "dumps": [], "verified": True}
    return backup_sets.metrics_text(PROJECT, latest, 1)


def now_utc():
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def diagnose(stack, name, cmdline="", **extra):
    """Run playbooks/diagnose.yml; return (runner result, failures, report, wall seconds)."""
    reports = stack["base"] / f"reports-{name}"
    variables = {
        **stack["vars"],
        "diagnose_report_dir": str(reports),
        "diagnose_backup_metrics_dir": str(stack["metrics"]),
        # This machine's engine is shared by parallel test runs (docker-in-docker Molecule
        # hosts): its load says nothing about the stack under test. The load check itself is
        # proven by test_host_load_thresholds_force_and_clear_the_finding.
        "diagnose_load_warn_per_core": 50.0,
        "diagnose_load_fail_per_core": 100.0,
        **extra,
    }
    started = time.monotonic()
    result, failures = run_playbook(
        stack["base"] / f"run-{name}", "diagnose.yml", variables, cmdline=cmdline
    )
    wall = round(time.monotonic() - started, 2)
    path = reports / "localhost.json"
    report = json.loads(path.read_text()) if path.exists() else None
    return result, failures, report, wall


def findings(report):
    return {c["id"]: c for c in report["checks"] if c["status"] in ("WARN", "FAIL")}


def assert_only_root_cause(report, check_id, status, remedy):
    """check_id is the only root cause; every other finding is marked as a symptom."""
    found = findings(report)
    details = json.dumps(found, indent=1)
    assert report["summary"]["root_causes"] == [check_id], details
    assert found[check_id]["status"] == status, details
    assert remedy in found[check_id]["remedy"], details
    assert all("symptom_of" in c for cid, c in found.items() if cid != check_id), details
    return found[check_id]


def container_ids():
    out = run(
        [
            "docker",
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            f"label=com.docker.compose.project={PROJECT}",
        ]
    )
    return sorted(out.stdout.split())


def tree_digest(path):
    """sha256 and mode of every file under the project directory (compose, .env, ledger...)."""
    return {
        str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def container(service, number=1):
    return f"{PROJECT}-{service}-{number}"


def backend_names():
    out = run(["docker", "ps", "--format", "{{.Names}}", "--filter",
               f"label=com.docker.compose.project={PROJECT}",
               "--filter", "label=com.docker.compose.service=backend"])  # fmt: skip
    return sorted(out.stdout.split())


def wait_until_healthy(timeout=90):
    """Every container healthy, /health 200 through nginx, every Prometheus target up."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        ids = container_ids()
        states = run(["docker", "inspect", "--format", "{{.Name}} {{.State.Health.Status}}", *ids])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/health", timeout=3) as r:
                http_ok = r.status == 200
            with urllib.request.urlopen(
                f"http://127.0.0.1:{PROM_PORT}/api/v1/targets?state=active", timeout=3
            ) as r:
                targets = json.loads(r.read())["data"]["activeTargets"]
        except OSError as exc:
            http_ok, targets, last = False, [], str(exc)
        healthy = all(line.endswith(" healthy") for line in states.stdout.splitlines())
        if healthy and http_ok and targets and all(t["health"] == "up" for t in targets):
            return
        last = last or states.stdout
        time.sleep(1)
    raise AssertionError(f"the stack did not become healthy again within {timeout} s: {last}")


def remedy(stack, name, playbook, **extravars):
    """Run the playbook a check named as its remedy; it must succeed."""
    result, failures = run_playbook(
        stack["base"] / f"remedy-{name}", playbook, {**stack["vars"], **extravars}
    )
    assert result.rc == 0, failures


def reload_nginx():
    """nginx resolved the backend's addresses at load time; a recreated replica needs a reload."""
    assert run(["docker", "kill", "-s", "HUP", container("nginx")]).returncode == 0


def traffic(requests=20):
    """Some real requests (database reads included) for the access log of the window."""
    for i in range(requests):
        path = "/items" if i % 2 else "/health"
        with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}{path}", timeout=5) as resp:
            assert resp.status == 200


# The checks whose source this machine lacks: no Grafana is given and, where systemd does
# not run (the test machine), there is no journal of the Docker daemon.
SYSTEMD = Path("/run/systemd/system").is_dir()
HOST_SKIPS = {"monitoring.grafana": "diagnose_grafana_url is not set"}
if not SYSTEMD:
    HOST_SKIPS["host.docker_journal"] = (
        "systemd is not running on this host (no /run/systemd/system): the Docker daemon's log "
        "is not in a journal"
    )


def test_healthy_stack_no_finding_twice_and_untouched(stack):
    wait_until_healthy()
    # The window starts once the stack is up: requests made while the deploy was still
    # starting it are not this test's subject.
    since = now_utc()
    time.sleep(1)
    traffic()
    ids_before, files_before = container_ids(), tree_digest(stack["dir"])
    walls = []
    for attempt, cmdline in (("healthy-1", ""), ("healthy-2", ""), ("healthy-check", "--check")):
        result, failures, report, wall = diagnose(
            stack, attempt, cmdline, diagnose_since=since, diagnose_fail_on="warn"
        )
        walls.append(wall)
        assert result.rc == 0, failures
        assert result.stats["changed"].get("localhost", 0) == 0, result.stats
        assert findings(report) == {}, json.dumps(findings(report), indent=1)
        # SKIP only where this host lacks the source: no systemd (so no journal of the
        # daemon), no Grafana URL given.
        skipped = {c["id"]: c["summary"] for c in report["checks"] if c["status"] == "SKIP"}
        assert skipped == HOST_SKIPS, skipped
        assert report["summary"] == {
            "status": "PASS",
            "counts": {
                "PASS": len(report["checks"]) - len(HOST_SKIPS),
                "WARN": 0,
                "FAIL": 0,
                "SKIP": len(HOST_SKIPS),
            },
            "root_causes": [],
        }
        statuses = {c["id"]: c for c in report["checks"]}
        # The kernel log is read with dmesg where no systemd journal keeps it; promtool runs in
        # the Prometheus container; the backup freshness alert is loaded and nothing fires.
        assert statuses["host.kernel_oom"]["status"] == "PASS"
        source = "(journalctl -k)" if SYSTEMD else "(dmesg)"
        assert source in statuses["host.kernel_oom"]["summary"], statuses["host.kernel_oom"]
        assert statuses["configuration.prometheus"]["summary"] == (
            "promtool check config /etc/prometheus/prometheus.yml: valid, 1 rule files, 3 rules"
        )
        assert statuses["monitoring.alerts"]["summary"].startswith(
            "3 alerting rules loaded (BackupMissing among them), none firing"
        )
    assert container_ids() == ids_before
    assert tree_digest(stack["dir"]) == files_before  # compose, .env, nginx conf, ledger
    reports = stack["base"] / "reports-healthy-2"
    assert sorted(p.name for p in reports.iterdir()) == [
        "fleet.json", "fleet.md", "index.html", "localhost.json", "localhost.md",
    ]  # fmt: skip
    assert (
        '<h2 id="localhost">localhost: <span class="PASS">PASS</span></h2>'
        in (reports / "index.html").read_text()
    )
    assert "No finding: every check passed." in (reports / "localhost.md").read_text()
    assert json.loads((reports / "fleet.json").read_text())["status"] == "PASS"
    assert PASSWORD not in "".join(p.read_text() for p in reports.iterdir())
    print(f"diagnose.yml wall time on the healthy stack: {walls} s")


def test_database_stopped(stack):
    since = now_utc()
    assert run(["docker", "stop", "-t", "5", container("db")]).returncode == 0
    try:
        result, failures, report, _ = diagnose(
            stack, "db-stopped", diagnose_since=since, diagnose_fail_on="fail"
        )
        assert result.rc != 0  # diagnose_fail_on=fail makes the play fail for alerting
        assert "containers.running" in " ".join(failures)
        check = assert_only_root_cause(
            report, "containers.running", "FAIL", "playbooks/restart.yml -e restart_services=db"
        )
        assert container("db") in check["summary"]
        assert {c["id"]: c["status"] for c in report["checks"]}["database.ready"] == "SKIP"
    except BaseException:
        run(["docker", "start", container("db")])
        raise
    # The remedy it names brings the database back.
    remedy(stack, "db-stopped", "restart.yml", restart_services="db")
    wait_until_healthy()


def test_wrong_password_in_env(stack):
    env = stack["dir"] / ".env"
    good = env.read_text()
    compose = ["docker", "compose", "--project-directory", str(stack["dir"]), "-p", PROJECT]
    recreate = [*compose, "up", "-d", "--no-deps", "--force-recreate", "backend"]
    env.write_text(good.replace(PASSWORD, "wrong-password-9"))
    try:
        assert run(recreate).returncode == 0
        reload_nginx()
        since = now_utc()
        _, _, report, _ = diagnose(stack, "wrong-password", diagnose_since=since)
        check = assert_only_root_cause(report, "database.login", "FAIL", "playbooks/deploy.yml")
        assert "password authentication failed" in check["evidence"][0]
        assert ".env does not match" in check["summary"]
        statuses = {c["id"]: c["status"] for c in report["checks"]}
        assert statuses["database.ready"] == "PASS"  # pg_isready passes: the database is up
        assert statuses["containers.running"] == "PASS"
        assert PASSWORD not in json.dumps(report)
        assert "wrong-password-9" not in json.dumps(report)
    except BaseException:
        env.write_text(good)
        env.chmod(0o600)
        run(recreate)
        reload_nginx()
        raise
    # The remedy it names rewrites .env from stack_db_password and replaces the backend.
    remedy(stack, "wrong-password", "deploy.yml", deploy_health_timeout=90)
    assert env.read_text() == good
    wait_until_healthy()


def test_one_backend_replica_stopped(stack):
    replica = backend_names()[-1]
    since = now_utc()
    assert run(["docker", "stop", "-t", "5", replica]).returncode == 0
    try:
        _, _, report, _ = diagnose(stack, "replica-stopped", diagnose_since=since)
        check = assert_only_root_cause(
            report, "containers.running", "FAIL", "restart_services=backend"
        )
        assert check["summary"].endswith(replica)
    except BaseException:
        run(["docker", "start", replica])
        raise
    remedy(stack, "replica-stopped", "restart.yml", restart_services="backend")
    wait_until_healthy()
    # A restarted replica may get another address; nginx resolved the old one at load time.
    reload_nginx()
    wait_until_healthy()


def test_database_paused(stack):
    """A paused database hangs instead of refusing: the probes time out, nothing waits forever."""
    since = now_utc()
    assert run(["docker", "pause", container("db")]).returncode == 0
    try:
        _, _, report, wall = diagnose(stack, "db-paused", diagnose_since=since)
        check = assert_only_root_cause(
            report, "containers.running", "FAIL", f"docker unpause {container('db')}"
        )
        assert "paused" in check["summary"]
        login = next(c for c in report["checks"] if c["id"] == "database.login")
        assert login["status"] == "FAIL"
        assert "timeout" in login["evidence"][0]
        assert wall < 60
    finally:
        run(["docker", "unpause", container("db")])
    wait_until_healthy()


def test_nginx_upstream_at_a_wrong_port(stack):
    upstream = stack["dir"] / "nginx" / "backend-upstream.conf"
    upstream.write_text("set $backend_route backend-live:9999;\n")
    reload_nginx()
    since = now_utc()
    try:
        _, _, report, _ = diagnose(stack, "upstream-port", diagnose_since=since)
        check = assert_only_root_cause(
            report, "configuration.upstream", "FAIL", "playbooks/deploy.yml"
        )
        assert "backend-live:9999" in check["summary"]
        statuses = {c["id"]: c["status"] for c in report["checks"]}
        assert statuses["network.http"] == "FAIL"  # its symptom
        assert statuses["network.replicas"] == "PASS"  # the replicas themselves answer
    finally:
        # The remedy it names rewrites the upstream and reloads nginx.
        remedy(stack, "upstream-port", "deploy.yml", deploy_health_timeout=90)
    assert "backend-live:8000" in upstream.read_text()
    wait_until_healthy()


def test_running_release_recorded_bad(stack):
    ledger = stack["dir"] / "ledger" / "releases.jsonl"
    original = ledger.read_bytes()
    last = json.loads(original.decode().strip().splitlines()[-1])
    bad = {**last, "id": last["id"] + 1, "status": "bad", "health": "unhealthy", "time": now_utc()}
    ledger.write_bytes(original + (json.dumps(bad) + "\n").encode())
    try:
        _, _, report, _ = diagnose(stack, "release-bad", diagnose_since=now_utc())
        check = assert_only_root_cause(
            report, "deployment.release", "FAIL", "ansible-playbook playbooks/rollback.yml"
        )
        assert f"{last['tag']} is recorded bad" in check["summary"]
    finally:
        ledger.write_bytes(original)


def test_backup_dir_nearly_full(stack):
    """A 4 MiB tmpfs as the backup directory, filled to 98 %."""
    backups = stack["base"] / "small-backups"
    backups.mkdir(mode=0o700)
    mount = run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(backups)])
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        (backups / "filler").write_bytes(b"\0" * (4 * 1024 * 1024 - 80 * 1024))
        _, _, report, _ = diagnose(
            stack, "backup-full", diagnose_since=now_utc(), stack_backup_dir=str(backups)
        )
        check = assert_only_root_cause(report, "host.disk", "FAIL", "playbooks/backup.yml")
        line = next(x for x in check["evidence"] if x.startswith(f"backup dir {backups}: "))
        assert float(line.split(": ")[1].split(" %")[0]) < 5.0, line
    finally:
        run(["umount", str(backups)])


def test_host_load_thresholds_force_and_clear_the_finding(stack):
    """The real host's load against thresholds: 0 forces host.load, the high ones clear it."""
    _, _, report, _ = diagnose(
        stack, "load-low", diagnose_since=now_utc(),
        diagnose_load_warn_per_core=0.0, diagnose_load_fail_per_core=0.0,
    )  # fmt: skip
    check = assert_only_root_cause(report, "host.load", "FAIL", "playbooks/scale.yml")
    assert check["evidence"][0].startswith("loadavg ")
    _, _, report, _ = diagnose(stack, "load-high", diagnose_since=now_utc())
    assert {c["id"]: c["status"] for c in report["checks"]}["host.load"] == "PASS"


def backend_image():
    """The image of a running backend replica (the earlier faults may have replaced
    replica 1: a remediation's restart or a rollout names them anew)."""
    names = backend_names()
    assert names, "no backend replica runs"
    out = run(["docker", "inspect", "--format", "{{.Config.Image}}", names[0]])
    return out.stdout.strip()


def start_stray(name, service, *options, command):
    """A container of the project's label (as compose would make it) that the test owns."""
    labels = [f"com.docker.compose.project={PROJECT}", f"com.docker.compose.service={service}"]
    argv = ["docker", "run", "-d", "--name", name, "--no-healthcheck", "--label", labels[0],
            "--label", labels[1], *options, backend_image(), *command]  # fmt: skip
    started = run(argv)
    assert started.returncode == 0, started.stderr


def wait_for(predicate, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout} s")


def inspect(name, template):
    return run(["docker", "inspect", "--format", template, name]).stdout.strip()


def test_container_oom_killed(stack):
    """A container with a 16 MiB limit that allocates 200 MiB is killed by the kernel."""
    since = now_utc()
    try:
        start_stray(OOM, "oomtest", "-m", "16m", "--memory-swap", "16m",
                    command=["python3", "-c", "b = bytearray(200 * 1024 * 1024)"])  # fmt: skip
        wait_for(lambda: inspect(OOM, "{{.State.Status}}") == "exited", f"{OOM} exited")
        assert inspect(OOM, "{{.State.OOMKilled}}") == "true"
        _, _, report, _ = diagnose(stack, "oom", diagnose_since=since)
        check = assert_only_root_cause(report, "containers.oom", "FAIL", '"memory": "512m"')
        assert check["evidence"] == [f"{OOM}: OOMKilled, memory limit 16777216"]
        assert "playbooks/scale.yml" in check["remedy"]
        assert findings(report)["containers.running"]["symptom_of"] == "containers.oom"
        # The kernel's own record of the kill (dmesg on this host): the process and its time,
        # the same event as Docker's OOMKilled.
        kernel = findings(report)["host.kernel_oom"]
        assert kernel["status"] == "FAIL", kernel
        assert kernel["symptom_of"] == "containers.oom"
        assert kernel["summary"].startswith("1 OOM kill in the kernel log since "), kernel
        assert kernel["summary"].endswith(f" in {OOM}"), kernel
        assert kernel["evidence"][0].startswith("python3 (pid "), kernel
    finally:
        run(["docker", "rm", "-f", OOM])


def test_backend_crash_looping(stack):
    """A backend replica that exits at once under restart=always: its count rises."""
    since = now_utc()
    try:
        start_stray(CRASH, "backend", "--restart", "always", "--network", NETWORK,
                    command=["sh", "-c", "echo 'fatal: settings invalid' >&2; exit 3"])  # fmt: skip
        wait_for(lambda: int(inspect(CRASH, "{{.RestartCount}}") or 0) >= 2, "two restarts")
        _, _, report, _ = diagnose(stack, "crashloop", diagnose_since=since)
        check = assert_only_root_cause(report, "containers.restarts", "FAIL", "rollback.yml")
        assert check["summary"] == f"restart loop: {CRASH}"
        assert f"docker logs --tail 50 {CRASH}" in check["remedy"]
        assert "last exit code 3" in check["evidence"][0]
    finally:
        run(["docker", "rm", "-f", CRASH])


# A stand-in backend replica: /health after a delay, /metrics or not (python3 -c SCRIPT).
FAKE_REPLICA = (Path(__file__).parent / "diagnose_fake_replica.py").read_text()


def target_health(ip):
    url = f"http://127.0.0.1:{PROM_PORT}/api/v1/targets?state=active"
    with urllib.request.urlopen(url, timeout=3) as resp:
        targets = json.loads(resp.read())["data"]["activeTargets"]
    return next((x["health"] for x in targets if x["labels"]["instance"] == f"{ip}:8000"), None)


def start_fake_replica(name, delay, metrics, *aliases):
    """Prometheus finds it by the service's name; nginx routes to it with the route alias."""
    options = [x for alias in ("backend", *aliases) for x in ("--network-alias", alias)]
    start_stray(name, "backend", "--network", NETWORK, *options,
                command=["python3", "-c", FAKE_REPLICA, str(delay), metrics])  # fmt: skip
    ip = inspect(name, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
    wait_for(lambda: target_health(ip) in ("up", "down"), f"Prometheus scraped {ip}", 60)
    return ip


def test_backend_metrics_unreachable_and_its_target_down(stack):
    """A replica that answers /health but not /metrics: Prometheus's target for it is down."""
    since = now_utc()
    try:
        ip = start_fake_replica(NO_METRICS, 0, "no")
        wait_for(lambda: target_health(ip) == "down", f"target {ip} down", 30)
        _, _, report, _ = diagnose(stack, "no-metrics", diagnose_since=since)
        check = assert_only_root_cause(
            report, "monitoring.backend_metrics", "FAIL", "playbooks/deploy.yml"
        )
        assert check["evidence"][0].startswith(f"http://{NO_METRICS}:8000/metrics: 404 ")
        targets = findings(report)["monitoring.targets"]
        assert targets["symptom_of"] == "monitoring.backend_metrics"
        assert f"{ip}:8000 ({NO_METRICS}): down" in targets["evidence"][0]
        assert "404" in targets["evidence"][0]
    finally:
        run(["docker", "rm", "-f", NO_METRICS])
    wait_until_healthy()
    forget_target(ip)


def test_one_slow_replica_behind_nginx(stack):
    """A replica whose /health takes 1.2 s, routed to by nginx: p95 rises, the replica is named."""
    since = now_utc()
    ip = None
    try:
        ip = start_fake_replica(SLOW, 1.2, "yes", "backend-live")  # nginx's route alias
        # nginx picks one of 3 addresses per request: 16 probes miss the slow one with
        # probability (2/3)^16 = 0.15% (6 missed it 8.8% of the time: failed once in a full run)
        _, _, report, _ = diagnose(stack, "slow", diagnose_since=since,
                                   diagnose_latency_probes=16)  # fmt: skip
        check = assert_only_root_cause(
            report, "latency.health", "WARN", f"docker stats --no-stream {SLOW}"
        )
        assert f"one replica is slow: {SLOW} (" in check["summary"]
    finally:
        run(["docker", "rm", "-f", SLOW])
        reload_nginx()
    wait_until_healthy()
    forget_target(ip)


def forget_target(ip):
    """Until Prometheus no longer lists a removed stray's address (its DNS discovery keeps it
    as a down target for a while, which the next test would see: it failed the Grafana test
    once in a full run)."""
    if ip:
        wait_for(lambda: target_health(ip) is None, f"Prometheus dropped {ip}", 120)


def test_backup_older_than_the_alert_limit(stack):
    prom = stack["metrics"] / "opsauto_backup.prom"
    text = prom.read_text()
    old = time.time() - 30 * 3600
    lines = [
        line.rsplit(" ", 1)[0] + f" {old:.0f}"
        if line.startswith("opsauto_backup_last_success_timestamp_seconds") else line
        for line in text.splitlines()
    ]  # fmt: skip
    prom.write_text("\n".join(lines) + "\n")
    try:
        _, _, report, _ = diagnose(stack, "backup-old", diagnose_since=now_utc())
        check = assert_only_root_cause(report, "backup.age", "FAIL", "playbooks/backup.yml")
        assert "the newest successful backup is 30.0 h old (limit 26 h" in check["summary"]
    finally:
        prom.write_text(fresh_backup_metrics())


GRAFANA_TOKEN = "glsa_integration-token-4242"


class FakeGrafana(http.server.BaseHTTPRequestHandler):
    """Grafana's health and datasource API as far as monitoring.grafana reads it."""

    seen: list = []
    PAGES = {
        "/api/health": (200, {"commit": "abc", "database": "ok", "version": "10.4.2"}),
        "/api/datasources": (200, [{"uid": "prom", "name": "Prometheus", "type": "prometheus"},
                                   {"uid": "pg", "name": "App DB", "type": "postgres"}]),
        "/api/datasources/uid/prom/health": (200, {"status": "OK", "message": "ok"}),
        "/api/datasources/uid/pg/health": (400, {"status": "ERROR",
                                                 "message": "connection refused"}),
    }  # fmt: skip

    def do_GET(self):  # noqa: N802 (http.server's name)
        auth = self.headers.get("Authorization") or ""
        self.seen.append((self.path, auth))
        status, body = self.PAGES.get(self.path, (404, {"message": "Not found"}))
        if self.path != "/api/health" and auth != f"Bearer {GRAFANA_TOKEN}":
            status, body = 401, {"message": "Unauthorized"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_grafana_datasource_failing_and_the_token_kept_out(stack):
    """monitoring.grafana against a Grafana stand-in on 127.0.0.1: /api/health, then each
    datasource's health with the token; the token reaches Grafana in the header only and is
    in no report, no task output and no event of the run."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeGrafana.seen.clear()
    try:
        result, failures, report, _ = diagnose(
            stack, "grafana", diagnose_since=now_utc(),
            diagnose_grafana_url=f"http://127.0.0.1:{server.server_port}",
            diagnose_grafana_token=GRAFANA_TOKEN,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert result.rc == 0, failures
    check = assert_only_root_cause(report, "monitoring.grafana", "FAIL", "Save & test")
    assert check["summary"] == ("1 of 2 Grafana datasources fail their health check: App DB")
    assert check["evidence"] == ["App DB (postgres, uid pg): HTTP 400 ERROR connection refused"]
    assert FakeGrafana.seen == [
        ("/api/health", ""),
        ("/api/datasources", f"Bearer {GRAFANA_TOKEN}"),
        ("/api/datasources/uid/prom/health", f"Bearer {GRAFANA_TOKEN}"),
        ("/api/datasources/uid/pg/health", f"Bearer {GRAFANA_TOKEN}"),
    ]
    run_dir = stack["base"] / "run-grafana"
    reports = stack["base"] / "reports-grafana"
    leaks = [
        str(path)
        for path in [*run_dir.rglob("*"), *reports.rglob("*")]
        # env/extravars is the input handed to ansible-runner, as AWX hands it.
        if path.is_file() and path.parts[-2:] != ("env", "extravars")
        and GRAFANA_TOKEN in path.read_text(errors="replace")
    ]  # fmt: skip
    assert leaks == []
    assert GRAFANA_TOKEN not in json.dumps([e.get("event_data") for e in result.events])


def test_published_port_taken_by_another_process(stack):
    """nginx stopped, another process takes its port, nginx cannot start again."""
    assert run(["docker", "stop", "-t", "5", container("nginx")]).returncode == 0
    squatter = socket.socket()
    try:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", HTTP_PORT))
        squatter.listen(1)
        started = run(["docker", "start", container("nginx")])
        assert started.returncode != 0, "docker start succeeded on a taken port"
        since = now_utc()
        _, _, report, _ = diagnose(stack, "port-taken", diagnose_since=since)
        check = assert_only_root_cause(report, "network.ports", "FAIL", "restart_services=nginx")
        assert f"{container('nginx')} wants {HTTP_PORT}" in check["summary"]
        assert f"ss -ltnp 'sport = :{HTTP_PORT}'" in check["remedy"]
        assert "held by another process" in check["evidence"][0]
    finally:
        squatter.close()
    # The remedy it names starts nginx once the port is free.
    remedy(stack, "port-taken", "restart.yml", restart_services="nginx")
    wait_until_healthy()


def remediate(stack, name, finding, cmdline=""):
    """playbooks/diagnose_remediate.yml for one finding; (runner result, failures, report)."""
    reports = stack["base"] / f"reports-{name}"
    variables = {**stack["vars"], "diagnose_report_dir": str(reports),
                 "diagnose_backup_metrics_dir": str(stack["metrics"]),
                 "diagnose_load_warn_per_core": 50.0, "diagnose_load_fail_per_core": 100.0,
                 "diagnose_remediate_finding": finding}  # fmt: skip
    result, failures = run_playbook(
        stack["base"] / f"run-{name}", "diagnose_remediate.yml", variables, cmdline=cmdline
    )
    path = reports / "localhost.json"
    return result, failures, json.loads(path.read_text()) if path.exists() else None


def test_remediate_applies_one_finding_only_when_asked(stack):
    """diagnose_remediate: --check changes nothing; the run restarts the stopped database."""
    db = container("db")
    assert run(["docker", "stop", "-t", "5", db]).returncode == 0
    try:
        result, failures, _ = remediate(stack, "fix-check", "containers.running", "--check --diff")
        assert result.rc == 0, failures
        assert inspect(db, "{{.State.Status}}") == "exited"  # check mode: nothing started
        # A finding that is PASS: nothing to fix, nothing changed.
        result, failures, _ = remediate(stack, "fix-pass", "deployment.release")
        assert result.rc == 0, failures
        assert result.stats["changed"].get("localhost", 0) == 0, result.stats
        assert inspect(db, "{{.State.Status}}") == "exited"
        # A check whose remedy is not automated is refused by the argument spec.
        result, failures, _ = remediate(stack, "fix-refused", "host.disk")
        assert result.rc != 0
        assert "diagnose_remediate_finding" in " ".join(failures)
        result, failures, report = remediate(stack, "fix-run", "containers.running")
        assert result.rc == 0, failures
        assert inspect(db, "{{.State.Status}}") == "running"
        statuses = {c["id"]: c["status"] for c in report["checks"]}
        assert statuses["containers.running"] == "PASS"  # the report of the run after the fix
    finally:
        run(["docker", "start", db])
    wait_until_healthy()


def test_stack_is_clean_again_after_the_faults(stack):
    wait_until_healthy()
    _, _, report, _ = diagnose(stack, "restored", diagnose_since=now_utc())
    assert findings(report) == {}, json.dumps(findings(report), indent=1)
