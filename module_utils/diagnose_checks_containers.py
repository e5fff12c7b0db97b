"""Diagnosis checks of the project's containers and of its deployment (ledger, rollout)."""

from __future__ import annotations

from ansible.module_utils.diagnose_result import (
    backend,
    by_service,
    playbook,
    restart_fix,
    restart_remedy,
    result,
    upstream_servers,
)


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
    # A restarting container is a loop (containers.restarts), not one that stopped.
    down = [c for c in cs if c["state"] not in ("running", "restarting")]
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
            fix={"action": "unpause", "containers": paused},
        )
    return result(
        "containers.running",
        "FAIL",
        f"{len(down)} of {len(cs)} containers are not running: "
        + ", ".join(c["name"] for c in down),
        evidence,
        restart_remedy(services) + " (restarts exited and unhealthy containers; then rerun "
        "diagnose; if it exits again read its log: docker logs NAME)",
        fix=restart_fix(facts, services),
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
            restart_remedy(c["service"] for c in bad) + " (restarts only the unhealthy containers)",
            fix=restart_fix(facts, [c["service"] for c in bad]),
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


def last_exit(c):
    """The code it last died with: from the daemon's events when the collector read them, else
    from `docker inspect`, which only holds it while the container is not running."""
    if c.get("last_exit_code") is not None:
        return f"last exit code {c['last_exit_code']}"
    if c["state"] != "running":
        return f"last exit code {c['exit_code']}"
    return "last exit code not seen (running at both reads; docker logs shows why it exits)"


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
        + f", {last_exit(c)}, started {c['started_at']}"
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
            + restart_remedy(c["service"] for c in looping),
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
        have = len(by_service(facts["containers"], service))
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


def check_release(facts, t):
    ledger = facts["ledger"]
    running = sorted({c["image"] for c in by_service(facts["containers"], backend(facts))})
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
    recorded = (last.get("images") or {}).get(backend(facts)) or last["tag"]
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
            fix={"action": "rollback"},
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


def check_rollout(facts, t):
    servers = upstream_servers(facts)
    if servers is None:
        return result("deployment.rollout", "SKIP", "no nginx upstream file")
    # nginx routes to the service name, or to the alias only routed replicas carry.
    routed = {backend(facts), facts.get("route_alias") or backend(facts)}
    explicit = [f"{h}:{p}" for h, p in servers if h not in routed]
    if explicit:
        return result(
            "deployment.rollout",
            "WARN",
            "a rollout did not finish: nginx routes only to named containers",
            [f"{facts['upstream']['path']}: " + ", ".join(explicit)],
            playbook("restart", restart_mode="rolling") + " (finishes and restores routing)",
        )
    return result("deployment.rollout", "PASS", "nginx routes to every replica (no rollout open)")
