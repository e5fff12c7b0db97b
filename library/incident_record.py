#!/usr/bin/python
"""Ansible module: incident records, evidence bundles and post-mortem drafts."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: incident_record
short_description: Open, update and resolve incident records; gather and bundle redacted evidence
description:
  - Keeps one JSON record per incident (schema C(opsauto.incident/1)) in O(incident_dir) on the
    control node, written atomically with mode C(0600) under an exclusive C(flock), so runbooks
    appending timeline entries at the same time cannot lose one another's entries.
  - V(open) creates the record (id C(INC-YYYYMMDD-HHMMSS-xxxx), severity, summary, start time,
    affected hosts, impact). V(update) appends a timeline entry. V(resolve) closes it (end time,
    duration) and writes the post-mortem draft C(<id>-postmortem.md) from O(postmortem_template).
    A resolved record refuses V(update), V(bundle) and a second V(resolve).
  - V(gather) runs on a Docker host and returns its evidence (compose ps, logs of every service
    since O(since) capped at O(log_lines) lines each, docker stats samples, docker inspect, the
    last ledger entries, the names of the .env variables) with secrets redacted. It only reads.
  - V(bundle) writes the gathered evidence of every host and the diagnose reports in
    O(diagnose_dir) as one C(<id>-evidence-<time>.tar.gz) with a C(MANIFEST.sha256), redacting
    once more, and records it (and the diagnose findings) in the incident record.
  - V(show) only reads the record.
  - With O(webhook_url), V(open), V(update) and V(resolve) post a Slack-compatible JSON body
    with one key, C(text). A failing webhook is a warning and RV(webhook), never a failure.
author:
  - Operations automation team
options:
  action:
    description: What to do.
    type: str
    required: true
    choices: [open, update, resolve, gather, bundle, show]
  incident_dir:
    description: Directory of the records, post-mortems and bundles (created with mode C(0700)).
    type: path
  incident_id:
    description:
      - The incident, C(INC-YYYYMMDD-HHMMSS-xxxx).
      - Required except for V(open) and V(gather).
    type: str
  severity:
    description: V(open) only.
    type: str
    choices: [sev1, sev2, sev3, sev4]
    default: sev3
  summary:
    description: One line saying what is wrong; required with V(open).
    type: str
  hosts:
    description: Affected hosts, V(open) only.
    type: list
    elements: str
    default: []
  impact:
    description: Impact fields of V(open) (users affected, services, data at risk...).
    type: dict
    default: {}
  author:
    description: Who writes the timeline entry.
    type: str
    default: ansible
  text:
    description: The timeline entry of V(update) (required there).
    type: str
  resolution:
    description: V(resolve) only, what restored service.
    type: str
    default: ""
  root_cause:
    description:
      - V(resolve) only, the root cause as known now.
      - The draft keeps a placeholder when empty.
    type: str
    default: ""
  action_items:
    description: V(resolve) only, follow-up actions.
    type: list
    elements: str
    default: []
  postmortem_template:
    description:
      - Jinja2 template of the post-mortem (variable C(incident)).
      - Required with V(resolve).
    type: path
  webhook_url:
    description: Slack-compatible incoming webhook; notified on V(open), V(update), V(resolve).
    type: str
  webhook_timeout:
    description: Seconds before the webhook request is abandoned.
    type: int
    default: 10
  project:
    description: V(gather) only, the compose project name.
    type: str
  project_dir:
    description:
      - V(gather) only, the stack's directory.
      - Its C(.env) is read for the variable names and the secret values.
    type: path
  since:
    description: V(gather) only, start of the log window (RFC 3339), normally the incident's start.
    type: str
  ledger_path:
    description: V(gather) only, the release ledger (JSON Lines).
    type: path
  ledger_entries:
    description: V(gather) only, how many of the newest ledger entries to keep.
    type: int
    default: 20
  log_lines:
    description: V(gather) only, at most this many of the newest log lines per service.
    type: int
    default: 2000
  stats_samples:
    description: V(gather) only, number of C(docker stats --no-stream) samples.
    type: int
    default: 2
  prometheus_url:
    description:
      - V(gather) only, Prometheus's base URL as this host reaches it. Set, the backend's request
        rate, 5xx share and p95 latency and every target's C(up) are read as range queries from
        O(since) to now into C(prometheus/*.json) of the bundle (a failed query is an error
        line, never fatal).
    type: str
  prometheus_job:
    description: V(gather) only, the Prometheus job of the backend replicas.
    type: str
    default: backend
  secrets:
    description: Known secret values (the database password...) replaced wherever they appear.
    type: list
    elements: str
    default: []
  evidence:
    description: V(bundle) only, host name to the RV(evidence) of its V(gather).
    type: dict
    default: {}
  diagnose_dir:
    description: V(bundle) only, a diagnose report directory to put in the bundle (optional).
    type: path
attributes:
  check_mode:
    support: full
    details:
      - V(gather) and V(show) run normally.
      - The others compute the result, write nothing and notify nobody.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Open an incident
  incident_record:
    action: open
    incident_dir: /srv/opsauto/artifacts/incidents
    severity: sev2
    summary: API returns 502 for every request
    hosts: [app1]
  register: opened

- name: Append to its timeline (any runbook, given -e incident_id=...)
  incident_record:
    action: update
    incident_dir: /srv/opsauto/artifacts/incidents
    incident_id: "{{ opened.incident_id }}"
    text: Rolled back to 1.0.0
"""

RETURN = r"""
incident_id:
  description: The incident's id.
  returned: always except gather
  type: str
  sample: INC-20260131-091500-3fa2
record:
  description: The record after the action.
  returned: always except gather
  type: dict
record_path:
  description: Path of the record.
  returned: always except gather
  type: str
postmortem_path:
  description: Path of the post-mortem draft.
  returned: when action=resolve
  type: str
bundle:
  description: The evidence bundle, keys C(file), C(path), C(sha256), C(size), C(members), C(hosts).
  returned: when action=bundle
  type: dict
evidence:
  description: Redacted evidence files of this host, C(files) (name to text) and C(errors).
  returned: when action=gather
  type: dict
webhook:
  description:
    - C(sent) (bool), C(status) or C(error).
    - C(sent=false) without error when no URL is set.
  returned: when action is open, update or resolve
  type: dict
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.fileops import (
    ensure_directory,
    flock_file,
    write_bytes_atomic,
    write_json_atomic,
)
from ansible.module_utils.incident import (
    IncidentError,
    add_timeline,
    attach_diagnose,
    attach_evidence,
    check_incident_id,
    gather_evidence,
    iso,
    new_incident_id,
    open_record,
    parse_iso,
    record_path,
    render_postmortem,
    resolve_record,
    utc_now,
    webhook_text,
    write_bundle,
)
from ansible.module_utils.incident_prometheus import query_ranges
from ansible.module_utils.incident_timeline import LOCK_TIMEOUT, load_record
from ansible.module_utils.ops_errors import OpsError
from ansible.module_utils.urls import open_url


def notify(module, record, event):
    url = module.params["webhook_url"]
    if not url:
        return {"sent": False}
    body = json.dumps({"text": webhook_text(record, event)})
    try:
        response = open_url(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
            timeout=module.params["webhook_timeout"],
        )
        return {"sent": True, "status": response.getcode()}
    except Exception as exc:  # any failure of the webhook is reported, never fatal
        reason = str(getattr(exc, "reason", "") or exc).replace(url, "<webhook_url>")
        module.warn(
            f"incident {record['id']}: the {event} notification to the webhook failed: {reason}"
        )
        return {"sent": False, "error": reason}


def gather(module):
    p = module.params
    for name in ("project", "project_dir", "since", "ledger_path"):
        if not p[name]:
            raise IncidentError(f"action=gather needs {name}")

    def run(argv):
        return module.run_command(argv)

    evidence = gather_evidence(
        run,
        p["project"],
        p["project_dir"],
        p["since"],
        p["ledger_path"],
        secret_values=p["secrets"],
        log_lines=p["log_lines"],
        stats_samples=p["stats_samples"],
        ledger_entries=p["ledger_entries"],
    )
    if p["prometheus_url"]:
        try:
            start = parse_iso(p["since"]).timestamp()
        except ValueError:
            start = utc_now().timestamp() - 3600
            evidence["errors"].append(f"since {p['since']!r} is not RFC 3339: the last hour")
        ranges = query_ranges(
            p["prometheus_url"], p["prometheus_job"], start, utc_now().timestamp()
        )
        evidence["files"].update(ranges["files"])
        evidence["errors"].extend(ranges["errors"])
        evidence["files"]["errors.txt"] = "".join(line + "\n" for line in evidence["errors"])
    return evidence


def read_diagnose(diagnose_dir):
    files, fleet = {}, None
    if not diagnose_dir or not os.path.isdir(diagnose_dir):
        return files, fleet
    for name in sorted(os.listdir(diagnose_dir)):
        path = os.path.join(diagnose_dir, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as handle:
                files[f"diagnose/{name}"] = handle.read()
    if "diagnose/fleet.json" in files:
        try:
            fleet = json.loads(files["diagnose/fleet.json"])
        except ValueError:
            fleet = None
    return files, fleet


def change_record(module, incident_dir, incident_id, now):
    """Apply the action to the record under its lock; returns (record, path, extra result)."""
    p = module.params
    action = p["action"]
    path = record_path(incident_dir, incident_id)
    extra = {}
    with flock_file(path + ".lock", LOCK_TIMEOUT):
        record = load_record(path, incident_id)
        if action == "update":
            if not p["text"]:
                raise IncidentError(
                    "action=update needs text: give -e incident_text='what happened'"
                )
            add_timeline(record, p["text"], now, p["author"])
        elif action == "resolve":
            if not p["postmortem_template"]:
                raise IncidentError("action=resolve needs postmortem_template")
            resolve_record(
                record, now, p["author"], p["resolution"], p["root_cause"], p["action_items"]
            )
            with open(p["postmortem_template"], encoding="utf-8") as handle:
                text = render_postmortem(record, handle.read())
            extra["postmortem_path"] = os.path.join(incident_dir, f"{incident_id}-postmortem.md")
            if not module.check_mode:
                write_bytes_atomic(extra["postmortem_path"], text.encode("utf-8"))
        elif action == "bundle":
            files, fleet = read_diagnose(p["diagnose_dir"])
            hosts = sorted(p["evidence"])
            for host in hosts:
                for name, text in (p["evidence"][host] or {}).get("files", {}).items():
                    files[f"{host}/{name}"] = text
            stamp = now.strftime("%Y%m%d-%H%M%S")
            bundle_path = os.path.join(incident_dir, f"{incident_id}-evidence-{stamp}.tar.gz")
            if module.check_mode:
                bundle = {"file": os.path.basename(bundle_path), "members": sorted(files)}
            else:
                bundle = write_bundle(bundle_path, files, p["secrets"])
            bundle["hosts"] = hosts
            attach_evidence(
                record, {k: v for k, v in bundle.items() if k != "members"}, now, p["author"]
            )
            if fleet:
                attach_diagnose(record, fleet)
            extra["bundle"] = dict(bundle, path=bundle_path)
        if action != "show" and not module.check_mode:
            write_json_atomic(path, record)
    return record, path, extra


def run_module():
    module = AnsibleModule(
        argument_spec={
            "action": {
                "type": "str",
                "required": True,
                "choices": ["open", "update", "resolve", "gather", "bundle", "show"],
            },
            "incident_dir": {"type": "path"},
            "incident_id": {"type": "str"},
            "severity": {
                "type": "str",
                "default": "sev3",
                "choices": ["sev1", "sev2", "sev3", "sev4"],
            },
            "summary": {"type": "str"},
            "hosts": {"type": "list", "elements": "str", "default": []},
            "impact": {"type": "dict", "default": {}},
            "author": {"type": "str", "default": "ansible"},
            "text": {"type": "str"},
            "resolution": {"type": "str", "default": ""},
            "root_cause": {"type": "str", "default": ""},
            "action_items": {"type": "list", "elements": "str", "default": []},
            "postmortem_template": {"type": "path"},
            "webhook_url": {"type": "str", "no_log": True},
            "webhook_timeout": {"type": "int", "default": 10},
            "project": {"type": "str"},
            "project_dir": {"type": "path"},
            "since": {"type": "str"},
            "ledger_path": {"type": "path"},
            "ledger_entries": {"type": "int", "default": 20},
            "log_lines": {"type": "int", "default": 2000},
            "stats_samples": {"type": "int", "default": 2},
            "prometheus_url": {"type": "str"},
            "prometheus_job": {"type": "str", "default": "backend"},
            "secrets": {"type": "list", "elements": "str", "default": [], "no_log": True},
            "evidence": {"type": "dict", "default": {}},
            "diagnose_dir": {"type": "path"},
        },
        required_if=[("action", "gather", ("project", "project_dir", "since", "ledger_path"))],
        supports_check_mode=True,
    )
    p = module.params
    action = p["action"]
    try:
        if action == "gather":
            module.exit_json(changed=False, evidence=gather(module))
        if not p["incident_dir"]:
            raise IncidentError(f"action={action} needs incident_dir")
        now = utc_now()
        if action == "open":
            incident_id = new_incident_id(now)
            record = open_record(
                incident_id,
                p["severity"],
                p["summary"] or "",
                p["hosts"],
                now,
                p["author"],
                p["impact"],
            )
            path = record_path(p["incident_dir"], incident_id)
            extra = {}
            if not module.check_mode:
                ensure_directory(p["incident_dir"])
                write_json_atomic(path, record)
        else:
            if not p["incident_id"]:
                raise IncidentError(
                    f"action={action} needs incident_id: give -e incident_id=INC-..."
                )
            incident_id = check_incident_id(p["incident_id"])
            record, path, extra = change_record(module, p["incident_dir"], incident_id, now)
        result = dict(
            changed=action != "show",
            incident_id=incident_id,
            record=record,
            record_path=path,
            **extra,
        )
        if action in ("open", "update", "resolve"):
            result["webhook"] = (
                notify(module, record, action) if not module.check_mode else {"sent": False}
            )
        module.exit_json(**result)
    except (OpsError, OSError) as exc:
        module.fail_json(
            msg=f"incident {p['incident_id'] or ''} {action} failed: {exc}".replace("  ", " "),
            at=iso(utc_now()),
        )


def main():
    run_module()


if __name__ == "__main__":
    main()
