#!/usr/bin/env python3
"""Playbook overhead on a small database: playbooks/backup.yml against the guide's commands.

Needs the reference stack running (``bash scripts/deploy-local.sh``). Each round runs,
in alternating order:

  a. ``docker exec -i DB pg_dump -U app -Fc appdb > file`` (the one database)
  b. ``docker exec -i DB pg_dumpall -U app > file`` (the guide's own command)
  c. ``ansible-playbook playbooks/backup.yml`` (custom dump + globals + config snapshot,
     verification, manifest, retention, metrics)
  d. the same playbook with ``backup_config=false backup_retention=false
     backup_globals=false`` (the verified dump alone)

Backup sets and metrics go to a temporary directory (never the stack's backup directory);
it is removed at the end. Prints a Markdown table on stdout, progress on stderr.

Usage: .venv/bin/python scripts/bench_playbook.py [--repeat 5] [--profile]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DB_CONTAINER = "fastapi-monolith-db-1"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(argv: list[str], stdout=None, keep: dict | None = None) -> float:
    """Wall time of argv; with ``keep``, its stdout is stored in keep["stdout"]."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    started = time.monotonic()
    proc = subprocess.run(
        argv, cwd=ROOT, env=env, stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE,
        check=False, timeout=900,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    if keep is not None:
        keep["stdout"] = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        out = proc.stdout.decode(errors="replace")[-3000:] if stdout is None else ""
        raise SystemExit(f"{' '.join(argv[:3])} failed:\n{out}{proc.stderr.decode()[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds (median reported)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print profile_tasks' per-task times of the last whole-playbook run",
    )
    args = parser.parse_args()
    state = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Running}}", DB_CONTAINER],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if state.stdout.strip() != "true":
        raise SystemExit(
            f"container {DB_CONTAINER} is not running: deploy the reference stack first "
            "(bash scripts/deploy-local.sh)"
        )
    work = Path(tempfile.mkdtemp(prefix="opsauto-bench-playbook-"))
    plain_db = ["docker", "exec", "-i", DB_CONTAINER, "pg_dump", "-U", "app", "-Fc", "appdb"]
    plain_all = ["docker", "exec", "-i", DB_CONTAINER, "pg_dumpall", "-U", "app"]
    playbook = [str(VENV_BIN / "ansible-playbook"), "playbooks/backup.yml",
                "-e", f"stack_backup_dir={work / 'sets'}",
                "-e", f"backup_metrics_dir={work / 'metrics'}"]  # fmt: skip
    dump_only = ["-e", "backup_config=false", "-e", "backup_retention=false",
                 "-e", "backup_globals=false"]  # fmt: skip
    times: dict[str, list[float]] = {"db": [], "all": [], "playbook": [], "dump_only": []}
    last_playbook: dict[str, str] = {}

    def plain(key: str, argv: list[str], n: int) -> None:
        with (work / f"{key}-{n}").open("wb") as handle:
            times[key].append(timed(argv, stdout=handle))

    steps = {
        "db": lambda n: plain("db", plain_db, n),
        "all": lambda n: plain("all", plain_all, n),
        "playbook": lambda n: times["playbook"].append(
            timed([*playbook, "-e", f"backup_id=full-{n}"], keep=last_playbook)
        ),
        "dump_only": lambda n: times["dump_only"].append(
            timed([*playbook, *dump_only, "-e", f"backup_id=dump-{n}"])
        ),
    }
    try:
        for n in range(args.repeat):
            order = list(steps) if n % 2 == 0 else list(reversed(steps))
            for key in order:
                steps[key](n)
            log(f"round {n + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
        size = (work / "db-0").stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {key: round(statistics.median(values), 2) for key, values in times.items()}
    rows = [
        ("`pg_dump -Fc > file` (the application database)", med["db"], ""),
        ("`pg_dumpall > file` (the guide's command)", med["all"], ""),
        ("`ansible-playbook playbooks/backup.yml` (dump + globals + config, verified, "
         "manifest, retention, metrics)", med["playbook"],
         f"+{med['playbook'] - med['all']:.2f} s over `pg_dumpall`"),
        ("the same playbook, verified dump only (no config, retention, globals)",
         med["dump_only"], f"+{med['dump_only'] - med['db']:.2f} s over `pg_dump -Fc`"),
    ]  # fmt: skip
    print(f"Database dump {size / 1024:.0f} KiB (custom format); medians of {args.repeat} rounds")
    print()
    print("| command | wall (s) | overhead |")
    print("| --- | ---: | --- |")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds} | {note} |")
    if args.profile:
        print()
        print("Per-task times of the last whole-playbook run (profile_tasks):")
        print()
        print(profile_lines(last_playbook.get("stdout", "")))
    return 0


def profile_lines(output: str) -> str:
    """profile_tasks' summary (the lines after the last PLAY RECAP that end in seconds)."""
    recap = output.rsplit("PLAY RECAP", 1)[-1]
    lines = [line.rstrip() for line in recap.splitlines() if line.rstrip().endswith("s")]
    return "\n".join(line for line in lines if " -" in line)


if __name__ == "__main__":
    sys.exit(main())
