"""Shared pieces of the diagnosis checks: the result record, its status levels and the
remedy commands (module_utils/diagnose_checks.py and its diagnose_checks_*.py files)."""

from __future__ import annotations

STATUSES = ("PASS", "WARN", "FAIL", "SKIP")
EVIDENCE_LINES = 8
EVIDENCE_WIDTH = 240


def playbook(name, **extra):
    """The remedy command: `ansible-playbook playbooks/NAME.yml [-e k=v ...]`."""
    args = "".join(f" -e {key}={value}" for key, value in extra.items())
    return f"ansible-playbook playbooks/{name}.yml{args}"


def short(lines):
    out = [" ".join(str(line).split())[:EVIDENCE_WIDTH] for line in lines if str(line).strip()]
    if len(out) > EVIDENCE_LINES:
        out = out[: EVIDENCE_LINES - 1] + [f"... and {len(out) - EVIDENCE_LINES + 1} more"]
    return out


def result(cid, status, summary, evidence=(), remedy="", fix=None):
    """One check's result. fix: the remedy as data for playbooks/diagnose_remediate.yml
    ({"action": "restart", "services": [...]}, {"action": "unpause", "containers": [...]} or
    {"action": "rollback"}), only on the narrow set of remedies that is safe to automate."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    out = {
        "id": cid,
        "category": cid.split(".", 1)[0],
        "status": status,
        "summary": summary,
        "evidence": short(evidence),
        "remedy": remedy if status in ("WARN", "FAIL") else "",
    }
    if fix and status in ("WARN", "FAIL"):
        out["fix"] = fix
    return out


def restart_fix(facts, services):
    """The restart fix of the compose services among services (a stray container has none)."""
    known = set(facts.get("wanted_replicas") or ()) | set(facts["services"].values())
    wanted = sorted({s for s in services if s in known})
    return {"action": "restart", "services": wanted} if wanted else None


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


def by_service(containers, service):
    return [c for c in containers if c["service"] == service]


def restart_remedy(services):
    return playbook("restart", restart_services=",".join(sorted(set(services))))


def backend(facts):
    return facts["services"]["backend"]


def upstream_servers(facts):
    """(host, port) of each server of the nginx upstream file; None without the file."""
    upstream = facts.get("upstream")
    if upstream is None:
        return None
    return [tuple(s.rsplit(":", 1)) if ":" in s else (s, "80") for s in upstream["servers"]]
