"""The diagnosis's sources beside the project's containers (read-only): the kernel log (OOM
kills), the Docker daemon's journal, promtool inside the Prometheus container, Prometheus's
rules and alerts API, and Grafana's health API.

Used by module_utils/diagnose_collect.py; checked by diagnose_checks_host.py and
diagnose_checks_alerting.py. Each reader takes the injected runner or HTTP client
(``run(argv, timeout)``, ``http_get(url, timeout, headers=None)``) and returns its facts,
or ``{"skip": reason}`` when the source cannot be read on this host (no systemd, dmesg not
permitted, no promtool): the check is then SKIP with that reason, never WARN or FAIL. The
parsers are pure functions.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from datetime import datetime

# sd_booted(): the directory exists only while systemd is the init system.
SYSTEMD_DIR = "/run/systemd/system"

# 2026-11-29T18:38:00,298192+00:00 (dmesg --time-format iso), 2026-11-29T18:38:00+0000
# (journalctl -o short-iso) or with a colon in the offset (newer systemd).
STAMP_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:[.,](\d+))?(Z|[+-]\d\d:?\d\d)?\s+(.*)$")
KILLED_RE = re.compile(r"Killed process (\d+) \(([^)]*)\)")
OOM_FIELDS_RE = re.compile(r"oom-kill:(\S+)")
CONTAINER_ID_RE = re.compile(r"[0-9a-f]{64}")
# journalctl's own complaints when it cannot read the journal (it still exits 0).
JOURNAL_UNREADABLE = ("No journal files were found", "insufficient permissions",
                      "No journal files were opened")  # fmt: skip
LEVEL_RE = re.compile(r"\blevel=(\w+)")
MSG_RE = re.compile(r'\bmsg="((?:[^"\\]|\\.)*)"')
# systemd's lines about the unit itself: the daemon died or did not start.
UNIT_FAILED_RE = re.compile(
    r"docker\.service: (?:Failed with result|Main process exited, code=(?:exited|killed|dumped))"
    r"|Failed to start .*[Dd]ocker"
)
HEX_ID_RE = re.compile(r"\b[0-9a-f]{12,64}\b")
PROMTOOL_DEFAULT_CONFIG = "/etc/prometheus/prometheus.yml"
# dmesg turns the kernel's own clock (seconds since boot, not NTP-disciplined) into wall time
# by today's boot time: its times lag. Measured on the test machine after 8 h of uptime: a
# kill Docker timed at 19:37:32.90 printed as 19:37:32.17. A kill this many seconds before
# the window is still counted (journald stamps the wall time itself: no slack there).
DMESG_SLACK_SECONDS = 10


def systemd_booted(isdir=os.path.isdir):
    return isdir(SYSTEMD_DIR)


def split_stamp(line):
    """(epoch seconds, ISO time, the rest) of a kernel or journal line; None without a time."""
    match = STAMP_RE.match(line.strip())
    if not match:
        return None
    head, frac, zone, rest = match.groups()
    zone = "+00:00" if zone in (None, "Z") else zone
    if ":" not in zone:
        zone = zone[:3] + ":" + zone[3:]
    stamp = f"{head}.{(frac or '0')[:6].ljust(6, '0')}{zone}"
    epoch = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    return epoch, head + (zone if zone != "+00:00" else "Z"), rest


# --------------------------------------------------------------------------- kernel log


def parse_oom_kills(text, window_from):
    """Every OOM kill in the window: time, process, pid, whether the host ran out of memory
    (global) or a cgroup hit its limit, and the innermost container id of the task's cgroup.

    The kernel writes `oom-kill:constraint=...,task_memcg=/docker/<id>,task=NAME,pid=N,...`
    and then `Memory cgroup out of memory: Killed process N (NAME) ...` (or `Out of memory:`
    for the whole host); the two are paired by pid.
    """
    fields_by_pid, kills = {}, []
    for line in text.splitlines():
        stamped = split_stamp(line)
        if stamped is None:
            continue
        epoch, when, message = stamped
        if epoch < window_from:
            continue
        oom = OOM_FIELDS_RE.search(message)
        if oom:
            fields = dict(item.split("=", 1) for item in oom.group(1).split(",") if "=" in item)
            fields["global"] = "global_oom" in oom.group(1)
            fields_by_pid[fields.get("pid", "")] = fields
            continue
        killed = KILLED_RE.search(message)
        if not killed:
            continue
        pid, task = killed.groups()
        fields = fields_by_pid.pop(pid, {})
        memcg = fields.get("task_memcg", "")
        ids = CONTAINER_ID_RE.findall(memcg) or CONTAINER_ID_RE.findall(fields.get("cpuset", ""))
        constraint = fields.get("constraint", "")
        kills.append({
            "time": when,
            "epoch": epoch,
            "pid": int(pid),
            "task": task,
            "memcg": memcg,
            "container_id": ids[-1] if ids else "",
            # The host itself ran out of memory (not one cgroup's limit).
            "global": bool(fields.get("global")) or constraint == "CONSTRAINT_NONE"
            or message[: killed.start()].rstrip().endswith("Out of memory:"),
        })  # fmt: skip
    return kills


def kernel_log(run, window_from, booted, timeout=15):
    """OOM kills in the kernel log since window_from: journalctl -k where systemd runs (its
    journal keeps the kernel's messages), else dmesg; {"skip": reason} when neither reads."""
    reasons = []
    if booted:
        rc, out, err = run(
            ["journalctl", "-k", "--since", f"@{int(window_from)}", "-o", "short-iso",
             "--no-pager", "-q"], timeout,
        )  # fmt: skip
        unreadable = next((m for m in JOURNAL_UNREADABLE if m in err + out), "")
        if rc == 0 and not unreadable:
            return {"source": "journalctl -k", "kills": parse_oom_kills(out, window_from)}
        reasons.append(f"journalctl -k: {unreadable or last_line(err) or f'exit {rc}'}")
    else:
        reasons.append("systemd is not running (no journal)")
    rc, out, err = run(["dmesg", "--time-format", "iso"], timeout)
    if rc == 0:
        return {"source": "dmesg", "kills": parse_oom_kills(out, window_from - DMESG_SLACK_SECONDS)}
    reasons.append(f"dmesg: {last_line(err) or f'exit {rc}'}")
    return {"skip": "no readable kernel log: " + "; ".join(reasons)}


def last_line(text):
    lines = [x.strip() for x in (text or "").strip().splitlines() if x.strip()]
    return lines[-1][:200] if lines else ""


# --------------------------------------------------------------------------- docker journal


def parse_docker_journal(text):
    """The error lines of `journalctl -u docker`: level=error/fatal/panic from dockerd or
    containerd, and systemd's own lines naming a failure (those carry no level= field);
    grouped by message with the first line and a count. unit_failed: the daemon died or did
    not start in the window."""
    groups, unit_failed = {}, []
    for line in text.splitlines():
        stamped = split_stamp(line)
        message = stamped[2] if stamped else line.strip()
        if not message or message.startswith("-- "):
            continue
        level = LEVEL_RE.search(message)
        if UNIT_FAILED_RE.search(message):
            unit_failed.append(line.strip()[:240])
        elif level:
            if level.group(1).lower() not in ("error", "fatal", "panic"):
                continue
        elif not re.search(r"\bfail(?:ed|ure)\b", message, re.IGNORECASE):
            continue
        msg = MSG_RE.search(message)
        key = HEX_ID_RE.sub("<id>", msg.group(1) if msg else message.split(": ", 1)[-1])[:160]
        group = groups.setdefault(key, {"message": key, "count": 0, "first": line.strip()[:240]})
        group["count"] += 1
    return {"errors": list(groups.values()), "unit_failed": unit_failed}


def docker_journal(run, window_from, booted, timeout=15):
    if not booted:
        return {"skip": f"systemd is not running on this host (no {SYSTEMD_DIR}): the Docker "
                        "daemon's log is not in a journal"}  # fmt: skip
    rc, out, err = run(
        ["journalctl", "-u", "docker", "--since", f"@{int(window_from)}", "-o", "short-iso",
         "--no-pager", "-q"], timeout,
    )  # fmt: skip
    unreadable = next((m for m in JOURNAL_UNREADABLE if m in err + out), "")
    if rc != 0 or unreadable:
        return {"skip": f"journalctl -u docker: {unreadable or last_line(err) or f'exit {rc}'}"}
    return {"source": "journalctl -u docker", **parse_docker_journal(out)}


# --------------------------------------------------------------------------- promtool


def config_file_arg(cmd):
    """The --config.file of Prometheus's command line (the default where none is given)."""
    for i, arg in enumerate(cmd or []):
        for flag in ("--config.file", "-config.file"):
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
            if arg == flag and i + 1 < len(cmd):
                return cmd[i + 1]
    return PROMTOOL_DEFAULT_CONFIG


def promtool_check(docker_cmd, prometheus):
    """`promtool check config` of the running Prometheus container's own configuration file
    (it checks the rule files the configuration names too); None without a running one."""
    if prometheus is None:
        return None
    path = config_file_arg(prometheus.get("cmd"))
    rc, out, err = docker_cmd("exec", prometheus["name"], "promtool", "check", "config", path)
    text = (out + "\n" + err).strip()
    if rc in (126, 127) or "executable file not found" in text or "promtool: not found" in text:
        return {"skip": f"no promtool in {prometheus['name']}: {last_line(text)}",
                "container": prometheus["name"], "path": path}  # fmt: skip
    rules = re.findall(r"SUCCESS: (\d+) rules found", text)
    return {
        "container": prometheus["name"],
        "path": path,
        "rc": rc,
        "rules": sum(int(n) for n in rules),
        "rule_files": re.findall(r"^Checking (\S+)", text, re.MULTILINE)[1:],
        "errors": promtool_errors(text) if rc != 0 else [],
    }


def promtool_errors(text):
    """promtool's lines that say what is wrong (not its Checking/SUCCESS progress lines)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("Checking ") or "SUCCESS" in line:
            continue
        out.append(line)
    return out


# --------------------------------------------------------------------------- Prometheus alerts


def parse_rules(body):
    """The alerting rules Prometheus loaded: [{"group", "name", "health", "error", "file"}]."""
    data = json.loads(body)
    if data.get("status") != "success":
        raise ValueError(data.get("error") or "rules API failed")
    return [
        {"group": g.get("name", ""), "name": r.get("name", ""), "health": r.get("health", ""),
         "error": r.get("lastError", ""), "file": g.get("file", "")}
        for g in (data.get("data") or {}).get("groups") or []
        for r in g.get("rules") or []
        if r.get("type", "alerting") == "alerting"
    ]  # fmt: skip


def parse_alerts(body):
    """Prometheus's active alerts (pending or firing) with their labels and activeAt."""
    data = json.loads(body)
    if data.get("status") != "success":
        raise ValueError(data.get("error") or "alerts API failed")
    out = []
    for a in (data.get("data") or {}).get("alerts") or []:
        labels = dict(a.get("labels") or {})
        out.append({
            "name": labels.pop("alertname", "?"),
            "state": a.get("state", ""),
            "severity": labels.get("severity", ""),
            "labels": labels,
            "active_at": a.get("activeAt", ""),
            "value": a.get("value", ""),
            "summary": ((a.get("annotations") or {}).get("summary") or "")[:160],
        })  # fmt: skip
    return out


def prometheus_alerts(http_get, base):
    """The alerting rules and the active alerts from Prometheus's HTTP API."""
    facts = {"url": base}
    for key, path, parse in (("rules", "/api/v1/rules?type=alert", parse_rules),
                             ("alerts", "/api/v1/alerts", parse_alerts)):  # fmt: skip
        answer = http_get(base + path, 5)
        try:
            if answer["status"] != 200:
                raise ValueError(answer["error"] or f"HTTP {answer['status']}")
            facts[key] = parse(answer["body"])
        except (ValueError, TypeError, AttributeError) as exc:
            facts["error"] = f"GET {path}: {exc}"
            return facts
    return facts


# --------------------------------------------------------------------------- Grafana


def grafana(http_get, url, token=""):
    """Grafana's /api/health and, with a token, each datasource's health check. The token is
    sent in a header only; it never enters the facts (redacted from any text kept)."""
    if not url:
        return None
    base = url.rstrip("/")

    def clean(text):
        return str(text).replace(token, "********") if token else str(text)

    answer = http_get(base + "/api/health", 5)
    facts = {"url": base, "status": answer["status"], "error": clean(answer["error"])}
    try:
        health = json.loads(answer["body"]) if answer["status"] == 200 else {}
    except ValueError:
        health, facts["error"] = {}, "/api/health returned no JSON"
    facts["database"] = clean(health.get("database", "")) if isinstance(health, dict) else ""
    facts["version"] = clean(health.get("version", "")) if isinstance(health, dict) else ""
    if not token or answer["status"] != 200:
        return facts
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    listing = http_get(base + "/api/datasources", 5, headers=headers)
    if listing["status"] != 200:
        facts["datasources_error"] = clean(
            f"GET /api/datasources: {listing['error'] or 'HTTP ' + str(listing['status'])}"
            f" {listing['body'][:160]}"
        ).strip()
        return facts
    try:
        sources = json.loads(listing["body"])
    except ValueError:
        facts["datasources_error"] = "GET /api/datasources returned no JSON"
        return facts
    facts["datasources"] = []
    for source in sources if isinstance(sources, list) else []:
        uid = str(source.get("uid", ""))
        check = http_get(
            f"{base}/api/datasources/uid/{urllib.parse.quote(uid, safe='')}/health", 10,
            headers=headers,
        )  # fmt: skip
        try:
            body = json.loads(check["body"]) if check["body"] else {}
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        facts["datasources"].append({
            "name": clean(source.get("name", uid)),
            "type": clean(source.get("type", "")),
            "uid": clean(uid),
            "http": check["status"],
            "status": clean(body.get("status", "")),
            "message": clean(body.get("message") or check["error"] or "")[:200],
        })  # fmt: skip
    return facts
