"""pg_backup and pg_backup_restore against a real PostgreSQL container, through real Ansible.

A module-scoped fixture starts ``opsauto-pgtest-db`` from the project's postgres image
(nothing published), waits for it, creates the ``shop`` database with known rows, and
removes the container with its volume at the end.  Every test runs the modules with the
``ansible`` ad-hoc command (json callback) from the repository root and asserts on real
state: files and their modes, hashes, rows in the databases.

The last test kills the container during a dump, so it must stay last in this file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, tool_env

CONTAINER = "opsauto-pgtest-db"
IMAGE = "fastapi-monolith/postgres:15"
PASSWORD = "it-secret-pw"
SOCKET = ["-h", "/var/run/postgresql", "-U", "postgres"]

SHOP_SQL = """
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(8,2));
INSERT INTO items SELECT g, 'item ' || g, g * 1.25 FROM generate_series(1, 120) g;
CREATE SCHEMA sales;
CREATE TABLE sales.orders (id serial PRIMARY KEY, item int REFERENCES items(id), qty int);
INSERT INTO sales.orders (item, qty) SELECT (g % 120) + 1, g FROM generate_series(1, 345) g;
CREATE TABLE empty_table (id int);
"""
SHOP_ROWS = {"public.items": 120, "sales.orders": 345, "public.empty_table": 0}


# --------------------------------------------------------------------------- helpers


def docker(*args: str, stdin=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", *args], stdin=stdin, capture_output=True, timeout=timeout, check=False
    )


def psql(database: str, sql: str, timeout: float = 300) -> str:
    proc = subprocess.run(
        ["docker", "exec", "-i", CONTAINER, "psql", "-X", "-q", "-A", "-t", "-v",
         "ON_ERROR_STOP=1", *SOCKET, "-d", database],
        input=sql.encode(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode().strip()


def table_rows(database: str, table: str) -> str:
    """Every row of a table, in primary-key order, as COPY text."""
    return psql(database, f"COPY (SELECT * FROM {table} ORDER BY 1) TO STDOUT;")


def databases() -> set[str]:
    return set(psql("postgres", "SELECT datname FROM pg_database;").splitlines())


def ansible_module(name: str, args: dict, check: bool = False, timeout: float = 300) -> dict:
    """Run one module on localhost through the ansible CLI; return its result dict."""
    proc = subprocess.run(
        ansible_argv(name, args, check), cwd=ROOT, env=ansible_env(), capture_output=True,
        text=True, timeout=timeout, check=False,
    )  # fmt: skip
    return parse_result(proc.stdout, proc.stderr)


def ansible_argv(name: str, args: dict, check: bool = False) -> list[str]:
    argv = [str(Path(sys.executable).parent / "ansible"), "localhost", "-m", name]
    argv += ["-a", json.dumps(args), "-e", f"ansible_python_interpreter={sys.executable}"]
    return argv + (["--check"] if check else [])


def ansible_env() -> dict[str, str]:
    return tool_env(
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1"
    )


def parse_result(stdout: str, stderr: str) -> dict:
    try:
        # the json callback's document, followed by the profile_tasks recap
        data, _ = json.JSONDecoder().raw_decode(stdout[stdout.index("{") :])
        return data["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        pytest.fail(f"no module result in ansible output:\n{stdout}\n{stderr}")


def backup(dest: Path, backup_id: str, check: bool = False, **options) -> dict:
    args = {
        "container": CONTAINER,
        "login_user": "postgres",
        "database": "shop",
        "dest_dir": str(dest),
        "backup_id": backup_id,
    }
    args.update(options)
    return ansible_module("pg_backup", args, check=check)


def restore(path: str, database: str, check: bool = False, **options) -> dict:
    args = {"container": CONTAINER, "login_user": "postgres", "path": path, "database": database}
    args.update(options)
    return ansible_module("pg_backup_restore", args, check=check)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def visible_files(directory: Path) -> list[str]:
    """Files in a backup directory other than the (empty) lock files."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))


def assert_ok(result: dict, changed: bool | None = None) -> None:
    assert not result.get("failed"), result.get("msg", result)
    if changed is not None:
        assert result["changed"] is changed, result


def assert_failed(result: dict, *phrases: str) -> None:
    assert result.get("failed"), result
    for phrase in phrases:
        assert phrase in result["msg"], result["msg"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pg(docker_ready):
    """A fresh PostgreSQL container with the ``shop`` database; removed with its volume."""
    if docker("image", "inspect", IMAGE).returncode != 0:
        pytest.fail(f"image {IMAGE} missing: run `bash scripts/bootstrap.sh` first")
    if docker("container", "inspect", CONTAINER).returncode == 0:
        pytest.fail(
            f"container {CONTAINER} already exists (an interrupted run?): remove it with "
            f"`docker rm -f -v {CONTAINER}` after checking nobody else uses it"
        )
    started = docker(
        "run", "-d", "--name", CONTAINER, "--label", "opsauto.test=pg_modules",
        "-e", "POSTGRES_USER=postgres", "-e", f"POSTGRES_PASSWORD={PASSWORD}", IMAGE,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr.decode()
    try:
        deadline = time.monotonic() + 90
        for _ in range(180):
            # TCP only answers once the entrypoint's init phase is over
            ready = docker("exec", CONTAINER, "pg_isready", "-h", "127.0.0.1", "-q", timeout=10)
            if ready.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert ready.returncode == 0, docker("logs", CONTAINER).stderr.decode()[-3000:]
        psql("postgres", "CREATE DATABASE shop;")
        psql("shop", SHOP_SQL)
        yield CONTAINER
    finally:
        logs = docker("logs", "--tail", "30", CONTAINER)
        print(logs.stdout.decode(), logs.stderr.decode())
        docker("rm", "-f", "-v", CONTAINER, timeout=120)


@pytest.fixture(scope="module")
def big_db(pg):
    """A ~200 MB database whose dump takes seconds (for kill and disk-full tests)."""
    psql("postgres", "CREATE DATABASE big;")
    psql(
        "big",
        "CREATE TABLE blob AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) || "
        "md5((g * 13)::text) AS pad FROM generate_series(1, 1500000) g;",
    )
    return "big"


@pytest.fixture(scope="module")
def shop_backup(pg, tmp_path_factory):
    """The custom-format backup of ``shop`` (taken once, used by several tests)."""
    dest = tmp_path_factory.mktemp("backups")
    started = time.monotonic()
    result = backup(dest, "b1", login_password=PASSWORD)
    wall = time.monotonic() - started
    assert_ok(result, changed=True)
    # elapsed_seconds is the whole module run: at least the part under the lock that the
    # manifest records, and less than the whole ansible command around it.
    assert result["manifest"]["duration_seconds"] <= result["elapsed_seconds"] < wall
    return dest, result


# --------------------------------------------------------------------------- backup


def test_backup_writes_verified_private_files(shop_backup):
    dest, result = shop_backup
    path = Path(result["path"])
    assert path == dest / "b1" / "shop.dump"
    assert visible_files(dest / "b1") == ["shop.dump", "shop.manifest.json"]
    assert mode(dest / "b1") == 0o700
    assert mode(path) == 0o600
    assert mode(result["manifest_path"]) == 0o600
    manifest = json.loads(Path(result["manifest_path"]).read_text())
    assert manifest == result["manifest"]
    assert manifest["sha256"] == sha256(path) == result["sha256"]
    assert manifest["size"] == path.stat().st_size
    assert manifest["row_counts"] == SHOP_ROWS
    assert manifest["tools"]["pg_dump"].startswith("15")
    timings = manifest["timings"]
    assert 0 < timings["dump_seconds"] <= manifest["duration_seconds"]
    # custom archives are checked by pg_restore --list while they stream: nothing after it
    assert 0 <= timings["verify_seconds"] < 0.05
    assert manifest["verify_method"].startswith("pg_restore --list (custom archive streamed")
    assert manifest["verified"] is True
    assert manifest["format"] == "custom"
    assert manifest["server_version"].startswith("15")
    with path.open("rb") as handle:
        listing = docker("exec", "-i", CONTAINER, "pg_restore", "--list", stdin=handle)
    assert listing.returncode == 0, listing.stderr
    assert b"TABLE DATA public items" in listing.stdout


def test_second_run_and_check_mode_are_unchanged(shop_backup):
    dest, first = shop_backup
    before = (dest / "b1" / "shop.dump").stat().st_mtime_ns
    again = backup(dest, "b1", login_password=PASSWORD)
    assert_ok(again, changed=False)
    assert again["sha256"] == first["sha256"]
    checked = backup(dest, "b1", check=True)
    assert_ok(checked, changed=False)
    assert (dest / "b1" / "shop.dump").stat().st_mtime_ns == before


def test_check_mode_writes_nothing(pg, tmp_path):
    result = backup(tmp_path, "would", check=True)
    assert_ok(result, changed=True)
    assert result["msg"] == (
        f"would dump database shop from container {CONTAINER} to {tmp_path}/would/shop.dump"
    )
    assert list(tmp_path.iterdir()) == []


def test_wrong_password_fails_clearly_without_file(pg, tmp_path):
    result = backup(tmp_path, "pw", login_password="not-the-password")
    assert_failed(result, 'password authentication failed for user "postgres"', "login_password")
    assert "not-the-password" not in json.dumps(result)
    assert visible_files(tmp_path / "pw") == []


def test_missing_database_fails_clearly_without_file(pg, tmp_path):
    result = backup(tmp_path, "nodb", database="nope")
    assert_failed(result, 'database "nope" does not exist in container', "database option")
    assert visible_files(tmp_path / "nodb") == []


def test_two_backups_with_the_same_id_at_once(pg, tmp_path):
    args = {
        "container": CONTAINER,
        "login_user": "postgres",
        "database": "shop",
        "dest_dir": str(tmp_path),
        "backup_id": "race",
    }
    procs = [
        subprocess.Popen(
            ansible_argv("pg_backup", args),
            cwd=ROOT,
            env=ansible_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        results.append(parse_result(out, err))
    winners = [r for r in results if not r.get("failed") and r["changed"]]
    assert len(winners) == 1, results
    for other in results:
        if other is not winners[0]:
            assert other.get("failed") or other["changed"] is False, other
            if other.get("failed"):
                assert "another pg_backup run" in other["msg"], other["msg"]
    directory = tmp_path / "race"
    assert visible_files(directory) == ["shop.dump", "shop.manifest.json"]
    manifest = json.loads((directory / "shop.manifest.json").read_text())
    assert manifest["sha256"] == sha256(directory / "shop.dump")


# --------------------------------------------------------------------------- restore


def test_restore_new_equals_source_row_by_row(shop_backup):
    _, backed_up = shop_backup
    checked = restore(backed_up["path"], "shop_copy", check=True)
    assert_ok(checked, changed=True)
    assert "shop_copy" not in databases()
    result = restore(backed_up["path"], "shop_copy", login_password=PASSWORD)
    assert_ok(result, changed=True)
    assert result["restored_rows"] == SHOP_ROWS
    for table in ("items", "sales.orders", "empty_table"):
        assert table_rows("shop_copy", table) == table_rows("shop", table)
    again = restore(backed_up["path"], "shop_copy")
    assert_ok(again, changed=False)
    clash = restore(backed_up["path"], "shop")
    assert_failed(clash, "already exists", "mode=replace")


def test_restore_replace_brings_rows_back_and_keeps_previous(pg, tmp_path):
    psql("postgres", "CREATE DATABASE live TEMPLATE shop;")
    taken = backup(tmp_path, "r1", database="live")
    assert_ok(taken, changed=True)
    psql("live", "DELETE FROM sales.orders WHERE id > 10; DELETE FROM items WHERE id > 100;")
    damaged = table_rows("live", "sales.orders")
    planned = restore(taken["path"], "live", check=True, mode="replace")
    assert_ok(planned, changed=True)
    assert planned["previous_database"] == "live__pre_r1"
    assert "live__pre_r1" not in databases()
    result = restore(taken["path"], "live", mode="replace", login_password=PASSWORD)
    assert_ok(result, changed=True)
    assert result["previous_database"] == "live__pre_r1"
    assert result["restored_rows"] == SHOP_ROWS
    for table in ("items", "sales.orders"):
        assert table_rows("live", table) == table_rows("shop", table)
    assert table_rows("live__pre_r1", "sales.orders") == damaged
    assert not [name for name in databases() if "__restore_" in name]
    assert_ok(restore(taken["path"], "live", mode="replace"), changed=False)


def database_properties(name: str) -> list[str]:
    """Encoding, locale, tablespace, connection limit, owner, ACL; then the settings in it."""
    return psql(
        "postgres",
        f"""
SELECT pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, t.spcname, d.datconnlimit,
       pg_get_userbyid(d.datdba), d.datacl::text
  FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = '{name}';
SELECT coalesce(pg_get_userbyid(nullif(s.setrole, 0)), 'ALL') || ':'
       || array_to_string(ARRAY(SELECT unnest(s.setconfig) ORDER BY 1), ';')
  FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
 WHERE d.datname = '{name}' ORDER BY 1;
""",
    ).splitlines()


def test_replace_keeps_the_live_databases_properties(pg, tmp_path):
    """pg_restore without --create carries none of them: each is compared before and after."""
    psql(
        "postgres",
        "CREATE ROLE props_owner; CREATE ROLE props_reader LOGIN;\n"
        "CREATE DATABASE props_src OWNER props_owner TEMPLATE template0 ENCODING 'UTF8';",
    )
    psql("props_src", "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 5);")
    taken = backup(tmp_path, "p1", database="props_src")
    assert_ok(taken, changed=True)
    place = "/var/lib/postgresql/ts_props"
    made = docker("exec", "-u", "postgres", CONTAINER, "mkdir", "-p", place)
    assert made.returncode == 0, made.stderr.decode()
    psql("postgres", f"CREATE TABLESPACE ts_props LOCATION '{place}';")
    psql(
        "postgres",
        "CREATE DATABASE props OWNER props_owner TEMPLATE template0 ENCODING 'LATIN1' "
        "LC_COLLATE 'C' LC_CTYPE 'C' TABLESPACE ts_props;\n"
        "ALTER DATABASE props SET work_mem = '7MB';\n"
        'ALTER DATABASE props SET search_path = "$user", public, extra;\n'
        "REVOKE CONNECT, TEMPORARY ON DATABASE props FROM PUBLIC;\n"
        "GRANT CONNECT ON DATABASE props TO props_reader;\n"
        "GRANT CREATE ON DATABASE props TO props_reader WITH GRANT OPTION;\n"
        "ALTER ROLE props_reader IN DATABASE props SET statement_timeout = '5s';\n"
        "ALTER DATABASE props CONNECTION LIMIT 50;",
    )
    psql("props", "CREATE TABLE t (id int);")
    before = database_properties("props")
    encoding, collate, ctype, tablespace, limit, owner, acl = before[0].split("|")
    assert (encoding, collate, ctype, tablespace, limit) == ("LATIN1", "C", "C", "ts_props", "50")
    assert owner == "props_owner"
    entries = acl.strip("{}").split(",")
    assert "props_reader=C*c/props_owner" in entries, acl
    assert not [entry for entry in entries if entry.startswith("=")], acl  # PUBLIC: nothing
    assert before[1:] == [
        'ALL:search_path="$user", public, extra;work_mem=7MB',
        "props_reader:statement_timeout=5s",
    ]
    result = restore(taken["path"], "props", mode="replace")
    assert_ok(result, changed=True)
    assert psql("props", "SELECT count(*) FROM t;") == "5"  # the dump's content
    after = database_properties("props")
    assert after[0] == before[0]  # encoding, locale, tablespace, limit, owner, ACL
    assert after[1:] == before[1:]  # ALTER DATABASE ... SET, ALTER ROLE ... IN DATABASE
    assert result["database_properties"]["encoding"] == "LATIN1"
    psql("postgres", 'DROP DATABASE "props__pre_p1"; DROP DATABASE props;')


def test_missing_roles_fail_naming_them_or_restore_without_owner(pg, tmp_path):
    """A server without the dump's roles (a fresh server): a clear error, or --no-owner."""
    psql("postgres", "CREATE ROLE ghost_owner; CREATE ROLE ghost_reader; CREATE DATABASE ghosts;")
    psql(
        "ghosts",
        "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 4);\n"
        "ALTER TABLE t OWNER TO ghost_owner; GRANT SELECT ON t TO ghost_reader;",
    )
    taken = backup(tmp_path, "g1", database="ghosts")
    assert_ok(taken, changed=True)
    psql("postgres", "DROP DATABASE ghosts; DROP ROLE ghost_owner; DROP ROLE ghost_reader;")
    failed = restore(taken["path"], "ghosts_new")
    assert_failed(failed, "ghost_owner", "do not exist", "no_owner=true", "globals.sql")
    assert "ghosts_new" not in databases()
    result = restore(taken["path"], "ghosts_new", no_owner=True)
    assert_ok(result, changed=True)
    assert result["restored_rows"] == {"public.t": 4}
    owner = psql("ghosts_new", "SELECT tableowner FROM pg_tables WHERE tablename = 't';")
    assert owner == "postgres"
    psql("postgres", "DROP DATABASE ghosts_new;")


def test_corrupted_backup_is_refused_and_live_db_untouched(shop_backup, tmp_path):
    _, backed_up = shop_backup
    copy_dir = tmp_path / "b1"
    copy_dir.mkdir()
    data = bytearray(Path(backed_up["path"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy_dir / "shop.dump").write_bytes(bytes(data))
    (copy_dir / "shop.manifest.json").write_bytes(Path(backed_up["manifest_path"]).read_bytes())
    before = {table: table_rows("shop", table) for table in ("items", "sales.orders")}
    names = databases()
    result = restore(str(copy_dir / "shop.dump"), "shop", mode="replace")
    assert_failed(result, "corrupt", "sha256 check failed")
    assert {table: table_rows("shop", table) for table in before} == before
    assert databases() == names


def test_restore_takes_over_the_check_mode_verification_of_an_unchanged_file(shop_backup, tmp_path):
    """The restore role's plan step (check mode) verifies; its restore step hands that over."""
    _, backed_up = shop_backup
    copy_dir = tmp_path / "b1"
    copy_dir.mkdir()
    dump = copy_dir / "shop.dump"
    dump.write_bytes(Path(backed_up["path"]).read_bytes())
    (copy_dir / "shop.manifest.json").write_bytes(Path(backed_up["manifest_path"]).read_bytes())
    planned = restore(str(dump), "shop_reuse", check=True)
    assert_ok(planned, changed=True)
    verified = planned["verification"]["backup"]
    assert verified["file"]["size"] == backed_up["size"]
    assert "reused" not in verified
    # damaged after the check (same size, new mtime): verified again, and refused
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    refused = restore(str(dump), "shop_reuse", verified=verified)
    assert_failed(refused, "corrupt", "sha256 check failed")
    assert "shop_reuse" not in databases()
    # intact again: a new check, whose result the restore takes over without reading the file
    dump.write_bytes(Path(backed_up["path"]).read_bytes())
    planned = restore(str(dump), "shop_reuse", check=True)
    assert_ok(planned, changed=True)
    result = restore(str(dump), "shop_reuse", verified=planned["verification"]["backup"])
    assert_ok(result, changed=True)
    assert "not read again" in result["verification"]["backup"]["reused"]
    assert result["restored_rows"] == SHOP_ROWS
    psql("postgres", "DROP DATABASE shop_reuse;")


def test_globals_dump_cannot_be_restored(pg, tmp_path):
    taken = backup(tmp_path, "g1", mode="globals", database=None)
    assert_ok(taken, changed=True)
    assert taken["path"].endswith("/g1/globals.sql")
    result = restore(taken["path"], "whatever")
    assert_failed(result, "mode=globals", "single-database dumps only")


def test_directory_format_parallel_round_trip(pg, tmp_path):
    taken = backup(tmp_path, "d1", format="directory", jobs=2, login_password=PASSWORD)
    assert_ok(taken, changed=True)
    assert taken["path"].endswith("/d1/shop.dir.tar")
    assert taken["manifest"]["verify_method"].startswith("pg_restore --list")
    leftovers = docker("exec", CONTAINER, "sh", "-c", "ls -d /tmp/opsauto-pg.* 2>/dev/null")
    assert leftovers.stdout.strip() == b""
    result = restore(taken["path"], "shop_dir", jobs=2)
    assert_ok(result, changed=True)
    for table in ("items", "sales.orders"):
        assert table_rows("shop_dir", table) == table_rows("shop", table)


def test_gzip_plain_round_trip(pg, tmp_path):
    taken = backup(tmp_path, "z1", format="plain", compression="gzip")
    assert_ok(taken, changed=True)
    path = Path(taken["path"])
    assert path.name == "shop.sql.gz"
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert sha256(path) == taken["manifest"]["sha256"]
    result = restore(str(path), "shop_gz")
    assert_ok(result, changed=True)
    assert result["restored_rows"] == SHOP_ROWS
    for table in ("items", "sales.orders"):
        assert table_rows("shop_gz", table) == table_rows("shop", table)


def test_compress_level_reaches_pg_dump_and_the_dump_restores(pg, tmp_path):
    stored = backup(tmp_path, "l0", compress_level=0)
    smallest = backup(tmp_path, "l9", compress_level=9)
    assert_ok(stored, changed=True)
    assert_ok(smallest, changed=True)
    assert (stored["manifest"]["compress_level"], smallest["manifest"]["compress_level"]) == (0, 9)
    # -Z 0 stores the table data as text; compressed blocks do not show it
    assert b"item 119\t148.75" in Path(stored["path"]).read_bytes()
    assert b"item 119\t148.75" not in Path(smallest["path"]).read_bytes()
    assert stored["size"] > smallest["size"]
    result = restore(stored["path"], "shop_l0")
    assert_ok(result, changed=True)
    assert result["restored_rows"] == SHOP_ROWS
    refused = backup(tmp_path, "lp", format="plain", compress_level=1)
    assert_failed(refused, "remove compress_level", "'compression'")
    assert visible_files(tmp_path / "lp") == []


# --------------------------------------------------------------------------- encryption


@pytest.fixture(scope="module")
def age_keys(tmp_path_factory):
    """Two real age identities (files) and their public keys, made with age-keygen."""
    directory = tmp_path_factory.mktemp("age")
    keys = {}
    for name in ("ops", "other"):
        identity = directory / f"{name}.txt"
        made = subprocess.run(
            ["age-keygen", "-o", str(identity)], capture_output=True, text=True, check=False
        )
        assert made.returncode == 0, "install age (apt-get install age): " + made.stderr
        public = subprocess.run(
            ["age-keygen", "-y", str(identity)], capture_output=True, text=True, check=True
        ).stdout.strip()
        keys[name] = (str(identity), public)
    return keys


def secret_of(identity: str) -> str:
    lines = Path(identity).read_text().splitlines()
    return next(line for line in lines if line.startswith("AGE-SECRET-KEY-"))


def test_encrypted_custom_round_trip_leaves_only_ciphertext(pg, age_keys, tmp_path):
    identity, public = age_keys["ops"]
    taken = backup(tmp_path, "e1", encrypt_recipients=[public], login_password=PASSWORD)
    assert_ok(taken, changed=True)
    path = Path(taken["path"])
    assert path == tmp_path / "e1" / "shop.dump.age"
    assert visible_files(tmp_path / "e1") == ["shop.dump.age", "shop.manifest.json"]
    assert mode(path) == 0o600
    data = path.read_bytes()
    assert data.startswith(b"age-encryption.org/v1\n")
    assert b"PGDMP" not in data
    assert b"item 17" not in data
    manifest = taken["manifest"]
    assert manifest["encryption"] == {"tool": "age", "recipients": [public]}
    assert manifest["sha256"] == sha256(path)
    assert manifest["size"] == len(data)
    assert manifest["plaintext_sha256"] != manifest["sha256"]
    assert manifest["verify_method"].startswith("pg_restore -f /dev/null")
    assert manifest["row_counts"] == SHOP_ROWS
    plain = subprocess.run(
        ["age", "-d", "-i", identity, str(path)], capture_output=True, check=True
    ).stdout
    assert plain.startswith(b"PGDMP")
    assert hashlib.sha256(plain).hexdigest() == manifest["plaintext_sha256"]
    again = backup(tmp_path, "e1", encrypt_recipients=[public])
    assert_ok(again, changed=False)
    assert sha256(path) == manifest["sha256"]

    result = restore(str(path), "shop_enc", decrypt_identity_file=identity)
    assert_ok(result, changed=True)
    assert result["restored_rows"] == SHOP_ROWS
    assert result["verification"]["backup"]["plaintext_sha256"] == manifest["plaintext_sha256"]
    for table in ("items", "sales.orders", "empty_table"):
        assert table_rows("shop_enc", table) == table_rows("shop", table)
    assert secret_of(identity) not in json.dumps(result)


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_encrypted_plain_round_trip(pg, age_keys, tmp_path, compression):
    identity, public = age_keys["ops"]
    _, other = age_keys["other"]
    taken = backup(
        tmp_path, "p1", format="plain", compression=compression, encrypt_recipients=[public, other]
    )
    assert_ok(taken, changed=True)
    path = Path(taken["path"])
    assert path.name.endswith(".age")
    assert path.name.startswith("shop.sql")
    data = path.read_bytes()
    assert b"item 17" not in data
    assert b"PostgreSQL database dump" not in data
    assert taken["manifest"]["verify_method"].startswith("trailer")
    assert taken["manifest"]["encryption"]["recipients"] == [public, other]
    database = f"shop_plain_{compression}"
    result = restore(str(path), database, decrypt_identity_file=identity, login_password=PASSWORD)
    assert_ok(result, changed=True)
    assert result["restored_rows"] == SHOP_ROWS
    for table in ("items", "sales.orders"):
        assert table_rows(database, table) == table_rows("shop", table)


def test_encrypted_directory_round_trip(pg, age_keys, tmp_path):
    identity, public = age_keys["ops"]
    taken = backup(tmp_path, "d1", format="directory", jobs=2, encrypt_recipients=[public])
    assert_ok(taken, changed=True)
    assert taken["path"].endswith("/d1/shop.dir.tar.age")
    assert b"ustar" not in Path(taken["path"]).read_bytes()
    leftovers = docker("exec", CONTAINER, "sh", "-c", "ls -d /tmp/opsauto-pg.* 2>/dev/null")
    assert leftovers.stdout.strip() == b""
    result = restore(taken["path"], "shop_dir_enc", jobs=2, decrypt_identity_file=identity)
    assert_ok(result, changed=True)
    assert result["restored_rows"] == SHOP_ROWS


@pytest.fixture(scope="module")
def encrypted_live(pg, age_keys, tmp_path_factory):
    """Database ``elive`` (a copy of shop) and its encrypted backup."""
    _, public = age_keys["ops"]
    psql("postgres", "CREATE DATABASE elive TEMPLATE shop;")
    dest = tmp_path_factory.mktemp("enc")
    taken = backup(dest, "l1", database="elive", encrypt_recipients=[public])
    assert_ok(taken, changed=True)
    psql("elive", "DELETE FROM sales.orders WHERE id > 10;")
    return taken


def live_state():
    return table_rows("elive", "sales.orders"), databases()


def test_encrypted_restore_without_identity_is_refused(encrypted_live):
    before = live_state()
    result = restore(encrypted_live["path"], "elive", mode="replace")
    assert_failed(result, "encrypted with age", "decrypt_identity_file", "Nothing was changed")
    checked = restore(encrypted_live["path"], "elive", mode="replace", check=True)
    assert_failed(checked, "decrypt_identity_file")
    assert live_state() == before


def test_encrypted_restore_with_wrong_identity_is_refused(encrypted_live, age_keys):
    before = live_state()
    wrong, _ = age_keys["other"]
    result = restore(encrypted_live["path"], "elive", mode="replace", decrypt_identity_file=wrong)
    assert_failed(result, "no identity matched", wrong, "Nothing was changed")
    assert secret_of(wrong) not in json.dumps(result)
    assert live_state() == before


def test_corrupted_ciphertext_is_refused(encrypted_live, age_keys, tmp_path):
    identity, _ = age_keys["ops"]
    source = Path(encrypted_live["path"])
    manifest = json.loads(Path(encrypted_live["manifest_path"]).read_text())
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy_dir = tmp_path / "l1"
    copy_dir.mkdir()
    (copy_dir / source.name).write_bytes(bytes(data))
    (copy_dir / "elive.manifest.json").write_text(json.dumps(manifest))
    before = live_state()
    result = restore(
        str(copy_dir / source.name), "elive", mode="replace", decrypt_identity_file=identity
    )
    assert_failed(result, "corrupt", "sha256 check failed")
    # a manifest rewritten to match the damaged file: age's authentication still refuses it
    manifest.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    (copy_dir / "elive.manifest.json").write_text(json.dumps(manifest))
    result = restore(
        str(copy_dir / source.name), "elive", mode="replace", decrypt_identity_file=identity
    )
    assert_failed(result, "corrupt", "age decryption failed")
    assert live_state() == before


def test_encrypted_replace_swaps_in_verified_copy(encrypted_live, age_keys):
    identity, _ = age_keys["ops"]
    result = restore(
        encrypted_live["path"], "elive", mode="replace", decrypt_identity_file=identity
    )
    assert_ok(result, changed=True)
    assert table_rows("elive", "sales.orders") == table_rows("shop", "sales.orders")
    assert result["previous_database"] == "elive__pre_l1"
    assert not [name for name in databases() if "__restore_" in name]


def test_bad_recipient_is_refused_naming_it(pg, tmp_path, age_keys):
    result = backup(tmp_path, "bad", encrypt_recipients=["age1notakey"])
    assert_failed(result, "'age1notakey' is not an age public key")
    identity, _ = age_keys["ops"]
    secret = secret_of(identity)
    result = backup(tmp_path, "bad", encrypt_recipients=[secret])
    assert_failed(result, "age identity (a secret key")
    assert secret not in result["msg"]
    assert visible_files(tmp_path / "bad") == []


# --------------------------------------------------------------------------- interrupted runs


def allows_connections(database: str) -> bool:
    return (
        psql("postgres", f"SELECT datallowconn FROM pg_database WHERE datname = '{database}';")
        == "t"
    )


def test_rerun_repairs_what_a_killed_replace_left_and_says_so(pg, tmp_path):
    psql("postgres", "CREATE DATABASE blk TEMPLATE shop;")
    taken = backup(tmp_path, "k1", database="blk")
    assert_ok(taken, changed=True)
    # killed after blocking the live database, before the renames
    psql("postgres", "ALTER DATABASE blk WITH ALLOW_CONNECTIONS false;")
    result = restore(taken["path"], "blk", mode="replace")
    assert_ok(result, changed=True)
    assert "repaired" in result["msg"], result["msg"]
    assert "database blk did not accept connections" in result["msg"]
    assert result["repairs"], result
    assert allows_connections("blk")
    assert allows_connections("blk__pre_k1")
    assert table_rows("blk", "items") == table_rows("shop", "items")
    # killed after the renames committed, before the old database got its connections back
    psql("postgres", "ALTER DATABASE blk__pre_k1 WITH ALLOW_CONNECTIONS false;")
    again = restore(taken["path"], "blk", mode="replace")
    assert_ok(again)
    assert "repaired" in again["msg"], again["msg"]
    assert allows_connections("blk__pre_k1")
    # a backup of the repaired database works again (the role's safety backup)
    assert_ok(backup(tmp_path / "after", "k2", database="blk"), changed=True)
    # repair_only (the role, before its safety backup): check mode reports, then repairs
    psql("postgres", "ALTER DATABASE blk WITH ALLOW_CONNECTIONS false;")
    planned = restore(taken["path"], "blk", check=True, repair_only=True)
    assert_ok(planned, changed=True)
    assert "would be allowed again" in planned["msg"], planned["msg"]
    assert not allows_connections("blk")
    assert_ok(restore(taken["path"], "blk", repair_only=True), changed=True)
    assert allows_connections("blk")
    assert_ok(restore(taken["path"], "blk", repair_only=True), changed=False)


def test_restore_again_when_the_database_changed_since(pg, tmp_path):
    psql("postgres", "CREATE DATABASE chg TEMPLATE shop;")
    taken = backup(tmp_path, "c1", database="chg")
    assert_ok(taken, changed=True)
    original = table_rows("chg", "items")
    assert_ok(restore(taken["path"], "chg_copy"), changed=True)
    assert_ok(restore(taken["path"], "chg_copy"), changed=False)  # nothing changed: no-op
    # an UPDATE keeps every row count: the marker alone must not hide it
    psql("chg_copy", "UPDATE items SET name = 'changed' WHERE id = 7;")
    result = restore(taken["path"], "chg_copy", mode="replace")
    assert_ok(result, changed=True)
    assert "written since" in result["msg"], result["msg"]
    assert table_rows("chg_copy", "items") == original
    space = result["space"]  # the free space check before the replace, with its figures
    assert space["where"] == "/var/lib/postgresql/data"
    assert space["free"] > space["needed"] > space["database_size"] > 0
    assert_ok(restore(taken["path"], "chg_copy", mode="replace"), changed=False)
    # changed again: the previous copy of the first replace is kept, the next gets a new name
    psql("chg_copy", "INSERT INTO empty_table VALUES (1);")
    third = restore(taken["path"], "chg_copy", mode="replace")
    assert_ok(third, changed=True)
    assert third["previous_database"] not in (None, result["previous_database"])
    assert table_rows("chg_copy", "items") == original
    assert table_rows("chg_copy", "empty_table") == ""
    # mode=new refuses a changed database with the reason
    psql("chg_copy", "UPDATE items SET name = 'x' WHERE id = 1;")
    assert_failed(restore(taken["path"], "chg_copy"), "changed since", "mode=replace")


def test_dump_of_a_newer_pg_dump_is_refused_naming_both_versions(shop_backup, tmp_path):
    _, backed_up = shop_backup
    copy_dir = tmp_path / "b1"
    copy_dir.mkdir()
    (copy_dir / "shop.dump").write_bytes(Path(backed_up["path"]).read_bytes())
    manifest = json.loads(Path(backed_up["manifest_path"]).read_text())
    manifest["pg_dump_version"] = "99.1"
    (copy_dir / "shop.manifest.json").write_text(json.dumps(manifest))
    names = databases()
    result = restore(str(copy_dir / "shop.dump"), "shop_newer")
    assert_failed(result, "99.1", "15.", "newer")
    assert "corrupt" not in result["msg"]
    assert databases() == names


# --------------------------------------------------------------------------- failures


def test_full_backup_disk_fails_clearly_without_partial(big_db, tmp_path):
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the test needs root): {mounted.stderr}")
    try:
        result = backup(mount_point, "f1", database=big_db)
        assert_failed(result, "no space left")
        assert visible_files(mount_point / "f1") == []
    finally:
        subprocess.run(["umount", str(mount_point)], check=False, timeout=60)
    # the abandoned pg_dump's server session is terminated, not left holding a snapshot
    sql = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{big_db}';"
    for _ in range(50):
        if psql("postgres", sql) == "0":
            break
        time.sleep(0.2)
    assert psql("postgres", sql) == "0"


def test_container_killed_mid_dump_leaves_no_backup(big_db, tmp_path):
    """Must stay the last test: the container is dead afterwards."""
    args = {
        "container": CONTAINER,
        "login_user": "postgres",
        "database": big_db,
        "format": "plain",
        "dest_dir": str(tmp_path),
        "backup_id": "k1",
    }
    proc = subprocess.Popen(
        ansible_argv("pg_backup", args), cwd=ROOT, env=ansible_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    directory = tmp_path / "k1"
    try:
        deadline = time.monotonic() + 120
        for _ in range(1200):  # until the dump has streamed a few MB
            partial = [p for p in visible_files(directory) if ".partial-" in p]
            if partial:
                with contextlib.suppress(FileNotFoundError):
                    if (directory / partial[0]).stat().st_size > 4 * 1024 * 1024:
                        break
            assert proc.poll() is None, "the backup ended before the container was killed"
            assert time.monotonic() < deadline, "the dump never started streaming"
            time.sleep(0.1)
        killed = docker("kill", CONTAINER)
        assert killed.returncode == 0, killed.stderr
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = parse_result(out, err)
    assert_failed(result, "killed")
    assert visible_files(directory) == []
