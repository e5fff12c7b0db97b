"""testinfra checks of a deployed reference stack, shared by the Molecule scenarios.

Each check reads real state on the Docker host (containers, HTTP answers, files) and,
when it fails, prints the evidence: the compose project's status and recent logs.
"""

from __future__ import annotations

import json
import time

PROJECT = "fastapi-monolith"
PROJECT_DIR = "/srv/fastapi-monolith"
HTTP = "http://127.0.0.1:8080"
PROMETHEUS = "http://127.0.0.1:9090"
# The load generator's bound (molecule/shared/loadgen.yml --duration).
LOADGEN_SECONDS = 900
# nginx's error for a refused connect: a draining replica's, retried by nginx on purpose.
REFUSED = "(111: Connection refused)"


def evidence(host, log_lines: int = 20) -> str:
    ps = host.run(f"docker compose -p {PROJECT} ps -a")
    logs = host.run(f"docker compose -p {PROJECT} logs --no-color --tail {log_lines}")
    return f"\n--- docker compose ps ---\n{ps.stdout}\n--- logs ---\n{logs.stdout}{logs.stderr}"


def containers(host) -> list[dict]:
    out = host.check_output(f"docker compose -p {PROJECT} ps -a --format json")
    # compose prints one JSON object per line
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def http_gets(host, url: str, count: int) -> list[tuple[int, str]]:
    """GET url `count` times from inside the host in one command; (status, body) of each
    (status 0 when curl got no answer)."""
    marker = "@@opsauto-http-status "
    out = host.run(
        f"for i in $(seq {count}); do curl -sS -m 5 -w '\\n{marker}%{{http_code}}\\n' {url}; done"
    ).stdout
    answers, body = [], []
    for line in out.splitlines():
        if line.startswith(marker):
            answers.append((int(line[len(marker) :]), "\n".join(body)))
            body = []
        else:
            body.append(line)
    return answers + [(0, "\n".join(body))] * (count - len(answers))


def http_get(host, url: str) -> tuple[int, str]:
    return http_gets(host, url, 1)[0]


def wait_for(predicate, timeout: float = 60, interval: float = 2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def ledger(host) -> list[dict]:
    text = host.file(f"{PROJECT_DIR}/ledger/releases.jsonl").content_string
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def backend_image_id(host, tag: str) -> str:
    return host.check_output(
        f"docker image inspect -f '{{{{.Id}}}}' fastapi-monolith/backend:{tag}"
    ).strip()


def loadgen_stop(host, timeout: float = 30) -> dict:
    """Stop the load generator started by molecule/shared/loadgen.yml; return its summary."""
    host.run("touch /tmp/loadgen.stop")
    found = wait_for(lambda: host.file("/tmp/loadgen.json").exists, timeout=timeout, interval=1)
    assert found, "the load generator left no /tmp/loadgen.json (was it started?)"
    return json.loads(host.file("/tmp/loadgen.json").content_string)


def container_info(host, name: str) -> dict:
    return json.loads(host.check_output(f"docker inspect {name}"))[0]


def assert_no_failed_requests(host) -> dict:
    """Stop the load generator and require that it sent traffic until it was stopped (so
    through every operation before verify) and that none of it failed."""
    summary = loadgen_stop(host)
    assert summary["total"] > 100, summary
    assert summary["seconds"] < LOADGEN_SECONDS - 1, f"the load ended before verify: {summary}"
    # Short evidence, the summary (with the first errors and their times) last: the test
    # wrapper shows only the tail of the output.
    assert summary["failed"] == 0, (
        evidence(host, log_lines=3) + failed_in_nginx_log(host)
        + docker_events_near(host, summary.get("errors") or [])
        + "\n--- load generator ---\n" + json.dumps(summary)
    )  # fmt: skip
    return summary


def failed_in_nginx_log(host) -> str:
    """nginx's access log lines whose status is not 2xx (at most 20; each names the upstream
    addresses nginx tried and their statuses), and its error lines other than the refused
    connects that a rollout's drain causes on purpose (nginx retries those)."""
    logs = host.run(f"docker compose -p {PROJECT} logs --no-color --no-log-prefix nginx")
    lines = (logs.stdout + logs.stderr).splitlines()
    bad = [line for line in lines if "upstream=" in line and '" 2' not in line]
    errors = [line for line in lines if "[error]" in line and REFUSED not in line]
    refused = sum(REFUSED in line for line in lines)
    return (
        f"\n--- nginx: {len(bad)} request(s) not 2xx ---\n" + "\n".join(bad[:20])
        + f"\n--- nginx: {refused} refused connect(s) retried, other errors ---\n"
        + "\n".join(errors[:10])
    )  # fmt: skip


def docker_events_near(host, errors: list[str], seconds: int = 15) -> str:
    """Docker's container and network events (recorded by molecule/shared/loadgen.yml) within
    `seconds` of the first failed requests (the load generator stamps each error HH:MM:SS):
    what the operation did at that moment."""
    stamps = sorted({e.split()[0] for e in errors[:5] if e[:2].isdigit()})
    if not stamps:
        return ""
    out = host.run("cat /tmp/docker-events.log").stdout

    def clock(hms: str) -> int:
        h, m, s = (int(x) for x in hms.split(":"))
        return h * 3600 + m * 60 + s

    wanted = [clock(s) for s in stamps]
    near = []
    for line in out.splitlines():
        stamp, _, rest = line.partition(" ")
        if not stamp.isdigit():
            continue
        t = time.gmtime(int(stamp))
        of_day = t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec
        if any(abs(of_day - w) <= seconds for w in wanted):
            near.append(f"{time.strftime('%H:%M:%S', t)} {rest[:140]}")
    return f"\n--- docker events within {seconds} s of {', '.join(stamps)} ---\n" + "\n".join(
        near[:40]
    )


def assert_all_healthy(host) -> list[dict]:
    """Every service of the stack has containers, all running and healthy; returns them."""
    found = containers(host)
    services = sorted({c["Service"] for c in found})
    assert services == ["backend", "db", "nginx", "node-exporter", "prometheus"], evidence(host)
    for c in found:
        assert c["State"] == "running", f"{c['Name']}: {c['Status']}" + evidence(host)
        assert c["Health"] == "healthy", f"{c['Name']}: {c['Status']}" + evidence(host)
    return found


def answering_hostnames(host, requests: int = 20) -> set[str]:
    """Container hostnames that answered /version through nginx over `requests` requests."""
    hostnames = set()
    for status, body in http_gets(host, f"{HTTP}/version", requests):
        assert status == 200, body
        hostnames.add(json.loads(body)["hostname"])
    return hostnames
