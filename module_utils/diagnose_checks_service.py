"""Diagnosis checks of the database, the network paths and the configuration files."""

from __future__ import annotations

from ansible.module_utils.diagnose_result import (
    level,
    pct,
    playbook,
    restart_remedy,
    result,
    upstream_servers,
)


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
        restart_remedy([db]) + "; if it stays down: docker logs --tail 50 " + ready["container"],
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
        remedy = "docker inspect/top the db container (paused? CPU?); " + restart_remedy(
            [facts["services"]["db"]]
        )
    else:
        summary = "the backend cannot log in to its database"
        remedy = restart_remedy([facts["services"]["db"]])
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
        remedy = restart_remedy([facts["services"]["nginx"]]) + " (nothing answers the port)"
    elif status == 503 or probe.get("database") not in ("ok", "?"):
        remedy = "the backend answers but is not healthy: see database.login and containers.healthy"
    else:
        remedy = restart_remedy([facts["services"]["backend"]]) + " (nginx gets no good answer)"
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
            restart_remedy([facts["services"]["backend"]]),
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
        + restart_remedy([facts["services"]["db"]]),
    )


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


def check_upstream_port(facts, t):
    servers = upstream_servers(facts)
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


PORT_TAKEN = ("address already in use", "port is already allocated")


def check_ports(facts, t):
    """Every published port of a running container listens; a port another process holds."""
    listening = set(facts["host"].get("listening") or [])
    taken, silent, checked = [], [], 0
    for c in facts["containers"]:
        for address, port, inner in c.get("published") or []:
            if c["state"] == "running":
                checked += 1
                if listening and port not in listening:
                    silent.append(f"{c['name']}: {address}:{port} -> {inner} not listening")
            elif any(word in (c.get("error") or "").lower() for word in PORT_TAKEN):
                held = "held by another process" if port in listening else "was busy"
                taken.append((c, port, f"{c['name']} cannot start: port {address}:{port} {held}: "
                              f"{c['error']}"))  # fmt: skip
    if taken:
        ports = sorted({p for _, p, _ in taken})
        return result(
            "network.ports",
            "FAIL",
            "a published port is taken by another process: "
            + ", ".join(f"{c['name']} wants {p}" for c, p, _ in taken),
            [line for _, _, line in taken],
            "find the owner: "
            + "; ".join(f"ss -ltnp 'sport = :{p}'" for p in ports)
            + "; stop it (or give the stack another port in the inventory), then "
            + restart_remedy(c["service"] for c, _, _ in taken),
        )
    if silent:
        return result(
            "network.ports",
            "FAIL",
            "a running container's published port does not listen on the host",
            silent,
            "docker port NAME; " + restart_remedy([facts["services"]["nginx"]]),
        )
    return result("network.ports", "PASS", f"{checked} published ports listen on the host")
