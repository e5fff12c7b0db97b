"""Reading and appending to an incident record under its lock (shared by the
incident_record module and the opsauto_incident callback, which notes every runbook run
given ``-e incident_id=...`` in that incident's timeline)."""

from __future__ import annotations

import json
import os

from ansible.module_utils.fileops import flock_file, write_json_atomic
from ansible.module_utils.incident import (
    IncidentError,
    add_timeline,
    check_incident_id,
    record_path,
    utc_now,
)

LOCK_TIMEOUT = 30


def load_record(path, incident_id):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise IncidentError(
            f"no incident {incident_id} in {os.path.dirname(path)}: check the id and incident_dir"
        ) from None
    except ValueError as exc:
        raise IncidentError(f"{path} is not valid JSON ({exc}): repair or restore it") from None


def append_entry(incident_dir, incident_id, text, author, kind="update", now=None):
    """Append one timeline entry to the record, under its lock; the record after."""
    check_incident_id(incident_id)
    path = record_path(incident_dir, incident_id)
    with flock_file(path + ".lock", LOCK_TIMEOUT):
        record = load_record(path, incident_id)
        add_timeline(record, text, now or utc_now(), author, kind)
        write_json_atomic(path, record)
    return record
