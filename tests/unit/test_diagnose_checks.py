"""Unit tests of the diagnosis checks (module_utils/diagnose_checks.py): every check's
PASS / WARN / FAIL branch from fake facts, the symptom correlation and diagnose_fail_on.

The collection against a real stack, and the faults injected into it, are tested in
tests/integration/test_diagnose_local.py.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

import ansible.module_utils
import pytest

MODULE_UTILS = Path(__file__).resolve().parents[2] / "module_utils"
if str(MODULE_UTILS) not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(MODULE_UTILS))
dc = importlib.import_module("ansible.module_utils.diagnose_checks")

T = dict(dc.DEFAULT_THRESHOLDS)
SERVICES = {"db": "db", "backend": "backend", "nginx": "nginx", "prometheus": "prometheus"}
GIB = 1024**3
NOW = 1767225600.0


def container(name, service, state="running", health="healthy", **extra):
    c = {
        "id": name[-12:],
        "name": name,
        "service": service,
        "state": state,
        "health": health,
        "health_log": "",
        "restart_count": 0,
        "restart_count_later": 0,
        "exit_code": 0,
        "oom_killed": False,
        "started_at": "2026-01-01T10:00:00Z",
        "finished_at": "0001-01-01T00:00:00Z",
        "recent_start": False,
        "image": "fastapi-monolith/backend:1.1.0" if service == "backend" else f"img/{service}",
        "memory_limit": 268435456,
        "error": "",
        "ips": [],
        "published": {
            "nginx": [("127.0.0.1", 8080, "80/tcp")],
            "prometheus": [("127.0.0.1", 9090, "9090/tcp")],
        }.get(service, []),
    }
    c.update(extra)
    return c


RELEASE = {
    "id": 1,
    "tag": "1.1.0",
    "status": "good",
    "time": "2026-01-01T10:00:00Z",
    "images": {"backend": "fastapi-monolith/backend:1.1.0", "db": "img/db"},
}


def healthy_facts():
    return {
        "project": "fastapi-monolith",
        "project_dir": "/opt/fastapi-monolith",
        "services": SERVICES,
        "backend_port": 8000,
        "env_required": ["DB_NAME", "DB_USER", "DB_PASSWORD"],
        "since": "15m",
        "restart_sample_seconds": 2,
        "docker_version": "24.0.5",
        "docker_ms": 40,
        "containers": [
            container("fm-db-1", "db"),
            container("fm-backend-1", "backend"),
            container("fm-backend-2", "backend"),
            container("fm-nginx-1", "nginx"),
            container("fm-prometheus-1", "prometheus"),
        ],
        "wanted_replicas": {"db": 1, "backend": 2, "nginx": 1, "prometheus": 1},
        "db_ready": {"container": "fm-db-1", "rc": 0, "output": "127.0.0.1:5432 - accepting"},
        "db_login": {
            "container": "fm-backend-1",
            "host": "db",
            "user": "app",
            "database": "appdb",
            "resolved": "172.18.0.2",
            "login_ms": 8.5,
            "connections": 7,
            "max_connections": 100,
            "size": 7_500_000,
            "long_queries": [],
            "lock_waits": [],
        },
        "http": {
            "url": "http://127.0.0.1:8080/health",
            "status": 200,
            "ms": 6,
            "database": "ok",
            "error": "",
            "body": "",
        },
        "latency": {"ms": [5, 6, 6, 7, 9], "errors": 0},
        "replica_probes": [
            {"url": "http://fm-backend-1:8000/health", "status": "200", "detail": "5 ms", "ms": 5},
            {"url": "http://fm-backend-2:8000/health", "status": "200", "detail": "4 ms", "ms": 4},
        ],
        "metrics_probes": [
            {"url": "http://fm-backend-1:8000/metrics", "status": "200", "detail": "3 ms", "ms": 3},
            {"url": "http://fm-backend-2:8000/metrics", "status": "200", "detail": "3 ms", "ms": 3},
        ],
        "clock": {"controller": NOW - 0.4, "host": NOW},
        "backup_metrics": {
            "dir": "/var/lib/prometheus/node-exporter",
            "files": ["opsauto_backup.prom"],
            "values": {"opsauto_backup_last_success_timestamp_seconds": NOW - 3 * 3600},
        },
        "nginx_test": {"rc": 0, "output": "syntax is ok"},
        "logs": {"since": "15m", "matches": {}, "access": {"requests": 40, "slowest": []}},
        "compose_config": {"rc": 0, "output": ""},
        "env_keys": {"DB_NAME": True, "DB_USER": True, "DB_PASSWORD": True},
        "env_error": "",
        "prometheus": {
            "url": "http://127.0.0.1:9090",
            "targets": [
                {"job": "prometheus", "instance": "127.0.0.1:9090", "health": "up", "error": ""},
                {"job": "backend", "instance": "172.18.0.3:8000", "health": "up", "error": ""},
            ],
            "http_5xx": {
                "window_seconds": 900,
                "query": "sum(...)",
                "requests": 40.0,
                "errors": 0.0,
            },
        },
        # The sources of module_utils/diagnose_sources.py, all readable and quiet.
        "kernel_oom": {"source": "dmesg", "kills": []},
        "docker_journal": {"source": "journalctl -u docker", "errors": [], "unit_failed": []},
        "docker_journal_ignore": [],
        "promtool": {
            "container": "fm-prometheus-1",
            "path": "/etc/prometheus/prometheus.yml",
            "rc": 0,
            "rules": 3,
            "rule_files": ["/etc/prometheus/rules/backup-alerts.yml"],
            "errors": [],
        },
        "prometheus_alerts": {
            "url": "http://127.0.0.1:9090",
            "rules": [
                {"group": "opsauto-backup", "name": n, "health": "ok", "error": "", "file": ""}
                for n in ("BackupMissing", "BackupNotVerified", "BackupRunFailed")
            ],
            "alerts": [],
        },
        "backup_alert": "BackupMissing",
        "alert_fail_severities": ["critical"],
        "grafana": {
            "url": "http://grafana:3000",
            "status": 200,
            "error": "",
            "database": "ok",
            "version": "10.4.2",
            "datasources": [
                {
                    "name": "Prometheus",
                    "type": "prometheus",
                    "uid": "prom1",
                    "http": 200,
                    "status": "OK",
                    "message": "Successfully queried the Prometheus API.",
                },
            ],  # fmt: skip
        },
        "ledger": {"path": "/opt/fastapi-monolith/ledger/releases.jsonl", "entries": [RELEASE]},
        "images_present": {"fastapi-monolith/backend:1.1.0": True, "img/db": True},
        "upstream": {
            "path": "/opt/fastapi-monolith/nginx/backend-upstream.conf",
            "servers": ["backend:8000"],
        },
        "host": {
            "load": [0.3, 0.5, 0.4],
            "cpus": 2,
            "mem_total": 8 * GIB,
            "mem_available": 5 * GIB,
            "swap_total": 0,
            "swap_free": 0,
            "listening": [22, 8080, 9090],
            "disks": [
                {
                    "label": "docker root",
                    "path": "/var/lib/docker",
                    "exists": True,
                    "total": 100 * GIB,
                    "free": 60 * GIB,
                    "inodes_total": 1000,
                    "inodes_free": 900,
                }
            ],
        },
    }


def by_id(results):
    return {r["id"]: r for r in results}


def run(facts, **thresholds):
    return by_id(dc.evaluate(facts, thresholds))


def only_findings(results):
    return {cid: r["status"] for cid, r in results.items() if r["status"] != "PASS"}


def test_healthy_stack_has_no_finding():
    results = run(healthy_facts())
    assert only_findings(results) == {}
    summary = dc.summarize(list(results.values()))
    assert summary["status"] == "PASS"
    assert summary["root_causes"] == []
    assert summary["counts"]["PASS"] == len(results)
    # Every result has the documented fields; a PASS names no remedy.
    for r in results.values():
        assert set(r) == {"id", "category", "status", "summary", "evidence", "remedy"}
        assert r["remedy"] == ""


def test_every_check_id_is_listed_once():
    ids = [r["id"] for r in dc.evaluate(healthy_facts())]
    assert len(ids) == len(set(ids))
    assert {i.split(".")[0] for i in ids} == {
        "host", "containers", "database", "network", "logs", "configuration",
        "monitoring", "deployment", "latency", "backup",
    }  # fmt: skip
    # Every cause named in the correlation table is a real check.
    assert {c for causes in dc.CAUSES.values() for c in causes} <= set(ids)


# --------------------------------------------------------------------------- containers


def test_no_containers_fails_present_and_skips_the_rest():
    facts = healthy_facts()
    facts["containers"] = []
    results = run(facts)
    assert results["containers.present"]["status"] == "FAIL"
    assert "playbooks/deploy.yml" in results["containers.present"]["remedy"]
    assert results["containers.running"]["status"] == "SKIP"


def test_stopped_database_fails_running_with_restart_remedy():
    facts = healthy_facts()
    facts["containers"][0] = container("fm-db-1", "db", state="exited", health="none", exit_code=0)
    results = run(facts)
    r = results["containers.running"]
    assert r["status"] == "FAIL"
    assert "fm-db-1" in r["summary"]
    assert "exited (exit code 0" in r["evidence"][0]
    assert "playbooks/restart.yml -e restart_services=db" in r["remedy"]


def test_paused_container_names_docker_unpause():
    facts = healthy_facts()
    facts["containers"][0] = container("fm-db-1", "db", state="paused")
    r = run(facts)["containers.running"]
    assert r["status"] == "FAIL"
    assert r["remedy"] == "docker unpause fm-db-1"


def test_unhealthy_replica_fails_healthy():
    facts = healthy_facts()
    facts["containers"][2]["health"] = "unhealthy"
    facts["containers"][2]["health_log"] = "HTTP Error 503"
    r = run(facts)["containers.healthy"]
    assert r["status"] == "FAIL"
    assert "fm-backend-2" in r["summary"]
    assert "fm-backend-1" not in r["summary"]
    assert "HTTP Error 503" in r["evidence"][0]
    assert "restart_services=backend" in r["remedy"]


def test_starting_health_is_a_warning():
    facts = healthy_facts()
    facts["containers"][3]["health"] = "starting"
    assert run(facts)["containers.healthy"]["status"] == "WARN"


def test_rising_restart_count_is_a_restart_loop():
    facts = healthy_facts()
    facts["containers"][1].update(restart_count=4, restart_count_later=5, exit_code=1)
    r = run(facts)["containers.restarts"]
    assert r["status"] == "FAIL"
    assert "4 -> 5" in r["evidence"][0]
    assert "docker logs --tail 50 fm-backend-1" in r["remedy"]
    assert "playbooks/rollback.yml" in r["remedy"]


def test_restarting_state_is_a_restart_loop():
    facts = healthy_facts()
    facts["containers"][1].update(state="restarting", restart_count=2, restart_count_later=2,
                                  exit_code=3)  # fmt: skip
    r = run(facts)["containers.restarts"]
    assert r["status"] == "FAIL"
    assert "last exit code 3" in r["evidence"][0]


def test_a_running_loop_without_its_die_event_does_not_claim_exit_code_0():
    facts = healthy_facts()
    facts["containers"][1].update(restart_count=4, restart_count_later=6, exit_code=0)
    r = run(facts)["containers.restarts"]
    assert "last exit code 0" not in r["evidence"][0]
    assert "last exit code not seen" in r["evidence"][0]


def test_many_recent_restarts_warn_old_ones_do_not():
    facts = healthy_facts()
    facts["containers"][1].update(restart_count=3, restart_count_later=3, recent_start=True)
    assert run(facts)["containers.restarts"]["status"] == "WARN"
    facts["containers"][1]["recent_start"] = False
    assert run(facts)["containers.restarts"]["status"] == "PASS"


def test_oom_killed_names_the_scale_remedy():
    facts = healthy_facts()
    facts["containers"][1]["oom_killed"] = True
    r = run(facts)["containers.oom"]
    assert r["status"] == "FAIL"
    assert "scale_resources" in r["remedy"]
    assert '"backend"' in r["remedy"]


def test_fewer_replicas_than_the_compose_file():
    facts = healthy_facts()
    del facts["containers"][2]
    r = run(facts)["containers.replicas"]
    assert r["status"] == "FAIL"
    assert "backend 1/2" in r["summary"]
    assert "playbooks/deploy.yml" in r["remedy"]


# --------------------------------------------------------------------------- database


def test_pg_isready_failure():
    facts = healthy_facts()
    facts["db_ready"] = {"container": "fm-db-1", "rc": 2, "output": "no response"}
    r = run(facts)["database.ready"]
    assert r["status"] == "FAIL"
    assert r["evidence"] == ["no response"]


def test_wrong_password_is_told_apart_from_database_down():
    facts = healthy_facts()
    facts["db_login"] = {
        "container": "fm-backend-1",
        "host": "db",
        "user": "app",
        "database": "appdb",
        "resolved": "172.18.0.2",
        "error": 'OperationalError: connection to server at "db" failed: FATAL:  password '
        'authentication failed for user "app"',
    }
    results = run(facts)
    r = results["database.login"]
    assert r["status"] == "FAIL"
    assert ".env does not match" in r["summary"]
    assert "playbooks/deploy.yml" in r["remedy"]
    assert results["database.ready"]["status"] == "PASS"
    assert results["database.connections"]["status"] == "SKIP"
    assert results["network.db_dns"]["status"] == "PASS"


def test_login_timeout_points_at_a_hanging_database():
    facts = healthy_facts()
    facts["db_login"] = {**facts["db_login"], "error": "OperationalError: timeout expired"}
    for key in ("connections", "long_queries"):
        facts["db_login"].pop(key)
    r = run(facts)["database.login"]
    assert "paused or overloaded" in r["summary"]


@pytest.mark.parametrize(("used", "status"), [(79, "PASS"), (80, "WARN"), (95, "FAIL")])
def test_connections_against_max_connections(used, status):
    facts = healthy_facts()
    facts["db_login"]["connections"] = used
    assert run(facts)["database.connections"]["status"] == status


def test_long_queries_and_lock_waits_warn():
    facts = healthy_facts()
    facts["db_login"]["long_queries"] = [
        {"pid": 42, "seconds": 95, "state": "active", "query": "SELECT pg_sleep(100)"}
    ]
    r = run(facts)["database.activity"]
    assert r["status"] == "WARN"
    assert "pid 42 active for 95 s" in r["evidence"][0]
    facts = healthy_facts()
    facts["db_login"]["lock_waits"] = [
        {"pid": 43, "seconds": 2, "blocked_by": "{42}", "query": "UPDATE items"}
    ]
    assert run(facts)["database.activity"]["status"] == "PASS"  # under lock_wait_seconds
    facts["db_login"]["lock_waits"][0]["seconds"] = 12
    r = run(facts)["database.activity"]
    assert r["status"] == "WARN"
    assert "blocked by {42}" in r["evidence"][0]


# --------------------------------------------------------------------------- network


def test_health_through_nginx_fails_on_503():
    facts = healthy_facts()
    facts["http"].update(status=503, database="unavailable", body='{"status":"error"}')
    r = run(facts)["network.http"]
    assert r["status"] == "FAIL"
    assert "503" in r["summary"]
    assert "see database.login" in r["remedy"]
    facts["http"].update(status=None, error="ConnectionRefusedError", database="?")
    assert "restart_services=nginx" in run(facts)["network.http"]["remedy"]
    facts["http"].update(status=502, database="?")
    assert "restart_services=backend" in run(facts)["network.http"]["remedy"]


def test_a_replica_not_answering_nginx():
    facts = healthy_facts()
    facts["replica_probes"][1] = {
        "url": "http://fm-backend-2:8000/health",
        "status": "000",
        "detail": "curl: (7) Failed to connect",
    }
    r = run(facts)["network.replicas"]
    assert r["status"] == "FAIL"
    assert "1 of 2" in r["summary"]


def test_db_host_not_resolving():
    facts = healthy_facts()
    del facts["db_login"]["resolved"]
    facts["db_login"]["resolve_error"] = "gaierror: [Errno -2] Name or service not known"
    r = run(facts)["network.db_dns"]
    assert r["status"] == "FAIL"
    assert "Name or service not known" in r["evidence"][0]


# --------------------------------------------------------------------------- host


def test_docker_not_answering():
    facts = healthy_facts()
    facts["docker_error"] = "Cannot connect to the Docker daemon"
    facts["containers"] = []
    results = run(facts)
    assert results["host.docker"]["status"] == "FAIL"
    assert results["containers.present"]["status"] == "SKIP"
    assert "journalctl -u docker" in results["host.docker"]["remedy"]


@pytest.mark.parametrize(("load5", "status"), [(3.9, "PASS"), (4.0, "WARN"), (8.0, "FAIL")])
def test_load_per_core(load5, status):
    facts = healthy_facts()
    facts["host"]["load"] = [0.0, load5, 0.0]
    assert run(facts)["host.load"]["status"] == status


@pytest.mark.parametrize(("avail_gib", "status"), [(1.0, "PASS"), (0.8, "WARN"), (0.4, "FAIL")])
def test_memory_available(avail_gib, status):
    facts = healthy_facts()
    facts["host"]["mem_available"] = int(avail_gib * GIB)
    assert run(facts)["host.memory"]["status"] == status


def test_swap_in_use_warns():
    facts = healthy_facts()
    facts["host"].update(swap_total=2 * GIB, swap_free=GIB // 2)
    assert run(facts)["host.memory"]["status"] == "WARN"


@pytest.mark.parametrize(
    ("free_gib", "inodes_free", "status"),
    [(60, 900, "PASS"), (10, 900, "WARN"), (4, 900, "FAIL"), (60, 100, "WARN"), (60, 20, "FAIL")],
)
def test_disk_space_and_inodes(free_gib, inodes_free, status):
    facts = healthy_facts()
    facts["host"]["disks"][0].update(free=free_gib * GIB, inodes_free=inodes_free)
    r = run(facts)["host.disk"]
    assert r["status"] == status
    if status != "PASS":
        assert "playbooks/backup.yml" in r["remedy"]


def test_the_low_disk_is_listed_first():
    facts = healthy_facts()
    facts["host"]["disks"].append(
        {"label": "backup dir", "path": "/b", "exists": True, "total": 100, "free": 2,
         "inodes_total": 10, "inodes_free": 9}
    )  # fmt: skip
    r = run(facts)["host.disk"]
    assert r["status"] == "FAIL"
    assert r["evidence"][0].startswith("backup dir /b: 2.0 % space free")


def test_missing_backup_dir_warns():
    facts = healthy_facts()
    facts["host"]["disks"].append(
        {"label": "backup dir", "path": "/var/backups/x", "exists": False}
    )
    r = run(facts)["host.disk"]
    assert r["status"] == "WARN"
    assert "backup dir /var/backups/x: does not exist" in r["evidence"]


# --------------------------------------------------------------------------- logs


def test_log_patterns_show_first_occurrence_and_count():
    facts = healthy_facts()
    facts["logs"]["matches"] = {
        "logs.database_errors": [
            {"container": "fm-db-1", "count": 3, "first": "FATAL: password authentication failed"}
        ],
        "logs.address_in_use": [
            {"container": "fm-backend-1", "count": 1, "first": "[Errno 98] address already in use"}
        ],
    }
    results = run(facts)
    r = results["logs.database_errors"]
    assert r["status"] == "WARN"
    assert r["summary"].startswith("3 database errors")
    assert r["evidence"] == ["fm-db-1: 3x, first: FATAL: password authentication failed"]
    assert results["logs.address_in_use"]["status"] == "FAIL"
    assert results["logs.tracebacks"]["status"] == "PASS"
    assert results["logs.nginx_upstream"]["status"] == "PASS"


@pytest.mark.parametrize(("errors", "status"), [(0, "PASS"), (1, "WARN"), (5, "FAIL")])
def test_5xx_rate(errors, status):
    facts = healthy_facts()
    facts["logs"]["access"] = {
        "requests": 100,
        "errors": errors,
        "first_error": '"GET /items HTTP/1.1" 502' if errors else None,
        "slowest": [],
    }
    r = run(facts)["logs.http_5xx"]
    assert r["status"] == status
    if errors:
        assert r["evidence"][1].startswith("first: ")


# --------------------------------------------------------------------------- configuration


def test_invalid_compose_config():
    facts = healthy_facts()
    facts["compose_config"] = {"rc": 15, "output": "required variable DB_NAME is missing"}
    r = run(facts)["configuration.compose"]
    assert r["status"] == "FAIL"
    assert r["evidence"] == ["required variable DB_NAME is missing"]


def test_env_missing_a_variable_and_missing_file():
    facts = healthy_facts()
    facts["env_keys"]["DB_PASSWORD"] = False
    r = run(facts)["configuration.env"]
    assert r["status"] == "FAIL"
    assert r["summary"].endswith("lacks DB_PASSWORD")
    facts["env_keys"], facts["env_error"] = None, "No such file or directory"
    assert run(facts)["configuration.env"]["status"] == "FAIL"


def test_nginx_t_failure():
    facts = healthy_facts()
    facts["nginx_test"] = {"rc": 1, "output": "nginx: [emerg] unknown directive\ntest failed"}
    r = run(facts)["configuration.nginx"]
    assert r["status"] == "FAIL"
    assert "test failed" in r["evidence"]


# --------------------------------------------------------------------------- monitoring


def test_prometheus_down_and_target_down():
    facts = healthy_facts()
    facts["prometheus"]["targets"][1].update(health="down", error="connection refused")
    r = run(facts)["monitoring.targets"]
    assert r["status"] == "FAIL"
    assert r["evidence"] == [
        "backend 172.18.0.3:8000 (no container of the project): down connection refused"
    ]
    assert "docker network inspect fastapi-monolith_default" in r["remedy"]
    # A target that is a container of the project names its service's restart.
    facts["containers"][1]["ips"] = ["172.18.0.3"]
    r = run(facts)["monitoring.targets"]
    assert r["evidence"] == ["backend 172.18.0.3:8000 (fm-backend-1): down connection refused"]
    assert "playbooks/restart.yml -e restart_services=backend" in r["remedy"]
    facts["prometheus"] = {"url": "http://127.0.0.1:9090", "error": "URLError: refused"}
    results = run(facts)
    assert results["monitoring.prometheus"]["status"] == "FAIL"
    assert results["monitoring.targets"]["status"] == "SKIP"


def test_no_targets_warns():
    facts = healthy_facts()
    facts["prometheus"]["targets"] = []
    assert run(facts)["monitoring.targets"]["status"] == "WARN"


# --------------------------------------------------------------------------- deployment


def test_release_recorded_bad_names_rollback():
    facts = healthy_facts()
    bad = {**RELEASE, "id": 2, "tag": "1.2.0", "status": "bad",
           "images": {"backend": "fastapi-monolith/backend:1.2.0"}}  # fmt: skip
    facts["ledger"]["entries"].append(bad)
    r = run(facts)["deployment.release"]
    assert r["status"] == "FAIL"
    assert "1.2.0 is recorded bad" in r["summary"]
    assert r["remedy"].startswith("ansible-playbook playbooks/rollback.yml")


def test_running_release_differs_from_the_ledger():
    facts = healthy_facts()
    for c in facts["containers"][1:3]:
        c["image"] = "fastapi-monolith/backend:1.0.0"
    r = run(facts)["deployment.release"]
    assert r["status"] == "WARN"
    assert "deploy_backend_tag=1.1.0" in r["remedy"]


def test_no_ledger_warns_and_unreadable_ledger_warns():
    facts = healthy_facts()
    facts["ledger"]["entries"] = []
    assert run(facts)["deployment.release"]["status"] == "WARN"
    facts["ledger"]["error"] = "line 3 is corrupt"
    assert run(facts)["deployment.release"]["evidence"] == ["line 3 is corrupt"]


def test_rollback_target_images_missing():
    facts = healthy_facts()
    older = {**RELEASE, "id": 1, "tag": "1.0.0",
             "images": {"backend": "fastapi-monolith/backend:1.0.0", "db": "img/db"}}  # fmt: skip
    facts["ledger"]["entries"] = [older, {**RELEASE, "id": 2}]
    r = run(facts)["deployment.rollback_images"]
    assert r["status"] == "WARN"
    assert r["evidence"] == ["missing: fastapi-monolith/backend:1.0.0"]
    facts["images_present"]["fastapi-monolith/backend:1.0.0"] = True
    assert run(facts)["deployment.rollback_images"]["status"] == "PASS"


def test_half_finished_rollout():
    facts = healthy_facts()
    facts["upstream"]["servers"] = ["fm-backend-3:8000"]
    results = run(facts)
    r = results["deployment.rollout"]
    assert r["status"] == "WARN"
    assert "restart_mode=rolling" in r["remedy"]
    assert results["configuration.upstream"]["status"] == "PASS"


def test_upstream_at_a_wrong_port_and_missing():
    facts = healthy_facts()
    facts["upstream"]["servers"] = ["backend:9999"]
    facts["http"].update(status=502, database="?")
    results = dc.evaluate(facts)
    r = by_id(results)["configuration.upstream"]
    assert r["status"] == "FAIL"
    assert "backend:9999" in r["summary"]
    assert "playbooks/deploy.yml" in r["remedy"]
    assert by_id(results)["deployment.rollout"]["status"] == "PASS"
    assert dc.summarize(results)["root_causes"] == ["configuration.upstream"]
    facts["upstream"] = None
    assert run(facts)["configuration.upstream"]["status"] == "FAIL"


# --------------------------------------------------------------------------- latency


@pytest.mark.parametrize(
    ("samples", "status"), [([5, 6, 7], "PASS"), ([5, 6, 600], "WARN"), ([5, 2500, 3000], "FAIL")]
)
def test_latency_p95(samples, status):
    facts = healthy_facts()
    facts["latency"] = {"ms": samples, "errors": 0}
    assert run(facts)["latency.health"]["status"] == status


def test_failed_probes_warn_and_no_probe_skips():
    facts = healthy_facts()
    facts["latency"] = {"ms": [5, 6], "errors": 1}
    assert run(facts)["latency.health"]["status"] == "WARN"
    facts["latency"] = {"ms": [], "errors": 5}
    assert run(facts)["latency.health"]["status"] == "SKIP"


def test_slowest_endpoints_from_the_access_log():
    facts = healthy_facts()
    facts["logs"]["access"]["slowest"] = [{"endpoint": "GET /items", "count": 9, "max_ms": 2500}]
    r = run(facts)["latency.endpoints"]
    assert r["status"] == "WARN"
    assert r["evidence"] == ["GET /items: 9 requests, max 2500 ms"]


def test_thresholds_are_honoured():
    facts = healthy_facts()
    facts["latency"] = {"ms": [50, 60, 70], "errors": 0}
    assert run(facts, latency_p95_warn_ms=60)["latency.health"]["status"] == "WARN"


# --------------------------------------------------------------------------- correlation


def database_stopped():
    facts = healthy_facts()
    facts["containers"][0] = container("fm-db-1", "db", state="exited", health="none")
    for c in facts["containers"][1:3]:
        c["health"] = "unhealthy"
    facts["db_ready"] = None
    facts["db_login"] = {**facts["db_login"], "error": "OperationalError: could not translate"}
    for key in ("connections", "long_queries", "resolved"):
        facts["db_login"].pop(key)
    facts["db_login"]["resolve_error"] = "gaierror: Name or service not known"
    facts["http"].update(status=503, database="unavailable")
    facts["replica_probes"] = [dict(p, status="503") for p in facts["replica_probes"]]
    facts["logs"]["access"].update(errors=10, first_error="503")
    return facts


def test_symptoms_point_at_the_root_cause():
    results = dc.evaluate(database_stopped())
    summary = dc.summarize(results)
    assert summary["root_causes"] == ["containers.running"]
    assert summary["status"] == "FAIL"
    symptoms = {r["id"]: r["symptom_of"] for r in results if "symptom_of" in r}
    assert symptoms["containers.healthy"] == "containers.running"
    assert symptoms["database.login"] == "containers.running"
    assert symptoms["network.http"] == "containers.running"
    assert symptoms["logs.http_5xx"] == "containers.running"


def test_same_finding_without_its_cause_is_a_root_cause():
    facts = healthy_facts()
    facts["http"].update(status=502)
    results = dc.evaluate(facts)
    assert dc.summarize(results)["root_causes"] == ["network.http"]


@pytest.mark.parametrize(
    ("fail_on", "facts_change", "fails"),
    [
        ("never", "fail", False),
        ("fail", "none", False),
        ("fail", "warn", False),
        ("fail", "fail", True),
        ("warn", "warn", True),
        ("warn", "none", False),
    ],
)
def test_fail_on(fail_on, facts_change, fails):
    facts = healthy_facts()
    if facts_change == "warn":
        facts["upstream"]["servers"] = ["x:8000"]
    elif facts_change == "fail":
        facts["http"]["status"] = 502
    summary = dc.summarize(dc.evaluate(copy.deepcopy(facts)))
    assert dc.should_fail(summary, fail_on) is fails


def test_evidence_is_capped():
    lines = [f"line {i}" for i in range(30)] + ["x" * 1000]
    out = dc.short(lines)
    assert len(out) == dc.EVIDENCE_LINES
    assert out[-1] == "... and 24 more"
    assert max(len(x) for x in dc.short(["y" * 1000])) == dc.EVIDENCE_WIDTH


def test_evidence_lines_are_one_line_each():
    assert dc.short(["<html>\n<head>  502\n</head>"]) == ["<html> <head> 502 </head>"]


def test_unknown_status_is_refused():
    with pytest.raises(ValueError, match="unknown status"):
        dc.result("x.y", "OK", "")
