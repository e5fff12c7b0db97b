"""The diagnose playbook against this machine's Docker engine (ansible-runner, as AWX runs
it), on a reference stack of its own: a healthy stack yields no WARN and no FAIL (twice, and
in check mode) and is left untouched; then one fault at a time is injected, the right check
is the only root cause (everything else that is not PASS is marked as its symptom) and names
the right remedy, and that remedy's playbook restores the stack before the next fault.

Run it under the engine lock (flock /tmp/opsauto-engine.lock pytest tests/integration/...).
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from datetime import UTC, datetime

import pytest

from tests.conftest import compose_down, run, run_playbook

PROJECT = "opsauto-it-diagnose"
HTTP_PORT = 18380
PROM_PORT = 19380
PASSWORD = "integration-password-1"


def stack_vars(project_dir, backup_dir):
    return {
        "stack_project_name": PROJECT,
        "stack_project_dir": str(project_dir),
        "stack_http_port": HTTP_PORT,
        "stack_prometheus_port": PROM_PORT,
        "stack_db_password": PASSWORD,
        "stack_backup_dir": str(backup_dir),
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_ready):
    base = tmp_path_factory.mktemp("diagnose")
    project_dir, backup_dir = base / PROJECT, base / "backups"
    backup_dir.mkdir(mode=0o700)
    variables = stack_vars(project_dir, backup_dir)
    result, failures = run_playbook(
        base / "deploy-run",
        "deploy.yml",
        {**variables, "deploy_backend_replicas": 2, "deploy_health_timeout": 90},
    )
    assert result.rc == 0, failures
    yield {"base": base, "dir": project_dir, "vars": variables}
    compose_down(PROJECT)


def now_utc():
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def diagnose(stack, name, cmdline="", **extra):
    """Run playbooks/diagnose.yml; return (runner result, failures, report, wall seconds)."""
    reports = stack["base"] / f"reports-{name}"
    variables = {
        **stack["vars"],
        "diagnose_report_dir": str(reports),
        # This machine's engine is shared by parallel test runs (docker-in-docker Molecule
        # hosts): its load says nothing about the stack under test.
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
        assert report["summary"] == {
            "status": "PASS",
            "counts": {"PASS": len(report["checks"]), "WARN": 0, "FAIL": 0, "SKIP": 0},
            "root_causes": [],
        }
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


def test_stack_is_clean_again_after_the_faults(stack):
    wait_until_healthy()
    _, _, report, _ = diagnose(stack, "restored", diagnose_since=now_utc())
    assert findings(report) == {}, json.dumps(findings(report), indent=1)
