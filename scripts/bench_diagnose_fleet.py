#!/usr/bin/env python3
"""Diagnosis of a fleet: playbooks/diagnose.yml on 1 and 4 Docker hosts, forks 1 and 4.

Uses the Molecule `fleet` scenario's four docker-in-docker hosts, each running its own
reference stack (created and prepared here unless --keep-hosts finds them running; removed
at the end unless --keep-hosts). Each round runs, in this order:

  a. the guide's troubleshooting commands on each of the 4 hosts in a row, typed as one
     script per host (docker ps, docker logs --since 15m of each container, docker stats
     --no-stream, df -h, curl /health, pg_isready, a login from the backend, Prometheus'
     targets), without reading or judging the output: what an operator would type
  b. ansible-playbook playbooks/diagnose.yml --limit <one host> -f 1
  c. the same on the 4 hosts with -f 1 (one host after another)
  d. the same on the 4 hosts with -f 4 (Ansible's default is 5)

Reports go to a temporary directory. Prints a Markdown table (median, min, max wall time;
peak RSS of the largest process of the run) on stdout, progress on stderr.

Usage: .venv/bin/python scripts/bench_diagnose_fleet.py [--repeat 3] [--keep-hosts]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
HOSTS = [f"opsauto-dockerhost-fleet-{n}" for n in range(1, 5)]
EPHEMERAL = Path.home() / ".cache" / "molecule" / ROOT.name / "fleet"
GUIDE = (
    "docker ps -a; for c in $(docker ps -aq); do docker logs --since 15m $c >/dev/null 2>&1; "
    "done; docker stats --no-stream; df -h; df -i /var/lib/docker; "
    "curl -s -m 5 http://127.0.0.1:8080/health; "
    "docker exec fastapi-monolith-db-1 pg_isready -U app; "
    "docker exec fastapi-monolith-backend-1 python3 -c "
    '\'import os, psycopg2; psycopg2.connect(host=os.environ["DB_HOST"], '
    'dbname=os.environ["DB_NAME"], user=os.environ["DB_USER"], '
    'password=os.environ["DB_PASSWORD"]).close()\'; '
    "curl -s -m 5 http://127.0.0.1:9090/api/v1/targets"
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def env() -> dict:
    return dict(
        os.environ,
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        MOLECULE_EPHEMERAL_DIRECTORY=str(EPHEMERAL),
        ANSIBLE_PIPELINING="True",
        ANSIBLE_PYTHON_INTERPRETER="/usr/bin/python3",
    )


def run(argv: list[str], timeout: float = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        argv, cwd=ROOT, env=env(), capture_output=True, text=True, check=False, timeout=timeout
    )
    if proc.returncode != 0:
        tail = proc.stdout[-3000:] + proc.stderr[-2000:]
        raise SystemExit(f"{' '.join(argv[:4])} failed:\n{tail}")
    return proc


def timed(argv: list[str]) -> tuple[float, int]:
    """Wall time of argv and the peak RSS (MiB) of the largest process it ran.

    RUSAGE_CHILDREN's ru_maxrss is the largest of all waited-for descendants so far, so each
    run is measured in its own forked child."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run argv, report wall time and its children's peak RSS
        os.close(read)
        started = time.monotonic()
        proc = subprocess.run(argv, cwd=ROOT, env=env(), capture_output=True, text=True)
        elapsed = time.monotonic() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
        tail = "" if proc.returncode == 0 else (proc.stdout[-3000:] + proc.stderr[-2000:])
        os.write(write, json.dumps([proc.returncode, elapsed, peak, tail]).encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.waitpid(pid, 0)
    rc, elapsed, peak, tail = json.loads(b"".join(chunks))
    if rc != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed (rc {rc}):\n{tail}")
    return elapsed, peak


def hosts_running() -> bool:
    proc = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Running}}", *HOSTS],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return proc.returncode == 0 and proc.stdout.split() == ["true"] * len(HOSTS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds (median reported)")
    parser.add_argument(
        "--keep-hosts", action="store_true",
        help="use the fleet hosts when they run, and leave them running at the end",
    )  # fmt: skip
    args = parser.parse_args()
    if not (args.keep_hosts and hosts_running()):
        log("creating and preparing the 4 fleet hosts (molecule create/prepare -s fleet)")
        started = time.monotonic()
        run(["molecule", "destroy", "-s", "fleet"])
        run(["molecule", "create", "-s", "fleet"])
        run(["molecule", "prepare", "-s", "fleet", "--force"])
        log(f"fleet ready in {time.monotonic() - started:.0f} s")
    reports = Path(tempfile.mkdtemp(prefix="opsauto-bench-fleet-"))
    playbook = [
        str(VENV_BIN / "ansible-playbook"), "-i", str(EPHEMERAL / "inventory"),
        "playbooks/diagnose.yml", "-e", f"diagnose_report_dir={reports}",
        "-e", "diagnose_fail_on=fail",
    ]  # fmt: skip
    by_hand = " ".join(f"docker exec {h} bash -c {shlex.quote(GUIDE)};" for h in HOSTS)
    guide = ["bash", "-c", by_hand]
    cases = {
        "guide's commands by hand, 4 hosts one after another": guide,
        "diagnose.yml, 1 host": [*playbook, "--limit", HOSTS[0], "-f", "1"],
        "diagnose.yml, 4 hosts, forks 1": [*playbook, "-f", "1"],
        "diagnose.yml, 4 hosts, forks 4": [*playbook, "-f", "4"],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    peaks: dict[str, int] = dict.fromkeys(cases, 0)
    collected: list[float] = []
    try:
        for round_ in range(1, args.repeat + 1):
            for name, argv in cases.items():
                elapsed, peak = timed(argv)
                times[name].append(elapsed)
                peaks[name] = max(peaks[name], peak)
                log(f"round {round_}: {name}: {elapsed:.2f} s, peak {peak} MiB")
            fleet = json.loads((reports / "fleet.json").read_text())
            assert sorted(fleet["hosts"]) == HOSTS, fleet["hosts"]
            collected += [r["collected_seconds"] for r in fleet["reports"]]
    finally:
        shutil.rmtree(reports, ignore_errors=True)
        if not args.keep_hosts:
            log("removing the fleet hosts")
            run(["molecule", "destroy", "-s", "fleet"])
    base = statistics.median(times["diagnose.yml, 1 host"])
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| what | median | min | max | vs 1 host | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, values in times.items():
        med = statistics.median(values)
        print(
            f"| {name} | {med:.2f} s | {min(values):.2f} s | {max(values):.2f} s | "
            f"{med / base:.2f}x | {peaks[name]} MiB |"
        )
    print(
        f"\ncollection inside the module per host (4-host runs): {min(collected):.2f} to "
        f"{max(collected):.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
