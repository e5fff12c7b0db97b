"""Unit tests of the diagnosis collection (module_utils/diagnose_collect.py): the parsers
and one whole collection through a fake docker CLI and HTTP client (no engine needed)."""

from __future__ import annotations

import importlib
import json
import urllib.parse
from pathlib import Path

import ansible.module_utils
import pytest

MODULE_UTILS = Path(__file__).resolve().parents[2] / "module_utils"
if str(MODULE_UTILS) not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(MODULE_UTILS))
col = importlib.import_module("ansible.module_utils.diagnose_collect")
dc = importlib.import_module("ansible.module_utils.diagnose_checks")


def test_parse_time_handles_nanoseconds_offsets_and_unset():
    assert col.parse_time("2026-01-01T00:00:00Z") == 1767225600.0
    assert col.parse_time("2026-01-01T00:00:01.123456789Z") == pytest.approx(1767225601.123456)
    assert col.parse_time("2026-01-01T01:00:00+01:00") == 1767225600.0
    assert col.parse_time("0001-01-01T00:00:00Z") is None
    assert col.parse_time("") is None


def test_window_start_durations_times_and_garbage():
    assert col.window_start("15m", 10_000.0) == 10_000.0 - 900
    assert col.window_start("2h", 10_000.0) == 10_000.0 - 7200
    assert col.window_start("2026-01-01T00:00:00Z", 0) == 1767225600.0
    with pytest.raises(ValueError, match="neither a duration"):
        col.window_start("yesterday", 0)


def test_container_facts_from_docker_inspect():
    inspected = {
        "Id": "abcdef1234567890",
        "Name": "/fm-backend-1",
        "RestartCount": 2,
        "State": {
            "Status": "running",
            "ExitCode": 0,
            "OOMKilled": False,
            "StartedAt": "2026-01-01T00:10:00.5Z",
            "FinishedAt": "0001-01-01T00:00:00Z",
            "Health": {"Status": "unhealthy", "Log": [{"Output": "ok"}, {"Output": "HTTP 503\n"}]},
        },
        "Config": {"Image": "fm/backend:1.1.0", "Labels": {col.SERVICE_LABEL: "backend"}},
        "HostConfig": {"Memory": 268435456},
    }
    facts = col.container_facts(inspected, window_from=1767225600.0)
    assert facts["name"] == "fm-backend-1"
    assert facts["service"] == "backend"
    assert facts["health"] == "unhealthy"
    assert facts["health_log"] == "HTTP 503"
    assert facts["restart_count"] == 2
    assert facts["recent_start"] is True
    assert col.container_facts(inspected, window_from=1767230000.0)["recent_start"] is False
    assert col.container_facts({"State": {}}, 0)["health"] == "none"


def test_scan_logs_counts_each_line_once_and_keeps_the_first():
    text = "\n".join(
        [
            "2026-01-01T00:00:01Z FATAL:  password authentication failed for user app",
            "2026-01-01T00:00:02Z ok",
            "2026-01-01T00:00:03Z FATAL:  password authentication failed for user app",
            "2026-01-01T00:00:04Z [error] connect() failed (111: Connection refused) while "
            'connecting to upstream, upstream: "http://172.18.0.3:8000/health"',
            "2026-01-01T00:00:05Z Traceback (most recent call last):",
            "2026-01-01T00:00:06Z OSError: [Errno 98] Address already in use",
        ]
    )
    matches = {}
    col.scan_logs("fm-x", text, matches)
    assert matches["logs.database_errors"]["fm-x"]["count"] == 2
    assert matches["logs.database_errors"]["fm-x"]["first"].startswith("2026-01-01T00:00:01Z")
    assert matches["logs.nginx_upstream"]["fm-x"]["count"] == 1
    assert matches["logs.tracebacks"]["fm-x"]["count"] == 1
    assert matches["logs.address_in_use"]["fm-x"]["count"] == 1


def test_scan_access_log_5xx_and_slowest_endpoints():
    lines = [
        '2026-01-01T00:00:01Z 172.18.0.1 [01/Jan/2026:00:00:01 +0000] "GET /health HTTP/1.1" '
        "200 61 upstream=172.18.0.3:8000 upstream_status=200 rt=0.004",
        '2026-01-01T00:00:02Z 172.18.0.1 [01/Jan/2026:00:00:02 +0000] "GET /items/12 HTTP/1.1" '
        "502 150 upstream=172.18.0.3:8000 upstream_status=502 rt=1.250",
        '2026-01-01T00:00:03Z 172.18.0.1 [01/Jan/2026:00:00:03 +0000] "GET /items/13?x=1 HTTP/1.1" '
        "200 10 upstream=172.18.0.4:8000 upstream_status=200 rt=0.300",
        "2026-01-01T00:00:04Z not an access line",
    ]
    access = {}
    col.scan_access_log("\n".join(lines), access)
    access = col.finish_access(access)
    assert access["requests"] == 3
    assert access["errors"] == 1
    assert '"GET /items/12 HTTP/1.1" 502' in access["first_error"]
    assert access["slowest"][0] == {"endpoint": "GET /items/{id}", "count": 2, "max_ms": 1250}
    assert access["slowest"][1]["endpoint"] == "GET /health"


def test_parse_meminfo_env_upstream_probes_targets():
    mem = col.parse_meminfo("MemTotal:  2048 kB\nMemAvailable: 1024 kB\nSwapTotal: 0 kB\n")
    assert mem == {"mem_total": 2097152, "mem_available": 1048576, "swap_total": 0, "swap_free": 0}
    env = col.parse_env_keys("# c\nDB_NAME='appdb'\nDB_PASSWORD=''\nexport DB_USER=app\n")
    assert env == {"DB_NAME": True, "DB_PASSWORD": False, "DB_USER": True}
    upstream = "# header\nserver backend:8000 max_fails=1;\n"
    assert col.parse_upstream(upstream) == ["backend:8000"]
    rolling = "server fm-b-3:8000 max_fails=1 fail_timeout=5s;\nserver fm-b-4:8000;\n"
    assert col.parse_upstream(rolling) == ["fm-b-3:8000", "fm-b-4:8000"]
    probes = col.parse_probes(
        "http://a:8000/health|200 0.004512|\n"
        "http://b:8000/health|000 0.000|curl: (6) Could not resolve host: b\n"
    )
    assert probes == [
        {"url": "http://a:8000/health", "status": "200", "detail": "5 ms", "ms": 5},
        {"url": "http://b:8000/health", "status": "000",
         "detail": "curl: (6) Could not resolve host: b", "ms": None},
    ]  # fmt: skip
    body = json.dumps(
        {"data": {"activeTargets": [
            {"labels": {"job": "backend", "instance": "b:8000"}, "health": "down",
             "lastError": "context deadline exceeded"}]}}
    )  # fmt: skip
    assert col.parse_targets(body) == [
        {"job": "backend", "instance": "b:8000", "health": "down",
         "error": "context deadline exceeded"}
    ]  # fmt: skip


# --------------------------------------------------------------------------- whole collection


def inspect_obj(name, service, status="running", restart=0):
    return {
        "Id": name * 3,
        "Name": "/" + name,
        "RestartCount": restart,
        "State": {"Status": status, "ExitCode": 0, "StartedAt": "2026-01-01T00:00:00Z",
                  "Health": {"Status": "healthy"}},
        "Config": {"Image": f"img/{service}", "Labels": {col.SERVICE_LABEL: service},
                   "Cmd": ["nginx", "-c", "/etc/nginx/opsauto/nginx.conf"]},
    }  # fmt: skip


class FakeDocker:
    """Answers the docker commands the collector runs; records every argv."""

    def __init__(self, restart_later=0):
        self.calls = []
        self.restart_later = restart_later
        self.containers = [
            inspect_obj("p-db-1", "db"),
            inspect_obj("p-backend-1", "backend"),
            inspect_obj("p-nginx-1", "nginx"),
        ]

    def __call__(self, argv, timeout):
        self.calls.append(argv)
        if argv[0] in ("dmesg", "journalctl"):  # the kernel log and the daemon's journal
            return 0, "", ""
        args = argv[1:]
        if args[0] == "info":
            return 0, "24.0.5 /var/lib/docker\n", ""
        if args[0] == "ps":
            return 0, "\n".join(c["Id"] for c in self.containers), ""
        if args[:2] == ["inspect", "--format"]:
            return 0, f"/p-db-1 0\n/p-backend-1 {self.restart_later}\n/p-nginx-1 0\n", ""
        if args[0] == "inspect":
            return 0, json.dumps(self.containers), ""
        if args[0] == "exec" and args[2] == "pg_isready":
            return 0, "127.0.0.1:5432 - accepting connections\n", ""
        if args[0] == "exec" and args[2] == "python3":
            return 0, json.dumps({"host": "db", "user": "app", "database": "appdb",
                                  "resolved": "10.0.0.2", "login_ms": 3, "connections": 5,
                                  "max_connections": 100, "size": 1, "long_queries": [],
                                  "lock_waits": []}) + "\n", ""  # fmt: skip
        if args[0] == "exec" and args[2] == "sh":
            return 0, "".join(f"{url}|200 0.003|\n" for url in args[6:]), ""
        if args[0] == "exec" and args[2] == "nginx":
            return 0, "", "nginx: configuration file test is successful\n"
        if args[0] == "logs":
            if args[-1] == "p-nginx-1":
                return 0, '"GET /health HTTP/1.1" 200 2 rt=0.002\n', ""
            return 0, "", ""
        if args[0] == "compose" and "-q" in args:
            return 0, "", ""
        if args[0] == "compose":
            return 0, json.dumps({"services": {"db": {}, "backend": {"deploy": {"replicas": 1}},
                                               "nginx": {}}}), ""  # fmt: skip
        if args[0] == "images":
            return 0, "img/db:latest\n", ""
        if args[0] == "events":
            return (
                0,
                "p-backend-1 1\np-backend-1 3\n",
                "",
            )  # the daemon's `die` events, oldest first
        raise AssertionError(f"unexpected command {argv}")


def fake_http(url, timeout):
    if "/api/v1/rules" in url:
        rule = {"type": "alerting", "name": "BackupMissing", "health": "ok"}
        groups = [{"name": "opsauto-backup", "rules": [rule]}]
        body = json.dumps({"status": "success", "data": {"groups": groups}})
        return {"status": 200, "body": body, "ms": 2.0, "error": ""}
    if "/api/v1/alerts" in url:
        return {"status": 200, "body": '{"status": "success", "data": {"alerts": []}}', "ms": 2.0,
                "error": ""}  # fmt: skip
    if "/api/v1/query?" in url:
        errors = "5.." in urllib.parse.unquote(url)
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {}, "value": [1767225600, "0" if errors else "12.5"]}]}})  # fmt: skip
        return {"status": 200, "body": body, "ms": 2.0, "error": ""}
    if "/api/v1/targets" in url:
        body = json.dumps({"data": {"activeTargets": [
            {"labels": {"job": "backend", "instance": "b:8000"}, "health": "up", "lastError": ""}
        ]}})  # fmt: skip
        return {"status": 200, "body": body, "ms": 2.0, "error": ""}
    return {"status": 200, "body": '{"status": "ok", "database": "ok"}', "ms": 4.0, "error": ""}


FILES = {
    "/proc/loadavg": "0.10 0.20 0.30 1/100 1234\n",
    "/proc/meminfo": "MemTotal: 2048 kB\nMemAvailable: 1024 kB\n",
    "/p/.env": "DB_NAME='appdb'\nDB_USER='app'\nDB_PASSWORD='secret-value'\n",
    "/p/nginx/backend-upstream.conf": "server backend:8000 max_fails=1;\n",
}


def read(path):
    if path not in FILES:
        raise FileNotFoundError(2, "No such file or directory")
    return FILES[path]


def disk(label, path):
    return {"label": label, "path": path, "exists": True, "total": 100, "free": 50,
            "inodes_total": 10, "inodes_free": 5}  # fmt: skip


PARAMS = {
    "project_name": "p",
    "project_dir": "/p",
    "services": {"db": "db", "backend": "backend", "nginx": "nginx", "prometheus": "prometheus"},
    "backend_port": 8000,
    "db_name": "appdb",
    "db_user": "app",
    "http_bind": "127.0.0.1",
    "http_port": 8080,
    "prometheus_bind": "127.0.0.1",
    "prometheus_port": 9090,
    "ledger_path": "/p/ledger/releases.jsonl",
    "upstream_path": "/p/nginx/backend-upstream.conf",
    "backup_dir": "/b",
    "since": "15m",
    "env_required": ["DB_NAME", "DB_USER", "DB_PASSWORD"],
    "thresholds": dict(dc.DEFAULT_THRESHOLDS),
    "restart_sample_seconds": 2,
    "latency_probes": 3,
    "log_max_lines": 100,
    "command_timeout": 5,
}


def collect(docker):
    slept = []
    collector = col.Collector(
        PARAMS, run=docker, http_get=fake_http, clock=lambda: 1767225600.0,
        sleep=slept.append, read=read, disk=disk, booted=lambda: False,
    )  # fmt: skip
    return collector.collect(), slept


def test_collection_of_a_healthy_project_evaluates_clean():
    docker = FakeDocker()
    facts, slept = collect(docker)
    assert slept == [2]  # the restart counts are read again after the sample interval
    assert [c["name"] for c in facts["containers"]] == ["p-backend-1", "p-db-1", "p-nginx-1"]
    assert facts["env_keys"] == {"DB_NAME": True, "DB_USER": True, "DB_PASSWORD": True}
    assert "secret-value" not in json.dumps(facts)  # .env values never enter the facts
    assert facts["latency"] == {"ms": [4, 4, 4], "errors": 0}
    assert facts["ledger"]["entries"] == []  # no ledger file yet
    assert facts["wanted_replicas"] == {"db": 1, "backend": 1, "nginx": 1}
    results = {r["id"]: r for r in dc.evaluate(facts)}
    findings = {k: r["status"] for k, r in results.items() if r["status"] != "PASS"}
    # Only the empty ledger (this fake host never recorded a release) is a finding; the rest
    # is SKIP for a source this fake host lacks: no systemd (so no daemon journal), no
    # Prometheus container to run promtool in, no Grafana URL.
    assert findings == {
        "deployment.release": "WARN",
        "deployment.rollback_images": "SKIP",
        "host.docker_journal": "SKIP",
        "configuration.prometheus": "SKIP",
        "monitoring.grafana": "SKIP",
    }
    assert results["host.kernel_oom"]["summary"].endswith("(dmesg)")
    assert results["monitoring.alerts"]["summary"] == (
        "1 alerting rules loaded (BackupMissing among them), none firing"
    )
    # nginx -t tests the configuration file the container was started with.
    nginx_t = next(a for a in docker.calls if a[1:2] == ["exec"] and a[3] == "nginx")
    assert nginx_t[-2:] == ["-c", "/etc/nginx/opsauto/nginx.conf"]
    # Read-only: no docker command that changes anything.
    changing = {"start", "stop", "restart", "rm", "kill", "pause", "unpause", "up", "down", "run"}
    assert not [a for a in docker.calls if a[1] in changing or (a[1] == "compose" and
                set(a) & changing)]  # fmt: skip


def test_a_rising_restart_count_is_seen_between_the_two_reads():
    docker = FakeDocker(restart_later=3)
    facts, _ = collect(docker)
    backend = next(c for c in facts["containers"] if c["service"] == "backend")
    assert (backend["restart_count"], backend["restart_count_later"]) == (0, 3)
    results = {r["id"]: r for r in dc.evaluate(facts)}
    assert results["containers.restarts"]["status"] == "FAIL"
    # A running container's inspect reads exit code 0: the code comes from its last `die` event.
    assert backend["last_exit_code"] == 3
    assert "last exit code 3" in results["containers.restarts"]["evidence"][0]
    events = [a for a in docker.calls if a[1] == "events"]
    assert len(events) == 1
    assert "container=p-backend-1" in events[0]
    assert "container=p-db-1" not in events[0]


def test_no_events_read_when_nothing_restarted():
    docker = FakeDocker()
    collect(docker)
    assert not [a for a in docker.calls if a[1] == "events"]


def test_no_latency_probes_when_health_fails():
    calls = []

    def failing_http(url, timeout):
        calls.append(url)
        if "/api/v1/targets" in url:
            return fake_http(url, timeout)
        return {"status": 503, "body": "{}", "ms": 2000.0, "error": ""}

    collector = col.Collector(
        PARAMS, run=FakeDocker(), http_get=failing_http, clock=lambda: 1767225600.0,
        sleep=lambda s: None, read=read, disk=disk,
    )  # fmt: skip
    facts = collector.collect()
    assert facts["latency"] == {}
    assert sum(1 for u in calls if u.endswith("/health")) == 1  # the one network.http probe
    results = {r["id"]: r for r in dc.evaluate(facts)}
    assert results["latency.health"]["status"] == "SKIP"


def test_unparsable_login_output_becomes_a_login_error():
    class BrokenExec(FakeDocker):
        def __call__(self, argv, timeout):
            if argv[1] == "exec" and argv[3] == "python3":
                return 126, "", "OCI runtime exec failed: python3 not found\n"
            return super().__call__(argv, timeout)

    facts, _ = collect(BrokenExec())
    assert facts["db_login"]["error"] == (
        "docker exec exit 126: OCI runtime exec failed: python3 not found"
    )


def test_the_scripts_run_in_the_containers_are_valid():
    compile(col.LOGIN_SCRIPT, "login", "exec")  # the backend's python3 runs it
    assert col.PROBE_SCRIPT.startswith('for u in "$@"; do ')


def test_textfile_metrics_listening_ports_port_bindings_and_query_results():
    text = (
        "# HELP opsauto_backup_last_success_timestamp_seconds ...\n"
        'opsauto_backup_last_success_timestamp_seconds{project="p"} 1.7672256e+09\n'
        "opsauto_backup_verified 1\n"
        "garbage line\n"
    )
    assert col.parse_textfile_metrics(text) == {
        "opsauto_backup_last_success_timestamp_seconds": 1767225600.0,
        "opsauto_backup_verified": 1.0,
    }
    tcp = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0\n"
        "   1: 0100007F:2382 0100007F:1F90 01 00000000:00000000 00:00000000 00000000 0\n"
    )
    tcp6 = "  sl  local_address\n   0: 00000000000000000000000000000000:0016 0000:0000 0A x\n"
    assert col.listening_ports(tcp, tcp6) == {8080, 22}  # 9090 is an established socket
    inspected = {"HostConfig": {"PortBindings": {
        "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}],
        "53/udp": [{"HostIp": "", "HostPort": "53"}],
    }}}  # fmt: skip
    assert col.published_ports(inspected) == [("127.0.0.1", 8080, "80/tcp")]
    body = json.dumps({"status": "success", "data": {"result": [
        {"value": [0, "2"]}, {"value": [0, "3.5"]}]}})  # fmt: skip
    assert col.parse_vector_sum(body) == 5.5
    with pytest.raises(ValueError, match="bad_data"):
        col.parse_vector_sum(json.dumps({"status": "error", "error": "bad_data"}))


def test_collection_reads_metrics_probes_backup_metrics_and_the_5xx_series():
    FILES["/m/opsauto_backup.prom"] = "opsauto_backup_last_success_timestamp_seconds 1767220000\n"
    collector = col.Collector(
        {**PARAMS, "backup_metrics_dir": "/m", "controller_time": 1767225599.0},
        run=FakeDocker(), http_get=fake_http, clock=lambda: 1767225600.0,
        sleep=lambda s: None, read=read, disk=disk,
    )  # fmt: skip
    try:
        facts = collector.collect()
    finally:
        del FILES["/m/opsauto_backup.prom"]
    assert facts["backup_metrics"] == {
        "dir": "/m",
        "files": ["opsauto_backup.prom"],
        "values": {"opsauto_backup_last_success_timestamp_seconds": 1767220000.0},
    }
    assert facts["prometheus"]["http_5xx"]["requests"] == 12.5
    assert facts["prometheus"]["http_5xx"]["errors"] == 0.0
    assert facts["prometheus"]["http_5xx"]["window_seconds"] == 900
    assert facts["clock"] == {"controller": 1767225599.0, "host": 1767225600.0}
    assert [p["url"] for p in facts["metrics_probes"]] == ["http://p-backend-1:8000/metrics"]
    results = {r["id"]: r["status"] for r in dc.evaluate(facts)}
    assert results["backup.age"] == "PASS"
    assert results["monitoring.http_5xx"] == "PASS"
    assert results["host.clock"] == "PASS"


def test_health_is_probed_at_the_stacks_health_path():
    urls, docker = [], FakeDocker()

    def recording_http(url, timeout):
        urls.append(url)
        return fake_http(url, timeout)

    collector = col.Collector(
        {**PARAMS, "health_path": "/ready"}, run=docker, http_get=recording_http,
        clock=lambda: 1767225600.0, sleep=lambda s: None, read=read, disk=disk,
    )  # fmt: skip
    collector.collect()
    health = [u for u in urls if "/api/v1/" not in u and "/metrics" not in u]
    assert health
    assert all(u.endswith("/ready") for u in health), health
    # the replicas, probed from the nginx container
    probes = [a for argv in docker.calls for a in argv if a.startswith("http://p-backend-1:")]
    assert "http://p-backend-1:8000/ready" in probes
    assert "http://p-backend-1:8000/health" not in probes
