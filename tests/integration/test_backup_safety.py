"""Backup safety against a real PostgreSQL container, through the backup_sets module run by
the ansible CLI: a killed run leaves nothing running after the next run, free space is
checked before the first dump, directory-format dumps are not staged in the container.

A module-scoped fixture starts ``opsauto-bsafety-db`` from the project's postgres image
(nothing published) and removes it with its volume at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.test_pg_modules import ansible_argv, ansible_env, parse_result

CONTAINER = "opsauto-bsafety-db"
IMAGE = "fastapi-monolith/postgres:15"
PASSWORD = "bsafety-pw"
SOCKET = ["-h", "/var/run/postgresql", "-U", "postgres"]


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def psql(database: str, sql: str) -> str:
    proc = subprocess.run(
        ["docker", "exec", "-i", CONTAINER, "psql", "-X", "-q", "-A", "-t", "-v",
         "ON_ERROR_STOP=1", *SOCKET, "-d", database],
        input=sql, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def module(args: dict, timeout: float = 300) -> dict:
    proc = subprocess.run(
        ansible_argv("backup_sets", args), cwd=ROOT, env=ansible_env(), capture_output=True,
        text=True, timeout=timeout, check=False,
    )  # fmt: skip
    return parse_result(proc.stdout, proc.stderr)


def sealed_args(backup_dir: Path, backup_id: str, database: str, **extra) -> dict:
    return {
        "path": str(backup_dir), "state": "sealed", "backup_id": backup_id,
        "container": CONTAINER, "login_user": "postgres", "login_password": PASSWORD,
        "databases": [database], "globals": False, "project": "bsafety", "lock_held": True,
        **extra,
    }  # fmt: skip


def pg_id() -> str:
    return docker("inspect", "--format", "{{.Id}}", CONTAINER).stdout.strip()


def take_lock(backup_dir: Path) -> None:
    locked = module({"path": str(backup_dir), "state": "locked", "backup_id": "x"})
    assert locked.get("locked") is True, locked


def our_processes(prefix: str) -> list[str]:
    """``pid cmdline`` of the container's processes whose PGAPPNAME starts with ``prefix``."""
    script = (
        'for d in /proc/[0-9]*; do tr "\\0" "\\n" < $d/environ 2>/dev/null | '
        'grep -q "^PGAPPNAME=$1" && echo "${d#/proc/} $(tr "\\0" " " < $d/cmdline)"; done; true'
    )
    proc = docker("exec", "-e", "PGAPPNAME=observer", CONTAINER, "sh", "-c", script, "sh", prefix)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line.strip()]


def process_tree(root: int) -> list[int]:
    """``root`` and every process descending from it on this host."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def sessions(prefix: str) -> list[str]:
    sql = (
        "SELECT application_name || ' ' || coalesce(state, '') FROM pg_stat_activity "
        f"WHERE starts_with(application_name, '{prefix}');"
    )
    return [line for line in psql("postgres", sql).splitlines() if line]


def container_temp_dirs() -> list[str]:
    proc = docker("exec", CONTAINER, "sh", "-c", "ls -d /tmp/opsauto-* 2>/dev/null; true")
    return proc.stdout.split()


@pytest.fixture(scope="module")
def pg(docker_ready):
    if docker("image", "inspect", IMAGE).returncode != 0:
        pytest.fail(f"image {IMAGE} missing: run `bash scripts/bootstrap.sh` first")
    if docker("container", "inspect", CONTAINER).returncode == 0:
        pytest.fail(f"container {CONTAINER} already exists: `docker rm -f -v {CONTAINER}`")
    started = docker(
        "run", "-d", "--name", CONTAINER, "--label", "opsauto.test=backup_safety",
        "-e", "POSTGRES_USER=postgres", "-e", f"POSTGRES_PASSWORD={PASSWORD}", IMAGE,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 90
        while True:
            ready = docker("exec", CONTAINER, "pg_isready", "-h", "127.0.0.1", "-q", timeout=10)
            if ready.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert ready.returncode == 0, docker("logs", CONTAINER).stderr[-3000:]
        psql("postgres", "CREATE DATABASE shop;")
        psql("postgres", "CREATE DATABASE other;")
        psql("shop", "CREATE TABLE items AS SELECT g AS id, md5(g::text) AS name "
                     "FROM generate_series(1, 20000) g;")  # fmt: skip
        yield CONTAINER
    finally:
        docker("rm", "-f", "-v", CONTAINER, timeout=120)


def test_a_killed_backup_is_cleaned_by_the_next_run(pg, tmp_path):
    backup_dir = tmp_path / "backups"
    # An exclusive lock on the table keeps the dump waiting, so the run is killed mid-dump.
    holder = subprocess.Popen(
        ["docker", "exec", "-i", CONTAINER, "psql", "-X", "-q", *SOCKET, "-d", "shop"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        holder.stdin.write("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE;\n")
        holder.stdin.flush()
        take_lock(backup_dir)
        log = tmp_path / "killed-run.log"
        output = log.open("w")
        run = subprocess.Popen(
            ansible_argv("backup_sets", sealed_args(backup_dir, "k1", "shop")), cwd=ROOT,
            env=ansible_env(), stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
        waiting = (
            "SELECT application_name FROM pg_stat_activity WHERE backend_type = 'client backend'"
            " AND starts_with(application_name, 'opsauto-backup-') AND wait_event_type = 'Lock';"
        )
        deadline = time.monotonic() + 120
        while not (app := psql("shop", waiting)):
            assert run.poll() is None, parse_result(log.read_text(), "").get("msg")
            assert time.monotonic() < deadline, "the dump never started"
            time.sleep(0.2)
        for pid in process_tree(run.pid):  # ansible, the module and its docker clients
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run.wait(timeout=60)
        time.sleep(2)
        # the fault: the killed run's psql lives on in the container (its server session,
        # which exported the dump's snapshot, may already be ending, so the processes prove
        # it; pg_dump itself ends with its docker client)
        left = our_processes(app)
        assert any(" psql " in f" {p} " for p in left), left
        # the killed run's lock is stale (its holder is dead); it is broken here by hand
        shutil.rmtree(backup_dir / ".lock", ignore_errors=True)
        assert (backup_dir / "k1").is_dir()  # the incomplete set the killed run left

        # the next run (of another database, so the table lock does not hold it up)
        take_lock(backup_dir)
        result = module(sealed_args(backup_dir, "k2", "other"))
        assert result.get("failed") is not True, result
        cleaned = "\n".join(result["cleaned"])
        assert our_processes(app) == [], cleaned
        assert sessions(app) == [], cleaned
        assert container_temp_dirs() == []
        assert "process" in cleaned
        assert "server session" in cleaned or "pg_dump" in cleaned
        assert f"incomplete set {backup_dir}/k1" in cleaned
        assert not (backup_dir / "k1").exists()
        assert (backup_dir / "k2" / "SET.json").is_file()
        assert "Removed what an earlier, killed run left" in result["msg"]
        assert not (backup_dir / ".lock").exists()  # released by the sealed run
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_no_room_is_refused_before_the_first_dump(pg, tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the test needs root): {mounted.stderr}")
    try:
        backup_dir = mount_point / "backups"
        take_lock(backup_dir)
        started = time.monotonic()
        result = module(sealed_args(backup_dir, "s1", "shop"))
        assert result.get("failed") is True, result
        message = result["msg"]
        assert f"Not enough free space for the backup in {backup_dir}" in message
        assert f"(file system {mount_point})" in message
        assert "(pg_database_size)" in message
        assert "is free. Nothing was written." in message
        assert time.monotonic() - started < 60
        assert sorted(p.name for p in backup_dir.iterdir()) == []  # no set, lock released
    finally:
        subprocess.run(["umount", str(mount_point)], check=False, timeout=60)


@pytest.mark.parametrize("password", [PASSWORD, ""], ids=["password", "socket-mode"])
def test_a_directory_dump_is_staged_on_the_host_not_in_the_container(pg, tmp_path, password):
    # Socket mode (no password): the throwaway pg_dump container has no network and reaches
    # the server's socket through the database container's PID namespace.
    backup_dir = tmp_path / "backups"
    holder = subprocess.Popen(
        ["docker", "exec", "-i", CONTAINER, "psql", "-X", "-q", *SOCKET, "-d", "shop"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    args = sealed_args(backup_dir, "d1", "shop", format="directory", jobs=2,
                       login_password=password)  # fmt: skip
    try:
        holder.stdin.write("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE;\n")
        holder.stdin.flush()
        take_lock(backup_dir)
        run = subprocess.Popen(
            ansible_argv("backup_sets", args), cwd=ROOT, env=ansible_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not list((backup_dir / "d1").glob(".stage-shop-*/dump")):
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the dump never started"
            time.sleep(0.2)
        # pg_dump is writing (blocked on the table): into the host's staging directory only
        assert container_temp_dirs() == []
        assert "/tmp/opsauto" not in docker("diff", CONTAINER).stdout
        dumper = docker("ps", "-q", "--filter", "label=opsauto.backup").stdout.split()
        assert len(dumper) == 1, dumper
        modes = docker("inspect", "--format", "{{.HostConfig.NetworkMode}} "
                       "{{.HostConfig.PidMode}}", dumper[0]).stdout.split()  # fmt: skip
        if password:  # TCP inside the database container's network namespace
            assert modes[0].startswith("container:"), modes
        else:  # no network; the database container's PID namespace
            assert modes[0] == "none", modes
            assert modes[1] in (f"container:{CONTAINER}", f"container:{pg_id()}"), modes
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    out, err = run.communicate(timeout=300)
    result = parse_result(out, err)
    assert result.get("failed") is not True, result
    names = sorted(p.name for p in (backup_dir / "d1").iterdir())
    assert names == [".opsauto-set.json", "SET.json", "shop.dir.tar", "shop.manifest.json"]
    manifest = (backup_dir / "d1" / "shop.manifest.json").read_text()
    assert "staged on the host" in manifest
    listing = subprocess.run(
        ["tar", "-tf", str(backup_dir / "d1" / "shop.dir.tar")], capture_output=True,
        text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert "./toc.dat" in listing
