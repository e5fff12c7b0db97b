"""Unit tests of the diagnosis's sources beside the containers (module_utils/diagnose_sources.py)
and their checks: host.kernel_oom, host.docker_journal, configuration.prometheus,
monitoring.alerts, monitoring.grafana. Fake runner and HTTP client, no engine; every branch
PASS / WARN / FAIL / SKIP with its evidence and remedy. Built on the healthy facts of
test_diagnose_checks.py. The real host's paths (dmesg here, no systemd) are exercised by
tests/integration/test_diagnose_local.py.
"""

from __future__ import annotations

import copy
import http.server
import importlib
import json
import threading

import pytest
from test_diagnose_checks import dc, healthy_facts, run

src = importlib.import_module("ansible.module_utils.diagnose_sources")
col = importlib.import_module("ansible.module_utils.diagnose_collect")

PROJECT_ID = "a1" * 32  # fm-backend-1's full container id (64 hex)
OTHER_ID = "b2" * 32
# What kernel 6.x writes for a cgroup's OOM kill (dmesg --time-format iso).
DMESG = f"""\
2026-01-01T00:04:59,000000+00:00 eth0: link up
2026-01-01T00:05:00,100000+00:00 python3 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0
2026-01-01T00:05:00,100100+00:00 oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),\
cpuset={PROJECT_ID},mems_allowed=0,oom_memcg=/docker/{PROJECT_ID},task_memcg=/docker/{PROJECT_ID},\
task=gunicorn,pid=4321,uid=1000
2026-01-01T00:05:00,100200+00:00 Memory cgroup out of memory: Killed process 4321 (gunicorn) \
total-vm:215000kB, anon-rss:16000kB, file-rss:0kB, shmem-rss:0kB, UID:1000 oom_score_adj:0
2026-01-01T00:06:30,000000+00:00 oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=x,\
mems_allowed=0,oom_memcg=/docker/{PROJECT_ID},task_memcg=/docker/{PROJECT_ID},task=gunicorn,pid=4400,uid=1000
2026-01-01T00:06:30,000100+00:00 Memory cgroup out of memory: Killed process 4400 (gunicorn) \
total-vm:1kB
2026-01-01T00:07:00,000000+00:00 oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=y,\
mems_allowed=0,oom_memcg=/system.slice/docker-{OTHER_ID}.scope,\
task_memcg=/system.slice/docker-{OTHER_ID}.scope,task=java,pid=777,uid=0
2026-01-01T00:07:00,000100+00:00 Memory cgroup out of memory: Killed process 777 (java) total-vm:1kB
"""
WINDOW = 1767225600.0  # 2026-01-01T00:00:00Z
GLOBAL = (
    "2026-01-01T00:09:00+0000 web1 kernel: oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),"
    "cpuset=/,mems_allowed=0,global_oom,task_memcg=/system.slice/sshd.service,task=sshd,pid=99,"
    "uid=0\n"
    "2026-01-01T00:09:00+0000 web1 kernel: Out of memory: Killed process 99 (sshd) total-vm:1kB\n"
)


def with_ids(facts):
    for c in facts["containers"]:
        if c["name"] == "fm-backend-1":
            c["id"] = PROJECT_ID[:12]
    return facts


def roots(facts, **thresholds):
    return dc.summarize(dc.evaluate(copy.deepcopy(facts), thresholds))["root_causes"]


class FakeRun:
    """A runner answering by argv[0] (and the docker exec's program) from a table."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def __call__(self, argv, timeout):
        self.calls.append(list(argv))
        key = argv[0] if argv[0] != "docker" else argv[3]
        return self.answers.get(key, (127, "", f"{key}: not found"))


# --------------------------------------------------------------------------- parsers


def test_split_stamp_reads_dmesg_and_journal_times():
    assert src.split_stamp("2026-01-01T00:00:01,500000+00:00 x y")[:2] == (
        WINDOW + 1.5,
        "2026-01-01T00:00:01Z",
    )
    assert src.split_stamp("2026-01-01T01:00:00+0100 host kernel: z")[0] == WINDOW
    assert src.split_stamp("2026-01-01T01:00:00+01:00 host kernel: z")[2] == "host kernel: z"
    assert src.split_stamp("-- No entries --") is None


def test_parse_oom_kills_pairs_the_cgroup_with_the_killed_process():
    kills = src.parse_oom_kills(DMESG, WINDOW)
    assert [(k["task"], k["pid"], k["container_id"][:4], k["global"]) for k in kills] == [
        ("gunicorn", 4321, "a1a1", False),
        ("gunicorn", 4400, "a1a1", False),
        ("java", 777, "b2b2", False),  # the systemd cgroup driver's docker-<id>.scope
    ]
    assert kills[0]["time"] == "2026-01-01T00:05:00Z"
    # Only the window counts.
    assert [k["pid"] for k in src.parse_oom_kills(DMESG, WINDOW + 6 * 60)] == [4400, 777]
    host = src.parse_oom_kills(GLOBAL, WINDOW)
    assert host[0]["global"] is True
    assert host[0]["container_id"] == ""
    # An older kernel without the oom-kill: line: the kill is still counted.
    old = "2026-01-01T00:01:00,0+00:00 Out of memory: Killed process 5 (x) total-vm:1kB\n"
    assert src.parse_oom_kills(old, WINDOW)[0]["global"] is True


# Copied from this test machine's dmesg (kernel 6.18, cgroup v1, Docker's cgroupfs driver)
# after another run's OOM fault test: a container with a 16 MiB limit allocating 200 MiB.
REAL_ID = "06468965b270d84ad8b707598a4ee0591e3a14c7246318ebcf3fc8ecd8934982"
REAL_DMESG = f"""\
2026-11-29T18:46:22,998926+00:00 [  17712] 10001 17712    54644     5305     4000     1305  \
       0    90112        0             0 python3
2026-11-29T18:46:22,998929+00:00 oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),\
cpuset={REAL_ID},mems_allowed=0,oom_memcg=/docker/{REAL_ID},task_memcg=/docker/{REAL_ID},\
task=python3,pid=17712,uid=10001
2026-11-29T18:46:22,998942+00:00 Memory cgroup out of memory: Killed process 17712 (python3) \
total-vm:218576kB, anon-rss:16000kB, file-rss:5220kB, shmem-rss:0kB, UID:10001 pgtables:88kB \
oom_score_adj:0
2026-11-29T18:46:23,073034+00:00 docker0: port 1(veth20e8ce1) entered disabled state
"""


def test_parse_oom_kills_of_a_real_kernel_log():
    assert src.parse_oom_kills(REAL_DMESG, 1795977900.0) == [
        {
            "time": "2026-11-29T18:46:22Z",
            "epoch": pytest.approx(1795977982.998942),
            "pid": 17712,
            "task": "python3",
            "memcg": f"/docker/{REAL_ID}",
            "container_id": REAL_ID,
            "global": False,
        }
    ]


def test_parse_docker_journal_counts_errors_not_warnings_and_sees_the_unit_fail():
    text = (
        '2026-01-01T00:01:00+0000 web1 dockerd[612]: time="..." level=error '
        'msg="Handler for POST /v1.43/containers/abcdef0123456789/start returned error: x"\n'
        '2026-01-01T00:02:00+0000 web1 dockerd[612]: time="..." level=error '
        'msg="Handler for POST /v1.43/containers/0123456789abcdef/start returned error: x"\n'
        '2026-01-01T00:03:00+0000 web1 dockerd[612]: time="..." level=warning '
        'msg="failed to prune image"\n'
        '2026-01-01T00:04:00+0000 web1 dockerd[612]: time="..." level=info msg="Loading"\n'
        "2026-01-01T00:05:00+0000 web1 systemd[1]: docker.service: Failed with result "
        "'exit-code'.\n"
        "-- Boot 1234 --\n"
    )
    parsed = src.parse_docker_journal(text)
    assert parsed["errors"][0]["count"] == 2  # the container ids do not split the group
    assert parsed["errors"][0]["first"].startswith("2026-01-01T00:01:00+0000")
    assert parsed["unit_failed"] == [
        "2026-01-01T00:05:00+0000 web1 systemd[1]: docker.service: Failed with result 'exit-code'."
    ]
    assert len(parsed["errors"]) == 2  # the handler errors and systemd's own failure line


def test_config_file_from_the_prometheus_command_line():
    assert src.config_file_arg(["--config.file=/etc/p/p.yml", "--web.enable-lifecycle"]) == (
        "/etc/p/p.yml"
    )
    assert src.config_file_arg(["--config.file", "/c.yml"]) == "/c.yml"
    assert src.config_file_arg(["-config.file=/old.yml"]) == "/old.yml"
    assert src.config_file_arg([]) == "/etc/prometheus/prometheus.yml"


# --------------------------------------------------------------------------- readers


def test_kernel_log_reads_journalctl_where_systemd_runs_else_dmesg():
    fake = FakeRun({"journalctl": (0, "", ""), "dmesg": (0, DMESG, "")})
    log = src.kernel_log(fake, WINDOW, booted=True)
    assert log == {"source": "journalctl -k", "kills": []}
    assert fake.calls == [["journalctl", "-k", "--since", f"@{int(WINDOW)}", "-o", "short-iso",
                           "--no-pager", "-q"]]  # fmt: skip
    fake = FakeRun({"journalctl": (0, "", ""), "dmesg": (0, DMESG, "")})
    log = src.kernel_log(fake, WINDOW, booted=False)
    assert log["source"] == "dmesg"
    assert len(log["kills"]) == 3
    assert [c[0] for c in fake.calls] == ["dmesg"]  # no journal without systemd


def test_dmesg_times_lag_so_a_kill_just_before_the_window_counts():
    """dmesg's wall times come from the kernel's boot clock and lag the real time (0.7 s
    after 8 h here): a kill printed up to DMESG_SLACK_SECONDS before the window counts."""
    start = 1795977990.0  # 2026-11-29T18:46:30Z, 7 s after REAL_DMESG's kill was printed
    fake = FakeRun({"dmesg": (0, REAL_DMESG, "")})
    assert [k["pid"] for k in src.kernel_log(fake, start, booted=False)["kills"]] == [17712]
    fake = FakeRun({"dmesg": (0, REAL_DMESG, "")})
    assert src.kernel_log(fake, start + src.DMESG_SLACK_SECONDS, booted=False)["kills"] == []


def test_kernel_log_falls_back_to_dmesg_then_skips_with_both_reasons():
    # journalctl exits 0 but reads nothing without journal files (no journald).
    fake = FakeRun({"journalctl": (0, "", "No journal files were found.\n"),
                    "dmesg": (0, DMESG, "")})  # fmt: skip
    assert src.kernel_log(fake, WINDOW, booted=True)["source"] == "dmesg"
    fake = FakeRun(
        {"dmesg": (1, "", "dmesg: read kernel buffer failed: Operation not permitted\n")}
    )
    assert src.kernel_log(fake, WINDOW, booted=False) == {
        "skip": "no readable kernel log: systemd is not running (no journal); dmesg: dmesg: read "
        "kernel buffer failed: Operation not permitted"
    }


def test_docker_journal_only_where_systemd_runs():
    fake = FakeRun({})
    skipped = src.docker_journal(fake, WINDOW, booted=False)
    assert skipped["skip"].startswith("systemd is not running on this host")
    assert fake.calls == []
    fake = FakeRun({"journalctl": (0, 'x level=error msg="boom"\n', "")})
    read = src.docker_journal(fake, WINDOW, booted=True)
    assert read["errors"][0]["message"] == "boom"
    assert fake.calls[0][:4] == ["journalctl", "-u", "docker", "--since"]
    fake = FakeRun({"journalctl": (0, "", "Hint: ... insufficient permissions ...\n")})
    assert src.docker_journal(fake, WINDOW, True) == {
        "skip": "journalctl -u docker: insufficient permissions"
    }


PROMETHEUS = {"name": "fm-prometheus-1", "cmd": ["--config.file=/etc/p/p.yml"]}
PROMTOOL_OK = (
    "Checking /etc/p/p.yml\n  SUCCESS: 1 rule files found\n SUCCESS: /etc/p/p.yml is valid "
    "prometheus config file syntax\n\nChecking /etc/prometheus/rules/backup-alerts.yml\n"
    "  SUCCESS: 3 rules found\n\n"
)
PROMTOOL_BAD = (
    "Checking /etc/p/p.yml\n  SUCCESS: 1 rule files found\n SUCCESS: /etc/p/p.yml is valid "
    "prometheus config file syntax\n\nChecking /etc/prometheus/rules/backup-alerts.yml\n"
    '  FAILED:\n/etc/prometheus/rules/backup-alerts.yml: 8:15: group "opsauto-backup", rule 1,'
    ' "BackupMissing": could not parse expression: 1:8: parse error: unexpected "-"\n\n'
)


def docker_cmd(fake):
    return lambda *args: fake(["docker", *args], 10)


def test_promtool_runs_in_the_prometheus_container_on_its_own_config_file():
    fake = FakeRun({"promtool": (0, PROMTOOL_OK, "")})
    check = src.promtool_check(docker_cmd(fake), PROMETHEUS)
    assert fake.calls == [
        ["docker", "exec", "fm-prometheus-1", "promtool", "check", "config", "/etc/p/p.yml"]
    ]
    assert check["rules"] == 3
    assert check["rule_files"] == ["/etc/prometheus/rules/backup-alerts.yml"]
    assert src.promtool_check(docker_cmd(fake), None) is None
    bad = src.promtool_check(docker_cmd(FakeRun({"promtool": (1, "", PROMTOOL_BAD)})), PROMETHEUS)
    assert bad["rc"] == 1
    assert bad["errors"] == [
        "FAILED:",
        '/etc/prometheus/rules/backup-alerts.yml: 8:15: group "opsauto-backup", rule 1, '
        '"BackupMissing": could not parse expression: 1:8: parse error: unexpected "-"',
    ]
    missing = (126, "", 'OCI runtime exec failed: exec: "promtool": executable file not found\n')
    none = src.promtool_check(docker_cmd(FakeRun({"promtool": missing})), PROMETHEUS)
    assert none["skip"].startswith("no promtool in fm-prometheus-1: OCI runtime exec failed")


def answer(status, body, error=""):
    return {"status": status, "body": body if isinstance(body, str) else json.dumps(body),
            "ms": 1.0, "error": error}  # fmt: skip


RULES = {"status": "success", "data": {"groups": [{"name": "opsauto-backup", "file": "/r.yml",
         "rules": [{"type": "alerting", "name": "BackupMissing", "health": "ok"},
                   {"type": "recording", "name": "job:x:sum", "health": "ok"}]}]}}  # fmt: skip
ALERTS = {"status": "success", "data": {"alerts": [
    {"labels": {"alertname": "BackupMissing", "severity": "critical", "project": "fm"},
     "annotations": {"summary": "No verified backup of fm for more than 26 hours"},
     "state": "firing", "activeAt": "2026-01-01T00:00:00Z", "value": "1e+05"},
    {"labels": {"alertname": "HighLatency", "severity": "warning"}, "state": "pending",
     "activeAt": "2026-01-01T00:10:00Z"}]}}  # fmt: skip


def test_prometheus_alerts_reads_the_rules_and_alerts_api():
    pages = {"/api/v1/rules?type=alert": answer(200, RULES), "/api/v1/alerts": answer(200, ALERTS)}
    facts = src.prometheus_alerts(lambda url, t: pages[url.split("9090", 1)[1]], "http://p:9090")
    assert [r["name"] for r in facts["rules"]] == ["BackupMissing"]  # recording rules left out
    assert facts["alerts"][0] == {
        "name": "BackupMissing", "state": "firing", "severity": "critical",
        "labels": {"severity": "critical", "project": "fm"}, "active_at": "2026-01-01T00:00:00Z",
        "value": "1e+05", "summary": "No verified backup of fm for more than 26 hours",
    }  # fmt: skip
    down = src.prometheus_alerts(lambda url, t: answer(None, "", "URLError: refused"), "http://p")
    assert down == {"url": "http://p", "error": "GET /api/v1/rules?type=alert: URLError: refused"}


TOKEN = "glsa_secret-token-value_1234"


class FakeGrafana:
    def __init__(self, pages):
        self.pages = pages
        self.requests = []

    def __call__(self, url, timeout, headers=None):
        self.requests.append((url, dict(headers or {})))
        path = url.split("3000", 1)[1]
        return self.pages.get(path, answer(404, {"message": "Not found"}))


GRAFANA_OK = {
    "/api/health": answer(200, {"commit": "abc", "database": "ok", "version": "10.4.2"}),
    "/api/datasources": answer(200, [{"uid": "prom1", "name": "Prometheus", "type": "prometheus"},
                                     {"uid": "pg 2", "name": "App DB", "type": "postgres"},
                                     {"uid": "tempo", "name": "Traces", "type": "tempo"}]),
    "/api/datasources/uid/prom1/health": answer(200, {"status": "OK", "message": "ok"}),
    "/api/datasources/uid/pg%202/health": answer(400, {"status": "ERROR",
        "message": "dial tcp 10.0.0.5:5432: connect: connection refused"}),
}  # fmt: skip


def test_grafana_health_and_datasources_with_the_token_in_the_header_only():
    fake = FakeGrafana(GRAFANA_OK)
    facts = src.grafana(fake, "http://grafana:3000/", TOKEN)
    assert fake.requests[0] == ("http://grafana:3000/api/health", {})  # no token for health
    assert all(h == {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
               for _, h in fake.requests[1:])  # fmt: skip
    assert all(TOKEN not in url for url, _ in fake.requests)
    assert TOKEN not in json.dumps(facts)
    assert facts["version"] == "10.4.2"
    assert [(d["name"], d["http"], d["status"]) for d in facts["datasources"]] == [
        ("Prometheus", 200, "OK"), ("App DB", 400, "ERROR"), ("Traces", 404, ""),
    ]  # fmt: skip
    assert src.grafana(fake, "", TOKEN) is None
    # Health only without a token.
    fake = FakeGrafana(GRAFANA_OK)
    assert "datasources" not in src.grafana(fake, "http://grafana:3000", "")
    assert len(fake.requests) == 1


def test_grafana_error_text_that_echoes_the_token_is_redacted():
    pages = {**GRAFANA_OK, "/api/datasources": answer(401, f"invalid API key {TOKEN}")}
    facts = src.grafana(FakeGrafana(pages), "http://grafana:3000", TOKEN)
    assert facts["datasources_error"] == "GET /api/datasources: HTTP 401 invalid API key ********"


def test_urllib_get_sends_the_headers():
    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen["path"], seen["auth"] = self.path, self.headers.get("Authorization")
            body = b'{"database": "ok"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/api/datasources"
        got = col.urllib_get(url, 5, headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        thread.join(5)
        server.server_close()
    assert got["status"] == 200
    assert seen == {"path": "/api/datasources", "auth": f"Bearer {TOKEN}"}


# --------------------------------------------------------------------------- checks


def test_healthy_sources_pass():
    results = run(healthy_facts())
    assert results["host.kernel_oom"]["summary"] == (
        "no OOM kill of this project's containers or the host since 15m (dmesg)"
    )
    assert results["host.docker_journal"]["status"] == "PASS"
    assert results["configuration.prometheus"]["summary"] == (
        "promtool check config /etc/prometheus/prometheus.yml: valid, 1 rule files, 3 rules"
    )
    assert results["monitoring.alerts"]["summary"] == (
        "3 alerting rules loaded (BackupMissing among them), none firing"
    )
    assert results["monitoring.grafana"]["summary"] == (
        "Grafana 10.4.2 answers, database ok; 1 datasources healthy"
    )


def test_kernel_oom_kill_of_a_project_container_fails_naming_process_and_time():
    facts = with_ids(healthy_facts())
    facts["kernel_oom"] = {"source": "dmesg", "kills": src.parse_oom_kills(DMESG, WINDOW)}
    check = run(facts)["host.kernel_oom"]
    assert check["status"] == "FAIL"
    assert check["summary"] == (
        "2 OOM kills in the kernel log since 15m: first gunicorn at 2026-01-01T00:05:00Z in "
        "fm-backend-1"
    )
    assert check["evidence"] == [
        "gunicorn (pid 4321) in fm-backend-1: 2x, first 2026-01-01T00:05:00Z",
        "java (pid 777) in container b2b2b2b2b2b2 (not of this project): 1x, first "
        "2026-01-01T00:07:00Z",
    ]
    assert '"scale_resources": {"backend": {"memory": "512m"}}' in check["remedy"]
    assert "look for a leak" in check["remedy"]
    # The worker died, the container lives on: Docker's OOMKilled never saw it.
    assert roots(facts) == ["host.kernel_oom"]


def test_kernel_oom_is_a_symptom_when_docker_marked_the_container_oom_killed():
    facts = with_ids(healthy_facts())
    facts["kernel_oom"] = {"source": "dmesg", "kills": src.parse_oom_kills(DMESG, WINDOW)}
    backend = next(c for c in facts["containers"] if c["name"] == "fm-backend-1")
    backend.update(state="exited", exit_code=137, oom_killed=True, health="unhealthy")
    results = run(facts)
    assert results["host.kernel_oom"]["symptom_of"] == "containers.oom"
    assert roots(facts) == ["containers.oom"]


def test_kernel_oom_host_out_of_memory_fails_and_other_projects_kills_pass():
    facts = healthy_facts()
    facts["kernel_oom"] = {"source": "journalctl -k", "kills": src.parse_oom_kills(GLOBAL, WINDOW)}
    check = run(facts)["host.kernel_oom"]
    assert check["status"] == "FAIL"
    assert check["evidence"] == [
        "sshd (pid 99) the host ran out of memory: 1x, first 2026-01-01T00:09:00Z"
    ]
    assert check["remedy"].startswith("the host ran out of memory: see host.memory")
    # A cgroup limit of a container that is not this project's is that project's business.
    facts["kernel_oom"] = {"source": "dmesg", "kills": src.parse_oom_kills(DMESG, WINDOW)}
    check = run(facts)["host.kernel_oom"]  # fm-backend-1's id is not a1a1... here
    assert check["status"] == "PASS"
    assert check["summary"].endswith("; 3 in other projects' containers")
    assert check["evidence"][0].startswith("gunicorn (pid 4321) in container a1a1a1a1a1a1")


def test_kernel_oom_skips_when_no_kernel_log_is_readable():
    facts = healthy_facts()
    facts["kernel_oom"] = {"skip": "no readable kernel log: dmesg: Operation not permitted"}
    check = run(facts)["host.kernel_oom"]
    assert (check["status"], check["summary"]) == (
        "SKIP",
        "no readable kernel log: dmesg: Operation not permitted",
    )


JOURNAL_ERRORS = {
    "source": "journalctl -u docker",
    "errors": [
        {"message": "Handler for POST returned error", "count": 2,
         "first": '2026-01-01T00:01:00+0000 web1 dockerd[612]: level=error msg="Handler ..."'},
        {"message": "stream copy error: reading from a closed fifo", "count": 4,
         "first": "2026-01-01T00:02:00+0000 web1 dockerd[612]: level=error msg=\"stream copy "
                  'error: reading from a closed fifo"'},
    ],
    "unit_failed": [],
}  # fmt: skip


def test_docker_journal_errors_warn_with_first_line_and_count():
    facts = healthy_facts()
    facts["docker_journal"] = copy.deepcopy(JOURNAL_ERRORS)
    check = run(facts)["host.docker_journal"]
    assert check["status"] == "WARN"
    assert check["summary"] == "6 errors of the Docker daemon since 15m"
    assert check["evidence"][0] == (
        '2x, first: 2026-01-01T00:01:00+0000 web1 dockerd[612]: level=error msg="Handler ..."'
    )
    assert check["remedy"].startswith("journalctl -u docker --since -15m")
    # The role's default ignore list drops the harmless closed-fifo error; a threshold above
    # the rest makes it PASS.
    facts["docker_journal_ignore"] = ["reading from a closed fifo"]
    check = run(facts)["host.docker_journal"]
    assert check["summary"] == "2 errors of the Docker daemon since 15m"
    assert run(facts, docker_journal_errors_warn=3)["host.docker_journal"]["status"] == "PASS"


def test_docker_journal_unit_failure_fails_and_no_systemd_skips():
    facts = healthy_facts()
    facts["since"] = "2026-01-01T00:00:00Z"
    facts["docker_journal"] = {**JOURNAL_ERRORS, "unit_failed": [
        "2026-01-01T00:05:00+0000 web1 systemd[1]: docker.service: Failed with result 'exit-code'."
    ]}  # fmt: skip
    check = run(facts)["host.docker_journal"]
    assert check["status"] == "FAIL"
    assert check["evidence"][0].endswith("docker.service: Failed with result 'exit-code'.")
    assert "journalctl -u docker --since '2026-01-01T00:00:00Z'" in check["remedy"]
    assert "systemctl restart docker" in check["remedy"]
    facts["docker_journal"] = {"skip": "systemd is not running on this host"}
    assert run(facts)["host.docker_journal"]["status"] == "SKIP"


def test_prometheus_config_rejected_by_promtool_fails_with_its_error_lines():
    facts = healthy_facts()
    facts["promtool"] = src.promtool_check(
        docker_cmd(FakeRun({"promtool": (1, "", PROMTOOL_BAD)})), PROMETHEUS
    )
    check = run(facts)["configuration.prometheus"]
    assert check["status"] == "FAIL"
    assert check["summary"] == (
        "promtool rejects /etc/p/p.yml or a rule file it names (in fm-prometheus-1)"
    )
    assert "could not parse expression" in check["evidence"][1]
    assert check["remedy"].startswith("ansible-playbook playbooks/deploy.yml")
    assert "docker exec fm-prometheus-1 promtool check config /etc/p/p.yml" in check["remedy"]
    assert roots(facts) == ["configuration.prometheus"]


def test_prometheus_config_skips_without_container_or_promtool():
    facts = healthy_facts()
    facts["promtool"] = None
    assert run(facts)["configuration.prometheus"]["status"] == "SKIP"
    facts["promtool"] = {"skip": "no promtool in fm-prometheus-1: exec failed"}
    check = run(facts)["configuration.prometheus"]
    assert (check["status"], check["summary"]) == (
        "SKIP",
        "no promtool in fm-prometheus-1: exec failed",
    )


def alerts_facts(alerts=None, rules=("BackupMissing",), **extra):
    facts = healthy_facts()
    facts["prometheus_alerts"] = {
        "url": "http://127.0.0.1:9090",
        "rules": [
            {"group": "g", "name": n, "health": "ok", "error": "", "file": ""} for n in rules
        ],
        "alerts": alerts or [],
    }
    facts.update(extra)
    return facts


def alert(name, state="firing", severity="critical", **labels):
    return {"name": name, "state": state, "severity": severity,
            "labels": {"severity": severity, **labels}, "active_at": "2026-01-01T00:00:00Z",
            "value": "1", "summary": ""}  # fmt: skip


def test_a_firing_critical_alert_fails_with_labels_and_active_at():
    facts = alerts_facts([alert("BackupMissing", project="fm"), alert("X", state="pending")])
    check = run(facts)["monitoring.alerts"]
    assert check["status"] == "FAIL"
    assert check["summary"] == "1 alert firing: BackupMissing"
    assert check["evidence"] == [
        "BackupMissing firing since 2026-01-01T00:00:00Z (project=fm, severity=critical)"
    ]
    assert "playbooks/backup.yml" in check["remedy"]


def test_a_firing_warning_alert_warns_and_pending_ones_do_not_count():
    facts = alerts_facts([alert("BackupRunFailed", severity="warning")])
    assert run(facts)["monitoring.alerts"]["status"] == "WARN"
    facts = alerts_facts([alert("BackupMissing", state="pending")])
    check = run(facts)["monitoring.alerts"]
    assert check["status"] == "PASS"
    assert check["summary"].endswith("; 1 pending (not firing yet): BackupMissing")
    # diagnose_alert_fail_severities decides what FAILs.
    facts = alerts_facts([alert("BackupRunFailed", severity="warning")],
                         alert_fail_severities=["critical", "warning"])  # fmt: skip
    assert run(facts)["monitoring.alerts"]["status"] == "FAIL"


def test_backup_alert_not_loaded_warns_that_no_alert_will_fire():
    facts = alerts_facts(rules=("SomethingElse",))
    check = run(facts)["monitoring.alerts"]
    assert check["status"] == "WARN"
    assert check["summary"] == (
        "the backup freshness alert BackupMissing is not loaded: no alert will fire when "
        "backups stop"
    )
    assert check["evidence"] == ["1 alerting rules loaded: SomethingElse"]
    assert check["remedy"].startswith("ansible-playbook playbooks/deploy.yml")
    assert roots(facts) == ["monitoring.alerts"]
    # An empty diagnose_backup_alert expects none.
    assert run({**facts, "backup_alert": ""})["monitoring.alerts"]["status"] == "PASS"


def test_alerts_skip_without_prometheus_and_warn_on_api_or_rule_errors():
    facts = healthy_facts()
    facts["prometheus"] = {"url": "http://127.0.0.1:9090", "error": "connection refused"}
    results = run(facts)
    assert results["monitoring.alerts"]["status"] == "SKIP"
    facts = healthy_facts()
    facts["prometheus_alerts"] = {"url": "http://p", "error": "GET /api/v1/alerts: HTTP 500"}
    assert run(facts)["monitoring.alerts"]["status"] == "WARN"
    facts = alerts_facts()
    facts["prometheus_alerts"]["rules"][0].update(health="err", error="many-to-many matching")
    check = run(facts)["monitoring.alerts"]
    assert (check["status"], check["evidence"]) == (
        "WARN",
        ["BackupMissing (g): many-to-many matching"],
    )


def grafana_facts(**fields):
    facts = healthy_facts()
    facts["grafana"].update(fields)
    return facts


def test_grafana_skips_without_url_and_passes_without_token():
    facts = healthy_facts()
    facts["grafana"] = None
    check = run(facts)["monitoring.grafana"]
    assert (check["status"], check["summary"]) == ("SKIP", "diagnose_grafana_url is not set")
    facts = healthy_facts()
    del facts["grafana"]["datasources"]
    assert run(facts)["monitoring.grafana"]["summary"] == (
        "Grafana 10.4.2 answers, database ok; datasources not checked (no diagnose_grafana_token)"
    )


def test_grafana_down_or_database_not_ok_fails():
    check = run(grafana_facts(status=None, error="URLError: [Errno 111] Connection refused"))
    check = check["monitoring.grafana"]
    assert check["status"] == "FAIL"
    assert check["summary"] == "Grafana does not answer at http://grafana:3000/api/health"
    assert check["evidence"] == ["URLError: [Errno 111] Connection refused"]
    check = run(grafana_facts(database="failing"))["monitoring.grafana"]
    assert (check["status"], check["evidence"]) == (
        "FAIL",
        ["http://grafana:3000/api/health: database failing"],
    )


def test_grafana_datasource_failing_its_health_check_fails():
    facts = healthy_facts()
    facts["grafana"] = src.grafana(FakeGrafana(GRAFANA_OK), "http://grafana:3000", TOKEN)
    check = run(facts)["monitoring.grafana"]
    assert check["status"] == "FAIL"
    assert check["summary"] == ("1 of 3 Grafana datasources fail their health check: App DB")
    assert check["evidence"] == [
        "App DB (postgres, uid pg 2): HTTP 400 ERROR dial tcp 10.0.0.5:5432: connect: connection "
        "refused",
        "Traces (tempo): no health check for this type",
    ]
    assert "Save & test" in check["remedy"]
    assert TOKEN not in json.dumps(run(facts))


def test_grafana_token_refused_warns():
    facts = grafana_facts(datasources_error="GET /api/datasources: HTTP 403 Permission denied")
    del facts["grafana"]["datasources"]
    check = run(facts)["monitoring.grafana"]
    assert check["status"] == "WARN"
    assert "datasources:read" in check["remedy"]


@pytest.mark.parametrize(
    "cid",
    [
        "host.kernel_oom",
        "host.docker_journal",
        "configuration.prometheus",
        "monitoring.alerts",
        "monitoring.grafana",
    ],
)
def test_new_checks_report_without_their_facts_as_skip_or_pass(cid):
    """An older collector's facts (no such key) never make a new check WARN or FAIL."""
    facts = healthy_facts()
    for key in ("kernel_oom", "docker_journal", "promtool", "prometheus_alerts", "grafana"):
        facts.pop(key)
    assert run(facts)[cid]["status"] in ("PASS", "SKIP")
