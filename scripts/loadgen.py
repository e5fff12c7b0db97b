#!/usr/bin/env python3
"""Bounded HTTP load generator: counts failed requests while an operation runs.

N worker threads GET one URL (keep-alive, http.client) until the first of: the duration
is over, the request budget is spent, or the stop file appears. A request fails when the
answer is not 2xx or the connection fails. Prints (and optionally writes) a JSON summary:
total, failed, p50/p99 latency in ms, and the first few failures as evidence. A request
that finds its idle keep-alive connection closed by the server is retried once on a new
connection, as browsers and urllib3 do; those retries are counted separately.

--no-retry makes it the strict client of docs/rollout.md: no retry at all (a request that
meets a closed connection fails), one keep-alive connection per worker that is only
replaced after the server closed it (Connection: close) or a failure. --post-every N makes
every Nth request of a worker a POST of a small JSON item to --post-path (a write whose
outcome a client cannot know when it fails); GET and POST are counted apart.

Standard library only and Python 3.9+, so it can be copied into a Molecule Docker host and
run there with the system python3. Only 127.0.0.1/localhost URLs are accepted: this is a
test tool for our own stacks, not a load tester for other machines.

    scripts/loadgen.py --url http://127.0.0.1:8080/version --duration 60 \
        --stop-file /tmp/lg.stop --out /tmp/lg.json &
    ... run the operation ...; touch /tmp/lg.stop; wait
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse

ALLOWED_HOSTS = ("127.0.0.1", "localhost")
MAX_DURATION = 900.0
MAX_WORKERS = 32


class Stats:
    """Thread-safe counters of one run."""

    def __init__(self, max_requests: int) -> None:
        self.lock = threading.Lock()
        self.max_requests = max_requests
        self.issued = 0
        self.failed = 0
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.stale_retries = 0
        self.by_method = {"GET": [0, 0], "POST": [0, 0]}  # method -> [total, failed]
        self.connections = 0

    def count_connection(self) -> None:
        with self.lock:
            self.connections += 1

    def count_stale_retry(self) -> None:
        with self.lock:
            self.stale_retries += 1

    def claim(self) -> bool:
        """Reserve one request of the budget; False when it is spent."""
        with self.lock:
            if self.issued >= self.max_requests:
                return False
            self.issued += 1
            return True

    def record(self, seconds: float, error: str | None, method: str = "GET") -> None:
        with self.lock:
            self.latencies.append(seconds)
            self.by_method[method][0] += 1
            if error is not None:
                self.failed += 1
                self.by_method[method][1] += 1
                if len(self.errors) < 10:
                    self.errors.append(f"{time.strftime('%H:%M:%S')} {method} {error}")


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


STALE = ("RemoteDisconnected", "ConnectionResetError", "BrokenPipeError")


def request(conn, parts, path, timeout, stats=None, method="GET", body=None):
    """One request; returns (error or None, connection to reuse or None)."""
    try:
        if conn is None:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
            if stats is not None:
                stats.count_connection()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        error = None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        if resp.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = None
        return error, conn
    except (OSError, http.client.HTTPException) as exc:
        if conn is not None:
            conn.close()
        return f"{type(exc).__name__}: {exc}", None


def worker(url, stats: Stats, deadline: float, stop: threading.Event, args) -> None:
    parts = urllib.parse.urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    conn, number = None, 0
    while not stop.is_set() and time.monotonic() < deadline and stats.claim():
        number += 1
        method, target, body = "GET", path, None
        if args.post_every and number % args.post_every == 0:
            method, target = "POST", args.post_path
            body = json.dumps({"name": f"loadgen-{number}", "value": number})
        started = time.monotonic()
        reused = conn is not None
        error, conn = request(conn, parts, target, args.timeout, stats, method, body)
        stale = error is not None and reused and error.startswith(STALE)
        if stale and method == "GET" and not args.no_retry:
            # The server closed an idle keep-alive connection just as the request went out
            # (nginx does this to idle connections on every reload). Like browsers and
            # urllib3, retry an idempotent GET once on a new connection; only that counts.
            stats.count_stale_retry()
            error, conn = request(None, parts, path, args.timeout, stats)
        stats.record(time.monotonic() - started, error, method)
        if args.interval:
            time.sleep(args.interval)
    if conn is not None:
        conn.close()


def run(args) -> dict:
    stats = Stats(args.max_requests)
    stop = threading.Event()
    started = time.monotonic()
    deadline = started + args.duration
    threads = [
        threading.Thread(target=worker, args=(args.url, stats, deadline, stop, args), daemon=True)
        for _ in range(args.workers)
    ]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        if args.stop_file and os.path.exists(args.stop_file):
            stop.set()
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    return {
        "url": args.url,
        "workers": args.workers,
        "seconds": round(elapsed, 2),
        "total": len(stats.latencies),
        "failed": stats.failed,
        "stale_keepalive_retries": stats.stale_retries,
        "retries": "none" if args.no_retry else "stale keep-alive GET once",
        "connections": stats.connections,
        "get": {"total": stats.by_method["GET"][0], "failed": stats.by_method["GET"][1]},
        "post": {"total": stats.by_method["POST"][0], "failed": stats.by_method["POST"][1]},
        "p50_ms": round(percentile(stats.latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(stats.latencies, 99) * 1000, 1),
        "errors": stats.errors,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080/version")
    parser.add_argument("--workers", type=int, default=4, help="concurrent workers (1-32)")
    parser.add_argument("--duration", type=float, default=60.0, help="at most this many seconds")
    parser.add_argument("--max-requests", type=int, default=200000, help="at most this many")
    parser.add_argument("--interval", type=float, default=0.01, help="pause per worker request")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout")
    parser.add_argument("--stop-file", help="stop early once this file exists")
    parser.add_argument("--out", help="also write the JSON summary to this file")
    parser.add_argument(
        "--no-retry", action="store_true", help="never retry, not even a stale keep-alive GET"
    )
    parser.add_argument(
        "--post-every", type=int, default=0, help="every Nth request of a worker is a POST"
    )
    parser.add_argument("--post-path", default="/items", help="path of the POSTs (same host)")
    args = parser.parse_args(argv)
    host = urllib.parse.urlsplit(args.url).hostname
    if host not in ALLOWED_HOSTS:
        parser.error(f"--url must point at {' or '.join(ALLOWED_HOSTS)}, not {host}")
    if not 1 <= args.workers <= MAX_WORKERS:
        parser.error(f"--workers must be between 1 and {MAX_WORKERS}")
    if not 0 < args.duration <= MAX_DURATION:
        parser.error(f"--duration must be between 0 and {MAX_DURATION:.0f} seconds")
    if args.post_every < 0 or not args.post_path.startswith("/"):
        parser.error("--post-every must be 0 or more and --post-path start with /")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    summary = run(args)
    text = json.dumps(summary)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        os.replace(tmp, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
