"""Prometheus range queries over an incident's window, for its evidence bundle.

Used by library/incident_record.py (action gather). Each query is one GET of
``/api/v1/query_range`` from the incident's start to now; the answers are kept as JSON files
``prometheus/<name>.json`` of the bundle (the series as Prometheus returned them) with an
index ``prometheus/queries.json`` (query text, window, step, number of series or the error).
A failing query is an error line, never fatal: evidence is gathered during an outage. The
HTTP client is injected so the logic is unit-tested without Prometheus:

    http_get(url, timeout) -> {"status": int|None, "body": str, "error": str}
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

# At most this many points per series (Prometheus refuses more than 11,000).
MAX_POINTS = 500
MIN_STEP = 15


def range_queries(job):
    """{name: PromQL} of the backend's request rate, 5xx share, p95 latency and target health."""
    sel = f'job="{job}"'
    return {
        "backend_requests_per_second": f"sum by (status) (rate(http_requests_total{{{sel}}}[1m]))",
        "backend_5xx_ratio": (
            f'sum(rate(http_requests_total{{{sel},status=~"5.."}}[1m]))'
            f" / sum(rate(http_requests_total{{{sel}}}[1m]))"
        ),
        "backend_p95_seconds": (
            "histogram_quantile(0.95, sum by (le) "
            f"(rate(http_request_duration_seconds_bucket{{{sel}}}[1m])))"
        ),
        "targets_up": "up",
    }


def step_for(start, end):
    """Seconds between points: at least MIN_STEP, at most MAX_POINTS points in the window."""
    return max(MIN_STEP, int(-(-(end - start) // MAX_POINTS)))


def urllib_get(url, timeout):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return {"status": resp.status, "body": resp.read().decode("utf-8", "replace"),
                    "error": ""}  # fmt: skip
    except urllib.error.HTTPError as exc:
        body = exc.read(2048).decode("utf-8", "replace")
        return {"status": exc.code, "body": body, "error": f"HTTP {exc.code}"}
    except (OSError, ValueError) as exc:
        return {"status": None, "body": "", "error": f"{type(exc).__name__}: {exc}"}


def query_ranges(base_url, job, start, end, http_get=urllib_get, timeout=10):
    """Run every range query over [start, end] (epoch seconds); {"files", "errors"}."""
    step = step_for(start, end)
    files, errors, index = {}, [], []
    for name, query in range_queries(job).items():
        params = urllib.parse.urlencode(
            {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}s"}
        )
        answer = http_get(f"{base_url.rstrip('/')}/api/v1/query_range?{params}", timeout)
        entry = {"name": name, "query": query, "start": start, "end": end, "step": step}
        try:
            data = json.loads(answer["body"]) if answer["body"] else {}
        except ValueError:
            data = {}
        if answer["status"] == 200 and data.get("status") == "success":
            entry["series"] = len((data.get("data") or {}).get("result") or [])
            files[f"prometheus/{name}.json"] = json.dumps(data, indent=1, sort_keys=True) + "\n"
        else:
            entry["error"] = data.get("error") or answer["error"] or f"HTTP {answer['status']}"
            errors.append(f"prometheus {name}: {entry['error']}")
        index.append(entry)
    files["prometheus/queries.json"] = json.dumps(index, indent=1) + "\n"
    return {"files": files, "errors": errors}
