"""What a killed backup run left, recognised by its names and removed by the next run
(module_utils/backup_cleanup.py), and the throwaway containers of directory dumps
(module_utils/pg_dump_directory.py). The real container: tests/integration/
test_backup_safety.py."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from ansible.module_utils import backup_cleanup, pg_dump_directory
from ansible.module_utils.backup_cleanup import (
    Terminated,
    clean_leftovers,
    dir_tag,
    run_names,
    stop_on_signals,
)
from ansible.module_utils.backup_retention import start_set
from ansible.module_utils.ops_errors import PgError
from ansible.module_utils.pg_session import PgContainer


class FakePg(PgContainer):
    """Records what would run in the container; answers like a container with leftovers."""

    def __init__(self, password=None):
        super().__init__("db", "postgres", password)
        self.commands, self.queries = [], []

    def run(self, command, input_bytes=None, stdin=None, timeout=120, context=""):
        self.commands.append(command)
        if "for d in /proc" in command[2]:
            return b"4242 pg_dump -Fc shop\n4243 psql -X\n"
        return f"{command[-1]}x1Yz\n".encode()

    def psql(self, sql, database, variables=None, context="", timeout=120):
        self.queries.append((sql, database, variables))
        return [["77", f"{variables['prefix']}abc", "t"]]


@pytest.fixture
def no_docker(monkeypatch):
    calls = []

    def fake_run(argv, **kwargs):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout="c0ffee\n" if "ps" in argv else "")

    monkeypatch.setattr(backup_cleanup.subprocess, "run", fake_run)
    return calls


def test_names_carry_the_backup_directory_tag(tmp_path):
    names = run_names(str(tmp_path))
    tag = dir_tag(str(tmp_path))
    assert names["app_name"].startswith(f"opsauto-backup-{tag}-")
    assert names["temp_prefix"] == f"/tmp/opsauto-backup-{tag}."
    assert names["container_label"] == f"opsauto.backup={tag}"
    assert run_names(str(tmp_path))["app_name"] != names["app_name"]
    assert dir_tag(str(tmp_path / "other")) != tag


def test_cleanup_ends_only_what_carries_the_directory_tag(tmp_path, no_docker):
    backup_dir = tmp_path / "backups"
    dead = backup_dir / "k1"
    start_set(str(dead), "k1", "scheduled", "h", "p")
    (dead / ".shop.dump.partial-abc").write_bytes(b"PGDMP")
    current = backup_dir / "k2"
    start_set(str(current), "k2", "scheduled", "h", "p")
    (current / ".shop.dump.partial-def").write_bytes(b"PGDMP")
    (current / "globals.sql").write_text("-- kept")
    complete = backup_dir / "s0"
    start_set(str(complete), "s0", "scheduled", "h", "p")
    (complete / "SET.json").write_text(json.dumps({"backup_id": "s0", "verified": True}))
    foreign = backup_dir / "photos"
    foreign.mkdir()
    pg = FakePg()
    notes = clean_leftovers(pg, str(backup_dir), str(current), "shop")
    prefix = f"opsauto-backup-{dir_tag(str(backup_dir))}-"
    assert no_docker[0][-1] == f"label=opsauto.backup={dir_tag(str(backup_dir))}"
    assert no_docker[1][:3] == ["docker", "rm", "-f"]
    assert pg.commands[0][-1] == prefix  # processes whose PGAPPNAME starts with it
    assert pg.queries[0][2] == {"prefix": prefix}
    assert pg.commands[1][-1] == f"/tmp/opsauto-backup-{dir_tag(str(backup_dir))}."
    assert notes[:4] == [
        "container c0ffee", "process 4242 pg_dump -Fc shop", "process 4243 psql -X",
        f"server session 77 ({prefix}abc)",
    ]  # fmt: skip
    assert f"incomplete set {dead}" in notes
    assert not dead.exists()
    assert sorted(p.name for p in current.iterdir()) == [".opsauto-set.json", "globals.sql"]
    assert complete.is_dir()
    assert foreign.is_dir()


def test_cleanup_refuses_to_run_under_a_backup_runs_name(tmp_path):
    pg = FakePg()
    pg.app_name = run_names(str(tmp_path))["app_name"]
    with pytest.raises(PgError, match="must not run under a backup run's"):
        clean_leftovers(pg, str(tmp_path), str(tmp_path / "x"), "shop")


def test_sigterm_becomes_a_failure_that_cleans_up():
    with pytest.raises(Terminated, match="stopped by signal SIGTERM"), stop_on_signals():
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_directory_dumps_run_in_a_labelled_throwaway_container(monkeypatch):
    monkeypatch.setattr(pg_dump_directory, "container_image", lambda pg: "sha256:img")
    pg = FakePg("pw")
    plan = {"label_filter": "opsauto.backup=abcd1234"}
    argv = pg_dump_directory.throwaway_argv(pg, plan, "/b/s1/.stage-x", ["pg_dump", "-Fd"])
    assert argv[:3] == ["docker", "run", "--rm"]
    assert argv[argv.index("--label") + 1] == "opsauto.backup=abcd1234"
    assert argv[argv.index("--network") + 1] == "container:db"
    assert "/b/s1/.stage-x:/stage" in argv
    assert argv[argv.index("--entrypoint") + 1] == "pg_dump"
    assert argv[-2:] == ["sha256:img", "-Fd"]
    assert f"PGAPPNAME={pg.app_name}" in argv
    assert "PGPASSWORD" in argv
    assert "pw" not in argv  # the password reaches docker through its environment only
    listing = pg_dump_directory.throwaway_argv(pg, plan, "/s", ["pg_restore", "--list"], "none")
    assert listing[listing.index("--network") + 1] == "none"
    assert "/s:/stage:ro" in listing


def test_socket_mode_reaches_the_socket_through_the_pid_namespace(monkeypatch):
    monkeypatch.setattr(pg_dump_directory, "container_image", lambda pg: "sha256:img")
    pg = FakePg(None)
    plan = {"label_filter": "opsauto.backup=abcd1234"}
    command = pg_dump_directory.through_socket(
        ["pg_dump", "-h", "/var/run/postgresql", "-U", "postgres", "-Fd"], "/proc/1/root/run/pg"
    )
    assert command[command.index("-h") + 1] == "/proc/1/root/run/pg"
    argv = pg_dump_directory.throwaway_argv(pg, plan, "/b/s1/.stage-x", command, "socket",
                                            "999:999")  # fmt: skip
    assert argv[argv.index("--network") + 1] == "none"  # no network at all
    assert argv[argv.index("--pid") + 1] == "container:db"
    assert argv[argv.index("--user") + 1] == "999:999"  # the user of the server's PID 1
    assert "/b/s1/.stage-x:/stage" in argv
    assert "PGPASSWORD" not in argv
