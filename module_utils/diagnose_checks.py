"""Evaluation of a read-only diagnosis of the FastAPI stack (library/stack_diagnose.py).

Every check is a pure function of the collected facts (module_utils/diagnose_collect.py)
and the thresholds; it returns one result:

    {"id": "database.login", "category": "database", "status": "FAIL",
     "summary": "...", "evidence": ["short lines or figures seen"], "remedy": "..."}

status is PASS, WARN, FAIL, or SKIP when its input could not be collected because of
another failure (named in the summary). ``correlate`` then marks a non-PASS result that a
more basic failure explains with ``symptom_of`` (the backend is unhealthy *because* its
database login fails), so an operator reads the root causes first.
"""

from __future__ import annotations

from ansible.module_utils.diagnose_checks_alerting import (
    check_alerts,
    check_grafana,
    check_prometheus_config,
)
from ansible.module_utils.diagnose_checks_containers import (
    check_healthy,
    check_oom,
    check_present,
    check_release,
    check_replicas,
    check_restarts,
    check_rollback_images,
    check_rollout,
    check_running,
)
from ansible.module_utils.diagnose_checks_host import (
    check_clock,
    check_disks,
    check_docker,
    check_docker_journal,
    check_kernel_oom,
    check_load,
    check_memory,
)
from ansible.module_utils.diagnose_checks_monitoring import (
    check_5xx,
    check_backend_metrics,
    check_backup_age,
    check_endpoints,
    check_latency,
    check_log_patterns,
    check_prometheus,
    check_prometheus_5xx,
    check_targets,
)
from ansible.module_utils.diagnose_checks_service import (
    check_compose,
    check_db_activity,
    check_db_connections,
    check_db_dns,
    check_db_login,
    check_db_ready,
    check_env,
    check_http,
    check_nginx_config,
    check_ports,
    check_replicas_via_nginx,
    check_upstream_port,
)
from ansible.module_utils.diagnose_result import (  # noqa: F401 (re-exported for callers)
    EVIDENCE_LINES,
    EVIDENCE_WIDTH,
    STATUSES,
    result,
    short,
    worst,
)

DEFAULT_THRESHOLDS = {
    "load_warn_per_core": 2.0,
    "load_fail_per_core": 4.0,
    "memory_available_warn_pct": 10.0,
    "memory_available_fail_pct": 5.0,
    "swap_used_warn_pct": 50.0,
    "disk_free_warn_pct": 15.0,
    "disk_free_fail_pct": 5.0,
    "inodes_free_warn_pct": 15.0,
    "inodes_free_fail_pct": 5.0,
    "restart_count_warn": 3,
    "connections_warn_pct": 80.0,
    "connections_fail_pct": 95.0,
    "long_query_seconds": 30,
    "lock_wait_seconds": 5,
    "error_rate_warn_pct": 1.0,
    "error_rate_fail_pct": 5.0,
    "latency_p95_warn_ms": 500,
    "latency_p95_fail_ms": 2000,
    "backup_max_age_hours": 26.0,
    "clock_skew_warn_seconds": 5.0,
    "clock_skew_fail_seconds": 60.0,
    "docker_journal_errors_warn": 1,
}

# Which failures explain which: a non-PASS check whose listed cause is also non-PASS is
# marked symptom_of that cause (the first one, in this order).
_BASIC = ["host.docker", "containers.present", "containers.running", "database.ready"]
_DB = [*_BASIC, "network.db_dns", "database.login"]
_SERVING = [
    *_DB,
    "containers.healthy",
    "configuration.nginx",
    "configuration.upstream",
    "network.replicas",
]
_ALL = [*_SERVING, "network.http", "host.load", "host.memory", "database.activity"]
CAUSES = {
    "containers.running": ["host.docker", "containers.oom", "host.kernel_oom", "network.ports"],
    "containers.healthy": [*_DB, "containers.restarts"],
    "containers.restarts": ["containers.oom", "host.kernel_oom", *_DB],
    # The kernel's kill of a container Docker marked OOMKilled is the same event.
    "host.kernel_oom": ["containers.oom"],
    # A daemon's errors about containers that exited, looped or could not bind their port.
    "host.docker_journal": [
        "host.docker",
        "containers.oom",
        "host.kernel_oom",
        "containers.running",
        "containers.restarts",
        "network.ports",
    ],
    "containers.replicas": ["host.docker"],
    "database.ready": ["host.docker", "containers.present", "containers.running"],
    "database.login": _BASIC + ["network.db_dns"],
    "database.connections": _DB,
    "database.activity": _DB,
    "network.db_dns": _BASIC,
    "network.replicas": _DB + ["containers.healthy", "containers.restarts"],
    "network.http": _SERVING,
    "configuration.nginx": _BASIC,
    "monitoring.prometheus": _BASIC,
    "monitoring.targets": [
        *_BASIC,
        "containers.healthy",
        "monitoring.prometheus",
        "monitoring.backend_metrics",
    ],
    "monitoring.backend_metrics": [
        *_DB,
        "containers.healthy",
        "containers.restarts",
        "network.replicas",
    ],
    "monitoring.http_5xx": _ALL,
    "monitoring.alerts": [
        *_BASIC,
        "monitoring.prometheus",
        "configuration.prometheus",
        "backup.age",
    ],
    "monitoring.grafana": ["host.docker", "monitoring.prometheus"],
    "configuration.prometheus": _BASIC,
    "network.ports": ["host.docker"],
    "deployment.release": _BASIC,
    "logs.tracebacks": _ALL,
    "logs.database_errors": _ALL,
    "logs.nginx_upstream": _ALL,
    "logs.http_5xx": _ALL,
    "logs.address_in_use": _BASIC,
    "latency.health": _ALL,
    "latency.endpoints": _ALL,
}

CHECKS = (
    check_docker,
    check_load,
    check_memory,
    check_disks,
    check_clock,
    check_kernel_oom,
    check_docker_journal,
    check_present,
    check_running,
    check_healthy,
    check_restarts,
    check_oom,
    check_replicas,
    check_db_ready,
    check_db_login,
    check_db_connections,
    check_db_activity,
    check_http,
    check_replicas_via_nginx,
    check_db_dns,
    check_ports,
    check_log_patterns,
    check_5xx,
    check_compose,
    check_env,
    check_nginx_config,
    check_upstream_port,
    check_prometheus_config,
    check_prometheus,
    check_targets,
    check_backend_metrics,
    check_prometheus_5xx,
    check_alerts,
    check_grafana,
    check_backup_age,
    check_release,
    check_rollback_images,
    check_rollout,
    check_latency,
    check_endpoints,
)


def correlate(results):
    """Mark each non-PASS result that a non-PASS cause explains with symptom_of."""
    bad = {r["id"] for r in results if r["status"] in ("WARN", "FAIL")}
    for r in results:
        if r["status"] in ("WARN", "FAIL"):
            cause = next((c for c in CAUSES.get(r["id"], ()) if c in bad and c != r["id"]), None)
            if cause:
                r["symptom_of"] = cause
    return results


def evaluate(facts, thresholds=None):
    """Every check's result, correlated, in a stable order."""
    t = dict(DEFAULT_THRESHOLDS)
    t.update({k: v for k, v in (thresholds or {}).items() if v is not None})
    results = []
    for check in CHECKS:
        out = check(facts, t)
        results.extend(out if isinstance(out, list) else [out])
    return correlate(results)


def summarize(results):
    counts = {s: sum(1 for r in results if r["status"] == s) for s in STATUSES}
    roots = [r["id"] for r in results if r["status"] in ("WARN", "FAIL") and "symptom_of" not in r]
    status = worst(*(r["status"] for r in results)) if results else "PASS"
    return {
        "status": "PASS" if status == "SKIP" else status,
        "counts": counts,
        "root_causes": roots,
    }


def should_fail(summary, fail_on):
    """diagnose_fail_on: never, fail (any FAIL), warn (any WARN or FAIL)."""
    if fail_on == "fail":
        return summary["counts"]["FAIL"] > 0
    if fail_on == "warn":
        return summary["counts"]["FAIL"] + summary["counts"]["WARN"] > 0
    return False
