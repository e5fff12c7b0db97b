"""Diagnosis checks of the alerting path: Prometheus's configuration and rule files
(promtool in its container), the alerts Prometheus loaded and fires, Grafana's health."""

from __future__ import annotations

from ansible.module_utils.diagnose_result import playbook, restart_remedy, result, worst


def check_prometheus_config(facts, t):
    """`promtool check config` of the running Prometheus's --config.file and its rule files."""
    check = facts.get("promtool")
    if check is None:
        return result(
            "configuration.prometheus", "SKIP", "no running Prometheus container to run promtool in"
        )
    if check.get("skip"):
        return result("configuration.prometheus", "SKIP", check["skip"])
    files = check.get("rule_files") or []
    if check["rc"] == 0:
        return result(
            "configuration.prometheus",
            "PASS",
            f"promtool check config {check['path']}: valid, {len(files)} rule files, "
            f"{check['rules']} rules",
            [", ".join(files)] if files else [],
        )
    return result(
        "configuration.prometheus",
        "FAIL",
        f"promtool rejects {check['path']} or a rule file it names (in {check['container']})",
        check["errors"] or [f"promtool exit {check['rc']}"],
        playbook("deploy")
        + " (rewrites prometheus.yml and the rule files of roles/deploy/files/prometheus-rules);"
        f" check by hand: docker exec {check['container']} promtool check config {check['path']}",
    )


def _alert_line(alert):
    labels = ", ".join(f"{k}={v}" for k, v in sorted(alert["labels"].items()))
    text = f"{alert['name']} {alert['state']} since {alert['active_at'] or '?'} ({labels})"
    return text + (f": {alert['summary']}" if alert["summary"] else "")


def check_alerts(facts, t):
    """The backup freshness alert loaded; any alert firing (critical: FAIL, others: WARN)."""
    prom = facts.get("prometheus") or {}
    alerting = facts.get("prometheus_alerts")
    if prom.get("error") or alerting is None:
        return result("monitoring.alerts", "SKIP", "Prometheus does not answer")
    if alerting.get("error"):
        return result(
            "monitoring.alerts",
            "WARN",
            "Prometheus's rules or alerts API does not answer",
            [alerting["error"]],
            "curl " + alerting["url"] + "/api/v1/rules; see monitoring.prometheus",
        )
    names = {r["name"] for r in alerting["rules"]}
    backup_alert = facts.get("backup_alert") or ""
    fail_on = set(facts.get("alert_fail_severities") or ["critical"])
    firing = [a for a in alerting["alerts"] if a["state"] == "firing"]
    pending = [a for a in alerting["alerts"] if a["state"] == "pending"]
    broken = [r for r in alerting["rules"] if r["health"] == "err"]
    statuses, summary, evidence, remedies = [], [], [], []
    if firing:
        critical = [a for a in firing if a["severity"] in fail_on]
        statuses.append("FAIL" if critical else "WARN")
        summary.append(
            f"{len(firing)} alert{'s' if len(firing) > 1 else ''} firing: "
            + ", ".join(sorted({a["name"] for a in firing}))
        )
        evidence += [_alert_line(a) for a in critical + [a for a in firing if a not in critical]]
        remedies.append(
            "read each alert's description; the backup alerts (Backup*): "
            + playbook("backup")
            + " and the scheduled run's log; the others: the check of this report that covers "
            "their subject"
        )
    if backup_alert and backup_alert not in names:
        statuses.append("WARN")
        summary.append(
            f"the backup freshness alert {backup_alert} is not loaded: no alert will fire when "
            "backups stop"
        )
        evidence.append(f"{len(names)} alerting rules loaded: {', '.join(sorted(names)) or 'none'}")
        remedies.append(
            playbook("deploy") + " (installs roles/deploy/files/prometheus-rules and the "
            "rule_files of prometheus.yml); see configuration.prometheus"
        )
    if broken:
        statuses.append("WARN")
        summary.append(f"{len(broken)} alerting rules fail to evaluate")
        evidence += [f"{r['name']} ({r['group']}): {r['error']}" for r in broken]
        remedies.append("fix the rule's expression; promtool check rules FILE")
    if statuses:
        return result(
            "monitoring.alerts", worst(*statuses), "; ".join(summary), evidence,
            "; ".join(remedies),
        )  # fmt: skip
    text = f"{len(names)} alerting rules loaded"
    text += f" ({backup_alert} among them)" if backup_alert else ""
    text += ", none firing"
    if pending:
        text += f"; {len(pending)} pending (not firing yet): " + ", ".join(
            sorted({a["name"] for a in pending})
        )
    return result("monitoring.alerts", "PASS", text, [_alert_line(a) for a in pending])


def check_grafana(facts, t):
    """Grafana's /api/health and, given a token, each datasource's health check."""
    g = facts.get("grafana")
    if g is None:
        return result("monitoring.grafana", "SKIP", "diagnose_grafana_url is not set")
    health = f"{g['url']}/api/health"
    if g["status"] != 200 or g.get("error"):
        return result(
            "monitoring.grafana",
            "FAIL",
            f"Grafana does not answer at {health}",
            [g.get("error") or f"HTTP {g['status']}"],
            "is Grafana running? docker ps / systemctl status grafana-server; its log; check "
            "diagnose_grafana_url",
        )
    if g["database"] != "ok":
        return result(
            "monitoring.grafana",
            "FAIL",
            f"Grafana {g['version']} answers but its database is not ok",
            [f"{health}: database {g['database'] or '?'}"],
            "read Grafana's log (its SQLite file or database server); restart Grafana",
        )
    base = f"Grafana {g['version']} answers, database ok"
    if "datasources" not in g and "datasources_error" not in g:
        return result(
            "monitoring.grafana",
            "PASS",
            base + "; datasources not checked (no diagnose_grafana_token)",
        )
    if g.get("datasources_error"):
        return result(
            "monitoring.grafana",
            "WARN",
            base + "; its datasources cannot be listed with the token",
            [g["datasources_error"]],
            "give diagnose_grafana_token a service account token whose role may read and query "
            "datasources (datasources:read, datasources:query)",
        )
    failing = [d for d in g["datasources"] if d["http"] != 404 and (
        d["http"] != 200 or d["status"].upper() != "OK")]  # fmt: skip
    untested = [d for d in g["datasources"] if d["http"] == 404]
    lines = [
        f"{d['name']} ({d['type']}, uid {d['uid']}): HTTP {d['http']} {d['status']} {d['message']}"
        .strip() for d in failing
    ]  # fmt: skip
    lines += [f"{d['name']} ({d['type']}): no health check for this type" for d in untested]
    if failing:
        return result(
            "monitoring.grafana",
            "FAIL",
            f"{len(failing)} of {len(g['datasources'])} Grafana datasources fail their health "
            "check: " + ", ".join(d["name"] for d in failing),
            lines,
            "a Prometheus datasource: see monitoring.prometheus, else "
            + restart_remedy([facts["services"]["prometheus"]])
            + "; otherwise fix its URL or credentials in Grafana (Connections > Data sources > "
            "NAME > Save & test)",
        )
    return result(
        "monitoring.grafana",
        "PASS",
        base + f"; {len(g['datasources']) - len(untested)} datasources healthy",
        lines,
    )
