"""Incident records, evidence bundles and post-mortems: the pure logic of incident_record.

* ids: :func:`new_incident_id` (``INC-YYYYMMDD-HHMMSS-xxxx``), :func:`check_incident_id`;
* records: :func:`open_record`, :func:`add_timeline`, :func:`resolve_record`,
  :func:`attach_evidence`, :func:`attach_diagnose`; a resolved record refuses changes;
* redaction: :func:`redact` (known secret values, passwords in URLs and DSNs),
  :func:`redact_env_file`, :func:`redact_inspect`, :func:`secret_values_from_env`;
* evidence: :func:`gather_evidence` runs the docker commands through an injected runner
  (the module passes ``AnsibleModule.run_command``, the tests a fake) and returns redacted
  files; :func:`write_bundle` writes them as one tar.gz with a sha256 manifest;
* output: :func:`render_postmortem` (Jinja2), :func:`webhook_text` (Slack ``text``).

Problems are raised as :class:`IncidentError` with a message naming the cause and the fix.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import re
import secrets as _secrets
import tarfile

from ansible.module_utils.fileops import ensure_directory, write_bytes_atomic
from ansible.module_utils.ops_errors import OpsError

SCHEMA = "opsauto.incident/1"
SEVERITIES = ("sev1", "sev2", "sev3", "sev4")
ID_RE = re.compile(r"^INC-\d{8}-\d{6}-[0-9a-f]{4}$")
REDACTED = "<redacted>"
# Variable names whose values are secrets wherever they appear (logs, inspect, ps output).
SECRET_NAME_RE = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL|DSN|AUTH", re.IGNORECASE)
# scheme://user:password@host -> scheme://user:<redacted>@host
URL_PASSWORD_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)([^\s@/]+)(@)")
# libpq key=value DSNs and similar: password=..., PGPASSWORD=...
KV_PASSWORD_RE = re.compile(
    r"((?:password|passwd|pwd)\s*[=:]\s*)(['\"]?)([^\s'\",;&]+)", re.IGNORECASE
)
MIN_SECRET_LEN = 4


class IncidentError(OpsError):
    """An incident action that cannot be done (unknown id, resolved record, bad input)."""


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def iso(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc
    )


# --------------------------------------------------------------------------- ids


def new_incident_id(moment, suffix=None):
    """``INC-YYYYMMDD-HHMMSS-xxxx``: the UTC open time and 4 random hex digits."""
    suffix = suffix if suffix is not None else _secrets.token_hex(2)
    return "INC-{}-{}".format(
        moment.astimezone(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S"), suffix
    )


def check_incident_id(incident_id):
    """Refuse anything but a well-formed id (it becomes a file name)."""
    if not isinstance(incident_id, str) or not ID_RE.match(incident_id):
        raise IncidentError(
            f"incident_id {incident_id!r} is not an incident id (INC-YYYYMMDD-HHMMSS-xxxx): "
            "give the id printed by incident_action=open"
        )
    return incident_id


def record_path(incident_dir, incident_id):
    return os.path.join(incident_dir, check_incident_id(incident_id) + ".json")


# --------------------------------------------------------------------------- records


def open_record(incident_id, severity, summary, hosts, moment, author, impact=None):
    """A new open record with its first timeline entry."""
    check_incident_id(incident_id)
    if severity not in SEVERITIES:
        raise IncidentError(
            f"severity {severity!r} is not one of {', '.join(SEVERITIES)}: "
            "sev1 is a full outage, sev4 a minor degradation"
        )
    if not summary or not summary.strip():
        raise IncidentError("an incident needs a summary: give -e incident_summary='what is wrong'")
    return {
        "schema": SCHEMA,
        "id": incident_id,
        "severity": severity,
        "summary": summary.strip(),
        "status": "open",
        "started_at": iso(moment),
        "resolved_at": None,
        "duration_seconds": None,
        "affected_hosts": list(hosts or []),
        "impact": dict(impact or {}),
        "timeline": [
            {
                "time": iso(moment),
                "author": author,
                "kind": "open",
                "text": f"Incident opened: {summary.strip()}",
            }
        ],
        "evidence": [],
        "diagnose": None,
        "resolution": None,
    }


def _refuse_if_resolved(record, what):
    if record.get("status") == "resolved":
        raise IncidentError(
            f"incident {record['id']} was resolved at {record['resolved_at']}: cannot {what}; "
            "open a new incident (incident_action=open) for a recurrence"
        )


def add_timeline(record, text, moment, author, kind="update"):
    """Append a timeline entry (time, author, text); refused once resolved."""
    _refuse_if_resolved(record, "append to its timeline")
    if not text or not text.strip():
        raise IncidentError("a timeline entry needs text: give -e incident_text='what happened'")
    record["timeline"].append(
        {"time": iso(moment), "author": author, "kind": kind, "text": text.strip()}
    )
    return record


def attach_evidence(record, bundle, moment, author):
    """Record an evidence bundle (file name, sha256, size, hosts) and note it in the timeline."""
    _refuse_if_resolved(record, "attach evidence")
    record["evidence"].append(dict(bundle, collected_at=iso(moment)))
    return add_timeline(
        record,
        "Evidence collected from {}: {}".format(
            ", ".join(bundle.get("hosts") or []) or "no host", bundle["file"]
        ),
        moment,
        author,
        kind="evidence",
    )


def attach_diagnose(record, fleet):
    """Keep the WARN and FAIL checks of a diagnose fleet report (opsauto.diagnose-fleet/1)."""
    findings = []
    for report in (fleet or {}).get("reports", []):
        for check in report.get("checks", []):
            if check.get("status") in ("WARN", "FAIL"):
                findings.append(
                    {
                        "host": report.get("host"),
                        "id": check.get("id"),
                        "status": check.get("status"),
                        "summary": check.get("summary"),
                        "remedy": check.get("remedy"),
                    }
                )
    record["diagnose"] = {
        "status": (fleet or {}).get("status"),
        "generated_at": (fleet or {}).get("generated_at"),
        "findings": findings,
    }
    return record


def resolve_record(record, moment, author, resolution="", root_cause="", action_items=None):
    """Close the record: end time, duration, resolution; refused when already resolved."""
    _refuse_if_resolved(record, "resolve it again")
    started = parse_iso(record["started_at"])
    record["status"] = "resolved"
    record["resolved_at"] = iso(moment)
    record["duration_seconds"] = max(0, int((moment - started).total_seconds()))
    record["resolution"] = {
        "text": (resolution or "").strip(),
        "root_cause": (root_cause or "").strip(),
        "action_items": [item for item in (action_items or []) if item],
    }
    record["timeline"].append(
        {
            "time": iso(moment),
            "author": author,
            "kind": "resolve",
            "text": "Incident resolved"
            + (f": {resolution.strip()}" if resolution and resolution.strip() else ""),
        }
    )
    return record


def format_duration(seconds):
    if seconds is None:
        return "ongoing"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


# --------------------------------------------------------------------------- redaction


def secret_values_from_env(env_text):
    """Values of the .env variables whose names look secret (DB_PASSWORD, API_KEY...)."""
    values = []
    for name, value in _env_pairs(env_text):
        if SECRET_NAME_RE.search(name) and value:
            values.append(value)
    return values


def _env_pairs(env_text):
    for line in (env_text or "").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or "=" not in stripped:
            continue
        name, _, value = stripped.partition("=")
        name = name.strip()
        if name.startswith("export "):
            name = name[len("export ") :].strip()
        yield name, value.strip().strip("'\"")


def redact_env_file(env_text):
    """A .env file with every value replaced: the names stay as evidence, no value does."""
    return "".join(f"{name}={REDACTED}\n" for name, _ in _env_pairs(env_text))


def redact(text, secret_values=()):
    """``text`` with known secret values, URL passwords and DSN passwords replaced.

    Known values are replaced wherever they appear (also URL-encoded); values shorter than
    MIN_SECRET_LEN characters are ignored, they would blank unrelated text.
    """
    if not text:
        return text
    values = sorted(
        {v for v in secret_values if v and len(v) >= MIN_SECRET_LEN}, key=len, reverse=True
    )
    for value in values:
        text = text.replace(value, REDACTED)
        quoted = _url_quote(value)
        if quoted != value:
            text = text.replace(quoted, REDACTED)
    text = URL_PASSWORD_RE.sub(lambda m: m.group(1) + REDACTED + m.group(3), text)
    text = KV_PASSWORD_RE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return text


def _url_quote(value):
    from urllib.parse import quote

    return quote(value, safe="")


def redact_inspect(inspect_text, secret_values=()):
    """``docker inspect`` JSON with every Config.Env value replaced, then :func:`redact`."""
    try:
        data = json.loads(inspect_text)
    except ValueError:
        return redact(inspect_text, secret_values)
    for item in data if isinstance(data, list) else [data]:
        config = item.get("Config") if isinstance(item, dict) else None
        if isinstance(config, dict) and isinstance(config.get("Env"), list):
            config["Env"] = [entry.partition("=")[0] + "=" + REDACTED for entry in config["Env"]]
    return redact(json.dumps(data, indent=2, sort_keys=True) + "\n", secret_values)


# --------------------------------------------------------------------------- evidence


def last_lines(text, limit):
    lines = (text or "").splitlines(keepends=True)
    if len(lines) <= limit:
        return text or ""
    return f"[... {len(lines) - limit} earlier lines cut, last {limit} kept]\n" + "".join(
        lines[-limit:]
    )


def gather_evidence(
    run,
    project,
    project_dir,
    since,
    ledger_path,
    secret_values=(),
    log_lines=2000,
    stats_samples=2,
    ledger_entries=20,
    read_file=None,
):
    """Run the evidence commands through ``run(argv) -> (rc, stdout, stderr)``.

    Returns ``{"files": {name: redacted text}, "errors": [...]}``. A failing command is
    kept as an error line and in its file, never fatal: evidence is gathered during an
    outage. ``read_file(path) -> text or None`` reads .env and the ledger.
    """
    read_file = read_file or _read_text
    files, errors = {}, []
    env_text = read_file(os.path.join(project_dir, ".env")) or ""
    values = list(secret_values) + secret_values_from_env(env_text)

    def capture(name, argv, transform=None):
        rc, out, err = run(argv)
        if rc != 0:
            errors.append(f"{' '.join(argv)}: exit {rc}: {(err or '').strip()[:300]}")
            out = (out or "") + f"\n[command failed, exit {rc}] {(err or '').strip()}\n"
        files[name] = transform(out) if transform else redact(out, values)
        return rc, out

    compose = ["docker", "compose", "--project-name", project]
    capture("compose-ps.txt", compose + ["ps", "--all"])
    rc, out = capture("services.txt", compose + ["ps", "--all", "--services"])
    services = (
        [s.strip() for s in out.splitlines() if s.strip() and not s.startswith("[")]
        if rc == 0
        else []
    )
    for service in services:
        capture(
            f"logs/{service}.log",
            compose
            + [
                "logs",
                "--no-color",
                "--timestamps",
                "--since",
                since,
                "--tail",
                str(log_lines),
                service,
            ],
            transform=lambda text: redact(last_lines(text, log_lines), values),
        )
    rc, out, _ = run(
        [
            "docker",
            "ps",
            "--all",
            "--quiet",
            "--filter",
            f"label=com.docker.compose.project={project}",
        ]
    )
    ids = [line.strip() for line in (out or "").splitlines() if line.strip()] if rc == 0 else []
    if ids:
        capture(
            "inspect.json",
            ["docker", "inspect"] + ids,
            transform=lambda text: redact_inspect(text, values),
        )
        for sample in range(1, stats_samples + 1):
            capture(f"stats-{sample}.txt", ["docker", "stats", "--no-stream"] + ids)
    else:
        errors.append(f"no container of compose project {project} found")
    ledger = read_file(ledger_path)
    if ledger is None:
        errors.append(f"no release ledger at {ledger_path}")
    else:
        files["ledger.jsonl"] = redact(
            "".join(ledger.splitlines(keepends=True)[-ledger_entries:]), values
        )
    if env_text:
        files["env.redacted"] = redact_env_file(env_text)
    files["errors.txt"] = "".join(line + "\n" for line in errors)
    return {"files": files, "errors": errors}


def _read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"[cannot read {path}: {exc.strerror}]\n"


def write_bundle(path, files, secret_values=(), top=None):
    """Write ``files`` ({archive name: text or bytes}) redacted, with MANIFEST.sha256, as tar.gz.

    Every text member passes through :func:`redact` once more here (the last door before
    disk). Returns ``{"file", "sha256", "size", "members"}``.
    """
    top = top or os.path.basename(path).split(".tar")[0]
    members, manifest = [], []
    for name in sorted(files):
        if name.startswith("/") or ".." in name.split("/"):
            raise IncidentError(f"evidence member name {name!r} is not a relative path")
        data = files[name]
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
        blob = redact(text, secret_values).encode("utf-8")
        members.append((name, blob))
        manifest.append(f"{hashlib.sha256(blob).hexdigest()}  {name}\n")
    members.append(("MANIFEST.sha256", "".join(manifest).encode("utf-8")))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, blob in members:
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(blob)
            info.mode = 0o600
            info.mtime = int(utc_now().timestamp())
            tar.addfile(info, io.BytesIO(blob))
    data = buffer.getvalue()
    ensure_directory(os.path.dirname(path) or ".")
    write_bytes_atomic(path, data)
    return {
        "file": os.path.basename(path),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "members": [name for name, _ in members],
    }


# --------------------------------------------------------------------------- output


def render_postmortem(record, template_text):
    """The post-mortem draft (Markdown) from a Jinja2 template and the record."""
    import jinja2

    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
    )
    env.filters["duration"] = format_duration
    return env.from_string(template_text).render(incident=record)


def webhook_text(record, event):
    """The Slack ``text`` of an open / update / resolve notification."""
    head = f"[{record['severity'].upper()}] {record['id']}"
    if event == "open":
        hosts = ", ".join(record["affected_hosts"]) or "none"
        return f"{head} opened: {record['summary']} (hosts: {hosts})"
    if event == "resolve":
        took = format_duration(record["duration_seconds"])
        return f"{head} resolved after {took}: {record['summary']}"
    last = record["timeline"][-1]
    return f"{head} update by {last['author']}: {last['text']}"
