"""Unit tests of the incident bundle's Prometheus range queries (module_utils/
incident_prometheus.py) with a fake HTTP client; the real Prometheus of a deployed stack is
queried by tests/integration/test_incident.py's collect test."""

from __future__ import annotations

import importlib
import json
import urllib.parse
from pathlib import Path

import ansible.module_utils

MODULE_UTILS = Path(__file__).resolve().parents[2] / "module_utils"
if str(MODULE_UTILS) not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(MODULE_UTILS))
ip = importlib.import_module("ansible.module_utils.incident_prometheus")


def test_step_keeps_points_bounded():
    assert ip.step_for(0, 600) == 15  # 10 minutes: the minimum step
    assert ip.step_for(0, 86400) == 173  # a day: at most 500 points
    assert 86400 / ip.step_for(0, 86400) <= ip.MAX_POINTS


def test_queries_select_the_backend_job():
    queries = ip.range_queries("api")
    assert queries["backend_5xx_ratio"] == (
        'sum(rate(http_requests_total{job="api",status=~"5.."}[1m]))'
        ' / sum(rate(http_requests_total{job="api"}[1m]))'
    )
    assert 'http_request_duration_seconds_bucket{job="api"}' in queries["backend_p95_seconds"]


def test_answers_become_files_and_failures_error_lines():
    calls = []

    def http_get(url, timeout):
        calls.append(url)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        if query["query"][0] == "up":
            return {"status": None, "body": "", "error": "URLError: refused"}
        body = {"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {"status": "200"}, "values": [[1000, "1.5"], [1015, "2"]]}]}}  # fmt: skip
        return {"status": 200, "body": json.dumps(body), "error": ""}

    out = ip.query_ranges("http://127.0.0.1:9090/", "backend", 1000.0, 1600.0, http_get=http_get)
    assert sorted(out["files"]) == [
        "prometheus/backend_5xx_ratio.json",
        "prometheus/backend_p95_seconds.json",
        "prometheus/backend_requests_per_second.json",
        "prometheus/queries.json",
    ]
    assert out["errors"] == ["prometheus targets_up: URLError: refused"]
    first = urllib.parse.parse_qs(urllib.parse.urlsplit(calls[0]).query)
    assert calls[0].startswith("http://127.0.0.1:9090/api/v1/query_range?")
    assert (first["start"], first["end"], first["step"]) == (["1000.000"], ["1600.000"], ["15s"])
    index = json.loads(out["files"]["prometheus/queries.json"])
    assert [e.get("series") for e in index] == [1, 1, 1, None]
    assert index[3]["error"] == "URLError: refused"
    data = json.loads(out["files"]["prometheus/backend_requests_per_second.json"])
    assert data["data"]["result"][0]["values"][1] == [1015, "2"]


def test_a_prometheus_error_answer_is_kept_as_its_message():
    def http_get(url, timeout):
        body = {"status": "error", "errorType": "bad_data", "error": "parse error"}
        return {"status": 400, "body": json.dumps(body), "error": "HTTP 400"}

    out = ip.query_ranges("http://p:9090", "backend", 0.0, 60.0, http_get=http_get)
    assert out["errors"][0] == "prometheus backend_requests_per_second: parse error"
    assert list(out["files"]) == ["prometheus/queries.json"]
