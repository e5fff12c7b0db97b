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


def check_targets(facts, t):
    prom = facts["prometheus"]
    if prom.get("error"):
        return result("monitoring.targets", "SKIP", "Prometheus does not answer")
    targets = prom.get("targets", [])
    down = [x for x in targets if x["health"] != "up"]
    evidence = [f"{x['job']} {x['instance']}: {x['health']} {x['error']}".strip() for x in down]
    if down:
        return result(
            "monitoring.targets",
            "FAIL",
            f"{len(down)} of {len(targets)} scrape targets are not up",
            evidence,
            "see the scrape error; a stopped exporter or replica: " + playbook("restart"),
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


def check_latency(facts, t):
    samples = facts.get("latency") or {}
    ms = samples.get("ms") or []
    if not ms:
        return result("latency.health", "SKIP", "no successful probe (network.http)")
    p50, p95 = percentile(ms, 50), percentile(ms, 95)
    status = level(p95, t["latency_p95_warn_ms"], t["latency_p95_fail_ms"])
    if samples.get("errors"):
        status = worst(status, "WARN")
    return result(
        "latency.health",
        status,
        f"/health through nginx: p50 {p50} ms, p95 {p95} ms over {len(ms)} probes",
        [f"samples ms: {', '.join(str(x) for x in ms)}; failed probes: {samples.get('errors', 0)}"],
        "slow queries? see database.activity; CPU? see host.load; more replicas: "
        + playbook("scale"),
    )


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
