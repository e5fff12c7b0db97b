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

STATUSES = ("PASS", "WARN", "FAIL", "SKIP")
EVIDENCE_LINES = 8
EVIDENCE_WIDTH = 240

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
    "containers.running": ["host.docker", "containers.oom"],
    "containers.healthy": _DB,
    "containers.restarts": ["containers.oom", *_DB],
    "containers.replicas": ["host.docker"],
    "database.ready": ["host.docker", "containers.present", "containers.running"],
    "database.login": _BASIC + ["network.db_dns"],
    "database.connections": _DB,
    "database.activity": _DB,
    "network.db_dns": _BASIC,
    "network.replicas": _DB + ["containers.healthy"],
    "network.http": _SERVING,
    "configuration.nginx": _BASIC,
    "monitoring.prometheus": _BASIC,
    "monitoring.targets": [*_BASIC, "containers.healthy", "monitoring.prometheus"],
    "deployment.release": _BASIC,
    "logs.tracebacks": _ALL,
    "logs.database_errors": _ALL,
    "logs.nginx_upstream": _ALL,
    "logs.http_5xx": _ALL,
    "logs.address_in_use": _BASIC,
    "latency.health": _ALL,
    "latency.endpoints": _ALL,
}


def playbook(name, **extra):
    """The remedy command: `ansible-playbook playbooks/NAME.yml [-e k=v ...]`."""
    args = "".join(f" -e {key}={value}" for key, value in extra.items())
    return f"ansible-playbook playbooks/{name}.yml{args}"


def short(lines):
    out = [" ".join(str(line).split())[:EVIDENCE_WIDTH] for line in lines if str(line).strip()]
    if len(out) > EVIDENCE_LINES:
        out = out[: EVIDENCE_LINES - 1] + [f"... and {len(out) - EVIDENCE_LINES + 1} more"]
    return out


def result(cid, status, summary, evidence=(), remedy=""):
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    return {
        "id": cid,
        "category": cid.split(".", 1)[0],
        "status": status,
        "summary": summary,
        "evidence": short(evidence),
        "remedy": remedy if status in ("WARN", "FAIL") else "",
    }


def worst(*statuses):
    order = {"PASS": 0, "SKIP": 1, "WARN": 2, "FAIL": 3}
    return max(statuses, key=order.get, default="PASS")


def level(value, warn, fail, higher_is_worse=True):
    """PASS/WARN/FAIL of a figure against two thresholds."""
    if higher_is_worse:
        return "FAIL" if value >= fail else "WARN" if value >= warn else "PASS"
    return "FAIL" if value <= fail else "WARN" if value <= warn else "PASS"


def pct(part, whole):
    return round(100.0 * part / whole, 1) if whole else 0.0


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


# --------------------------------------------------------------------------- containers


def _by_service(containers, service):
    return [c for c in containers if c["service"] == service]


def _restart_remedy(services):
    return playbook("restart", restart_services=",".join(sorted(set(services))))


def check_present(facts, t):
    cs = facts["containers"]
    if facts.get("docker_error"):
        return result("containers.present", "SKIP", "Docker does not answer (host.docker)")
    if not cs:
        return result(
            "containers.present",
            "FAIL",
            f"no container of compose project {facts['project']} exists on this host",
            [f"docker ps -a --filter label=com.docker.compose.project={facts['project']}: none"],
            playbook("deploy"),
        )
    return result("containers.present", "PASS", f"{len(cs)} containers of {facts['project']}")


def check_running(facts, t):
    cs = facts["containers"]
    if not cs:
        return result("containers.running", "SKIP", "no containers (containers.present)")
    down = [c for c in cs if c["state"] != "running"]
    if not down:
        return result("containers.running", "PASS", f"all {len(cs)} containers are running")
    evidence = [
        f"{c['name']}: {c['state']} (exit code {c['exit_code']}"
        f"{', OOMKilled' if c['oom_killed'] else ''}, finished {c['finished_at']})"
        for c in down
    ]
    services = [c["service"] for c in down]
    paused = [c["name"] for c in down if c["state"] == "paused"]
    if paused:
        return result(
            "containers.running",
            "FAIL",
            "paused (processes frozen; connections hang instead of failing): " + ", ".join(paused),
            evidence,
            "docker unpause " + " ".join(paused),
        )
    return result(
        "containers.running",
        "FAIL",
        f"{len(down)} of {len(cs)} containers are not running: "
        + ", ".join(c["name"] for c in down),
        evidence,
        _restart_remedy(services) + " (restarts exited and unhealthy containers; then rerun "
        "diagnose; if it exits again read its log: docker logs NAME)",
    )


def check_healthy(facts, t):
    running = [c for c in facts["containers"] if c["state"] == "running"]
    if not running:
        return result("containers.healthy", "SKIP", "no running containers")
    bad = [c for c in running if c["health"] == "unhealthy"]
    starting = [c for c in running if c["health"] == "starting"]
    evidence = [
        f"{c['name']}: {c['health']}; last probe: {c['health_log'] or 'no output'}"
        for c in bad + starting
    ]
    if bad:
        return result(
            "containers.healthy",
            "FAIL",
            f"{len(bad)} running containers fail their health check: "
            + ", ".join(c["name"] for c in bad),
            evidence,
            _restart_remedy(c["service"] for c in bad)
            + " (restarts only the unhealthy containers)",
        )
    if starting:
        return result(
            "containers.healthy",
            "WARN",
            "health check still starting: " + ", ".join(c["name"] for c in starting),
            evidence,
            "wait a minute and rerun " + playbook("diagnose"),
        )
    checked = [c for c in running if c["health"] == "healthy"]
    return result(
        "containers.healthy", "PASS", f"{len(checked)} containers with a health check are healthy"
    )


def check_restarts(facts, t):
    cs = facts["containers"]
    if not cs:
        return result("containers.restarts", "SKIP", "no containers (containers.present)")
    looping = [
        c
        for c in cs
        if c["state"] == "restarting"
        or (c.get("restart_count_later") or c["restart_count"]) > c["restart_count"]
    ]
    many = [
        c
        for c in cs
        if c not in looping and c["restart_count"] >= t["restart_count_warn"] and c["recent_start"]
    ]
    evidence = [
        f"{c['name']}: state {c['state']}, restart count {c['restart_count']}"
        + (
            f" -> {c['restart_count_later']} {facts['restart_sample_seconds']} s later"
            if c.get("restart_count_later") not in (None, c["restart_count"])
            else ""
        )
        + f", last exit code {c['exit_code']}, started {c['started_at']}"
        for c in looping + many
    ]
    if looping:
        names = ", ".join(c["name"] for c in looping)
        return result(
            "containers.restarts",
            "FAIL",
            f"restart loop: {names}",
            evidence,
            f"read why it exits: docker logs --tail 50 {looping[0]['name']}; a bad release: "
            + playbook("rollback")
            + "; else fix the cause, then "
            + _restart_remedy(c["service"] for c in looping),
        )
    if many:
        return result(
            "containers.restarts",
            "WARN",
            "restarted often and recently: " + ", ".join(c["name"] for c in many),
            evidence,
            f"read why it restarted: docker logs --tail 50 {many[0]['name']}",
        )
    return result("containers.restarts", "PASS", "no container is restarting")


def check_oom(facts, t):
    oom = [c for c in facts["containers"] if c["oom_killed"]]
    if not oom:
        return result("containers.oom", "PASS", "no container was OOM-killed")
    service = oom[0]["service"]
    return result(
        "containers.oom",
        "FAIL",
        "killed for exceeding its memory limit: " + ", ".join(c["name"] for c in oom),
        [f"{c['name']}: OOMKilled, memory limit {c['memory_limit'] or 'none'}" for c in oom],
        playbook("scale") + f' -e \'{{"scale_resources": {{"{service}": {{"memory": "512m"}}}}}}\''
        " (raise the limit), then look for a leak",
    )


def check_replicas(facts, t):
    wanted = facts.get("wanted_replicas")
    if wanted is None:
        return result("containers.replicas", "SKIP", "compose file unreadable (configuration)")
    short_of = []
    for service, count in sorted(wanted.items()):
        have = len(_by_service(facts["containers"], service))
        if have < count:
            short_of.append((service, have, count))
    if short_of:
        return result(
            "containers.replicas",
            "FAIL",
            "fewer containers than the compose file wants: "
            + ", ".join(f"{s} {h}/{w}" for s, h, w in short_of),
            [f"{s}: {h} containers, compose.yaml wants {w}" for s, h, w in short_of],
            playbook("deploy") + " (brings every service back to its replica count)",
        )
    return result(
        "containers.replicas",
        "PASS",
        ", ".join(f"{s} x{n}" for s, n in sorted(wanted.items())) + " as in the compose file",
    )


# --------------------------------------------------------------------------- database


def check_db_ready(facts, t):
    ready = facts.get("db_ready")
    db = facts["services"]["db"]
    if ready is None:
        return result("database.ready", "SKIP", f"no running {db} container to ask")
    if ready["rc"] == 0:
        return result("database.ready", "PASS", f"pg_isready: {ready['output']}")
    return result(
        "database.ready",
        "FAIL",
        f"PostgreSQL does not accept connections (pg_isready exit {ready['rc']})",
        [ready["output"]],
        _restart_remedy([db]) + "; if it stays down: docker logs --tail 50 " + ready["container"],
    )


def check_db_login(facts, t):
    login = facts.get("db_login")
    if login is None:
        return result(
            "database.login", "SKIP", f"no running {facts['services']['backend']} container"
        )
    if not login.get("error"):
        return result(
            "database.login",
            "PASS",
            f"{login['user']}@{login['host']}/{login['database']} login from "
            f"{login['container']} in {login['login_ms']} ms",
        )
    error = login["error"]
    evidence = [f"from {login['container']} as {login['user']}@{login['host']}: {error}"]
    if "password authentication failed" in error:
        summary = (
            "the backend's password is refused while the database answers: "
            f"DB_PASSWORD in {facts['project_dir']}/.env does not match the database"
        )
        remedy = (
            playbook("deploy")
            + " (rewrites .env from the vaulted stack_db_password and recreates the backend)"
        )
    elif "does not exist" in error:
        summary = "the backend's database or role does not exist"
        remedy = playbook("restore", restore_backup_id="latest") + " or check DB_NAME in .env"
    elif "timeout" in error.lower():
        summary = "the database does not answer the backend's login in time (paused or overloaded)"
        remedy = "docker inspect/top the db container (paused? CPU?); " + _restart_remedy(
            [facts["services"]["db"]]
        )
    else:
        summary = "the backend cannot log in to its database"
        remedy = _restart_remedy([facts["services"]["db"]])
    return result("database.login", "FAIL", summary, evidence, remedy)


def check_db_connections(facts, t):
    login = facts.get("db_login") or {}
    if "connections" not in login:
        return result("database.connections", "SKIP", "no database login (database.login)")
    used, limit = login["connections"], login["max_connections"]
    share = pct(used, limit)
    status = level(share, t["connections_warn_pct"], t["connections_fail_pct"])
    return result(
        "database.connections",
        status,
        f"{used} of max_connections {limit} in use ({share} %)",
        [f"connections {used}, max_connections {limit}, database size {login.get('size')} bytes"],
        "find who holds them: SELECT usename, application_name, state, count(*) FROM "
        "pg_stat_activity GROUP BY 1, 2, 3; " + playbook("restart", restart_mode="rolling"),
    )


def check_db_activity(facts, t):
    login = facts.get("db_login") or {}
    if "long_queries" not in login:
        return result("database.activity", "SKIP", "no database login (database.login)")
    long_q, waits = login["long_queries"], login["lock_waits"]
    waits = [w for w in waits if w["seconds"] >= t["lock_wait_seconds"]]
    evidence = [f"pid {q['pid']} {q['state']} for {q['seconds']} s: {q['query']}" for q in long_q]
    evidence += [
        f"pid {w['pid']} waits on a lock for {w['seconds']} s (blocked by {w['blocked_by']}): "
        f"{w['query']}"
        for w in waits
    ]
    if not long_q and not waits:
        return result(
            "database.activity",
            "PASS",
            f"no query running over {t['long_query_seconds']} s, no lock wait over "
            f"{t['lock_wait_seconds']} s",
        )
    return result(
        "database.activity",
        "WARN",
        f"{len(long_q)} queries over {t['long_query_seconds']} s, {len(waits)} waiting on locks",
        evidence,
        "inspect them (EXPLAIN; pg_blocking_pids) and, if safe, end one: "
        "SELECT pg_cancel_backend(PID)",
    )


# --------------------------------------------------------------------------- network


def check_http(facts, t):
    probe = facts["http"]
    url = probe["url"]
    if probe.get("status") == 200 and probe.get("database", "ok") == "ok":
        return result("network.http", "PASS", f"{url} answered 200 in {probe['ms']} ms")
    evidence = [
        f"{url}: {probe.get('status') or probe.get('error')} {probe.get('body', '')}".strip()
    ]
    status = probe.get("status")
    if status is None:
        remedy = _restart_remedy([facts["services"]["nginx"]]) + " (nothing answers the port)"
    elif status == 503 or probe.get("database") not in ("ok", "?"):
        remedy = "the backend answers but is not healthy: see database.login and containers.healthy"
    else:
        remedy = _restart_remedy([facts["services"]["backend"]]) + " (nginx gets no good answer)"
    return result(
        "network.http",
        "FAIL",
        f"the application does not answer through nginx ({status or 'no answer'})",
        evidence,
        remedy,
    )


def check_replicas_via_nginx(facts, t):
    probes = facts.get("replica_probes")
    if probes is None:
        return result("network.replicas", "SKIP", "no running nginx container to probe from")
    if not probes:
        return result("network.replicas", "SKIP", "no running backend replica to probe")
    bad = [p for p in probes if p["status"] != "200"]
    evidence = [f"{p['url']}: {p['status']} {p['detail']}" for p in probes]
    if bad:
        return result(
            "network.replicas",
            "FAIL",
            f"{len(bad)} of {len(probes)} replicas do not answer /health from nginx",
            evidence,
            _restart_remedy([facts["services"]["backend"]]),
        )
    return result(
        "network.replicas", "PASS", f"all {len(probes)} replicas answer /health from nginx"
    )


def check_db_dns(facts, t):
    login = facts.get("db_login")
    if login is None:
        return result("network.db_dns", "SKIP", "no running backend container")
    if login.get("resolved"):
        return result(
            "network.db_dns",
            "PASS",
            f"{login['container']} resolves DB_HOST={login['host']} to {login['resolved']}",
        )
    return result(
        "network.db_dns",
        "FAIL",
        f"the backend cannot resolve DB_HOST={login['host']}",
        [login.get("resolve_error", "")],
        "check that the db container runs on the project network: "
        + _restart_remedy([facts["services"]["db"]]),
    )


# --------------------------------------------------------------------------- host


def check_docker(facts, t):
    if facts.get("docker_error"):
        return result(
            "host.docker",
            "FAIL",
            "the Docker daemon does not answer",
            [facts["docker_error"]],
            "systemctl status docker; journalctl -u docker --since -15m; systemctl restart docker",
        )
    return result(
        "host.docker",
        "PASS",
        f"Docker {facts['docker_version']} answered in {facts['docker_ms']} ms",
    )


def check_load(facts, t):
    host = facts["host"]
    per_core = round(host["load"][1] / max(host["cpus"], 1), 2)
    status = level(per_core, t["load_warn_per_core"], t["load_fail_per_core"])
    return result(
        "host.load",
        status,
        f"load {host['load'][1]} (5 min) on {host['cpus']} cores: {per_core} per core",
        [f"loadavg {' '.join(str(x) for x in host['load'])}, cpus {host['cpus']}"],
        "find the busy container: docker stats --no-stream; spread the load: "
        + playbook("scale")
        + ' -e \'{"scale_replicas": {"backend": N}}\' or a bigger host',
    )


def check_memory(facts, t):
    host = facts["host"]
    avail = pct(host["mem_available"], host["mem_total"])
    status = level(
        avail, t["memory_available_warn_pct"], t["memory_available_fail_pct"], higher_is_worse=False
    )
    swap_used = pct(host["swap_total"] - host["swap_free"], host["swap_total"])
    if status == "PASS" and host["swap_total"] and swap_used >= t["swap_used_warn_pct"]:
        status = "WARN"
    mib = 1024 * 1024
    return result(
        "host.memory",
        status,
        f"{avail} % memory available, swap {swap_used} % used",
        [
            f"MemTotal {host['mem_total'] // mib} MiB, MemAvailable {host['mem_available'] // mib}"
            f" MiB, SwapTotal {host['swap_total'] // mib} MiB, SwapFree {host['swap_free'] // mib}"
            " MiB"
        ],
        "docker stats --no-stream (which container grows?); lower replicas or limits with "
        + playbook("scale"),
    )


def check_disks(facts, t):
    statuses, evidence = [], []
    for disk in facts["host"]["disks"]:
        if not disk.get("exists"):
            statuses.append("WARN")
            evidence.append(f"{disk['label']} {disk['path']}: does not exist")
            continue
        free = pct(disk["free"], disk["total"])
        ifree = pct(disk["inodes_free"], disk["inodes_total"]) if disk["inodes_total"] else 100.0
        s = worst(
            level(free, t["disk_free_warn_pct"], t["disk_free_fail_pct"], higher_is_worse=False),
            level(ifree, t["inodes_free_warn_pct"], t["inodes_free_fail_pct"], False),
        )
        statuses.append(s)
        evidence.append(
            f"{disk['label']} {disk['path']}: {free} % space free "
            f"({disk['free'] // (1024 * 1024)} MiB), {ifree} % inodes free"
        )
    status = worst(*statuses)
    order = {"FAIL": 0, "WARN": 1, "PASS": 2}
    ranked = sorted(range(len(evidence)), key=lambda i: order[statuses[i]])
    evidence = [evidence[i] for i in ranked]
    return result(
        "host.disk",
        status,
        "disk space and inodes of the Docker root, project and backup directories"
        + ("" if status == "PASS" else ": low or missing"),
        evidence,
        "free space: " + playbook("backup") + " applies retention (backup_keep_*); "
        "docker image prune; docker builder prune; a missing backup directory: "
        + playbook("backup"),
    )


# --------------------------------------------------------------------------- logs

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


# --------------------------------------------------------------------------- configuration


def check_compose(facts, t):
    cfg = facts["compose_config"]
    if cfg["rc"] == 0:
        return result("configuration.compose", "PASS", "docker compose config is valid")
    return result(
        "configuration.compose",
        "FAIL",
        f"docker compose config fails in {facts['project_dir']}",
        [cfg["output"]],
        playbook("deploy") + " (rewrites compose.yaml and .env)",
    )


def check_env(facts, t):
    env = facts.get("env_keys")
    path = f"{facts['project_dir']}/.env"
    if env is None:
        return result(
            "configuration.env",
            "FAIL",
            f"{path} is missing or unreadable",
            [facts.get("env_error", "")],
            playbook("deploy"),
        )
    missing = [k for k in facts["env_required"] if not env.get(k)]
    if missing:
        return result(
            "configuration.env",
            "FAIL",
            f"{path} lacks " + ", ".join(missing),
            [f"set and non-empty: {', '.join(sorted(k for k, v in env.items() if v))}"],
            playbook("deploy"),
        )
    return result(
        "configuration.env", "PASS", f".env sets {', '.join(facts['env_required'])} (values unread)"
    )


def check_nginx_config(facts, t):
    test = facts.get("nginx_test")
    if test is None:
        return result("configuration.nginx", "SKIP", "no running nginx container")
    if test["rc"] == 0:
        return result("configuration.nginx", "PASS", "nginx -t: configuration is valid")
    return result(
        "configuration.nginx",
        "FAIL",
        "nginx -t rejects the configuration",
        test["output"].splitlines()[-3:],
        playbook("deploy") + " (rewrites nginx.conf and the upstream)",
    )


# --------------------------------------------------------------------------- monitoring


def check_prometheus(facts, t):
    prom = facts["prometheus"]
    if prom.get("error"):
        return result(
            "monitoring.prometheus",
            "FAIL",
            f"Prometheus does not answer at {prom['url']}",
            [prom["error"]],
            _restart_remedy([facts["services"]["prometheus"]]),
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


# --------------------------------------------------------------------------- deployment


def check_release(facts, t):
    ledger = facts["ledger"]
    running = sorted({c["image"] for c in _by_service(facts["containers"], _backend(facts))})
    if ledger.get("error"):
        return result(
            "deployment.release",
            "WARN",
            "the release ledger cannot be read",
            [ledger["error"]],
            "repair the ledger line it names (see the release_ledger module)",
        )
    entries = ledger["entries"]
    if not entries:
        return result(
            "deployment.release",
            "WARN",
            f"no release recorded in {ledger['path']}",
            [f"running: {', '.join(running) or 'nothing'}"],
            playbook("deploy"),
        )
    last = entries[-1]
    recorded = (last.get("images") or {}).get(_backend(facts)) or last["tag"]
    evidence = [
        f"ledger #{last['id']}: {recorded} {last['status']} at {last.get('time', '?')}",
        f"running: {', '.join(running) or 'no backend container'}",
    ]
    if last["status"] == "bad":
        return result(
            "deployment.release",
            "FAIL",
            f"the last release {last['tag']} is recorded bad",
            evidence,
            playbook("rollback") + " (back to the last good release in the ledger)",
        )
    if running and running != [recorded]:
        return result(
            "deployment.release",
            "WARN",
            f"the backend runs {', '.join(running)}, the ledger's last release is {recorded}",
            evidence,
            playbook("deploy", deploy_backend_tag=last["tag"]) + " (or deploy what should run)",
        )
    return result("deployment.release", "PASS", f"runs release {last['tag']} as recorded")


def _backend(facts):
    return facts["services"]["backend"]


def check_rollback_images(facts, t):
    ledger = facts["ledger"]
    entries = ledger.get("entries") or []
    if not entries:
        return result("deployment.rollback_images", "SKIP", "no release recorded")
    current = entries[-1]["tag"]
    target = next(
        (e for e in reversed(entries) if e["status"] == "good" and e["tag"] != current), None
    )
    if target is None:
        return result(
            "deployment.rollback_images", "PASS", "no earlier good release to roll back to"
        )
    images = sorted(set((target.get("images") or {}).values()))
    missing = [i for i in images if not facts["images_present"].get(i, False)]
    if missing:
        return result(
            "deployment.rollback_images",
            "WARN",
            f"a rollback to {target['tag']} would fail: images missing on this host",
            [f"missing: {i}" for i in missing],
            "docker pull (or docker load) " + " ".join(missing),
        )
    return result(
        "deployment.rollback_images",
        "PASS",
        f"the images of the rollback target {target['tag']} are present",
    )


def _servers(facts):
    """(host, port) of each server of the nginx upstream file; None without the file."""
    upstream = facts.get("upstream")
    if upstream is None:
        return None
    return [tuple(s.rsplit(":", 1)) if ":" in s else (s, "80") for s in upstream["servers"]]


def check_rollout(facts, t):
    servers = _servers(facts)
    if servers is None:
        return result("deployment.rollout", "SKIP", "no nginx upstream file")
    explicit = [f"{h}:{p}" for h, p in servers if h != _backend(facts)]
    if explicit:
        return result(
            "deployment.rollout",
            "WARN",
            "a rollout did not finish: nginx routes only to named containers",
            [f"{facts['upstream']['path']}: " + ", ".join(explicit)],
            playbook("restart", restart_mode="rolling") + " (finishes and restores routing)",
        )
    return result("deployment.rollout", "PASS", "nginx routes to every replica (no rollout open)")


def check_upstream_port(facts, t):
    servers = _servers(facts)
    if servers is None:
        return result(
            "configuration.upstream",
            "FAIL",
            "the nginx upstream file of the backend is missing",
            [f"expected beside nginx.conf in {facts['project_dir']}/nginx"],
            playbook("deploy") + " (writes it)",
        )
    port = str(facts["backend_port"])
    wrong = [f"{h}:{p}" for h, p in servers if p != port]
    if wrong or not servers:
        return result(
            "configuration.upstream",
            "FAIL",
            f"nginx sends requests to {', '.join(wrong) or 'no server'}; the backend listens on "
            f"port {port}",
            [f"{facts['upstream']['path']}: {', '.join(h + ':' + p for h, p in servers)}"],
            playbook("deploy") + " (rewrites the upstream and reloads nginx)",
        )
    return result(
        "configuration.upstream", "PASS", f"nginx's upstream targets port {port} of the backend"
    )


# --------------------------------------------------------------------------- latency


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


# --------------------------------------------------------------------------- all of them

CHECKS = (
    check_docker,
    check_load,
    check_memory,
    check_disks,
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
    check_log_patterns,
    check_5xx,
    check_compose,
    check_env,
    check_nginx_config,
    check_upstream_port,
    check_prometheus,
    check_targets,
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
