"""Backup, restore and the restore drill on an operator's own stack (issue 12), through
ansible-runner against this machine's Docker engine.

The database runs from an image of "another vendor": a tiny image derived locally from
fastapi-monolith/postgres:15 whose entrypoint takes DB_SUPERUSER / DB_SUPERUSER_PASSWORD
instead of the official POSTGRES_USER / POSTGRES_PASSWORD (no registry). Its superuser is
``admin``; the application's tables belong to ``app`` (not a superuser) and are granted to
``reporter``; the compose service is called ``database``, not ``db``. No nginx: the
health endpoint of the replace restore is a small HTTP server of the test that answers
200 only at /ready.
"""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from tests.conftest import run, run_playbook

IMAGE = "opsauto-it/postgres-othervendor:15"
PROJECT = "opsauto-it-own"
FRESH = "opsauto-it-own-fresh"
ADMIN_PW = "Admin-own-pw-1"
APP_PW = "app-live-pw-1"
FRESH_ADMIN_PW = "Fresh-admin-pw-2"
FRESH_APP_PW = "app-fresh-pw-2"
S3_KEY, S3_SECRET = "AKIAOWNSTACK0000TEST", "own-stack-s3-secret-0001"
OPERATOR_VALUE = "hook-value-5555"  # listed by the operator (backup_config_redact_values)

ENTRYPOINT = """#!/usr/bin/env bash
# Another vendor's image: its own variable names, not the official POSTGRES_*.
set -Eeuo pipefail
if [ -z "${DB_SUPERUSER:-}" ]; then
    echo "othervendor: DB_SUPERUSER is not set" >&2
    exit 1
fi
export POSTGRES_USER="$DB_SUPERUSER" POSTGRES_PASSWORD="${DB_SUPERUSER_PASSWORD:-}"
unset POSTGRES_DB
exec docker-entrypoint.sh "$@"
"""
DOCKERFILE = """FROM fastapi-monolith/postgres:15
COPY othervendor-entrypoint.sh /usr/local/bin/othervendor-entrypoint.sh
RUN chmod 0755 /usr/local/bin/othervendor-entrypoint.sh
ENTRYPOINT ["othervendor-entrypoint.sh"]
CMD ["postgres"]
"""


def docker(*argv: str, timeout: float = 300):
    return run(["docker", *argv], timeout=timeout)


def start_server(project: str, password: str) -> str:
    """A database container labelled as compose service ``database`` of ``project``."""
    name = f"{project}-database-1"
    docker("rm", "-f", "-v", name)
    proc = docker(
        "run", "-d", "--name", name,
        "--label", f"com.docker.compose.project={project}",
        "--label", "com.docker.compose.service=database",
        "-e", "DB_SUPERUSER=admin", "-e", f"DB_SUPERUSER_PASSWORD={password}",
        IMAGE,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for _ in range(60):
        # TCP: the entrypoint's temporary server during initdb listens on the socket only
        if docker("exec", name, "pg_isready", "-h", "127.0.0.1").returncode == 0:
            return name
        run(["sleep", "1"])
    pytest.fail("the test database did not start: " + docker("logs", name).stderr)


def psql(container: str, sql: str, db: str = "postgres", user: str = "admin", pw: str = "") -> str:
    """psql in ``container``; with ``pw`` over TCP (password checked), else the local socket."""
    argv = ["exec", "-e", f"PGPASSWORD={pw}", container, "psql", "-X", "-v", "ON_ERROR_STOP=1"]
    argv += ["-h", "127.0.0.1"] if pw else []
    proc = docker(*argv, "-U", user, "-d", db, "-tAc", sql)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def own(tmp_path_factory, docker_ready):
    base = tmp_path_factory.mktemp("own")
    build = base / "image"
    build.mkdir()
    (build / "Dockerfile").write_text(DOCKERFILE)
    (build / "othervendor-entrypoint.sh").write_text(ENTRYPOINT)
    proc = docker("build", "-q", "-t", IMAGE, str(build), timeout=600)
    assert proc.returncode == 0, proc.stderr
    live = start_server(PROJECT, ADMIN_PW)
    psql(live, f"CREATE ROLE app LOGIN PASSWORD '{APP_PW}'")
    psql(live, "CREATE ROLE reporter NOLOGIN")
    psql(live, "CREATE DATABASE appdb OWNER app")
    psql(live, "CREATE TABLE notes (id int PRIMARY KEY, body text)", "appdb", "app")
    psql(
        live, "INSERT INTO notes SELECT g, 'n' || g FROM generate_series(1, 300) g", "appdb", "app"
    )
    psql(live, "GRANT SELECT ON notes TO reporter", "appdb", "app")
    # the operator's project directory: compose file with the password as a default value
    project_dir = base / "project"
    (project_dir / "nginx").mkdir(parents=True)
    (project_dir / "compose.yaml").write_text(
        "services:\n  backend:\n    environment:\n"
        "      DB_PASSWORD: ${DB_PASSWORD:-" + APP_PW + "}\n"
        "      AWS_ACCESS_KEY_ID: " + S3_KEY + "\n"
        "  database:\n    environment:\n      DB_SUPERUSER: admin\n"
        "      DB_SUPERUSER_PASSWORD: " + ADMIN_PW + "\n"
    )
    (project_dir / "nginx" / "app.conf").write_text(
        f"# s3 {S3_SECRET}\nlisten 80;\nset $hook {OPERATOR_VALUE};\n"
    )
    (project_dir / ".env").write_text(f"DB_PASSWORD={APP_PW}\nDSN=postgres://admin:{ADMIN_PW}@db\n")
    common = {
        "stack_project_name": PROJECT,
        "stack_project_dir": str(project_dir),
        "stack_service_db": "database",
        "stack_db_user": "app",
        "stack_db_password": APP_PW,
        "stack_db_admin_user": "admin",
        "stack_db_admin_password": ADMIN_PW,
        "stack_backup_dir": str(base / "backups"),
        "stack_backup_s3_access_key": S3_KEY,
        "stack_backup_s3_secret_key": S3_SECRET,
        "backup_metrics_dir": "",
        "backup_config_redact_values": [OPERATOR_VALUE],
        "restore_drill_metrics_dir": "",
    }
    result, failures = run_playbook(
        base / "runner-backup", "backup.yml", {**common, "backup_id": "own-1"}
    )
    assert result.rc == 0, failures
    yield base, common, live
    for name in (live, f"{FRESH}-database-1", f"{PROJECT}-restore-drill"):
        docker("rm", "-f", "-v", name)


def task_results(result, name_part: str) -> list[dict]:
    return [
        e["event_data"]["res"]
        for e in result.events
        if e.get("event") in ("runner_on_ok", "runner_on_failed")
        and name_part in e["event_data"].get("task", "")
    ]


def test_backup_stores_no_known_secret_in_any_file(own):
    base, _, _ = own
    set_dir = base / "backups" / "own-1"
    meta = json.loads((set_dir / "SET.json").read_text())
    assert "config/compose.yaml" in meta["config"]
    files = [p for p in set_dir.rglob("*") if p.is_file()]
    for path in files:
        content = path.read_bytes()
        for secret in (ADMIN_PW, APP_PW, S3_KEY, S3_SECRET, OPERATOR_VALUE):
            assert secret.encode() not in content, f"{secret} in {path}"
    compose = (set_dir / "config" / "compose.yaml").read_text()
    assert "${DB_PASSWORD:-***REDACTED***}" in compose
    assert "DB_SUPERUSER: admin" in compose  # no secret, kept


def test_drill_starts_from_the_running_containers_environment(own, tmp_path):
    _, common, _ = own
    result, failures = run_playbook(
        tmp_path, "restore_drill.yml", {**common, "restore_backup_id": "own-1"}
    )
    assert result.rc == 0, failures
    (drill,) = [
        r for r in task_results(result, "Restore the dump and check") if "restored_rows" in r
    ]
    assert drill["restored_rows"] == {"public.notes": 300}
    # the throwaway server had only admin: app and reporter came from the set's globals
    assert sorted(drill["roles_created"]) == ["app", "reporter"]
    assert docker("ps", "-aq", "--filter", f"name={PROJECT}-restore-drill").stdout.strip() == ""


def test_drill_whose_server_cannot_start_names_the_cause(own, tmp_path):
    _, common, _ = own
    extra = {"restore_backup_id": "own-1", "restore_drill_env": {"DB_SUPERUSER": ""}}
    result, failures = run_playbook(tmp_path, "restore_drill.yml", {**common, **extra})
    assert result.rc != 0
    message = " ".join(failures)
    assert "did not accept connections" in message, failures
    assert "DB_SUPERUSER is not set" in message  # the server's own last log line
    assert "restore_drill_env" in message
    assert "has no attribute" not in message
    assert docker("ps", "-aq", "--filter", f"name={PROJECT}-restore-drill").stdout.strip() == ""


class _Ready(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.seen.append(self.path)
        self.send_response(200 if self.path == "/ready" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_replace_restore_waits_on_the_stacks_health_path(own, tmp_path):
    _, common, live = own
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    psql(live, "DELETE FROM notes WHERE id > 100", "appdb", "app")
    extra = {
        "restore_backup_id": "own-1",
        "restore_mode": "replace",
        "restore_confirm": "appdb",
        "stack_http_port": server.server_address[1],
        "stack_health_path": "/ready",
        "restore_health_timeout": 6,
    }
    try:
        result, failures = run_playbook(tmp_path, "restore.yml", {**common, **extra})
    finally:
        server.shutdown()
    assert result.rc == 0, failures
    assert "/ready" in _Ready.seen
    assert "/health" not in _Ready.seen
    assert psql(live, "SELECT count(*) FROM notes", "appdb", "app") == "300"


def test_restore_globals_creates_missing_roles_and_never_changes_existing_ones(own, tmp_path):
    base, common, _ = own
    fresh = start_server(FRESH, FRESH_ADMIN_PW)
    psql(fresh, f"CREATE ROLE app LOGIN PASSWORD '{FRESH_APP_PW}' CONNECTION LIMIT 7")
    target = {
        **common,
        "stack_project_name": FRESH,
        "stack_db_password": FRESH_APP_PW,
        "stack_db_admin_password": FRESH_ADMIN_PW,
        "restore_backup_id": "own-1",
        "restore_database": "appdb_copy",
    }
    # default (auto = none for a restore): refused, naming the role and the option
    result, failures = run_playbook(tmp_path / "a", "restore.yml", target)
    assert result.rc != 0
    assert "reporter" in " ".join(failures)
    assert "restore_globals" in " ".join(failures)
    assert psql(fresh, "SELECT count(*) FROM pg_database WHERE datname = 'appdb_copy'") == "0"

    result, failures = run_playbook(
        tmp_path / "b", "restore.yml", {**target, "restore_globals": "missing"}
    )
    assert result.rc == 0, failures
    (restored,) = [r for r in task_results(result, "Restore the dump") if r.get("changed")]
    assert restored["roles_created"] == ["reporter"]
    assert psql(fresh, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'reporter'") == "f"
    # existing roles: same passwords (log in with the old ones), same attributes
    assert psql(fresh, "SELECT count(*) FROM notes", "appdb_copy", "app", FRESH_APP_PW) == "300"
    assert psql(fresh, "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'app'") == "7"
    assert psql(fresh, "SELECT 1", "postgres", "admin", FRESH_ADMIN_PW) == "1"
    check = docker("exec", "-e", f"PGPASSWORD={APP_PW}", fresh, "psql", "-h", "127.0.0.1",
                   "-U", "app", "-d", "appdb_copy", "-c", "SELECT 1")  # fmt: skip
    assert check.returncode != 0  # the live server's app password was not brought over
    assert (
        psql(fresh, "SELECT has_table_privilege('reporter', 'notes', 'SELECT')", "appdb_copy")
        == "t"
    )
