"""The runbooks' admin identity on a stack whose application role is not a superuser.

The reference stack as recommended: the server's superuser (``postgres``) is the admin
identity and has no password at all, so it can log in only through the container's local
socket (pg_hba: trust on the socket, scram-sha-256 over TCP); the backend connects as
``app``, a role that is not a superuser and owns ``appdb``. Backup (with the globals),
replace restore (terminating the application's sessions, the swap) and the restore drill
must succeed through the admin identity; the same with an admin password over TCP; and
the application's role alone cannot take the globals (the fault the admin identity fixes).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import compose_down, run, run_playbook

PROJECT = "opsauto-it-admin"
APP_PASSWORD = "integration-app-password-3"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_ready):
    base = tmp_path_factory.mktemp("admin")
    common = {
        "stack_project_name": PROJECT,
        "stack_project_dir": str(base / PROJECT),
        "stack_http_port": 18280,
        "stack_prometheus_port": 19290,
        "stack_db_password": APP_PASSWORD,
        "stack_db_admin_user": "postgres",
        "stack_db_admin_password": "",
        "deploy_backend_replicas": 1,
        "deploy_health_timeout": 90,
        "stack_backup_dir": str(base / "backups"),
        "backup_metrics_dir": str(base / "metrics"),
        "restore_drill_metrics_dir": "",
    }
    compose_down(PROJECT)
    result, failures = run_playbook(base / "runner", "deploy.yml", common)
    assert result.rc == 0, failures
    psql("CREATE TABLE IF NOT EXISTS notes (id int PRIMARY KEY, body text)", user="app")
    psql("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 300) g", user="app")
    yield base, common
    compose_down(PROJECT)


def psql(sql: str, db: str = "appdb", user: str = "postgres") -> str:
    """SQL through the db container's local socket (no password)."""
    proc = run(
        ["docker", "compose", "-p", PROJECT, "exec", "-T", "db"]
        + ["psql", "-X", "-U", user, "-d", db, "-v", "ON_ERROR_STOP=1", "-tAc", sql]
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def play(stack, tmp_path, playbook: str, **extra):
    _, common = stack
    return run_playbook(tmp_path, playbook, {**common, **extra})


def module_args(result, module: str) -> list[dict]:
    return [
        e["event_data"]["res"].get("invocation", {}).get("module_args", {})
        for e in result.events
        if e.get("event") in ("runner_on_ok", "runner_on_failed")
        and str(e["event_data"].get("task_action", "")).endswith(module)
    ]


def set_meta(stack, backup_id: str) -> dict:
    return json.loads((stack[0] / "backups" / backup_id / "SET.json").read_text())


def test_the_application_role_is_not_a_superuser(stack):
    roles = psql("SELECT rolname || ':' || rolsuper FROM pg_roles WHERE rolname IN"
                 " ('app', 'postgres') ORDER BY 1")  # fmt: skip
    assert roles.splitlines() == ["app:false", "postgres:true"]
    assert psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'appdb'") == "app"
    # The superuser has no password: only the local socket lets it in.
    assert psql("SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'postgres'") == "t"
    tcp = run(
        ["docker", "compose", "-p", PROJECT, "exec", "-T", "-e", "PGPASSWORD=anything", "db",
         "psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "appdb", "-c", "SELECT 1"]
    )  # fmt: skip
    assert tcp.returncode != 0
    assert "password authentication failed" in tcp.stderr
    # the backend is served by the non-superuser role
    env = (stack[0] / PROJECT / ".env").read_text()
    assert "DB_USER='app'" in env
    assert "DB_ADMIN_USER='postgres'" in env
    assert "DB_ADMIN_PASSWORD=''" in env


def test_the_application_role_alone_cannot_take_the_globals(stack, tmp_path):
    # The fault the admin identity fixes: with the application's role as admin (the
    # default, and what every runbook used before) a non-superuser cannot dump the roles.
    result, failures = play(
        stack, tmp_path, "backup.yml", backup_id="adm-as-app",
        stack_db_admin_user="app", stack_db_admin_password=APP_PASSWORD,
    )  # fmt: skip
    assert result.rc != 0
    assert "permission denied" in " ".join(failures).lower(), failures
    assert not (stack[0] / "backups" / "adm-as-app").exists()


def test_backup_with_globals_through_the_local_socket(stack, tmp_path):
    result, failures = play(stack, tmp_path, "backup.yml", backup_id="adm-1")
    assert result.rc == 0, failures
    meta = set_meta(stack, "adm-1")
    assert meta["verified"] is True
    assert [d["label"] for d in meta["dumps"]] == ["appdb", "globals"]
    globals_sql = (stack[0] / "backups" / "adm-1" / "globals.sql").read_text()
    assert "CREATE ROLE app;" in globals_sql
    assert "NOSUPERUSER" in globals_sql.split("ALTER ROLE app WITH", 1)[1].splitlines()[0]
    (args,) = module_args(result, "backup_sets")[1:]
    assert args["login_user"] == "postgres"
    assert not args.get("login_password")  # nothing to pass: the socket, no PGPASSWORD


def test_replace_restore_terminates_the_app_sessions_and_swaps(stack, tmp_path):
    result, failures = play(stack, tmp_path / "b", "backup.yml", backup_id="adm-2")
    assert result.rc == 0, failures
    psql("DELETE FROM notes WHERE id > 100", user="app")
    result, failures = play(
        stack, tmp_path / "r", "restore.yml", restore_backup_id="adm-2",
        restore_mode="replace", restore_confirm="appdb",
    )  # fmt: skip
    assert result.rc == 0, failures
    assert psql("SELECT count(*) FROM notes", user="app") == "300"
    # the swapped-in database keeps its owner; the application's role is still no superuser
    assert psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'appdb'") == "app"
    assert psql("SELECT rolsuper FROM pg_roles WHERE rolname = 'app'") == "f"
    for args in module_args(result, "pg_backup_restore"):
        assert args["login_user"] == "postgres"
        assert not args.get("login_password")
    # the backend reconnected as app and serves (the role waited for health through nginx)
    health = run(["curl", "-fsS", "http://127.0.0.1:18280/health"])
    assert health.returncode == 0, health.stderr


def test_restore_drill_succeeds(stack, tmp_path):
    result, failures = play(stack, tmp_path, "restore_drill.yml", restore_backup_id="adm-1")
    assert result.rc == 0, failures
    assert any("Restore drill PASSED" in str(e.get("event_data", {}).get("res", {}).get("msg", ""))
               for e in result.events)  # fmt: skip


def test_admin_identity_with_a_password_over_tcp(stack, tmp_path):
    psql("ALTER ROLE postgres PASSWORD 'admin-password-7'")
    try:
        result, failures = play(
            stack, tmp_path / "ok", "backup.yml", backup_id="adm-tcp",
            stack_db_admin_password="admin-password-7",
        )  # fmt: skip
        assert result.rc == 0, failures
        assert [d["label"] for d in set_meta(stack, "adm-tcp")["dumps"]] == ["appdb", "globals"]
        result, failures = play(
            stack, tmp_path / "bad", "backup.yml", backup_id="adm-badpw",
            stack_db_admin_password="wrong-password-9",
        )  # fmt: skip
        assert result.rc != 0
        assert 'password authentication failed for user "postgres"' in " ".join(failures)
        assert not (stack[0] / "backups" / "adm-badpw").exists()
    finally:
        psql("ALTER ROLE postgres PASSWORD NULL")


def test_redeploy_adds_the_admin_identity_to_a_server_initialised_without_it(tmp_path):
    # A stack first deployed with the application's role as superuser (the defaults, and
    # every stack before the admin identity) has no postgres role: the image creates
    # POSTGRES_USER only on an empty data directory. Deploying it with the admin identity
    # creates the role through the socket, and backups work.
    project = "opsauto-it-admin-legacy"
    legacy = {
        "stack_project_name": project,
        "stack_project_dir": str(tmp_path / project),
        "stack_http_port": 18281,
        "stack_prometheus_port": 19291,
        "stack_db_password": APP_PASSWORD,
        "stack_db_admin_user": "app",
        "stack_db_admin_password": APP_PASSWORD,
        "deploy_backend_replicas": 1,
        "deploy_health_timeout": 90,
        "stack_backup_dir": str(tmp_path / "backups"),
        "backup_metrics_dir": "",
    }
    compose_down(project)
    try:
        result, failures = run_playbook(tmp_path / "d1", "deploy.yml", legacy)
        assert result.rc == 0, failures
        admin = {**legacy, "stack_db_admin_user": "postgres", "stack_db_admin_password": ""}
        result, failures = run_playbook(tmp_path / "d2", "deploy.yml", admin)
        assert result.rc == 0, failures
        warnings = " ".join(
            str(e["event_data"]["res"].get("msg", ""))
            for e in result.events
            if e.get("event") == "runner_on_ok" and "res" in e.get("event_data", {})
        )
        assert "ALTER ROLE app NOSUPERUSER" in warnings
        roles = run(
            ["docker", "compose", "-p", project, "exec", "-T", "db", "psql", "-X", "-U", "postgres",
             "-d", "appdb", "-tAc", "SELECT rolsuper FROM pg_roles WHERE rolname = 'postgres'"]
        )  # fmt: skip
        assert roles.stdout.strip() == "t", roles.stderr
        result, failures = run_playbook(tmp_path / "b", "backup.yml", {**admin, "backup_id": "l-1"})
        assert result.rc == 0, failures
        # a second deploy finds the role and changes nothing about it
        result, failures = run_playbook(tmp_path / "d3", "deploy.yml", admin)
        assert result.rc == 0, failures
        assert "ALTER ROLE app NOSUPERUSER" not in " ".join(
            str(e["event_data"]["res"].get("msg", ""))
            for e in result.events
            if e.get("event") == "runner_on_ok" and "res" in e.get("event_data", {})
        )
    finally:
        compose_down(project)
