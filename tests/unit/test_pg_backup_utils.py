"""Unit tests of module_utils/pg_*.py, pipelines.py and fileops.py (pytest, no Docker needed).

Producers are real subprocesses (``python -c ...``), files are real files under tmp_path,
failures are the real exception types the modules turn into ``fail_json``.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import importlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import ansible.module_utils
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_UTILS = ROOT / "module_utils"
if str(MODULE_UTILS) not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(MODULE_UTILS))
fileops = importlib.import_module("ansible.module_utils.fileops")
ops_errors = importlib.import_module("ansible.module_utils.ops_errors")
pg_artifacts = importlib.import_module("ansible.module_utils.pg_artifacts")
pg_db_properties = importlib.import_module("ansible.module_utils.pg_db_properties")
pg_dump = importlib.import_module("ansible.module_utils.pg_dump")
pg_restore = importlib.import_module("ansible.module_utils.pg_restore")
pg_session = importlib.import_module("ansible.module_utils.pg_session")
pg_swap = importlib.import_module("ansible.module_utils.pg_swap")
pipelines = importlib.import_module("ansible.module_utils.pipelines")

PY = sys.executable
DUMP_TRAILER = "\n--\n-- PostgreSQL database dump complete\n--\n\n"


def producer(payload_expr: str, exit_code: int = 0, stderr: str = "") -> list[str]:
    """argv of a real process writing ``payload_expr`` (a Python bytes expression) to stdout."""
    code = (
        "import sys\n"
        f"data = {payload_expr}\n"
        "for i in range(0, len(data), 65536):\n"
        "    sys.stdout.buffer.write(data[i:i + 65536])\n"
        "sys.stdout.flush()\n"
        f"sys.stderr.write({stderr!r})\n"
        f"sys.exit({exit_code})\n"
    )
    return [PY, "-c", code]


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------- streaming


def test_stream_to_file_hashes_what_it_writes(tmp_path):
    out = tmp_path / "out.bin"
    out.touch()
    result = pipelines.stream_to_file(producer("bytes(range(256)) * 20000"), str(out))
    data = bytes(range(256)) * 20000
    assert result.size == len(data) == out.stat().st_size
    assert result.sha256 == hashlib.sha256(data).hexdigest() == fileops.sha256_file(str(out))[0]
    assert result.tail == data[-pipelines.TAIL_BYTES :]
    assert result.check_error is None
    assert result.plaintext_sha256 is None  # not encrypted


def test_stream_to_file_gzip_compresses_on_the_host(tmp_path):
    out = tmp_path / "out.sql.gz"
    out.touch()
    expr = f"b'INSERT INTO t VALUES (1);\\n' * 100000 + {DUMP_TRAILER.encode()!r}"
    text = b"INSERT INTO t VALUES (1);\n" * 100000 + DUMP_TRAILER.encode()
    result = pipelines.stream_to_file(producer(expr), str(out), compression="gzip")
    raw = out.read_bytes()
    assert gzip.decompress(raw) == text
    assert result.size == len(raw) < len(text) // 10
    assert result.sha256 == hashlib.sha256(raw).hexdigest()
    assert pg_artifacts.check_plain_trailer(str(out), "database", "gzip").startswith("trailer")
    # the tail is of the uncompressed output
    assert pg_artifacts.tail_has_trailer(result.tail, "-- PostgreSQL database dump complete")


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd binary not installed")
def test_stream_to_file_zstd_round_trip(tmp_path):
    out = tmp_path / "out.sql.zst"
    out.touch()
    expr = f"b'SELECT 1;\\n' * 50000 + {DUMP_TRAILER.encode()!r}"
    text = b"SELECT 1;\n" * 50000 + DUMP_TRAILER.encode()
    result = pipelines.stream_to_file(producer(expr), str(out), compression="zstd")
    back = subprocess.run(["zstd", "-dc", str(out)], capture_output=True, check=True).stdout
    assert back == text
    assert result.sha256 == fileops.sha256_file(str(out))[0]
    assert result.size == out.stat().st_size
    assert pg_artifacts.check_plain_trailer(str(out), "database", "zstd")


def test_failing_producer_raises_with_its_stderr(tmp_path):
    out = tmp_path / "out.bin"
    out.touch()
    argv = producer("b'x' * 3_000_000", exit_code=1, stderr="pg_dump: error: connection lost")
    with pytest.raises(ops_errors.CommandError, match="connection lost") as info:
        pipelines.stream_to_file(argv, str(out))
    assert info.value.returncode == 1


def test_missing_program_is_reported_with_the_fix(tmp_path):
    out = tmp_path / "out.bin"
    out.touch()
    with pytest.raises(ops_errors.PgError, match="docker_cli"):
        pipelines.stream_to_file([str(tmp_path / "no-such-docker"), "exec"], str(out))


def checker(code: str) -> list[str]:
    """argv of a real process that reads its stdin as ``code`` says, then exits."""
    return [PY, "-c", "import sys\n" + code]


def test_stream_check_that_reads_only_the_start_passes_and_the_file_is_whole(tmp_path):
    # like pg_restore --list: reads the header, exits 0, stops reading the rest
    out = tmp_path / "out.dump"
    out.touch()
    head_ok = checker("sys.exit(0 if sys.stdin.buffer.read(5) == b'PGDMP' else 3)")
    result = pipelines.stream_to_file(
        producer("b'PGDMP' + b'0' * 5_000_000"), str(out), check_argv=head_ok
    )
    assert result.check_error is None
    assert result.size == 5_000_005 == out.stat().st_size
    assert result.sha256 == fileops.sha256_file(str(out))[0]


def test_stream_check_that_reads_everything_sees_every_byte(tmp_path):
    out = tmp_path / "out.dump"
    out.touch()
    counts = checker("sys.exit(0 if len(sys.stdin.buffer.read()) == 3_000_005 else 4)")
    result = pipelines.stream_to_file(
        producer("b'PGDMP' + b'1' * 3_000_000"), str(out), check_argv=counts
    )
    assert result.check_error is None


def test_stream_check_failure_is_reported_and_makes_the_dump_corrupt(tmp_path):
    out = tmp_path / "out.dump"
    out.touch()
    refuses = checker(
        "sys.stdin.buffer.read(5)\n"
        "sys.stderr.write('pg_restore: error: input file does not appear to be a valid archive')\n"
        "sys.exit(1)"
    )
    result = pipelines.stream_to_file(
        producer("b'garbage' * 500_000"), str(out), check_argv=refuses
    )
    assert "does not appear to be a valid archive" in result.check_error
    plan = {"format": "custom", "mode": "database", "recipients": []}
    with pytest.raises(
        ops_errors.CorruptBackupError, match="does not appear to be a valid archive"
    ):
        pg_dump.require_readable_stream(result, plan)


def test_failing_producer_wins_over_a_passing_check(tmp_path):
    out = tmp_path / "out.dump"
    out.touch()
    argv = producer(
        "b'PGDMP' + b'x' * 2_000_000", exit_code=1, stderr="server closed the connection"
    )
    head_ok = checker("sys.exit(0 if sys.stdin.buffer.read(5) == b'PGDMP' else 3)")
    with pytest.raises(ops_errors.CommandError, match="server closed the connection"):
        pipelines.stream_to_file(argv, str(out), check_argv=head_ok)


def test_produce_file_publishes_atomically_with_modes(tmp_path):
    final = tmp_path / "db.dump"
    with fileops.produce_file(str(final)) as partial:
        assert Path(partial).name.startswith(".db.dump.partial-")
        assert Path(partial).parent == tmp_path
        result = pipelines.stream_to_file(producer("b'PGDMP' + b'0' * 2_500_000"), partial)
        assert not final.exists()  # not before the block ends (the manifest is written here)
    assert final.stat().st_size == result.size == 2_500_005
    assert mode(final) == 0o600
    assert listing(tmp_path) == ["db.dump"]  # no partial file left


def test_produce_file_removes_partial_when_producer_fails(tmp_path):
    final = tmp_path / "db.dump"
    (tmp_path / "older.dump").write_bytes(b"earlier backup")
    argv = producer("b'y' * 2_000_000", exit_code=1, stderr="boom")
    with pytest.raises(ops_errors.CommandError, match="boom"):
        with fileops.produce_file(str(final)) as partial:
            pipelines.stream_to_file(argv, partial)
    assert listing(tmp_path) == ["older.dump"]
    assert (tmp_path / "older.dump").read_bytes() == b"earlier backup"


def test_produce_file_removes_file_when_verification_fails(tmp_path):
    final = tmp_path / "db.sql"
    published = []
    # a plain dump cut short: no completion trailer
    argv = producer("b'CREATE TABLE t (id int);\\n' * 1000")

    def dump_verify_publish():
        with fileops.produce_file(str(final)) as partial:
            pipelines.stream_to_file(argv, partial)
            pg_artifacts.check_plain_trailer(partial, "database", "none")
            published.append(partial)  # the manifest would be written here

    with pytest.raises(ops_errors.CorruptBackupError, match="truncated"):
        dump_verify_publish()
    assert published == []
    assert listing(tmp_path) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    """Writes go to /dev/full (ENOSPC on write), as on a full backup file system."""
    real_open = open

    def full_open(path, mode="r", *args, **kwargs):
        if ".partial-" in str(path) and "w" in mode:
            return real_open("/dev/full", "wb")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_open)
    final = tmp_path / "db.dump"
    with pytest.raises(ops_errors.FileOpsError, match="no space left on the device"):
        with fileops.produce_file(str(final)) as partial:
            pipelines.stream_to_file(producer("b'z' * 3_000_000"), partial)
    assert listing(tmp_path) == []


# --------------------------------------------------------------------------- manifest


def test_manifest_round_trip_is_atomic_and_private(tmp_path):
    path = tmp_path / "app.manifest.json"
    data = {
        "backup_id": "b1",
        "label": "app",
        "file": "app.dump",
        "mode": "database",
        "format": "custom",
        "sha256": "0" * 64,
        "size": 12,
        "row_counts": {"public.t": 3},
    }
    fileops.write_json_atomic(str(path), data)
    assert pg_artifacts.read_manifest(str(path)) == data
    assert mode(path) == 0o600
    assert listing(tmp_path) == ["app.manifest.json"]


def test_manifest_problems_are_real_errors(tmp_path):
    with pytest.raises(ops_errors.PgError, match="manifest_path"):
        pg_artifacts.read_manifest(str(tmp_path / "missing.manifest.json"))
    bad = tmp_path / "bad.manifest.json"
    bad.write_text("{not json")
    with pytest.raises(ops_errors.CorruptBackupError, match="cannot be read as JSON"):
        pg_artifacts.read_manifest(str(bad))
    bad.write_text(json.dumps({"backup_id": "b1"}))
    with pytest.raises(ops_errors.CorruptBackupError, match="lacks label, file"):
        pg_artifacts.read_manifest(str(bad))


def test_build_manifest_carries_plan_and_facts():
    plan = pg_dump.backup_plan(
        {"database": "app", "dest_dir": "/b", "backup_id": "x1", "format": "plain"}
    )
    manifest = pg_artifacts.build_manifest(plan, sha256="a" * 64, size=5, verified=True)
    assert manifest["file"] == "app.sql"
    assert manifest["mode"] == "database"
    assert manifest["format"] == "plain"
    assert manifest["sha256"] == "a" * 64
    assert manifest["verified"] is True


# --------------------------------------------------------------------------- trailers


@pytest.mark.parametrize(
    ("mode_name", "trailer"),
    [
        ("database", "-- PostgreSQL database dump complete"),
        ("cluster", "-- PostgreSQL database cluster dump complete"),
        ("globals", "-- PostgreSQL database cluster dump complete"),
    ],
)
def test_trailer_check_accepts_complete_dumps(tmp_path, mode_name, trailer):
    path = tmp_path / "d.sql"
    path.write_text("SET x = 1;\n" * 5000 + f"\n--\n{trailer}\n--\n\n")
    assert trailer in pg_artifacts.check_plain_trailer(str(path), mode_name, "none")


def test_trailer_check_accepts_the_unrestrict_line_of_newer_pg_dump(tmp_path):
    path = tmp_path / "d.sql"
    path.write_text("SET x = 1;\n" + DUMP_TRAILER + "\\unrestrict AbC123\n\n")
    assert pg_artifacts.check_plain_trailer(str(path), "database", "none")


def test_trailer_check_rejects_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "d.sql"
    path.write_text("--\n-- PostgreSQL database dump complete\n--\nCREATE TABLE late (id int);\n")
    with pytest.raises(ops_errors.CorruptBackupError):
        pg_artifacts.check_plain_trailer(str(path), "database", "none")
    # a single-database trailer does not complete a cluster dump
    path.write_text(DUMP_TRAILER)
    with pytest.raises(ops_errors.CorruptBackupError):
        pg_artifacts.check_plain_trailer(str(path), "cluster", "none")


def test_truncated_gzip_is_corrupt(tmp_path):
    path = tmp_path / "d.sql.gz"
    path.write_bytes(gzip.compress(b"SELECT 1;\n" * 10000 + DUMP_TRAILER.encode())[:-20])
    with pytest.raises(ops_errors.CorruptBackupError, match="truncated gzip"):
        pg_artifacts.check_plain_trailer(str(path), "database", "gzip")
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ops_errors.CorruptBackupError, match="not valid gzip"):
        pg_artifacts.check_plain_trailer(str(path), "database", "gzip")


# --------------------------------------------------------------------------- names


def test_backup_ids_and_labels_are_file_name_safe():
    assert pg_artifacts.check_name("20240502T091403_nightly-1.2", "backup_id")
    for bad in ["", "..", ".hidden", "a/b", "a b", "x;rm", "ü"]:
        with pytest.raises(ops_errors.PgError, match="not allowed"):
            pg_artifacts.check_name(bad, "backup_id")


def test_sanitize_label():
    assert pg_artifacts.sanitize_label("app") == "app"
    assert pg_artifacts.sanitize_label("my db/ü") == "my_db_"
    assert pg_artifacts.sanitize_label("..x") == "x"
    assert pg_artifacts.sanitize_label("") == "backup"


def test_artifact_names_and_their_labels():
    cases = {
        ("custom", "none"): "app.dump",
        ("directory", "none"): "app.dir.tar",
        ("plain", "none"): "app.sql",
        ("plain", "gzip"): "app.sql.gz",
        ("plain", "zstd"): "app.sql.zst",
    }
    for (fmt, compression), name in cases.items():
        assert pg_artifacts.artifact_name("app", fmt, compression) == name
        assert pg_artifacts.label_from_artifact(name) == "app"
    assert pg_artifacts.label_from_artifact("app.tar") is None
    with pytest.raises(ops_errors.PgError, match="format=plain only"):
        pg_artifacts.artifact_name("app", "custom", "gzip")


def test_pg_identifier_keeps_suffix_within_63_bytes():
    assert pg_artifacts.pg_identifier("app", "__pre_b1") == "app__pre_b1"
    long_name = pg_artifacts.pg_identifier("a" * 70, "__restore_0123abcd")
    assert len(long_name.encode()) == 63
    assert long_name.endswith("__restore_0123abcd")
    multibyte = pg_artifacts.pg_identifier("ä" * 40, "__pre_2024")
    assert len(multibyte.encode()) <= 63
    assert multibyte.endswith("__pre_2024")
    multibyte.encode("utf-8").decode("utf-8")  # no split character
    both_long = pg_artifacts.pg_identifier("b" * 60, "__pre_" + "x" * 60)
    assert len(both_long.encode()) <= 63
    other = pg_artifacts.pg_identifier("b" * 60, "__pre_" + "x" * 59 + "y")
    assert other != both_long  # the hash keeps long ids apart


def test_quoting_and_marker():
    assert pg_artifacts.quote_ident('we"ird') == '"we""ird"'
    assert pg_artifacts.quote_literal("it's") == "'it''s'"
    assert pg_artifacts.restore_marker("b1", "ab") == "opsauto-restore backup_id=b1 sha256=ab"


def test_compare_rows_reports_every_difference():
    assert pg_restore.compare_rows({"public.a": 1}, {"public.a": 1}) == []
    problems = pg_restore.compare_rows(
        {"public.a": 1, "public.b": 2}, {"public.a": 0, "public.c": 5}
    )
    assert problems == [
        "public.a: expected 1, found 0",
        "public.b: expected 2, found None",
        "public.c: expected None, found 5",
    ]


# --------------------------------------------------------------------------- options


def test_backup_plan_paths_and_defaults():
    plan = pg_dump.backup_plan({"database": "app", "dest_dir": "/backups", "backup_id": "n1"})
    assert plan["format"] == "custom"
    assert plan["label"] == "app"
    assert plan["path"] == "/backups/n1/app.dump"
    assert plan["manifest_path"] == "/backups/n1/app.manifest.json"
    cluster = pg_dump.backup_plan(
        {"mode": "cluster", "dest_dir": "/b", "backup_id": "n1", "compression": "gzip"}
    )
    assert (cluster["format"], cluster["name"]) == ("plain", "cluster.sql.gz")


def test_compress_level_becomes_pg_dump_z_and_goes_into_the_manifest():
    pg = pg_session.PgContainer("db1", "postgres")
    plan = pg_dump.backup_plan(
        {"database": "app", "dest_dir": "/b", "backup_id": "z1", "compress_level": 1}
    )
    command = pg_dump._dump_command(pg, plan, "00000003-1")
    assert command[command.index("-Z") + 1] == "1"
    assert command[-1] == "-Fc"
    assert pg_artifacts.build_manifest(plan)["compress_level"] == 1
    default = pg_dump.backup_plan({"database": "app", "dest_dir": "/b", "backup_id": "z2"})
    assert "-Z" not in pg_dump._dump_command(pg, default, "00000003-1")
    assert pg_artifacts.build_manifest(default)["compress_level"] is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"backup_id": "x"}, "needs the 'database' option"),
        ({"database": "a", "backup_id": "x", "jobs": 2}, "format=directory only"),
        ({"database": "a", "backup_id": "x", "compression": "zstd"}, "format=plain only"),
        ({"mode": "globals", "backup_id": "x", "format": "custom"}, "plain SQL only"),
        ({"database": "a", "backup_id": "../etc"}, "not allowed"),
        (
            {"database": "a", "backup_id": "x", "format": "plain", "compress_level": 1},
            "compressed on the host with 'compression'",
        ),
        ({"mode": "cluster", "backup_id": "x", "compress_level": 1}, "remove compress_level"),
        ({"database": "a", "backup_id": "x", "compress_level": 10}, "0 \\(none\\) to 9"),
    ],
)
def test_backup_plan_rejects_bad_combinations(params, message):
    with pytest.raises(ops_errors.PgError, match=message):
        pg_dump.backup_plan({"dest_dir": "/b", **params})


# --------------------------------------------------------------------------- containers


def test_password_goes_through_the_environment_only():
    pg = pg_session.PgContainer("db1", "app", "s3cret!")
    argv = pg.exec_argv(["pg_dump", *pg.conn_args("app")])
    assert "s3cret!" not in " ".join(argv)
    assert argv[:5] == ["docker", "exec", "-e", "PGPASSWORD", "-e"]
    assert "-t" not in argv
    assert "-it" not in argv
    assert pg.env()["PGPASSWORD"] == "s3cret!"
    assert pg.conn_args("app")[:2] == ["-h", "127.0.0.1"]


def test_without_password_the_local_socket_is_used(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "leaked-from-controller")
    pg = pg_session.PgContainer("db1", "postgres", "")
    assert pg.conn_args()[:2] == ["-h", "/var/run/postgresql"]
    assert "PGPASSWORD" not in pg.env()
    assert "PGPASSWORD" not in pg.exec_argv(["psql"], interactive=True)
    assert pg.exec_argv(["psql"], interactive=True)[:3] == ["docker", "exec", "-i"]


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        ('FATAL:  database "nope" does not exist', 'database "nope" does not exist in container C'),
        ('FATAL:  password authentication failed for user "app"', "check login_password"),
        ("Error response from daemon: Container abc is not running", "docker start C"),
        ("Error: No such container: C", "check the container option"),
        ('FATAL:  role "bob" does not exist', "check login_user"),
        ("pg_dump: error: could not write: No space left on device", "free space"),
        (
            'pg_dump: error: Dumping the contents of table "blob" failed: PQgetCopyData() '
            "failed.\npg_dump: detail: Error message from server: server closed the connection "
            "unexpectedly\n\tThis probably means the server terminated abnormally",
            "stopped or killed",
        ),
    ],
)
def test_errors_name_cause_and_fix(stderr, expected):
    assert expected in pg_session.PgContainer("C", "app").explain(stderr, 1)


def fake_docker(tmp_path: Path, has_sh: bool) -> str:
    """A docker CLI stand-in: `exec ... CONTAINER CMD...` runs CMD as the image would."""
    script = tmp_path / "docker"
    script.write_text(
        f"#!{PY}\n"
        "import sys\n"
        "cmd = sys.argv[sys.argv.index('C') + 1:]\n"
        "if cmd[0] == 'sh':\n"
        f"    if not {has_sh}:\n"
        "        sys.exit(127)\n"
        "    cmd = cmd[4:]\n"
        "else:\n"
        "    cmd = [cmd[0]]\n"
        "minor = {'pg_dump': 4, 'pg_dumpall': 5, 'pg_restore': 6}\n"
        "for program in cmd:\n"
        "    print(f'{program} (PostgreSQL) 15.{minor[program]} (Debian)')\n"
    )
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("has_sh", [True, False], ids=["one-exec", "no-sh-in-image"])
def test_client_versions_with_and_without_a_shell_in_the_image(tmp_path, has_sh):
    pg = pg_session.PgContainer("C", "app", docker_cli=fake_docker(tmp_path, has_sh))
    versions = pg.client_versions(("pg_dump", "pg_dumpall", "pg_restore"))
    # each program's own line, in order, in both ways of asking
    assert versions == {
        "pg_dump": "15.4 (Debian)",
        "pg_dumpall": "15.5 (Debian)",
        "pg_restore": "15.6 (Debian)",
    }


def test_missing_docker_cli_is_a_clear_error(tmp_path):
    pg = pg_session.PgContainer("C", "app", docker_cli=str(tmp_path / "docker"))
    with pytest.raises(ops_errors.PgError, match="not found: install it or set docker_cli"):
        pg.check_running()


# --------------------------------------------------------------------------- existing backups


def _plain_backup(tmp_path, content):
    plan = pg_dump.backup_plan(
        {"database": "app", "dest_dir": str(tmp_path), "backup_id": "b1", "format": "plain"}
    )
    os.makedirs(plan["directory"])
    Path(plan["path"]).write_bytes(content)
    sha256, size = fileops.sha256_file(plan["path"])
    manifest = pg_artifacts.build_manifest(plan, sha256=sha256, size=size, verify_method="trailer")
    fileops.write_json_atomic(plan["manifest_path"], manifest)
    return plan, manifest


def test_existing_backup_that_verifies_is_reused(tmp_path):
    plan, manifest = _plain_backup(tmp_path, b"SELECT 1;\n" + DUMP_TRAILER.encode())
    assert pg_dump.check_existing(None, plan) == manifest


def test_existing_backup_that_does_not_match_is_left_alone(tmp_path):
    plan, _ = _plain_backup(tmp_path, b"SELECT 1;\n" + DUMP_TRAILER.encode())
    data = bytearray(Path(plan["path"]).read_bytes())
    data[3] ^= 0xFF
    Path(plan["path"]).write_bytes(bytes(data))
    with pytest.raises(ops_errors.CorruptBackupError, match="does not match its manifest"):
        pg_dump.check_existing(None, plan)
    assert Path(plan["path"]).read_bytes() == bytes(data)


def test_existing_dump_without_manifest_is_refused(tmp_path):
    plan = pg_dump.backup_plan({"database": "app", "dest_dir": str(tmp_path), "backup_id": "b1"})
    os.makedirs(plan["directory"])
    Path(plan["path"]).write_bytes(b"something")
    with pytest.raises(ops_errors.PgError, match="manifest .* does not"):
        pg_dump.check_existing(None, plan)


def test_manifest_without_dump_means_dump_again(tmp_path):
    plan, _ = _plain_backup(tmp_path, b"x" + DUMP_TRAILER.encode())
    os.unlink(plan["path"])
    assert pg_dump.check_existing(None, plan) is None


def test_verify_backup_detects_a_flipped_byte(tmp_path):
    plan, manifest = _plain_backup(tmp_path, b"SELECT 1;\n" * 100 + DUMP_TRAILER.encode())
    assert pg_restore.verify_backup(None, plan["path"], manifest)["sha256"] == manifest["sha256"]
    data = bytearray(Path(plan["path"]).read_bytes())
    data[100] ^= 0x01
    Path(plan["path"]).write_bytes(bytes(data))
    with pytest.raises(ops_errors.CorruptBackupError, match="corrupt: sha256 check failed"):
        pg_restore.verify_backup(None, plan["path"], manifest)


def test_verify_backup_reports_the_sha256_before_the_readability_check(tmp_path):
    # both checks run at once; a truncated dump fails both, the sha256 is what is reported
    plan, manifest = _plain_backup(tmp_path, b"SELECT 1;\n" * 100 + DUMP_TRAILER.encode())
    data = Path(plan["path"]).read_bytes()
    Path(plan["path"]).write_bytes(data[: len(data) // 2])
    with pytest.raises(ops_errors.CorruptBackupError, match="corrupt: sha256 check failed"):
        pg_restore.verify_backup(None, plan["path"], manifest)
    # with a matching sha256, the readability check's verdict is reported
    truncated = {**manifest, "sha256": fileops.sha256_file(plan["path"])[0], "size": len(data) // 2}
    with pytest.raises(ops_errors.CorruptBackupError, match="readability check failed"):
        pg_restore.verify_backup(None, plan["path"], truncated)


def test_a_verification_is_reused_only_while_the_file_is_unchanged(tmp_path):
    plan, manifest = _plain_backup(tmp_path, b"SELECT 1;\n" * 100 + DUMP_TRAILER.encode())
    path = plan["path"]
    earlier = pg_restore.verify_backup(None, path, manifest)
    assert earlier["file"]["size"] == manifest["size"]
    reused = pg_restore.reuse_verification(path, manifest, earlier)
    assert reused["sha256"] == manifest["sha256"]
    assert "not read again" in reused["reused"]
    # checks made for another backup, or without the file's identity, are not taken over
    assert pg_restore.reuse_verification(path, {**manifest, "sha256": "0" * 64}, earlier) is None
    no_identity = {key: value for key, value in earlier.items() if key != "file"}
    assert pg_restore.reuse_verification(path, manifest, no_identity) is None
    assert pg_restore.reuse_verification(path, manifest, None) is None
    # the same bytes written again (same size): new modification time, verified again
    data = Path(path).read_bytes()
    stat = os.stat(path)
    Path(path).write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert pg_restore.reuse_verification(path, manifest, earlier) is None
    # a different file put in its place
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    replacement = Path(path + ".new")
    replacement.write_bytes(data)
    os.replace(replacement, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert pg_restore.reuse_verification(path, manifest, earlier) is None


def test_locate_manifest_beside_the_dump():
    assert pg_artifacts.locate_manifest("/b/x/app.dir.tar") == "/b/x/app.manifest.json"
    assert pg_artifacts.locate_manifest("/b/x/app.sql.gz") == "/b/x/app.manifest.json"
    assert pg_artifacts.locate_manifest("/b/x/app.dump", "/elsewhere/m.json") == "/elsewhere/m.json"
    with pytest.raises(ops_errors.PgError, match="manifest_path"):
        pg_artifacts.locate_manifest("/b/x/app.bak")


# --------------------------------------------------------------------------- files and locks


def test_ensure_directory_creates_private_directories(tmp_path):
    target = tmp_path / "a" / "b"
    assert fileops.ensure_directory(str(target)) is True
    assert mode(target) == 0o700
    assert fileops.ensure_directory(str(target)) is False
    (tmp_path / "file").write_text("x")
    with pytest.raises(ops_errors.FileOpsError, match="not a directory"):
        fileops.ensure_directory(str(tmp_path / "file"))


def test_lock_held_elsewhere_times_out_clearly(tmp_path):
    lock = tmp_path / ".app.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with (
            pytest.raises(ops_errors.PgError, match="another pg_backup run holds"),
            pg_dump.file_lock(str(lock), timeout=0.5),
        ):
            pass
    finally:
        os.close(fd)
    with pg_dump.file_lock(str(lock), timeout=0.5) as held:
        assert held == str(lock)


# --------------------------------------------------------------------------- replace swap


class FakeServer:
    """Databases as a dict, changed by the swap's SQL steps in the order psql runs them.

    ``fail`` maps a step (mark, block, swap, unblock) to how many times it fails next,
    with which stderr; psql stops at the first failing step, as ON_ERROR_STOP=1 does.
    """

    STEPS = (("mark", "MARK_SQL"), ("block", "BLOCK_SQL"), ("swap", "SWAP_SQL"),
             ("unblock", "UNBLOCK_SQL"))  # fmt: skip
    server_and_databases = pg_session.PgContainer.server_and_databases  # the real query and parsing

    def __init__(self, fail=None, interrupt=None):
        self.dbs = {
            "app": {"owner": "app", "comment": "", "allow": True},
            "app__work": {"owner": "app", "comment": "", "allow": True},
        }
        self.fail = dict(fail or {})
        # step -> exception raised once that step has been applied (the client gave up or
        # was killed while the server had already done it)
        self.interrupt = dict(interrupt or {})
        self.calls = []

    def terminate_own_sessions(self, maintenance_db="postgres"):
        self.calls.append("terminate")

    def psql(self, sql, database, variables=None, context="", timeout=None):
        v = variables or {}
        if sql.startswith(pg_session.SERVER_INFO_SQL):
            self.calls.append("lookup")
            rows = [["15.4", "UTF8", "C", "C", json.dumps(sorted(self.dbs))]]
            for name in v.values():
                if name in self.dbs:
                    db = self.dbs[name]
                    rows.append([name, db["owner"], db["comment"], "t" if db["allow"] else "f"])
            return rows
        steps = [name for name, const in self.STEPS if getattr(pg_swap, const) in sql]
        self.calls.append("+".join(steps))
        for step in steps:
            count, stderr = self.fail.get(step, (0, ""))
            if count:
                self.fail[step] = (count - 1, stderr)
                raise ops_errors.CommandError(f"psql: {stderr}", 3, stderr)
            if step == "mark":
                self.dbs[v["work"]]["comment"] = v["marker"]
            elif step == "block":
                self.dbs[v["target"]]["allow"] = False
            elif step == "swap":
                self.dbs[v["previous"]] = self.dbs.pop(v["target"])
                self.dbs[v["target"]] = self.dbs.pop(v["work"])
            else:
                self.dbs[v["db"]]["allow"] = True
            if step in self.interrupt:
                raise self.interrupt.pop(step)
        return []


def swap(server):
    pg_swap.swap_in(server, "app", "app__work", "app__pre_b1", "postgres", "MARK", attempts=3)


def assert_swapped(server):
    assert server.dbs["app"]["comment"] == "MARK"
    assert server.dbs["app"]["allow"]
    assert server.dbs["app__pre_b1"]["allow"]
    assert "app__work" not in server.dbs


def test_swap_takes_one_psql_call_when_nothing_goes_wrong():
    server = FakeServer()
    swap(server)
    assert server.calls == ["mark+block+swap+unblock"]
    assert_swapped(server)


def test_swap_retries_step_by_step_while_old_sessions_linger():
    busy = 'ERROR:  database "app" is being accessed by other users'
    server = FakeServer(fail={"swap": (2, busy)})
    swap(server)
    assert server.calls == ["mark+block+swap+unblock", "lookup", "mark", "block", "swap", "swap",
                            "unblock"]  # fmt: skip
    assert_swapped(server)


def test_swap_that_failed_after_commit_only_gives_the_old_database_its_connections_back():
    server = FakeServer(fail={"unblock": (1, "ERROR:  connection lost")})
    swap(server)
    assert server.calls == ["mark+block+swap+unblock", "lookup", "unblock"]
    assert_swapped(server)


def test_swap_that_cannot_rename_leaves_the_live_database_as_it_was():
    denied = "ERROR:  must be owner of database app"
    server = FakeServer(fail={"swap": (5, denied)})
    with pytest.raises(ops_errors.CommandError, match="must be owner"):
        swap(server)
    assert server.dbs["app"] == {"owner": "app", "comment": "", "allow": True}
    assert server.dbs["app__work"]["comment"] == "MARK"  # the caller drops it
    assert "app__pre_b1" not in server.dbs


def test_swap_call_that_times_out_goes_through_recovery():
    """pg_terminate_backend waits per session: the swap call times out with the target blocked."""
    timeout = ops_errors.PgError("psql in container db did not finish within 120s swapping app")
    server = FakeServer(interrupt={"block": timeout})
    swap(server)
    assert server.calls[:3] == ["mark+block+swap+unblock", "terminate", "lookup"]
    assert_swapped(server)


@pytest.mark.parametrize("step", ["block", "swap"])
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_killed_swap_never_leaves_a_database_blocked(step, exc_type):
    server = FakeServer(interrupt={step: exc_type()})
    with pytest.raises(exc_type):
        swap(server)
    assert "terminate" in server.calls
    assert all(db["allow"] for db in server.dbs.values()), server.dbs
    if step == "swap":  # renamed before the kill: only the connections were given back
        assert_swapped(server)
    else:
        assert server.dbs["app"]["comment"] == ""
        assert "app__pre_b1" not in server.dbs


class LeftoverServer:
    """Answers the lookup of databases named after the target; records what is changed."""

    def __init__(self, rows):
        self.rows, self.done = rows, []

    def psql(self, sql, database, variables=None, context="", timeout=None):
        if sql == pg_swap.RELATED_SQL:
            return self.rows
        self.done.append((sql.split()[0], sql.split()[-1].rstrip(";"), dict(variables)))
        return []


def test_repair_reopens_blocked_databases_and_drops_only_work_databases():
    server = LeftoverServer([["app", "f"], ["app__pre_b1", "f"], ["app__pre_b0", "t"],
                             ["app__restore_0123abcd", "t"], ["app__restore_notes", "t"],
                             ["apple__pre_x", "f"]])  # fmt: skip
    repairs = pg_swap.repair_interrupted(server, "app", "postgres")
    assert [(verb, v.get("db")) for verb, _, v in server.done] == [
        ("ALTER", "app"),
        ("ALTER", "app__pre_b1"),
        ("DROP", "app__restore_0123abcd"),
    ]
    assert len(repairs) == 3
    assert "database app did not accept connections" in repairs[0]
    checked = LeftoverServer(server.rows)
    assert len(pg_swap.repair_interrupted(checked, "app", "postgres", check_mode=True)) == 3
    assert checked.done == []


def test_repair_renames_back_a_live_database_renamed_away_without_its_successor():
    server = LeftoverServer([["app__pre_b1", "f"], ["app__pre_b0", "t"]])
    repairs = pg_swap.repair_interrupted(server, "app", "postgres")
    assert server.done[0][2] == {"db": "app__pre_b1", "target": "app"}
    assert "RENAME" in pg_swap.RENAME_BACK_SQL
    assert server.done[1][2] == {"db": "app"}
    assert "renamed back to app" in repairs[0]


class SpaceServer:
    """psql answers pg_database_size and data_directory; ``df`` answers the free space."""

    def __init__(self, size, free_kib):
        self.size, self.free_kib, self.container = size, free_kib, "db"

    def psql(self, sql, database, variables=None, context="", timeout=None):
        assert sql == pg_db_properties.SPACE_SQL
        return [[str(self.size), "/var/lib/postgresql/data"]]

    def run(self, command, **kwargs):
        assert command == ["df", "-P", "-k", "/var/lib/postgresql/data"]
        return (
            "Filesystem 1024-blocks Used Available Capacity Mounted on\n"
            f"/dev/sdb 10485760 123 {self.free_kib} 1% /var/lib/postgresql/data\n"
        ).encode()


def test_replace_without_room_for_a_second_copy_is_refused_with_the_figures():
    server = SpaceServer(size=1000 * 1024 * 1024, free_kib=1000 * 1024)  # 1000 MiB, 1000 MiB
    with pytest.raises(ops_errors.PgError) as raised:
        pg_db_properties.check_free_space(server, "app", "postgres")
    message = str(raised.value)
    assert "needs about 1.1 GiB (app is 1000.0 MiB" in message
    assert "1000.0 MiB is free on /var/lib/postgresql/data" in message
    assert "Nothing was changed" in message


def test_replace_with_room_reports_needed_free_and_where():
    server = SpaceServer(size=100 * 1024 * 1024, free_kib=1024 * 1024)
    space = pg_db_properties.check_free_space(server, "app", "postgres")
    assert space == {
        "needed": 110 * 1024 * 1024,
        "free": 1024 * 1024 * 1024,
        "where": "/var/lib/postgresql/data",
        "database_size": 100 * 1024 * 1024,
    }


def test_dump_pipe_is_widened_to_one_chunk():
    read, write = os.pipe()
    try:
        with os.fdopen(read, "rb", closefd=False) as stream:
            pipelines._widen_pipe(stream)
        assert fcntl.fcntl(read, fcntl.F_GETPIPE_SZ) == fileops.CHUNK_SIZE
    finally:
        os.close(read)
        os.close(write)


# --------------------------------------------------------------------------- row count limit


class SizedServer:
    """Answers pg_database_size with ``size``; records the row count's time limit."""

    def __init__(self, size):
        self.size, self.timeouts, self.sized = size, [], []

    def psql(self, sql, database, variables=None, context="", timeout=None):
        assert "pg_database_size" in sql
        self.sized.append(variables["db"])
        return [[str(self.size)]]

    def row_counts(self, database, timeout=None):
        self.timeouts.append(timeout)
        return {"public.items": 3}


@pytest.mark.parametrize(
    ("size", "expected"),
    [(1024**2, 1800.0), (15 * 1024**3, 1800.0), (100 * 1024**3, 12000.0)],
)
def test_row_count_limit_scales_with_the_database(size, expected):
    server = SizedServer(size)
    assert pg_restore.rows_timeout(server, "app", {}, "postgres") == expected
    assert pg_restore.rows_timeout_for(size) == expected
    assert server.sized == ["app"]


def test_rows_timeout_option_overrides_the_size_and_is_passed_to_the_count(monkeypatch):
    server = SizedServer(100 * 1024**3)
    monkeypatch.setattr(pg_restore, "database_writes", lambda *args, **kwargs: 7)
    marker = pg_restore.restore_marker("b1", "0" * 64)
    result = {}
    unchanged, why = pg_restore.unchanged_since_restore(
        server,
        "app",
        f"{marker} writes=7",
        marker,
        {"row_counts": {"public.items": 3}},
        {"verify_rows": True, "rows_timeout": 90},
        result,
        "postgres",
    )
    assert (unchanged, why) == (True, None)
    assert server.timeouts == [90.0]
    assert server.sized == []  # the size is not asked when the limit is given
    unchanged, _ = pg_restore.unchanged_since_restore(
        server, "app", f"{marker} writes=7", marker, {"row_counts": {"public.items": 3}},
        {"verify_rows": True}, result, "postgres",
    )  # fmt: skip
    assert server.timeouts == [90.0, 12000.0]


# --------------------------------------------------------------------------- database properties


class RecordingServer:
    container = "db"

    def __init__(self):
        self.sql = []

    def psql(self, sql, database, variables=None, context="", timeout=None):
        self.sql.append((sql, dict(variables or {})))
        return []


def test_replace_creates_the_work_database_like_the_live_one_not_like_the_dump():
    server = RecordingServer()
    manifest = {"database_encoding": {"encoding": "UTF8", "collate": "en_US.utf8", "ctype": "x"}}
    live = {"encoding": "LATIN1", "collate": "C", "ctype": "C", "tablespace": "fast"}
    pg_restore._create_database(server, "app__restore_1", "owner", manifest, "postgres", live)
    sql, variables = server.sql[0]
    assert 'TABLESPACE :"tablespace"' in sql
    assert variables == {"db": "app__restore_1", "owner": "owner", "tablespace": "fast",
                         "encoding": "LATIN1", "collate": "C", "ctype": "C"}  # fmt: skip
    server = RecordingServer()
    pg_restore._create_database(server, "new", None, manifest, "postgres")
    sql, variables = server.sql[0]
    assert "TABLESPACE" not in sql
    assert variables["encoding"] == "UTF8"


def test_missing_roles_are_named_with_both_ways_out():
    stderr = (
        'pg_restore: error: could not execute query: ERROR:  role "ghost_owner" does not exist\n'
        "Command was: ALTER TABLE public.t OWNER TO ghost_owner;\n"
    )
    exc = ops_errors.CommandError("pg_restore failed", 1, stderr)
    with pytest.raises(ops_errors.PgError) as raised:
        pg_restore.raise_missing_roles(exc, RecordingServer(), "b1", "app")
    message = str(raised.value)
    phrases = ("ghost_owner", "no_owner=true", "restore_no_owner", "globals.sql", "untouched")
    for phrase in (*phrases, "restore_globals=missing"):
        assert phrase in message
    other = ops_errors.CommandError("pg_restore failed", 1, "ERROR:  disk full")
    assert pg_restore.raise_missing_roles(other, RecordingServer(), "b1", "app") is None
