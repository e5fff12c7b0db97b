"""Callback: notes every runbook run in an incident's timeline when the run is given one.

    ansible-playbook playbooks/rollback.yml -e incident_id=INC-20261129-031500-ab12

appends, when the run ends (whether it succeeded or failed), one entry such as
"playbooks/rollback.yml ok on app-1 (3 changed)" or
"playbooks/rollback.yml FAILED on app-1 at 'Switch the release': <message>" to the
record in incident_dir (default: artifacts/incidents beside playbooks/, as the incident
role's). Runs on the control node, like the incident records. playbooks/incident.yml itself
(incident_action given) is left out: it writes the record itself. A record that cannot be
written is a warning; it never fails the run. Messages go through the incident redaction
(URL and DSN passwords, password=... pairs) and are cut to 300 characters.

Enabled in ansible.cfg (callbacks_enabled); Ansible finds it beside the playbooks, also
under ansible-runner/AWX, which set their own callback path.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: opsauto_incident
type: aggregate
short_description: Note each runbook run in the incident timeline given by -e incident_id
description:
  - When a run has the extra variable incident_id (and no incident_action), appends one
    entry to that incident's timeline when the run ends - the playbook, ok or FAILED per
    host, the first failed task and its (redacted) message.
requirements:
  - enable in callbacks_enabled
"""

import getpass
import os
import socket

import ansible.module_utils
from ansible.plugins.callback import CallbackBase

_MODULE_UTILS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "module_utils")
if os.path.normpath(_MODULE_UTILS) not in [
    os.path.normpath(p) for p in ansible.module_utils.__path__
]:
    ansible.module_utils.__path__.append(os.path.normpath(_MODULE_UTILS))

MAX_MESSAGE = 300


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "opsauto_incident"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.playbook = None
        self.incident_id = None
        self.incident_dir = None
        self.failures = {}

    def v2_playbook_on_start(self, playbook):
        self.playbook = playbook._file_name

    def v2_playbook_on_play_start(self, play):
        if self.incident_id is not None:
            return
        extra = play.get_variable_manager().extra_vars
        if not extra.get("incident_id") or "incident_action" in extra:
            self.incident_id = ""
            return
        self.incident_id = str(extra["incident_id"])
        default_dir = os.path.join(
            os.path.dirname(self.playbook or "."), "..", "artifacts", "incidents"
        )
        self.incident_dir = os.path.normpath(str(extra.get("incident_dir") or default_dir))

    def v2_runner_on_failed(self, result, ignore_errors=False):
        if ignore_errors:
            return
        host = result._host.get_name()
        if host not in self.failures:
            message = result._result.get("msg") or result._result.get("stderr") or ""
            self.failures[host] = (result._task.get_name(), str(message))

    def v2_runner_on_unreachable(self, result):
        host = result._host.get_name()
        self.failures.setdefault(host, ("(connection)", str(result._result.get("msg", ""))))

    def v2_playbook_on_stats(self, stats):
        if not self.incident_id:
            return
        try:
            from ansible.module_utils.incident import redact
            from ansible.module_utils.incident_timeline import append_entry
        except ImportError as exc:  # pragma: no cover - a broken checkout
            self._display.warning(f"opsauto_incident: cannot load the incident code: {exc}")
            return
        text = self.summary(stats, redact)
        author = f"{getpass.getuser()}@{socket.gethostname()} (ansible-playbook)"
        try:
            append_entry(self.incident_dir, self.incident_id, text, author, kind="runbook")
        except Exception as exc:  # noqa: BLE001 - a note must never fail the run
            self._display.warning(f"opsauto_incident: not noted in {self.incident_id}: {exc}")
            return
        self._display.display(f"Noted in incident {self.incident_id}: {text}")

    def summary(self, stats, redact):
        name = (
            os.path.relpath(self.playbook, os.path.join(os.path.dirname(self.playbook), ".."))
            if self.playbook
            else "?"
        )
        parts = []
        for host in sorted(stats.processed):
            counts = stats.summarize(host)
            if host in self.failures or counts["failures"] or counts["unreachable"]:
                task, message = self.failures.get(host, ("?", ""))
                message = " ".join(redact(message).split())
                if len(message) > MAX_MESSAGE:
                    message = message[: MAX_MESSAGE - 3] + "..."
                parts.append(f"FAILED on {host} at '{task}': {message}")
            else:
                parts.append(f"ok on {host} ({counts['changed']} changed)")
        if not parts:
            parts.append("no host matched")
        return f"{name} " + "; ".join(parts)
