#!/usr/bin/env python3
"""Benchmark: failed requests during rollout, restart, scale and rollback, ours vs the guide's.

Deploys the reference stack as its own compose project (own name, own 127.0.0.1 ports; the
demo stack is never touched), then runs each operation while scripts/loadgen.py sends
requests through nginx, and counts the failed ones. In the same run, the operational
guide's plain commands are measured the same way. Prints a Markdown table (paste it into
docs/benchmarks.md) and writes the raw figures as JSON.

    .venv/bin/python scripts/bench_rollout.py [--json bench-rollout.json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PROJECT = "opsauto-bench-rollout"
HTTP_PORT = 18580
PROM_PORT = 19580
URL = f"http://127.0.0.1:{HTTP_PORT}/version"
SETTLE = 1.0  # seconds of load before and after each operation


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PATH"] = f"{VENV_BIN}{os.pathsep}{out.get('PATH', '')}"
    out["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    out["ANSIBLE_FORCE_COLOR"] = "0"
    return out


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.project_dir = workdir / PROJECT
        self.vars = {
            "stack_project_name": PROJECT,
            "stack_project_dir": str(self.project_dir),
            "stack_http_port": HTTP_PORT,
            "stack_prometheus_port": PROM_PORT,
            "stack_db_password": "bench-password-1",
            "deploy_backend_replicas": 2,
            "deploy_health_timeout": 90,
        }
        self.rows: list[dict] = []
        self.profile = False  # print each playbook's profile_tasks summary to stderr

    # ------------------------------------------------------------------ operations
    def playbook(self, name: str, **extravars) -> None:
        variables = dict(self.vars, **extravars)
        varfile = self.workdir / "vars.json"
        varfile.write_text(json.dumps(variables))
        proc = subprocess.run(
            ["ansible-playbook", f"playbooks/{name}.yml", "-e", f"@{varfile}"],
            cwd=ROOT,
            env=env(),
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{name} {extravars} failed:\n{proc.stdout[-3000:]}")
        if self.profile:
            # the summary of the profile_tasks callback (ansible.cfg) follows the PLAY RECAP
            recap = proc.stdout.rfind("PLAY RECAP")
            report = proc.stdout.find("TASK [rollback : Report the rollback]")
            timeline = proc.stdout[report:recap] if report >= 0 else ""  # the switch's events
            print(f"--- {name} {extravars}\n{timeline}{proc.stdout[recap:]}", file=sys.stderr)

    def compose(self, *argv: str) -> None:
        subprocess.run(
            ["docker", "compose", "--project-directory", str(self.project_dir), "-p", PROJECT]
            + list(argv),
            env=env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )

    def reload_nginx(self) -> None:
        """After a guide command that gave the backend new addresses, nginx (which resolves
        them when it loads) must be reloaded; done between measurements, not inside them."""
        self.compose(
            "exec", "-T", "nginx", "nginx", "-c", "/etc/nginx/opsauto/nginx.conf", "-s", "reload"
        )
        time.sleep(2)

    def set_guide_tag(self, tag: str) -> None:
        """The guide's rollback names the image by hand: edit the tag in compose.yaml."""
        compose = self.project_dir / "compose.yaml"
        lines = [
            f"    image: fastapi-monolith/backend:{tag}"
            if line.strip().startswith("image: fastapi-monolith/backend:")
            else line
            for line in compose.read_text().splitlines()
        ]
        compose.write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------------ measuring
    def measure(self, label: str, way: str, action, target_version: str | None = None) -> dict:
        stop = self.workdir / "loadgen.stop"
        out = self.workdir / "loadgen.json"
        for path in (stop, out):
            path.unlink(missing_ok=True)
        load = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "scripts" / "loadgen.py"),
                "--url",
                URL,
                "--workers",
                "4",
                "--duration",
                "600",
                "--stop-file",
                str(stop),
                "--out",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(SETTLE)
        load_avg = round(os.getloadavg()[0], 1)
        serving = {}
        probe = None
        started = time.monotonic()
        if target_version:
            probe = threading.Thread(
                target=wait_serving, args=(target_version, started, serving), daemon=True
            )
            probe.start()
        error = None
        try:
            action()
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            error = str(exc)[-500:]
        duration = time.monotonic() - started
        if probe is not None:
            probe.join(timeout=120)
        time.sleep(SETTLE)
        stop.touch()
        load.wait(timeout=60)
        summary = json.loads(out.read_text())
        row = {
            "operation": label,
            "way": way,
            "seconds": round(duration, 1),
            "requests": summary["total"],
            "failed": summary["failed"],
            "p99_ms": summary["p99_ms"],
            "time_to_serving": serving.get("seconds"),
            "load_avg": load_avg,
            "errors": summary["errors"][:3],
            "error": error,
        }
        self.rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row


def wait_serving(version: str, started: float, result: dict, timeout: float = 120) -> None:
    """Record when nginx first answers 5 requests in a row with the target version."""
    streak = 0
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(URL, timeout=2) as resp:
                ok = json.loads(resp.read()).get("version") == version
        except (OSError, ValueError):
            ok = False
        streak = streak + 1 if ok else 0
        if streak == 1:
            first = time.monotonic()
        if streak >= 5:
            result["seconds"] = round(first - started, 1)
            return
        time.sleep(0.1)


def table(rows: list[dict]) -> str:
    lines = [
        "| operation | way | failed / requests | duration (s) | time to serving target (s) "
        "| p99 (ms) | load avg |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        serving = "" if r["time_to_serving"] is None else r["time_to_serving"]
        failed = f"**{r['failed']}** / {r['requests']}"
        note = f" (error: {r['error'][:60]})" if r["error"] else ""
        lines.append(
            f"| {r['operation']} | {r['way']}{note} | {failed} | {r['seconds']} | {serving} "
            f"| {r['p99_ms']} | {r.get('load_avg', '')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the raw rows to this file")
    parser.add_argument("--keep", action="store_true", help="leave the compose project running")
    parser.add_argument(
        "--only-rollback",
        action="store_true",
        help="measure only our rollback (and the deploy it needs), e.g. on a quiet machine",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print each playbook's per-task timing (profile_tasks) to stderr",
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="opsauto-bench-"))
    bench = Bench(workdir)
    bench.profile = args.profile
    m = bench.measure
    try:
        bench.playbook("deploy", deploy_backend_tag="1.0.0")
        if args.only_rollback:
            bench.playbook("deploy", deploy_backend_tag="1.1.0")
        else:
            # ours: every operation through the project's playbooks
            m(
                "deploy 1.0.0 -> 1.1.0 (2 replicas)",
                "ours: deploy.yml",
                lambda: bench.playbook("deploy", deploy_backend_tag="1.1.0"),
                "1.1.0",
            )
            m(
                "rolling restart of the backend",
                "ours: restart.yml rolling",
                lambda: bench.playbook(
                    "restart", restart_services=["backend"], restart_mode="rolling"
                ),
            )
            m(
                "scale up 2 -> 4",
                "ours: scale.yml",
                lambda: bench.playbook("scale", scale_replicas={"backend": 4}),
            )
            m(
                "scale down 4 -> 2",
                "ours: scale.yml",
                lambda: bench.playbook("scale", scale_replicas={"backend": 2}),
            )
        m(
            "rollback 1.1.0 -> 1.0.0",
            "ours: rollback.yml (ledger)",
            lambda: bench.playbook("rollback"),
            "1.0.0",
        )
        if args.only_rollback:
            return 0
        # the guide's plain commands, on the same stack; nginx is reloaded between them so
        # that each starts from a serving stack
        m(
            "restart of the backend",
            "guide: docker compose restart backend",
            lambda: bench.compose("restart", "backend"),
        )
        bench.reload_nginx()
        m(
            "scale up 2 -> 3",
            "guide: docker compose up -d --scale backend=3",
            lambda: bench.compose("up", "-d", "--scale", "backend=3"),
        )
        bench.reload_nginx()
        m(
            "force recreate of the backend",
            "guide: docker compose up -d --force-recreate backend",
            lambda: bench.compose("up", "-d", "--force-recreate", "backend"),
        )
        bench.reload_nginx()

        def guide_rollback():
            bench.compose("stop", "backend")
            bench.compose("rm", "-f", "backend")
            bench.set_guide_tag("1.1.0")
            bench.compose("up", "-d", "--no-deps", "backend")
            # the new containers have new addresses: nginx must re-resolve them
            bench.reload_nginx()

        m(
            "rollback 1.0.0 -> 1.1.0",
            "guide: stop + rm + run (+ nginx reload)",
            guide_rollback,
            "1.1.0",
        )
    finally:
        print(table(bench.rows))
        if args.json:
            Path(args.json).write_text(json.dumps(bench.rows, indent=2) + "\n")
        if not args.keep:
            subprocess.run(
                [
                    "docker",
                    "compose",
                    "-p",
                    PROJECT,
                    "down",
                    "--volumes",
                    "--remove-orphans",
                    "-t",
                    "5",
                ],
                capture_output=True,
                check=False,
            )
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
