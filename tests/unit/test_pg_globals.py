"""Unit tests of module_utils/pg_globals.py: which roles of a globals dump are created."""

from __future__ import annotations

import contextlib
import io

import pytest
from ansible.module_utils.ops_errors import PgError
from ansible.module_utils.pg_globals import create_missing_roles, parse_globals, plan_roles

GLOBALS = r'''--
-- PostgreSQL database cluster dump
--

\restrict abc

SET default_transaction_read_only = off;

CREATE ROLE admin;
ALTER ROLE admin WITH SUPERUSER INHERIT CREATEROLE LOGIN PASSWORD 'SCRAM-SHA-256$4096:a$b:c';
CREATE ROLE app;
ALTER ROLE app WITH NOSUPERUSER INHERIT NOCREATEROLE LOGIN PASSWORD 'SCRAM-SHA-256$4096:x$y:z';
CREATE ROLE "Report ""Team""";
ALTER ROLE "Report ""Team""" WITH NOSUPERUSER INHERIT NOLOGIN;

--
-- User Configurations
--
ALTER ROLE app SET statement_timeout TO '30s';
ALTER ROLE app IN DATABASE appdb SET work_mem TO '8MB';

GRANT "Report ""Team""" TO app WITH INHERIT TRUE GRANTED BY admin;
GRANT pg_read_all_data TO "Report ""Team""" GRANTED BY admin;
GRANT app TO admin;

-- PostgreSQL database cluster dump complete
'''


def test_parse_reads_roles_with_quoted_names_and_grants():
    roles, grants = parse_globals(GLOBALS)
    assert list(roles) == ["admin", "app", 'Report "Team"']
    assert roles["app"][0] == "CREATE ROLE app;"
    assert roles["app"][2] == "ALTER ROLE app SET statement_timeout TO '30s';"
    assert not any("IN DATABASE" in s for stmts in roles.values() for s in stmts)
    assert grants[0] == (
        'Report "Team"',
        "app",
        'GRANT "Report ""Team""" TO app WITH INHERIT TRUE;',
    )


def test_existing_roles_are_never_touched():
    names, sql = plan_roles(GLOBALS, {"admin", "postgres", "pg_read_all_data"})
    assert names == ["app", 'Report "Team"']
    assert "ALTER ROLE admin" not in sql
    assert "CREATE ROLE admin" not in sql
    # memberships of the created roles only; none of an existing member (admin)
    assert "GRANT app TO admin" not in sql
    assert 'GRANT pg_read_all_data TO "Report ""Team""";' in sql
    assert "GRANTED BY" not in sql
    assert sql.startswith("BEGIN;")
    assert sql.endswith("COMMIT;\n")


def test_nothing_to_create_when_every_role_exists():
    assert plan_roles(GLOBALS, {"admin", "app", 'Report "Team"'}) == ([], "")


def test_a_role_without_its_create_statement_is_not_created():
    names, _ = plan_roles("ALTER ROLE ghost WITH LOGIN PASSWORD 'x';\n", set())
    assert names == []


def test_grant_of_a_role_that_exists_nowhere_is_left_out():
    text = "CREATE ROLE a;\nGRANT b TO a;\n"
    names, sql = plan_roles(text, set())
    assert names == ["a"]
    assert "GRANT" not in sql


class FakePg:
    def __init__(self, existing):
        self.existing = existing
        self.sql = []

    def psql(self, sql, database, variables=None, context="", timeout=None):
        self.sql.append(sql)
        if sql.startswith("SELECT rolname"):
            return [[name] for name in self.existing]
        return []


def _globals_file(tmp_path):
    import json

    (tmp_path / "globals.sql").write_text(GLOBALS)
    manifest = {
        "backup_id": "b1",
        "label": "globals",
        "format": "plain",
        "sha256": "0" * 64,
        "size": len(GLOBALS),
        "file": "globals.sql",
        "mode": "globals",
        "compression": "none",
    }
    (tmp_path / "globals.manifest.json").write_text(json.dumps(manifest))
    return str(tmp_path / "globals.sql")


@contextlib.contextmanager
def _open(path, _manifest):
    with open(path, "rb") as handle:
        yield io.BytesIO(handle.read())


def test_create_missing_roles_runs_one_transaction_after_verifying(tmp_path):
    pg, verified = FakePg({"admin"}), []
    params = {"restore_globals": "missing", "globals_path": _globals_file(tmp_path)}
    names = create_missing_roles(
        pg, params, "postgres", False, lambda p, m: verified.append(p), _open
    )
    assert names == ["app", 'Report "Team"']
    assert verified == [params["globals_path"]]
    assert pg.sql[-1].startswith("BEGIN;")
    assert "CREATE ROLE app;" in pg.sql[-1]


def test_check_mode_only_reports(tmp_path):
    pg = FakePg({"admin"})
    params = {"restore_globals": "missing", "globals_path": _globals_file(tmp_path)}
    assert create_missing_roles(pg, params, "postgres", True, lambda p, m: None, _open) == [
        "app",
        'Report "Team"',
    ]
    assert len(pg.sql) == 1  # only the read of pg_roles


def test_none_reads_nothing_and_missing_without_a_path_is_refused():
    pg = FakePg(set())
    assert (
        create_missing_roles(pg, {"restore_globals": "none"}, "postgres", False, None, None) == []
    )
    with pytest.raises(PgError, match="globals_path"):
        create_missing_roles(pg, {"restore_globals": "missing"}, "postgres", False, None, None)
    assert pg.sql == []
