"""Unit tests of the later diagnosis checks (OOM kill, crash loop, backend /metrics, scrape
targets attributed to containers, Prometheus 5xx rate, backup freshness, clock skew,
published ports, a slow replica, the load thresholds): each branch from fake facts and the
root cause it leaves. Built on the healthy facts of test_diagnose_checks.py; the same faults
on a real stack are in tests/integration/test_diagnose_local.py.
"""

from __future__ import annotations

import copy

from test_diagnose_checks import NOW, dc, healthy_facts, run


def roots(facts, **thresholds):
    return dc.summarize(dc.evaluate(copy.deepcopy(facts), thresholds))["root_causes"]


def backend(facts, number=1):
    return next(c for c in facts["containers"] if c["name"] == f"fm-backend-{number}")


# --------------------------------------------------------------------------- containers


def test_oom_killed_container_is_the_root_cause_of_its_exit():
    facts = healthy_facts()
    backend(facts).update(state="exited", exit_code=137, oom_killed=True, health="unhealthy")
    results = run(facts)
    oom = results["containers.oom"]
    assert oom["status"] == "FAIL"
    assert oom["evidence"] == ["fm-backend-1: OOMKilled, memory limit 268435456"]
    assert '"scale_resources": {"backend": {"memory": "512m"}}' in oom["remedy"]
    assert results["containers.running"]["symptom_of"] == "containers.oom"
    assert roots(facts) == ["containers.oom"]


def test_crash_loop_is_one_finding_not_a_stopped_container():
    facts = healthy_facts()
    backend(facts, 2).update(state="restarting", restart_count=5, restart_count_later=6,
                             exit_code=3, health="none")  # fmt: skip
    results = run(facts)
    assert results["containers.running"]["status"] == "PASS"
    loop = results["containers.restarts"]
    assert loop["status"] == "FAIL"
    assert loop["summary"] == "restart loop: fm-backend-2"
    assert "docker logs --tail 50 fm-backend-2" in loop["remedy"]
    assert "playbooks/rollback.yml" in loop["remedy"]
    assert roots(facts) == ["containers.restarts"]


# --------------------------------------------------------------------------- monitoring


def test_backend_metrics_unreachable_explains_its_target_down():
    facts = healthy_facts()
    facts["metrics_probes"][1].update(status="404", detail="2 ms", ms=2)
    backend(facts, 2)["ips"] = ["172.18.0.3"]
    facts["prometheus"]["targets"][1].update(
        health="down", error="server returned HTTP status 404 Not Found"
    )
    results = run(facts)
    metrics = results["monitoring.backend_metrics"]
    assert metrics["status"] == "FAIL"
    assert metrics["evidence"] == ["http://fm-backend-2:8000/metrics: 404 2 ms"]
    assert "playbooks/deploy.yml" in metrics["remedy"]
    targets = results["monitoring.targets"]
    assert targets["evidence"] == [
        "backend 172.18.0.3:8000 (fm-backend-2): down server returned HTTP status 404 Not Found"
    ]
    assert targets["symptom_of"] == "monitoring.backend_metrics"
    assert roots(facts) == ["monitoring.backend_metrics"]


def test_backend_metrics_skips_without_replicas():
    facts = healthy_facts()
    facts["metrics_probes"] = None
    assert run(facts)["monitoring.backend_metrics"]["status"] == "SKIP"


def test_prometheus_5xx_rate_over_the_window():
    facts = healthy_facts()
    facts["prometheus"]["http_5xx"].update(requests=40.0, errors=10.0)
    r = run(facts)["monitoring.http_5xx"]
    assert r["status"] == "FAIL"
    assert r["summary"].startswith("backend 5xx rate 25.0 % (10 of 40 requests) over the last 900")
    facts["prometheus"]["http_5xx"].update(errors=0.2)
    assert run(facts)["monitoring.http_5xx"]["status"] == "PASS"  # 0.5 % < 1 %
    facts["prometheus"]["http_5xx"].update(requests=0.0, errors=0.0)
    assert run(facts)["monitoring.http_5xx"]["status"] == "PASS"
    facts["prometheus"]["http_5xx"] = {"window_seconds": 900, "query": "q", "error": "q: HTTP 400"}
    assert run(facts)["monitoring.http_5xx"]["status"] == "WARN"
    facts["prometheus"] = {"url": "http://127.0.0.1:9090", "error": "URLError: refused"}
    assert run(facts)["monitoring.http_5xx"]["status"] == "SKIP"


def test_prometheus_5xx_is_a_symptom_of_the_database_login():
    facts = healthy_facts()
    facts["db_login"] = {**facts["db_login"], "error": "OperationalError: password "
                         "authentication failed for user \"app\""}  # fmt: skip
    facts["prometheus"]["http_5xx"].update(requests=40.0, errors=20.0)
    results = run(facts)
    assert results["monitoring.http_5xx"]["symptom_of"] == "database.login"
    assert roots(facts) == ["database.login"]


# --------------------------------------------------------------------------- backup freshness


def test_backup_older_than_the_limit_fails_naming_the_backup_playbook():
    facts = healthy_facts()
    values = facts["backup_metrics"]["values"]
    values["opsauto_backup_last_success_timestamp_seconds"] = NOW - 30 * 3600
    r = run(facts)["backup.age"]
    assert r["status"] == "FAIL"
    assert r["summary"].startswith("the newest successful backup is 30.0 h old (limit 26 h")
    assert r["remedy"].startswith("ansible-playbook playbooks/backup.yml now")
    assert roots(facts) == ["backup.age"]
    # The limit is a threshold (diagnose_backup_max_age_hours); 0 turns the check off.
    assert run(facts, backup_max_age_hours=48)["backup.age"]["status"] == "PASS"
    assert run(facts, backup_max_age_hours=0)["backup.age"]["status"] == "PASS"


def test_backup_never_recorded_or_last_run_failed_warns():
    facts = healthy_facts()
    facts["backup_metrics"]["values"] = {}
    facts["backup_metrics"]["files"] = []
    r = run(facts)["backup.age"]
    assert r["status"] == "WARN"
    assert "no successful backup recorded in /var/lib/prometheus/node-exporter" in r["summary"]
    facts = healthy_facts()
    facts["backup_metrics"]["values"]["opsauto_backup_last_failure_timestamp_seconds"] = NOW - 60
    r = run(facts)["backup.age"]
    assert r["status"] == "WARN"
    assert r["evidence"][1] == "a later run failed 0.0 h ago"
    facts["backup_metrics"] = None  # no metrics directory given
    assert run(facts)["backup.age"]["status"] == "PASS"


# --------------------------------------------------------------------------- host


def test_clock_skew_against_the_control_node():
    facts = healthy_facts()
    facts["clock"] = {"controller": NOW + 12, "host": NOW}
    r = run(facts)["host.clock"]
    assert r["status"] == "WARN"
    assert r["summary"] == "the host's clock is 12.0 s behind the control node's"
    assert "timedatectl set-ntp true" in r["remedy"]
    facts["clock"] = {"controller": NOW - 90, "host": NOW}
    assert run(facts)["host.clock"]["status"] == "FAIL"
    assert run(facts, clock_skew_fail_seconds=120)["host.clock"]["status"] == "WARN"
    facts["clock"] = {"controller": None, "host": NOW}
    assert run(facts)["host.clock"]["status"] == "PASS"


def test_load_thresholds_decide_the_finding():
    facts = healthy_facts()  # 5-minute load 0.5 on 2 cores: 0.25 per core
    assert run(facts)["host.load"]["status"] == "PASS"
    assert run(facts, load_warn_per_core=0.2, load_fail_per_core=1.0)["host.load"]["status"] == (
        "WARN"
    )
    r = run(facts, load_warn_per_core=0.1, load_fail_per_core=0.2)["host.load"]
    assert r["status"] == "FAIL"
    assert "playbooks/scale.yml" in r["remedy"]


# --------------------------------------------------------------------------- network


def test_published_port_taken_by_another_process_is_the_root_cause():
    facts = healthy_facts()
    nginx = next(c for c in facts["containers"] if c["service"] == "nginx")
    error = (
        "driver failed programming external connectivity: Error starting userland proxy: "
        "listen tcp4 127.0.0.1:8080: bind: address already in use"
    )
    nginx.update(state="created", health="none", exit_code=128, error=error)
    results = run(facts)
    ports = results["network.ports"]
    assert ports["status"] == "FAIL"
    assert ports["summary"] == "a published port is taken by another process: fm-nginx-1 wants 8080"
    assert "port 127.0.0.1:8080 held by another process" in ports["evidence"][0]
    assert "ss -ltnp 'sport = :8080'" in ports["remedy"]
    assert "playbooks/restart.yml -e restart_services=nginx" in ports["remedy"]
    assert results["containers.running"]["symptom_of"] == "network.ports"
    assert "network.ports" in roots(facts)
    assert "containers.running" not in roots(facts)


def test_published_port_not_listening():
    facts = healthy_facts()
    facts["host"]["listening"] = [22, 9090]
    r = run(facts)["network.ports"]
    assert r["status"] == "FAIL"
    assert r["evidence"] == ["fm-nginx-1: 127.0.0.1:8080 -> 80/tcp not listening"]
    facts["host"]["listening"] = [22, 8080, 9090]
    assert run(facts)["network.ports"]["summary"] == "2 published ports listen on the host"


# --------------------------------------------------------------------------- latency


def test_a_slow_replica_is_named():
    facts = healthy_facts()
    facts["latency"] = {"ms": [6, 1204, 7, 1210, 8], "errors": 0}
    facts["replica_probes"][1].update(detail="1203 ms", ms=1203)
    r = run(facts)["latency.health"]
    assert r["status"] == "WARN"
    assert "one replica is slow: fm-backend-2 (1203 ms, the others from 5 ms)" in r["summary"]
    assert "docker stats --no-stream fm-backend-2" in r["remedy"]
    assert r["evidence"][1] == "per replica from nginx: fm-backend-1 5 ms, fm-backend-2 1203 ms"
    assert roots(facts) == ["latency.health"]
    # Evenly slow replicas: the generic remedy (queries, CPU, more replicas).
    facts["replica_probes"][0].update(detail="1100 ms", ms=1100)
    r = run(facts)["latency.health"]
    assert "one replica is slow" not in r["summary"]
    assert "see database.activity" in r["remedy"]


# --------------------------------------------------------------------------- fixes


def test_fixes_only_on_the_automatable_findings():
    facts = healthy_facts()
    backend(facts).update(state="exited", exit_code=1, health="none")
    assert run(facts)["containers.running"]["fix"] == {"action": "restart", "services": ["backend"]}
    backend(facts).update(state="paused")
    assert run(facts)["containers.running"]["fix"] == {
        "action": "unpause", "containers": ["fm-backend-1"],
    }  # fmt: skip
    facts = healthy_facts()
    backend(facts, 2).update(health="unhealthy")
    assert run(facts)["containers.healthy"]["fix"] == {"action": "restart", "services": ["backend"]}
    facts = healthy_facts()
    facts["ledger"]["entries"] = [{**facts["ledger"]["entries"][-1], "status": "bad"}]
    assert run(facts)["deployment.release"]["fix"] == {"action": "rollback"}
    # A container of no compose service (made by hand) has no automatic restart.
    facts = healthy_facts()
    facts["containers"].append(
        {**backend(facts), "name": "fm-oomtest-1", "service": "oomtest", "state": "exited"}
    )
    assert "fix" not in run(facts)["containers.running"]
    # A PASS never carries a fix; nor does a check whose remedy is not automated.
    results = run(healthy_facts())
    assert not [r for r in results.values() if "fix" in r]
    facts = healthy_facts()
    facts["host"]["disks"][0]["free"] = 1
    assert "fix" not in run(facts)["host.disk"]


def test_routing_through_the_route_alias_is_no_open_rollout():
    facts = healthy_facts()
    facts["route_alias"] = "backend-live"
    facts["upstream"]["servers"] = ["backend-live:8000"]  # set $backend_route backend-live:8000
    results = run(facts)
    assert results["deployment.rollout"]["status"] == "PASS"
    assert results["configuration.upstream"]["status"] == "PASS"
    facts["upstream"]["servers"] = ["fm-backend-3:8000"]
    assert run(facts)["deployment.rollout"]["status"] == "WARN"
