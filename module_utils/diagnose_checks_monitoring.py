"""Diagnosis checks of what the stack tells: logs in the window, Prometheus, latency."""

from __future__ import annotations

from ansible.module_utils.diagnose_result import (
    level,
    pct,
    percentile,
    playbook,
    restart_remedy,
    result,
    worst,
)

LOG_CHECKS = {
    "logs.tracebacks": ("Python tracebacks", "WARN"),
    "logs.address_in_use": ("'address already in use'", "FAIL"),
    "logs.database_errors": ("database errors", "WARN"),
    "logs.nginx_upstream": ("nginx upstream errors", "WARN"),
}


def check_log_patterns(facts, t):
    logs = facts.get("logs") or {}
    found = logs.get("matches", {})
    out = []
    for cid, (label, bad_status) in LOG_CHECKS.items():
        hits = found.get(cid) or []
        if not hits:
            out.append(result(cid, "PASS", f"no {label} since {logs.get('since')}"))
            continue
        count = sum(h["count"] for h in hits)
        evidence = [f"{h['container']}: {h['count']}x, first: {h['first']}" for h in hits]
        remedy = {
            "logs.address_in_use": "two processes want one port: docker ps; ss -ltnp; then "
            + playbook("restart"),
            "logs.database_errors": "see the database checks; the first line names the cause",
            "logs.nginx_upstream": "see network.replicas and containers.healthy; "
            + playbook("restart", restart_services=facts["services"]["backend"]),
        }.get(cid, f"docker logs --since {logs.get('since')} NAME | grep -A20 Traceback")
        out.append(
            result(cid, bad_status, f"{count} {label} since {logs.get('since')}", evidence, remedy)
        )
    return out


def check_5xx(facts, t):
    access = (facts.get("logs") or {}).get("access") or {}
    total, errors = access.get("requests", 0), access.get("errors", 0)
    since = (facts.get("logs") or {}).get("since")
    if not total:
        return result("logs.http_5xx", "PASS", f"no requests in nginx's access log since {since}")
    rate = pct(errors, total)
    status = level(rate, t["error_rate_warn_pct"], t["error_rate_fail_pct"]) if errors else "PASS"
    evidence = [f"{errors} of {total} requests answered 5xx ({rate} %)"]
    if access.get("first_error"):
        evidence.append(f"first: {access['first_error']}")
    return result(
        "logs.http_5xx",
        status,
        f"5xx rate {rate} % ({errors}/{total}) since {since}",
        evidence,
        "see containers.healthy, database.login and network.replicas for the cause",
    )


def check_prometheus(facts, t):
    prom = facts["prometheus"]
    if prom.get("error"):
        return result(
            "monitoring.prometheus",
            "FAIL",
            f"Prometheus does not answer at {prom['url']}",
            [prom["error"]],
            restart_remedy([facts["services"]["prometheus"]]),
        )
    return result("monitoring.prometheus", "PASS", f"Prometheus answers at {prom['url']}")


def _owner(facts, instance):
    """The project container whose address a scrape target's instance (ip:port) is."""
    ip = instance.rsplit(":", 1)[0]
    return next((c for c in facts["containers"] if ip in (c.get("ips") or [])), None)


def check_targets(facts, t):
    prom = facts["prometheus"]
    if prom.get("error"):
        return result("monitoring.targets", "SKIP", "Prometheus does not answer")
    targets = prom.get("targets", [])
    down = [x for x in targets if x["health"] != "up"]
    evidence, services, strays = [], [], []
    for x in down:
        owner = _owner(facts, x["instance"])
        if owner:
            services.append(owner["service"])
        else:
            strays.append(x["instance"])
        who = owner["name"] if owner else "no container of the project"
        evidence.append(f"{x['job']} {x['instance']} ({who}): {x['health']} {x['error']}".strip())
    if down:
        remedy = "read the scrape error above"
        if services:
            remedy += "; replace the containers that do not answer their scrape: " + (
                restart_remedy(services)
            )
        if strays:
            remedy += (
                f"; {', '.join(strays)} belongs to no container of the project: find it with "
                f"docker network inspect {facts['project']}_default and remove it"
            )
        return result(
            "monitoring.targets",
            "FAIL",
            f"{len(down)} of {len(targets)} scrape targets are not up",
            evidence,
            remedy,
        )
    if not targets:
        return result(
            "monitoring.targets",
            "WARN",
            "Prometheus has no active targets",
            [],
            playbook("deploy") + " (rewrites prometheus.yml)",
        )
    jobs = sorted({x["job"] for x in targets})
    return result(
        "monitoring.targets", "PASS", f"all {len(targets)} targets up ({', '.join(jobs)})"
    )


def check_backend_metrics(facts, t):
    probes = facts.get("metrics_probes")
    if probes is None:
        return result("monitoring.backend_metrics", "SKIP", "no running nginx or backend replica")
    bad = [p for p in probes if p["status"] != "200"]
    if bad:
        return result(
            "monitoring.backend_metrics",
            "FAIL",
            f"{len(bad)} of {len(probes)} backend replicas do not answer /metrics: Prometheus "
            "cannot scrape them (no request, error or latency figures from them)",
            [f"{p['url']}: {p['status']} {p['detail']}" for p in bad],
            "a release without the metrics endpoint or a replica that is not the application: "
            + playbook("deploy")
            + " (recreates the backend replicas from compose.yaml), then rerun diagnose",
        )
    return result(
        "monitoring.backend_metrics", "PASS", f"all {len(probes)} backend replicas answer /metrics"
    )


def check_prometheus_5xx(facts, t):
    """The 5xx share of the backend's requests in the window, from Prometheus's series."""
    prom = facts["prometheus"]
    series = prom.get("http_5xx")
    if prom.get("error") or series is None:
        return result("monitoring.http_5xx", "SKIP", "Prometheus does not answer")
    if series.get("error"):
        return result(
            "monitoring.http_5xx",
            "WARN",
            "Prometheus cannot answer the 5xx query",
            [series["error"]],
            "check the backend job's metric http_requests_total in Prometheus",
        )
    total, errors = series.get("requests", 0.0), series.get("errors", 0.0)
    window = f"{series['window_seconds']} s"
    if not total:
        return result(
            "monitoring.http_5xx", "PASS", f"no backend request counted in the last {window}"
        )
    rate = pct(errors, total)
    status = level(rate, t["error_rate_warn_pct"], t["error_rate_fail_pct"]) if errors else "PASS"
    return result(
        "monitoring.http_5xx",
        status,
        f"backend 5xx rate {rate} % ({errors:g} of {total:g} requests) over the last {window}, "
        "from Prometheus",
        [f"{series['query']} = {errors:g}; all requests {total:g}"],
        "see containers.healthy, database.login and network.replicas for the cause",
    )


def check_backup_age(facts, t):
    """The backup freshness alert's condition, on the metrics the backup role writes."""
    metrics = facts.get("backup_metrics")
    max_hours = t["backup_max_age_hours"]
    if metrics is None or not max_hours:
        return result("backup.age", "PASS", "backup freshness not checked (no metrics directory)")
    values = metrics["values"]
    last = values.get("opsauto_backup_last_success_timestamp_seconds")
    where = f"{metrics['dir']}/opsauto_backup.prom"
    if last is None:
        return result(
            "backup.age",
            "WARN",
            f"no successful backup recorded in {where}",
            [f"files read: {', '.join(metrics.get('files') or []) or 'none'}"],
            playbook("backup")
            + " now, and schedule it: "
            + playbook("schedule_backups")
            + " (or pass diagnose_backup_metrics_dir where backup_metrics_dir points)",
        )
    now = facts["clock"]["host"]
    hours = round((now - last) / 3600, 1)
    evidence = [f"opsauto_backup_last_success_timestamp_seconds {last:.0f}: {hours} h ago"]
    failed = values.get("opsauto_backup_last_failure_timestamp_seconds")
    if failed and failed > last:
        evidence.append(f"a later run failed {round((now - failed) / 3600, 1)} h ago")
    if hours > max_hours:
        return result(
            "backup.age",
            "FAIL",
            f"the newest successful backup is {hours} h old (limit {max_hours:g} h: the "
            "BackupMissing alert condition)",
            evidence,
            playbook("backup")
            + " now; then find why the scheduled run stopped: its log under the schedule's "
            "log directory, and " + playbook("schedule_backups"),
        )
    if failed and failed > last:
        return result(
            "backup.age",
            "WARN",
            "the last backup run failed after the newest good set",
            evidence,
            "read the scheduled run's log; " + playbook("backup"),
        )
    return result("backup.age", "PASS", f"the newest successful backup is {hours} h old")


def check_latency(facts, t):
    samples = facts.get("latency") or {}
    ms = samples.get("ms") or []
    if not ms:
        return result("latency.health", "SKIP", "no successful probe (network.http)")
    p50, p95 = percentile(ms, 50), percentile(ms, 95)
    status = level(p95, t["latency_p95_warn_ms"], t["latency_p95_fail_ms"])
    if samples.get("errors"):
        status = worst(status, "WARN")
    evidence = [
        f"samples ms: {', '.join(str(x) for x in ms)}; failed probes: {samples.get('errors', 0)}"
    ]
    remedy = "slow queries? see database.activity; CPU? see host.load; more replicas: " + (
        playbook("scale")
    )
    summary = f"/health through nginx: p50 {p50} ms, p95 {p95} ms over {len(ms)} probes"
    # The replicas probed one by one from nginx: is one of them the slow one?
    timed = [p for p in facts.get("replica_probes") or [] if p.get("ms") is not None]
    if timed:
        slow = max(timed, key=lambda p: p["ms"])
        evidence.append("per replica from nginx: " + ", ".join(
            f"{p['url'].split('//', 1)[-1].split(':', 1)[0]} {p['ms']} ms" for p in timed
        ))  # fmt: skip
        fast = min(p["ms"] for p in timed)
        if slow["ms"] >= t["latency_p95_warn_ms"] and slow["ms"] >= 4 * max(fast, 1):
            name = slow["url"].split("//", 1)[-1].split(":", 1)[0]
            summary += f"; one replica is slow: {name} ({slow['ms']} ms, the others from {fast} ms)"
            remedy = (
                f"look at that replica: docker stats --no-stream {name}; docker logs --tail 50 "
                f"{name}; replace it: "
                + restart_remedy([facts["services"]["backend"]])
                + "; if it stays slow: "
                + playbook("scale")
            )
    return result("latency.health", status, summary, evidence, remedy)


def check_endpoints(facts, t):
    slow = ((facts.get("logs") or {}).get("access") or {}).get("slowest") or []
    if not slow:
        return result("latency.endpoints", "PASS", "no request times in nginx's access log")
    worst_ms = slow[0]["max_ms"]
    status = level(worst_ms, t["latency_p95_fail_ms"], t["latency_p95_fail_ms"] * 5)
    return result(
        "latency.endpoints",
        "PASS" if status == "PASS" else "WARN",
        f"slowest endpoint {slow[0]['endpoint']}: max {worst_ms} ms",
        [f"{s['endpoint']}: {s['count']} requests, max {s['max_ms']} ms" for s in slow],
        "profile the slowest endpoint; see database.activity",
    )
