"""Parsers of what the diagnosis reads (docker inspect, logs, nginx's access log, /proc,
.env, the nginx upstream file, curl probes, Prometheus's API): pure functions, unit-tested.
Used by module_utils/diagnose_collect.py."""

from __future__ import annotations

import json
import re
from datetime import datetime

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
SINCE_RE = re.compile(r"^(\d+)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# (check id, pattern): the first pattern that matches a log line counts it.
LOG_PATTERNS = (
    ("logs.nginx_upstream", re.compile(
        r"upstream timed out|no live upstreams|"
        r"connect\(\) failed \([^)]*\) while connecting to upstream")),
    ("logs.address_in_use", re.compile(r"address already in use", re.IGNORECASE)),
    ("logs.tracebacks", re.compile(r"Traceback \(most recent call last\)")),
    ("logs.database_errors", re.compile(
        r"OperationalError|authentication failed|too many clients|"
        r"could not connect to server|database unavailable|Connection refused\s+Is the server")),
)  # fmt: skip
ACCESS_RE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>[^ "?]+)[^"]*" (?P<status>\d{3}) .*?(?:rt=(?P<rt>[\d.]+))?\s*$'
)
NUMBER_SEGMENT = re.compile(r"/\d+(?=/|$)")


def parse_time(stamp):
    """Epoch seconds of Docker's RFC 3339 time (nanoseconds, Z or offset); None if unset."""
    if not stamp or stamp.startswith("0001-"):
        return None
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", stamp)
    if not match:
        return None
    head, frac, zone = match.groups()
    text = (
        head + "." + (frac or "0")[:6].ljust(6, "0") + ("+00:00" if zone in (None, "Z") else zone)
    )
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def window_start(since, now):
    """Epoch seconds where the log window starts: since is 15m/2h/1d/90s or an RFC 3339 time."""
    match = SINCE_RE.match(since or "")
    if match:
        return now - int(match.group(1)) * UNITS[match.group(2)]
    start = parse_time(since)
    if start is None:
        raise ValueError(
            f"diagnose_since={since!r} is neither a duration (15m, 2h, 1d) nor an RFC 3339 "
            "time (2026-01-31T09:00:00Z)"
        )
    return start


def container_facts(inspected, window_from):
    """The fields the checks read, from one `docker inspect` object."""
    state = inspected.get("State") or {}
    health = state.get("Health") or {}
    log = health.get("Log") or []
    last = (log[-1].get("Output") or "").strip().splitlines() if log else []
    started = parse_time(state.get("StartedAt"))
    labels = (inspected.get("Config") or {}).get("Labels") or {}
    return {
        "id": inspected.get("Id", "")[:12],
        "name": inspected.get("Name", "").lstrip("/"),
        "service": labels.get(SERVICE_LABEL, ""),
        "state": state.get("Status", "unknown"),
        "health": health.get("Status") or "none",
        "health_log": (last[-1] if last else "")[:160],
        "restart_count": int(inspected.get("RestartCount") or 0),
        "exit_code": state.get("ExitCode"),
        "oom_killed": bool(state.get("OOMKilled")),
        "started_at": state.get("StartedAt", ""),
        "finished_at": state.get("FinishedAt", ""),
        "recent_start": started is not None and started >= window_from,
        "image": (inspected.get("Config") or {}).get("Image", ""),
        "memory_limit": (inspected.get("HostConfig") or {}).get("Memory") or 0,
        "cmd": (inspected.get("Config") or {}).get("Cmd") or [],
        "error": (state.get("Error") or "")[:300],
        "ips": sorted(
            n.get("IPAddress")
            for n in ((inspected.get("NetworkSettings") or {}).get("Networks") or {}).values()
            if n.get("IPAddress")
        ),
        "published": published_ports(inspected),
    }


def published_ports(inspected):
    """[(host address, host port, container port)] of the container's TCP port bindings."""
    bindings = (inspected.get("HostConfig") or {}).get("PortBindings") or {}
    out = []
    for container_port, hosts in sorted(bindings.items()):
        if not container_port.endswith("/tcp"):
            continue
        for binding in hosts or []:
            if str(binding.get("HostPort") or "").isdigit():
                out.append((binding.get("HostIp") or "0.0.0.0", int(binding["HostPort"]),
                            container_port))  # fmt: skip
    return out


def listening_ports(*texts):
    """The TCP ports in state LISTEN of /proc/net/tcp and /proc/net/tcp6 (as text)."""
    ports = set()
    for text in texts:
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A" and ":" in fields[1]:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def parse_textfile_metrics(text):
    """{metric name: value} of a node_exporter textfile (labels dropped, first sample kept)."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name_labels, _, rest = line.rpartition(" ")
        if not name_labels:
            continue
        name = name_labels.split("{", 1)[0].strip()
        try:
            values.setdefault(name, float(rest))
        except ValueError:
            continue
    return values


def parse_vector_sum(body):
    """The value of a Prometheus instant query's result (summed; 0.0 for an empty vector)."""
    data = json.loads(body)
    if data.get("status") != "success":
        raise ValueError(data.get("error") or "query failed")
    return sum(float(r["value"][1]) for r in (data.get("data") or {}).get("result") or [])


def scan_logs(name, text, matches):
    """Count each log pattern's lines in one container's log; keep the first occurrence."""
    for line in text.splitlines():
        for cid, pattern in LOG_PATTERNS:
            if pattern.search(line):
                hits = matches.setdefault(cid, {})
                hit = hits.setdefault(name, {"container": name, "count": 0, "first": line[:240]})
                hit["count"] += 1
                break


def scan_access_log(text, access):
    """5xx count, first 5xx line and per-endpoint request times from nginx's access log."""
    endpoints = access.setdefault("_endpoints", {})
    for line in text.splitlines():
        match = ACCESS_RE.search(line)
        if not match:
            continue
        access["requests"] = access.get("requests", 0) + 1
        if match.group("status").startswith("5"):
            access["errors"] = access.get("errors", 0) + 1
            access.setdefault("first_error", line[:240])
        if match.group("rt"):
            key = f"{match.group('method')} {NUMBER_SEGMENT.sub('/{id}', match.group('path'))}"
            ms = round(float(match.group("rt")) * 1000)
            entry = endpoints.setdefault(key, {"endpoint": key, "count": 0, "max_ms": 0})
            entry["count"] += 1
            entry["max_ms"] = max(entry["max_ms"], ms)


def finish_access(access):
    endpoints = access.pop("_endpoints", {})
    access["slowest"] = sorted(endpoints.values(), key=lambda e: -e["max_ms"])[:3]
    return access


def parse_meminfo(text):
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[key] = int(fields[0]) * 1024
    return {
        "mem_total": values.get("MemTotal", 0),
        "mem_available": values.get("MemAvailable", values.get("MemFree", 0)),
        "swap_total": values.get("SwapTotal", 0),
        "swap_free": values.get("SwapFree", 0),
    }


def parse_env_keys(text):
    """{KEY: value is non-empty} of a .env file; the values themselves are not kept."""
    keys = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.removeprefix("export ").strip()
        keys[key] = value.strip().strip("'\"") != ""
    return keys


def parse_upstream(text):
    """The host:port of every server line of the nginx upstream file."""
    servers = []
    for line in text.splitlines():
        fields = line.strip().rstrip(";").split()
        if len(fields) >= 2 and fields[0] == "server":
            servers.append(fields[1])
        elif len(fields) == 3 and fields[:2] == ["set", "$backend_route"]:
            servers.append(fields[2])  # the address nginx resolves at request time
    return servers


def parse_probes(text):
    probes = []
    for line in text.splitlines():
        url, _, rest = line.partition("|")
        result, _, error = rest.partition("|")
        fields = result.split()
        code = fields[0] if fields else "000"
        seconds = fields[1] if len(fields) > 1 else ""
        ms = round(float(seconds) * 1000) if seconds and code != "000" else None
        detail = error.strip() or (f"{ms} ms" if ms is not None else "")
        probes.append({"url": url, "status": code, "detail": detail, "ms": ms})
    return probes


def parse_targets(body):
    data = json.loads(body)
    return [
        {
            "job": (t.get("labels") or {}).get("job", ""),
            "instance": (t.get("labels") or {}).get("instance", ""),
            "health": t.get("health", "unknown"),
            "error": t.get("lastError", ""),
        }
        for t in (data.get("data") or {}).get("activeTargets", [])
    ]
