"""Diagnosis checks of the Docker host (the USE method: load, memory, disks; the daemon)."""

from __future__ import annotations

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
