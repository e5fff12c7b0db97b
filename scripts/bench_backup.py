#!/usr/bin/env python3
"""Benchmark the pg_backup / pg_backup_restore modules against the plain commands.

Starts its own PostgreSQL container (``opsauto-bench-db``, nothing published) from
``fastapi-monolith/postgres:15``, fills a database with ``pgbench -i -s SCALE``
(scale 70 is about 1 GB), then times each case REPEAT times and reports the median:

  a. ``docker exec -i db pg_dump -Fc ... > file``  vs  pg_backup (custom format)
  b. ``docker exec -i db pg_dumpall ... > file``   vs  pg_backup mode=cluster
  c. pg_backup format=directory jobs=1 and jobs=2, and pg_backup compress_level=1
     (compared with the plain pg_dump -Fc, which compresses at level 6)
  d. ``docker exec -i db pg_restore -d newdb < file`` (after createdb)  vs
     pg_backup_restore mode=replace (sha256 + pg_restore --list + restore + exact row
     count check + swap)
  e. peak RSS of the Python process that runs the module (VmHWM polled from /proc),
     at scale 1 and at SCALE

Module times are wall times of the whole ``ansible localhost -m ...`` command, so they
include Ansible's start-up (measured separately with the ping module and printed); the
"whole module run" rows take the module's own wall time from its result
(``elapsed_seconds`` of pg_backup, ``duration_seconds`` of pg_backup_restore, both from
the module's start to its end, Ansible's start-up excluded).
Before the first case the server is checkpointed and every table read once (a warm-up
``pg_dumpall``, not counted); rounds alternate whether the plain command or the module
goes first; peak RSS is taken in separate runs (polling /proc costs CPU on 2 cores).
Prints a Markdown table on stdout; progress goes to stderr.  The container and the work
directory are removed at the end.

``--filler random`` then overwrites ``pgbench_accounts.filler`` with random hex text
(VACUUM FULL afterwards): pgbench's blank filler compresses about 50:1, so its dumps are
short and fixed costs weigh more than on real data, which compresses far less.

Usage: .venv/bin/python scripts/bench_backup.py [--scale 70] [--repeat 3] [--filler random]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CONTAINER = "opsauto-bench-db"
IMAGE = "fastapi-monolith/postgres:15"
CASES = ("custom", "cluster", "directory", "restore", "memory")
SOCKET = ["-h", "/var/run/postgresql", "-U", "postgres"]
READY_TIMEOUT = 120


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def docker(*args: str, timeout: float = 3600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", *args], capture_output=True, timeout=timeout, check=False, **kwargs
    )


def must(proc: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else ""
        raise SystemExit(f"{what} failed (exit {proc.returncode}): {err[-2000:]}")
    return proc


def psql(database: str, sql: str) -> str:
    proc = must(
        docker("exec", "-i", CONTAINER, "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
               *SOCKET, "-d", database, input=sql.encode()),
        f"psql {sql[:60]!r}",
    )  # fmt: skip
    return proc.stdout.decode().strip()


# --------------------------------------------------------------------------- measuring


class PeakRss:
    """Poll /proc for the peak RSS (VmHWM) of the module's Python process under ``pid``.

    The module runs as a fresh interpreter (AnsiballZ) started by the Ansible worker; it is
    recognised as a descendant Python process whose command line does not name the
    ``ansible`` script.  The largest VmHWM seen, in MiB, is kept.
    """

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self._module_pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak_mib(self) -> float:
        return round(self.peak_kib / 1024, 1)

    def _children(self) -> dict[int, list[int]]:
        tree: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
        return tree

    def _descendants(self) -> list[int]:
        tree = self._children()
        found, todo = [], [self.pid]
        for _ in range(10000):  # bounded walk
            if not todo:
                break
            pid = todo.pop()
            for child in tree.get(pid, []):
                found.append(child)
                todo.append(child)
        return found

    def _peak_of(self, pid: int) -> bool:
        """Fold ``pid``'s VmHWM into the peak; False if it is not the module's process."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"python" not in os.path.basename(cmdline[0]):
                return False
            if any(b"ansible" in os.path.basename(arg) for arg in cmdline[1:3]):
                return False  # the ansible CLI and its forked workers
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))
                    return True
        except (OSError, ValueError, IndexError):
            pass
        return False

    def _sample(self) -> None:
        # Once found, only the module's process is read (cheap); until then the
        # process tree is walked.
        if self._module_pid is not None and self._peak_of(self._module_pid):
            return
        self._module_pid = None
        for pid in self._descendants():
            if self._peak_of(pid):
                self._module_pid = pid
                return

    def _run(self) -> None:
        deadline = time.monotonic() + 6 * 3600
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._sample()
            time.sleep(self.interval)


def timed(argv: list[str], stdin=None, stdout=None, env=None, cwd=None) -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run(
        argv, stdin=stdin, stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, cwd=cwd, check=False, timeout=6 * 3600,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    out = proc.stdout.decode(errors="replace") if stdout is None else ""
    return elapsed, out


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
    )
    return env


def run_module(name: str, args: dict, rss: bool = False) -> tuple[float, float | None, dict]:
    """(wall seconds, module peak RSS MiB, result) of one ansible ad-hoc module run.

    The RSS poller reads /proc every 50 ms; on 2 cores that takes CPU from the very
    dump being timed, so timed runs go without it (``rss=False``, RSS None) and the
    peak RSS comes from separate runs.
    """
    argv = [str(VENV_BIN / "ansible"), "localhost", "-m", name,
            "-e", f"ansible_python_interpreter={sys.executable}"]  # fmt: skip
    if args:
        argv += ["-a", json.dumps(args)]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    with PeakRss(proc.pid) if rss else contextlib.nullcontext() as poller:
        out, err = proc.communicate(timeout=6 * 3600)
    elapsed = time.monotonic() - started
    text = out.decode(errors="replace")
    try:
        data, _ = json.JSONDecoder().raw_decode(text[text.index("{") :])
        result = data["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        raise SystemExit(f"no result from {name}: {text[-2000:]} {err.decode()[-2000:]}") from None
    if result.get("failed"):
        raise SystemExit(f"{name} failed: {result.get('msg')}")
    return elapsed, (poller.peak_mib if poller else None), result


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def paired(module: list[float], plain: list[float]) -> float:
    """Median of the per-round ratios: each round ran both sides back to back, so a slow
    spell of the machine weighs on both sides of a ratio instead of on one median."""
    return round(statistics.median(m / p for m, p in zip(module, plain, strict=True)), 2)


# --------------------------------------------------------------------------- setup


def start_container() -> None:
    if docker("container", "inspect", CONTAINER).returncode == 0:
        raise SystemExit(
            f"container {CONTAINER} already exists: another benchmark may be running; remove it "
            f"with `docker rm -f -v {CONTAINER}` if it is a leftover of yours"
        )
    must(
        docker("run", "-d", "--name", CONTAINER, "--shm-size", "256m",
               "-e", "POSTGRES_USER=postgres", "-e", "POSTGRES_PASSWORD=bench", IMAGE),
        "docker run",
    )  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if (
            docker("exec", CONTAINER, "pg_isready", "-q", "-h", "127.0.0.1", timeout=10).returncode
            == 0
        ):
            return
        time.sleep(0.5)
    raise SystemExit(f"{CONTAINER} did not become ready within {READY_TIMEOUT}s")


RANDOM_FILLER_SQL = """
UPDATE pgbench_accounts
   SET filler = md5(random()::text) || md5(random()::text) || left(md5(random()::text), 20);
VACUUM FULL ANALYZE pgbench_accounts;
"""


def pgbench_init(database: str, scale: int) -> float:
    psql("postgres", f"CREATE DATABASE {database};")
    started = time.monotonic()
    must(
        docker("exec", CONTAINER, "pgbench", "-i", "-q", "-s", str(scale), *SOCKET, database),
        "pgbench -i",
    )
    return time.monotonic() - started


# --------------------------------------------------------------------------- cases


def backup_peak_rss(work: Path, args: dict, what: str) -> float | None:
    """Peak RSS of pg_backup in a run of its own (the backup is removed afterwards)."""
    _, rss, _ = run_module(
        "pg_backup", {**args, "dest_dir": str(work / "rss"), "backup_id": "rss"}, rss=True
    )
    shutil.rmtree(work / "rss")
    log(f"{what}: separate run for the peak RSS: {rss} MiB")
    return rss


def compare_dumps(
    work: Path, repeat: int, what: str, plain_argv: list[str], module_args: dict, keep_last=False
) -> dict:
    """The plain command (then ``sync FILE``) and pg_backup, ``repeat`` rounds each.

    Rounds alternate which of the two goes first, so that a trend on the machine (a
    checkpoint, the page cache filling) does not favour one side.
    """
    res: dict = {"plain": [], "synced": [], "module": [], "inner": [], "phases": [], "path": None}

    def plain(n: int) -> None:
        out = work / f"plain-{n}"
        with out.open("wb") as handle:
            seconds, _ = timed(plain_argv, stdout=handle)
        res["plain"].append(seconds)
        res["synced"].append(seconds + timed(["sync", str(out)])[0])
        out.unlink()
        log(f"{what}: plain run {n + 1}: {seconds:.1f}s (+ fsync {res['synced'][-1]:.1f}s)")

    def module(n: int) -> None:
        dest = work / what.split()[-1]  # one directory per case
        seconds, _, result = run_module(
            "pg_backup", {**module_args, "dest_dir": str(dest), "backup_id": f"r{n}"}
        )
        res["module"].append(seconds)
        res["inner"].append(result["elapsed_seconds"])  # the whole module run
        res["phases"].append(result["manifest"].get("timings") or {})
        res["path"] = result["path"]
        log(f"{what}: pg_backup run {n + 1}: {seconds:.1f}s")
        if not keep_last or n < repeat - 1:
            shutil.rmtree(dest / f"r{n}")

    for n in range(repeat):
        for step in (plain, module) if n % 2 == 0 else (module, plain):
            step(n)
    return res


def drop_previous(result: dict) -> None:
    """Drop the database a replace restore kept aside (outside the timed run)."""
    if result.get("previous_database"):
        psql("postgres", f'DROP DATABASE "{result["previous_database"]}" WITH (FORCE);')


def settle() -> None:
    """Checkpoint, then read every table once, so no run pays for first reads or hint bits."""
    psql("postgres", "CHECKPOINT;")
    seconds, _ = timed(["docker", "exec", "-i", CONTAINER, "pg_dumpall", *SOCKET])
    psql("postgres", "CHECKPOINT;")
    log(f"warm-up pg_dumpall (not counted): {seconds:.1f}s")


def bench(args: argparse.Namespace, work: Path) -> list[str]:
    repeat = args.repeat
    # (case, plain s, module s, peak RSS MiB, note, ratio or None for module / plain)
    rows: list[tuple[str, float | None, float | None, float | None, str, float | None]] = []
    common = {"container": CONTAINER, "login_user": "postgres"}

    log("measuring Ansible start-up (ping module)")
    ping = median([run_module("ansible.builtin.ping", {})[0] for _ in range(repeat)])

    cases = set(args.cases)
    last_dump = None
    if "custom" in cases:
        last_dump = bench_custom(work, repeat, common, rows)
    if "cluster" in cases:
        bench_cluster(work, repeat, common, rows)
    if "directory" in cases:
        bench_directory(work, repeat, common, rows)
    if "restore" in cases:
        if last_dump is None:  # the custom dump to restore, taken once (not timed)
            _, _, taken = run_module(
                "pg_backup",
                {**common, "database": "bench", "dest_dir": str(work / "r"), "backup_id": "r0"},
            )
            last_dump = taken["path"]
        bench_restore(repeat, common, rows, last_dump)
    if "memory" in cases:
        bench_memory(work, repeat, common, rows)
    return report(rows, ping, repeat)


def bench_custom(work: Path, repeat: int, common: dict, rows: list) -> str:
    """a. custom format; returns the path of the last dump (restored by case d)."""
    fc = compare_dumps(
        work,
        repeat,
        "a. custom",
        ["docker", "exec", "-i", CONTAINER, "pg_dump", "-Fc", *SOCKET, "bench"],
        {**common, "database": "bench"},
        keep_last=True,
    )
    last_dump = fc["path"]
    rss_fc = backup_peak_rss(work, {**common, "database": "bench"}, "a. custom")
    size_mib = round(Path(last_dump).stat().st_size / 2**20, 1)
    rows.append(("pg_dump -Fc vs pg_backup (custom)", median(fc["plain"]), median(fc["module"]),
                 rss_fc, f"dump {size_mib} MiB; whole ansible command",
                 paired(fc["module"], fc["plain"])))  # fmt: skip
    dump_s = median([p.get("dump_seconds", 0) for p in fc["phases"]])
    verify_s = median([p.get("verify_seconds", 0) for p in fc["phases"]])
    rows.append(("pg_dump -Fc + fsync vs pg_backup (custom), whole module run",
                 median(fc["synced"]), median(fc["inner"]), None,
                 f"under the lock: dump {dump_s} s, verify {verify_s} s",
                 paired(fc["inner"], fc["synced"])))  # fmt: skip
    rows.append((f"pg_backup peak RSS at this scale (dump {size_mib} MiB)", None, None,
                 rss_fc, "", None))  # fmt: skip
    return last_dump


def bench_cluster(work: Path, repeat: int, common: dict, rows: list) -> None:
    """b. cluster: pg_dumpall against mode=cluster."""
    every = compare_dumps(
        work,
        repeat,
        "b. cluster",
        ["docker", "exec", "-i", CONTAINER, "pg_dumpall", *SOCKET],
        {**common, "mode": "cluster"},
    )
    rss_all = backup_peak_rss(work, {**common, "mode": "cluster"}, "b. cluster")
    rows.append(("pg_dumpall vs pg_backup mode=cluster", median(every["plain"]),
                 median(every["module"]), rss_all,
                 "plain SQL, uncompressed; whole ansible command",
                 paired(every["module"], every["plain"])))  # fmt: skip
    rows.append(("pg_dumpall + fsync vs pg_backup mode=cluster, whole module run",
                 median(every["synced"]), median(every["inner"]), None, "",
                 paired(every["inner"], every["synced"])))  # fmt: skip


def bench_directory(work: Path, repeat: int, common: dict, rows: list) -> None:
    """c. directory format with 1 and 2 jobs, and c2. compress_level=1 (vs plain -Fc)."""
    plain_fc = next((row[1] for row in rows if row[0].startswith("pg_dump -Fc vs")), None)
    for jobs in (1, 2):
        times = []
        for n in range(repeat):
            seconds, _, _ = run_module(
                "pg_backup",
                {**common, "database": "bench", "format": "directory", "jobs": jobs,
                 "dest_dir": str(work / "d"), "backup_id": f"d{jobs}-{n}"},
            )  # fmt: skip
            times.append(seconds)
            shutil.rmtree(work / "d" / f"d{jobs}-{n}")
            log(f"c. pg_backup directory -j {jobs} run {n + 1}: {seconds:.1f}s")
        rows.append((f"pg_backup format=directory jobs={jobs} (vs plain pg_dump -Fc)",
                     plain_fc, median(times), None, "", None))  # fmt: skip

    # c2. pg_dump's compression level (compress_level=1 against pg_dump's default, 6)
    times, sizes = [], []
    for n in range(repeat):
        seconds, _, result = run_module(
            "pg_backup",
            {**common, "database": "bench", "compress_level": 1,
             "dest_dir": str(work / "z"), "backup_id": f"z{n}"},
        )  # fmt: skip
        times.append(seconds)
        sizes.append(result["size"])
        shutil.rmtree(work / "z" / f"z{n}")
        log(f"c. pg_backup compress_level=1 run {n + 1}: {seconds:.1f}s")
    rows.append(("pg_backup compress_level=1 (vs plain pg_dump -Fc, level 6)",
                 plain_fc, median(times), None,
                 f"dump {round(sizes[-1] / 2**20, 1)} MiB; whole ansible command",
                 None))  # fmt: skip


def bench_restore(repeat: int, common: dict, rows: list, last_dump: str) -> None:
    """d. plain pg_restore into a new database against pg_backup_restore mode=replace."""
    plain_rs, module_rs, inner_rs, rss_rs, phases = [], [], [], [], []
    # keep_previous is the module's (and role's) default: the replaced database is renamed
    # aside; it is dropped after the timed run, as the plain side's database is (DROP
    # DATABASE forces a checkpoint, which neither side is timed for).
    restore_args = {**common, "path": last_dump, "database": "bench_live", "mode": "replace"}
    psql("postgres", "CREATE DATABASE bench_live;")  # the live database to replace

    def plain_restore(n: int) -> None:
        psql("postgres", "DROP DATABASE IF EXISTS bench_plain WITH (FORCE);")
        started = time.monotonic()
        psql("postgres", "CREATE DATABASE bench_plain;")
        with open(last_dump, "rb") as handle:
            timed(["docker", "exec", "-i", CONTAINER, "pg_restore", *SOCKET, "-d", "bench_plain"],
                  stdin=handle)  # fmt: skip
        plain_rs.append(time.monotonic() - started)
        log(f"d. plain pg_restore run {n + 1}: {plain_rs[-1]:.1f}s")
        psql("postgres", "DROP DATABASE IF EXISTS bench_plain WITH (FORCE);")

    def module_restore(n: int) -> None:
        # without the marker of this backup, so that the restore is not skipped as done
        psql("postgres", "COMMENT ON DATABASE bench_live IS NULL;")
        seconds, _, result = run_module("pg_backup_restore", restore_args)
        module_rs.append(seconds)
        inner_rs.append(result["duration_seconds"])
        phases.append(result.get("timings") or {})
        log(f"d. pg_backup_restore replace run {n + 1}: {seconds:.1f}s "
            f"({result['verification']['rows']})")  # fmt: skip
        drop_previous(result)

    for n in range(repeat):  # alternating which goes first, as in compare_dumps
        for step in (
            (plain_restore, module_restore) if n % 2 == 0 else (module_restore, plain_restore)
        ):
            step(n)
    psql("postgres", "COMMENT ON DATABASE bench_live IS NULL;")
    _, rss, result = run_module("pg_backup_restore", restore_args, rss=True)
    drop_previous(result)
    rss_rs.append(rss)
    log(f"d. pg_backup_restore replace, separate run for the peak RSS: {rss} MiB")
    names = sorted({name for phase in phases for name in phase})
    phase_note = ", ".join(
        f"{name.removesuffix('_seconds')} {median([p.get(name, 0) for p in phases])} s"
        for name in names
    )
    rows.append(("pg_restore (new db) vs pg_backup_restore mode=replace + verify",
                 median(plain_rs), median(module_rs), max(rss_rs),
                 "module: sha256, pg_restore --list, row counts, swap",
                 paired(module_rs, plain_rs)))  # fmt: skip
    rows.append(("pg_restore (new db) vs pg_backup_restore mode=replace + verify, whole module run",
                 median(plain_rs), median(inner_rs), None, phase_note,
                 paired(inner_rs, plain_rs)))  # fmt: skip


def bench_memory(work: Path, repeat: int, common: dict, rows: list) -> None:
    """e. peak RSS of pg_backup on a tiny database (scale 1)."""
    pgbench_init("bench1", 1)
    rss_small = []
    for n in range(repeat):
        _, rss, result = run_module(
            "pg_backup",
            {**common, "database": "bench1", "dest_dir": str(work / "s"), "backup_id": f"s{n}"},
            rss=True,
        )
        rss_small.append(rss)
    small_mib = round(result["size"] / 2**20, 1)
    rows.append((f"pg_backup peak RSS at scale 1 (dump {small_mib} MiB)", None, None,
                 max(rss_small), "", None))  # fmt: skip


def report(rows: list, ping: float, repeat: int) -> list[str]:
    lines = [
        "| case | plain command (s) | module (s) | ratio | module peak RSS (MiB) | note |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, plain, module, rss, note, pair_ratio in rows:
        ratio = f"{module / plain:.2f}" if plain and module else ""
        if pair_ratio is not None:
            ratio = f"{pair_ratio:.2f}"
        lines.append(
            f"| {name} | {plain if plain is not None else ''} | "
            f"{module if module is not None else ''} | {ratio} | "
            f"{rss if rss is not None else ''} | {note} |"
        )
    lines.append("")
    lines.append(
        f"Medians of {repeat} runs. Module times are whole `ansible localhost -m ...` runs; "
        f"Ansible start-up alone (ping module) takes {ping} s. Peak RSS comes from separate "
        "runs (the /proc poller is not running while times are taken). Where both sides ran "
        "in the same rounds, the ratio is the median of the per-round ratios; otherwise it is "
        "module median / plain median."
    )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale (70 is ~1 GB)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median)")
    parser.add_argument("--workdir", default=None, help="where dumps go (default: a temp dir)")
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=CASES,
        default=list(CASES),
        help="cases to run (default: all); restore alone takes one untimed dump first",
    )
    parser.add_argument(
        "--filler",
        choices=("pgbench", "random"),
        default="pgbench",
        help="random: overwrite pgbench_accounts.filler with random hex (less compressible)",
    )
    args = parser.parse_args()
    if shutil.which("docker") is None:
        raise SystemExit("the docker CLI is needed")
    work = Path(tempfile.mkdtemp(prefix="opsauto-bench-", dir=args.workdir))
    os.chmod(work, 0o700)
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        log(f"starting {CONTAINER}")
        start_container()
        log(f"pgbench -i -s {args.scale}")
        init = pgbench_init("bench", args.scale)
        if args.filler == "random":
            log("overwriting pgbench_accounts.filler with random hex text")
            psql("bench", RANDOM_FILLER_SQL)
        db_size = psql("postgres", "SELECT pg_size_pretty(pg_database_size('bench'));")
        log(f"database bench: {db_size} (pgbench -i took {init:.0f}s)")
        settle()
        lines = bench(args, work)
    finally:
        docker("rm", "-f", "-v", CONTAINER, timeout=300)
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    header = [
        f"pgbench scale {args.scale}, filler {args.filler}: database {db_size}; "
        f"{os.cpu_count()} CPUs; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        f"total {time.monotonic() - started:.0f}s",
        "",
    ]
    print("\n".join(header + lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
