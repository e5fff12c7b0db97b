"""Diagnosis checks of the Docker host (the USE method: load, memory, disks; the daemon)."""

from __future__ import annotations

import re

from ansible.module_utils.diagnose_result import (
    level,
    pct,
    playbook,
    result,
    worst,
)


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


def check_clock(facts, t):
    """The host's clock against the control node's (the time stamps of logs, backups, TLS)."""
    clock = facts.get("clock") or {}
    if clock.get("controller") is None:
        return result("host.clock", "PASS", "no control-node time given: clock not compared")
    skew = round(clock["host"] - clock["controller"], 1)
    status = level(abs(skew), t["clock_skew_warn_seconds"], t["clock_skew_fail_seconds"])
    return result(
        "host.clock",
        status,
        f"the host's clock is {abs(skew)} s {'ahead of' if skew >= 0 else 'behind'} the control "
        "node's",
        [f"host {clock['host']:.1f}, control node {clock['controller']:.1f} (epoch seconds)"],
        "synchronise the clocks: timedatectl set-ntp true (systemd-timesyncd or chrony); "
        "timedatectl timesync-status; on both the host and the control node",
    )


def _kill_place(kill, by_id):
    """Where an OOM kill happened: a container of the project, the host, or another container."""
    owner = by_id.get(kill["container_id"][:12]) if kill["container_id"] else None
    if owner:
        return "project", f"in {owner['name']}", owner["service"]
    if kill["global"]:
        return "host", "the host ran out of memory", ""
    if kill["container_id"]:
        return "other", f"in container {kill['container_id'][:12]} (not of this project)", ""
    return "host", f"in cgroup {kill['memcg'] or '?'} (a host process at its memory limit)", ""


def check_kernel_oom(facts, t):
    """OOM kills in the kernel log within the window: every process the kernel killed, also a
    worker inside a container that keeps running (Docker's OOMKilled only marks PID 1)."""
    log = facts.get("kernel_oom") or {"skip": "the kernel log was not read"}
    if log.get("skip"):
        return result("host.kernel_oom", "SKIP", log["skip"])
    since = facts.get("since")
    by_id = {c["id"][:12]: c for c in facts["containers"] if c.get("id")}
    groups = {}
    for kill in log["kills"]:
        kind, where, service = _kill_place(kill, by_id)
        group = groups.setdefault((kind, kill["task"], where), {
            "kind": kind, "task": kill["task"], "where": where, "service": service, "count": 0,
            "first": kill["time"], "pid": kill["pid"],
        })  # fmt: skip
        group["count"] += 1
    bad = [g for g in groups.values() if g["kind"] != "other"]
    others = [g for g in groups.values() if g["kind"] == "other"]

    def line(g):
        return f"{g['task']} (pid {g['pid']}) {g['where']}: {g['count']}x, first {g['first']}"

    if not bad:
        summary = (
            f"no OOM kill of this project's containers or the host since {since} ({log['source']})"
        )
        if others:
            summary += f"; {sum(g['count'] for g in others)} in other projects' containers"
        return result("host.kernel_oom", "PASS", summary, [line(g) for g in others])
    count = sum(g["count"] for g in bad)
    first = min(bad, key=lambda g: g["first"])
    services = sorted({g["service"] for g in bad if g["service"]})
    remedy = (
        playbook("scale")
        + f' -e \'{{"scale_resources": {{"{services[0]}": {{"memory": "512m"}}}}}}\''
        + " (raise the memory limit), then look for a leak: docker stats --no-stream"
        if services
        else "the host ran out of memory: see host.memory; docker stats --no-stream (which "
        "container grows?); lower replicas or limits with " + playbook("scale") + " or a "
        "bigger host"
    )
    return result(
        "host.kernel_oom",
        "FAIL",
        f"{count} OOM kill{'s' if count > 1 else ''} in the kernel log since {since}: first "
        f"{first['task']} at {first['first']} {first['where']}",
        [line(g) for g in sorted(bad, key=lambda g: g["first"])] + [line(g) for g in others],
        remedy,
    )


def journal_since(since):
    """diagnose_since as journalctl's --since: -15m for a duration, the time as given else."""
    return f"-{since}" if since and since[-1] in "smhd" and since[:-1].isdigit() else f"'{since}'"


def check_docker_journal(facts, t):
    """Errors of the Docker daemon in its systemd journal within the window."""
    journal = facts.get("docker_journal") or {"skip": "the daemon's journal was not read"}
    if journal.get("skip"):
        return result("host.docker_journal", "SKIP", journal["skip"])
    since = facts.get("since")
    ignore = [re.compile(p) for p in facts.get("docker_journal_ignore") or []]
    errors = [e for e in journal["errors"] if not any(p.search(e["first"]) for p in ignore)]
    count = sum(e["count"] for e in errors)
    remedy = (
        f"journalctl -u docker --since {journal_since(since)} (read the error's context); "
        "systemctl status "
        "docker; a daemon that failed: systemctl restart docker, then " + playbook("restart")
    )
    if journal["unit_failed"]:
        return result(
            "host.docker_journal",
            "FAIL",
            f"the Docker daemon failed or died since {since} (systemd)",
            journal["unit_failed"] + [f"{e['count']}x, first: {e['first']}" for e in errors],
            remedy,
        )
    if errors and count >= t["docker_journal_errors_warn"]:
        return result(
            "host.docker_journal",
            "WARN",
            f"{count} error{'s' if count > 1 else ''} of the Docker daemon since {since}",
            [f"{e['count']}x, first: {e['first']}" for e in errors],
            remedy,
        )
    return result(
        "host.docker_journal",
        "PASS",
        f"no error of the Docker daemon since {since} ({journal['source']})"
        if not errors
        else f"{count} daemon errors since {since}, under the threshold",
    )
