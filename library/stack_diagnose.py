#!/usr/bin/python
"""Ansible module: read-only diagnosis of the FastAPI stack on one Docker host."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: stack_diagnose
short_description: Read-only diagnosis of the FastAPI stack on one Docker host
description:
  - Reads the containers, database, network, host, logs, configuration, monitoring,
    deployment ledger and latency of one compose project and evaluates each check as
    V(PASS), V(WARN), V(FAIL) or V(SKIP) (input not collectable because of another failure,
    or its source not available on this host, such as no systemd journal, dmesg not
    permitted or no Grafana URL),
    with the evidence seen and, for V(WARN) and V(FAIL), the remedy (a playbook to run or a
    manual step).
  - Reads only; nothing on the host is written, started or stopped. C(changed) is always false.
  - Besides Docker it reads the kernel log (C(journalctl -k) where systemd runs, else
    C(dmesg)), C(journalctl -u docker), C(promtool check config) inside the Prometheus
    container, Prometheus's rules and alerts API and, when O(grafana_url) is set, Grafana's
    health API.
  - A check explained by a more basic failure gets C(symptom_of) naming it; the root causes
    are listed in C(summary.root_causes).
  - The report schema is documented in docs/diagnose.md.
author: opsauto
options:
  project_name:
    description: Docker Compose project name.
    type: str
    required: true
  project_dir:
    description: Directory holding compose.yaml and .env.
    type: path
    required: true
  services:
    description: Compose service names, keys V(db), V(backend), V(nginx), V(prometheus).
    type: dict
    required: true
  backend_port:
    description: Port the backend listens on inside its containers.
    type: int
    default: 8000
  health_path:
    description: Health endpoint of the application, on each replica and through nginx.
    type: str
    default: /health
  db_name:
    description: Application database name (for pg_isready).
    type: str
    required: true
  db_user:
    description: Application database user (for pg_isready).
    type: str
    required: true
  http_bind:
    description: Address where nginx publishes the application.
    type: str
    default: 127.0.0.1
  http_port:
    description: Port where nginx publishes the application.
    type: int
    required: true
  prometheus_bind:
    description: Address where Prometheus is published.
    type: str
    default: 127.0.0.1
  prometheus_port:
    description: Port where Prometheus is published.
    type: int
    required: true
  ledger_path:
    description: Release ledger (JSON Lines).
    type: path
    required: true
  upstream_path:
    description: nginx upstream file of the backend written by the rollout.
    type: path
    required: true
  backup_dir:
    description: Backup directory whose free space is checked.
    type: path
    required: true
  since:
    description: Log window, a duration (V(15m), V(2h), V(1d)) or an RFC 3339 time.
    type: str
    default: 15m
  env_required:
    description: Variables .env must set non-empty (values are never read into the result).
    type: list
    elements: str
    default: [DB_NAME, DB_USER, DB_PASSWORD]
  thresholds:
    description: Overrides of the thresholds (names as in module_utils/diagnose_checks.py).
    type: dict
    default: {}
  restart_sample_seconds:
    description: Seconds between the two reads of the restart counts.
    type: float
    default: 2
  latency_probes:
    description: Number of /health requests through nginx for the latency figures.
    type: int
    default: 5
  log_max_lines:
    description: At most this many of the newest log lines per container in the window.
    type: int
    default: 20000
  command_timeout:
    description: Seconds before a docker command is abandoned (a paused container hangs).
    type: int
    default: 10
  route_alias:
    description:
      - The network alias nginx routes the backend's requests to (only routed replicas carry
        it); an upstream naming it or the service is not a half-finished rollout.
    type: str
    default: ""
  backup_metrics_dir:
    description:
      - Directory of the backup role's node_exporter textfile metrics (its C(backup_metrics_dir)),
        read for the backup freshness check C(backup.age). Empty to skip that check.
    type: str
    default: ""
  controller_time:
    description:
      - The control node's clock (epoch seconds) when it sent the task, compared with the
        host's for C(host.clock). Omitted, the clocks are not compared.
    type: float
  backup_alert:
    description:
      - The backup freshness alert that C(monitoring.alerts) expects Prometheus to have loaded
        (roles/deploy/files/prometheus-rules). Empty to not expect one.
    type: str
    default: BackupMissing
  alert_fail_severities:
    description:
      - A firing alert whose C(severity) label is one of these makes C(monitoring.alerts)
        V(FAIL); any other firing alert makes it V(WARN). Pending alerts are not firing.
    type: list
    elements: str
    default: [critical]
  docker_journal_ignore:
    description:
      - Regular expressions of Docker daemon error lines that C(host.docker_journal) does
        not count (known harmless messages).
    type: list
    elements: str
    default: []
  grafana_url:
    description:
      - Grafana's base URL, for C(monitoring.grafana) (GET /api/health). Empty skips the check.
    type: str
    default: ""
  grafana_token:
    description:
      - A Grafana service account token; given, each datasource's health check is read too.
        Sent in the C(Authorization) header only; never logged or returned.
    type: str
    default: ""
  docker_cli:
    description: The docker CLI.
    type: str
    default: docker
attributes:
  check_mode:
    support: full
    details: Reads only; runs the same in check mode.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Diagnose the stack
  stack_diagnose:
    project_name: fastapi-monolith
    project_dir: /opt/fastapi-monolith
    services: {db: db, backend: backend, nginx: nginx, prometheus: prometheus}
    db_name: appdb
    db_user: app
    http_port: 8080
    prometheus_port: 9090
    ledger_path: /opt/fastapi-monolith/ledger/releases.jsonl
    upstream_path: /opt/fastapi-monolith/nginx/backend-upstream.conf
    backup_dir: /var/backups/fastapi-monolith
    since: 15m
  register: diagnosis
"""

RETURN = r"""
report:
  description: The host's report (schema in docs/diagnose.md).
  returned: always
  type: dict
  contains:
    schema:
      description: Schema version, V(opsauto.diagnose/1).
      type: str
    summary:
      description: status (worst of the checks), counts per status, root_causes (ids).
      type: dict
    checks:
      description: One result per check; fields in docs/diagnose.md.
      type: list
      elements: dict
    collected_seconds:
      description: Wall time of the collection.
      type: float
"""

import re
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.diagnose_checks import DEFAULT_THRESHOLDS, evaluate, summarize
from ansible.module_utils.diagnose_collect import Collector

SCHEMA = "opsauto.diagnose/1"


def main():
    module = AnsibleModule(
        argument_spec={
            "project_name": {"type": "str", "required": True},
            "project_dir": {"type": "path", "required": True},
            "services": {"type": "dict", "required": True},
            "backend_port": {"type": "int", "default": 8000},
            "health_path": {"type": "str", "default": "/health"},
            "db_name": {"type": "str", "required": True},
            "db_user": {"type": "str", "required": True},
            "http_bind": {"type": "str", "default": "127.0.0.1"},
            "http_port": {"type": "int", "required": True},
            "prometheus_bind": {"type": "str", "default": "127.0.0.1"},
            "prometheus_port": {"type": "int", "required": True},
            "ledger_path": {"type": "path", "required": True},
            "upstream_path": {"type": "path", "required": True},
            "backup_dir": {"type": "path", "required": True},
            "since": {"type": "str", "default": "15m"},
            "env_required": {
                "type": "list",
                "elements": "str",
                "default": ["DB_NAME", "DB_USER", "DB_PASSWORD"],
            },
            "thresholds": {"type": "dict", "default": {}},
            "restart_sample_seconds": {"type": "float", "default": 2},
            "latency_probes": {"type": "int", "default": 5},
            "log_max_lines": {"type": "int", "default": 20000},
            "command_timeout": {"type": "int", "default": 10},
            "route_alias": {"type": "str", "default": ""},
            "backup_metrics_dir": {"type": "str", "default": ""},
            "controller_time": {"type": "float"},
            "backup_alert": {"type": "str", "default": "BackupMissing"},
            "alert_fail_severities": {"type": "list", "elements": "str", "default": ["critical"]},
            "docker_journal_ignore": {"type": "list", "elements": "str", "default": []},
            "grafana_url": {"type": "str", "default": ""},
            "grafana_token": {"type": "str", "default": "", "no_log": True},
            "docker_cli": {"type": "str", "default": "docker"},
        },
        supports_check_mode=True,
    )
    params = dict(module.params)
    missing = {"db", "backend", "nginx", "prometheus"} - set(params["services"])
    if missing:
        module.fail_json(msg=f"services lacks {', '.join(sorted(missing))}; give every one.")
    params["thresholds"] = {**DEFAULT_THRESHOLDS, **(params["thresholds"] or {})}
    for pattern in params["docker_journal_ignore"]:
        try:
            re.compile(pattern)
        except re.error as exc:
            module.fail_json(
                msg=f"docker_journal_ignore: {pattern!r} is not a regular expression: {exc}"
            )
    started = time.time()
    try:
        facts = Collector(params).collect()
    except ValueError as exc:  # an unparsable since
        module.fail_json(msg=str(exc))
    checks = evaluate(facts, params["thresholds"])
    report = {
        "schema": SCHEMA,
        "project": params["project_name"],
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "since": params["since"],
        "summary": summarize(checks),
        "checks": checks,
        "collected_seconds": facts["collect_seconds"],
    }
    module.exit_json(changed=False, report=report)


if __name__ == "__main__":
    main()
