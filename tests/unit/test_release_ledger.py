"""Tests of the release_ledger module and its module_utils (pytest).

The module_utils tests call the shared functions directly on files under tmp_path; the
end-to-end tests run the real module through the ``ansible`` ad-hoc command on localhost.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import json
import multiprocessing
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import ansible.module_utils
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "library"
MODULE_UTILS = ROOT / "module_utils"

# Make `ansible.module_utils.release_ledger` importable the way ansible.cfg's
# `module_utils = ./module_utils` does for the controller.
if str(MODULE_UTILS) not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(MODULE_UTILS))
rl = importlib.import_module("ansible.module_utils.release_ledger")

NOW = datetime.datetime(2024, 5, 2, 9, 14, 3, tzinfo=datetime.UTC)


def image_id(number):
    return f"sha256:{number:064x}"


def release(tag="1.0.0", number=1, **fields):
    rel = {"tag": tag, "image_id": image_id(number), "health": "healthy"}
    rel.update(fields)
    return rel


def entry(entry_id, tag, status="good", **fields):
    data = {"id": entry_id, "tag": tag, "status": status, "image_id": image_id(entry_id)}
    data.update(fields)
    return data


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def ledger(tmp_path):
    return tmp_path / "state" / "releases.jsonl"


# --------------------------------------------------------------------------- present


def test_present_creates_ledger_and_appends_entry(ledger):
    rel = release(
        images={"nginx": "fastapi-monolith/nginx:1.22", "backend": "fastapi-monolith/backend:1"},
        project="fastapi-monolith",
        replicas=2,
        note="first",
    )
    out = rl.record_release(str(ledger), rel, now=NOW)

    expected = {
        "id": 1,
        "time": "2024-05-02T09:14:03Z",
        "tag": "1.0.0",
        "image_id": image_id(1),
        "images": {"backend": "fastapi-monolith/backend:1", "nginx": "fastapi-monolith/nginx:1.22"},
        "health": "healthy",
        "status": "good",
        "project": "fastapi-monolith",
        "replicas": 2,
        "note": "first",
    }
    assert out["changed"] is True
    assert out["appended"] == expected
    assert out["entries"] == [expected]
    assert out["current"] == expected
    assert out["last_good"] == expected
    assert out["previous_good"] is None
    assert out["marked"] == []
    lines = ledger.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [expected]
    assert rl.read_ledger(str(ledger)) == [expected]


def test_present_optional_fields_are_null_and_unhealthy_is_bad(ledger):
    out = rl.record_release(str(ledger), release(health="unhealthy"))
    appended = out["appended"]
    assert appended["status"] == "bad"
    assert appended["images"] is None
    assert appended["replicas"] is None
    assert appended["project"] is None
    assert appended["note"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", appended["time"])
    assert out["last_good"] is None


def test_present_identical_release_is_not_appended_again(ledger):
    rel = release(images={"backend": "b:1"}, replicas=2)
    rl.record_release(str(ledger), rel, now=NOW)
    content = ledger.read_bytes()

    # project and note are not part of the identity; a later time changes nothing either
    again = dict(rel, note="re-run", project="other")
    out = rl.record_release(str(ledger), again, now=NOW + datetime.timedelta(hours=1))

    assert out["changed"] is False
    assert out["appended"] is None
    assert len(out["entries"]) == 1
    assert ledger.read_bytes() == content


def test_present_missing_images_equals_empty_images(ledger):
    rl.record_release(str(ledger), release())
    out = rl.record_release(str(ledger), release(images={}))
    assert out["changed"] is False


@pytest.mark.parametrize(
    "change",
    [
        {"tag": "1.1.0"},
        {"image_id": image_id(99)},
        {"images": {"backend": "b:2"}},
        {"replicas": 3},
        {"health": "unhealthy"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_present_any_identity_change_appends(ledger, change):
    rel = release(images={"backend": "b:1"}, replicas=2)
    rl.record_release(str(ledger), rel)
    out = rl.record_release(str(ledger), dict(rel, **change))
    assert out["changed"] is True
    assert out["appended"]["id"] == 2
    assert [e["id"] for e in rl.read_ledger(str(ledger))] == [1, 2]


def test_present_only_compares_with_the_last_entry(ledger):
    rl.record_release(str(ledger), release("1.0.0", 1))
    rl.record_release(str(ledger), release("1.1.0", 2))
    out = rl.record_release(str(ledger), release("1.0.0", 1))  # redeploy of an older release
    assert out["changed"] is True
    assert [e["tag"] for e in out["entries"]] == ["1.0.0", "1.1.0", "1.0.0"]


def test_new_id_is_previous_max_plus_one(ledger):
    write_lines(ledger, [json.dumps(entry(7, "a")), json.dumps(entry(3, "b"))])
    out = rl.record_release(str(ledger), release("c"))
    assert out["appended"]["id"] == 8


def test_unhealthy_release_accepts_any_image_id(ledger):
    out = rl.record_release(str(ledger), release(image_id="unknown", health="unhealthy"))
    assert out["appended"]["image_id"] == "unknown"
    assert out["appended"]["status"] == "bad"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"image_id": "1.0.0"}, r"healthy release must be the full image ID.*docker image"),
        ({"image_id": "sha256:abc"}, r"full image ID"),
        ({"image_id": "", "health": "unhealthy"}, r"'release.image_id' is required"),
        ({"health": "ok"}, r"'release.health' must be one of healthy, unhealthy"),
        ({"replicas": -1}, r"non-negative integer"),
        ({"images": {"backend": None}}, r"'release.images.backend'"),
        ({"tag": ""}, r"'release.tag' is required"),
        ({"colour": "blue"}, r"unknown key\(s\) in 'release': colour"),
    ],
)
def test_invalid_release_is_rejected_before_touching_disk(ledger, bad, message):
    with pytest.raises(rl.LedgerError, match=message):
        rl.record_release(str(ledger), dict(release(), **bad))
    assert not ledger.parent.exists()


# --------------------------------------------------------------------------- mark


def test_mark_sets_status_of_every_entry_with_the_tag(ledger):
    for tag, number in (("1.0.0", 1), ("1.1.0", 2), ("1.0.0", 1), ("1.2.0", 3)):
        rl.record_release(str(ledger), release(tag, number))

    out = rl.mark_release(str(ledger), "1.0.0", "rolled_back")

    assert out["changed"] is True
    assert out["marked"] == [1, 3]
    assert out["appended"] is None
    statuses = [(e["id"], e["tag"], e["status"]) for e in rl.read_ledger(str(ledger))]
    assert statuses == [
        (1, "1.0.0", "rolled_back"),
        (2, "1.1.0", "good"),
        (3, "1.0.0", "rolled_back"),
        (4, "1.2.0", "good"),
    ]
    assert out["entries"] == rl.read_ledger(str(ledger))

    content = ledger.read_bytes()
    again = rl.mark_release(str(ledger), "1.0.0", "rolled_back")
    assert again["changed"] is False
    assert again["marked"] == []
    assert ledger.read_bytes() == content


def test_mark_unknown_tag_fails_and_lists_known_tags(ledger):
    rl.record_release(str(ledger), release("1.0.0"))
    with pytest.raises(rl.LedgerError, match=r"no ledger entry has tag '9.9.9'.*1\.0\.0"):
        rl.mark_release(str(ledger), "9.9.9", "bad")


def test_mark_missing_ledger_fails_without_creating_anything(ledger):
    with pytest.raises(rl.LedgerError, match=r"does not exist"):
        rl.mark_release(str(ledger), "1.0.0", "bad")
    assert not ledger.parent.exists()


def test_plan_mark_rejects_unknown_status():
    with pytest.raises(rl.LedgerError, match=r"'status' must be one of good, bad, rolled_back"):
        rl.plan_mark([entry(1, "a")], "a", "fine")


# --------------------------------------------------------------------------- selection


@pytest.mark.parametrize(
    ("entries", "last_good", "previous_good"),
    [
        ([], None, None),
        ([entry(1, "a")], 1, None),
        ([entry(1, "a"), entry(2, "a")], 2, None),
        ([entry(1, "a"), entry(2, "b")], 2, 1),
        # a broken deploy on top: roll back to the newest good release
        ([entry(1, "a"), entry(2, "b"), entry(3, "c", "bad")], 2, 2),
        # the newest good entry has the current tag: skip it
        ([entry(1, "a"), entry(2, "b"), entry(3, "a"), entry(4, "b")], 4, 3),
        # rolled_back and bad entries are never targets
        ([entry(1, "a"), entry(2, "b", "rolled_back"), entry(3, "c", "bad")], 1, 1),
        ([entry(1, "a", "bad"), entry(2, "b", "rolled_back")], None, None),
    ],
)
def test_last_good_and_previous_good(entries, last_good, previous_good):
    def entry_id(found):
        return None if found is None else found["id"]

    assert entry_id(rl.select_last_good(entries)) == last_good
    assert entry_id(rl.select_previous_good(entries)) == previous_good
    summary = rl.summarize(entries)
    assert entry_id(summary["last_good"]) == last_good
    assert entry_id(summary["previous_good"]) == previous_good
    assert summary["current"] == (entries[-1] if entries else None)


def test_rollback_flow(ledger):
    rl.record_release(str(ledger), release("1.0.0", 1))
    rl.record_release(str(ledger), release("1.1.0", 2))
    broken = rl.record_release(str(ledger), release("1.2.0-broken", 3, health="unhealthy"))
    assert broken["previous_good"]["tag"] == "1.1.0"

    back = rl.record_release(str(ledger), release("1.1.0", 2))
    assert back["current"]["tag"] == "1.1.0"
    assert back["previous_good"]["tag"] == "1.0.0"
    marked = rl.mark_release(str(ledger), "1.2.0-broken", "rolled_back")
    assert marked["marked"] == [3]
    assert [e["status"] for e in marked["entries"]] == ["good", "good", "rolled_back", "good"]


# --------------------------------------------------------------------------- query


def test_query_missing_ledger_is_empty_and_creates_nothing(ledger):
    out = rl.query_ledger(str(ledger))
    assert out["changed"] is False
    assert out["entries"] == []
    assert out["current"] is None
    assert out["last_good"] is None
    assert out["previous_good"] is None
    assert not ledger.parent.exists()


def test_query_directory_path_fails_with_hint(tmp_path):
    with pytest.raises(rl.LedgerError, match=r"is a directory.*releases\.jsonl"):
        rl.query_ledger(str(tmp_path))


def test_blank_lines_are_ignored(ledger):
    write_lines(ledger, [json.dumps(entry(1, "a")), "", "   ", json.dumps(entry(2, "b"))])
    assert [e["id"] for e in rl.read_ledger(str(ledger))] == [1, 2]


# --------------------------------------------------------------------------- corruption


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ('{"id": 2, "tag": "b", "status": "go', "not valid JSON"),
        ("[1, 2]", "expected a JSON object, found a JSON list"),
        ('{"tag": "b", "status": "good"}', "'id' must be a positive integer"),
        ('{"id": 2, "status": "good"}', "'tag' must be a non-empty string"),
        ('{"id": 2, "tag": "b", "status": "Good"}', "'status' must be one of"),
        ('{"id": 1, "tag": "b", "status": "good"}', "duplicate id 1 \\(also used on line 1\\)"),
    ],
)
def test_corrupt_line_fails_with_file_line_number_and_fix(ledger, bad_line, problem):
    write_lines(ledger, [json.dumps(entry(1, "a")), bad_line, json.dumps(entry(3, "c"))])
    content = ledger.read_bytes()

    for operation in (
        lambda: rl.query_ledger(str(ledger)),
        lambda: rl.record_release(str(ledger), release("d")),
        lambda: rl.record_release(str(ledger), release("d"), check_mode=True),
        lambda: rl.mark_release(str(ledger), "a", "bad"),
    ):
        with pytest.raises(rl.LedgerError) as error:
            operation()
        message = str(error.value)
        assert f"{ledger} line 2 is corrupt" in message
        assert re.search(problem, message)
        assert "repairing or deleting that line" in message
        assert f"mv {ledger} {ledger}.corrupt" in message
    assert ledger.read_bytes() == content


def test_non_utf8_line_is_reported(ledger):
    ledger.parent.mkdir(parents=True)
    ledger.write_bytes(json.dumps(entry(1, "a")).encode() + b"\n\xff\xfe\n")
    with pytest.raises(rl.LedgerError, match=r"line 2 is corrupt: not UTF-8"):
        rl.read_ledger(str(ledger))


# --------------------------------------------------------------------------- files


def test_file_is_0600_and_created_directory_is_0700(tmp_path):
    ledger = tmp_path / "a" / "b" / "releases.jsonl"
    old_umask = os.umask(0)  # the modes must not depend on the umask
    try:
        rl.record_release(str(ledger), release())
    finally:
        os.umask(old_umask)
    assert mode(ledger) == 0o600
    assert mode(ledger.parent) == 0o700
    assert mode(str(ledger) + ".lock") == 0o600
    assert sorted(p.name for p in ledger.parent.iterdir()) == [
        "releases.jsonl",
        "releases.jsonl.lock",
    ]  # no temporary file left behind


def test_existing_directory_mode_is_kept_and_file_mode_is_fixed(tmp_path):
    ledger = tmp_path / "releases.jsonl"
    tmp_path.chmod(0o755)
    write_lines(ledger, [json.dumps(entry(1, "a"))])
    ledger.chmod(0o644)
    rl.record_release(str(ledger), release("b"))
    assert mode(ledger) == 0o600
    assert mode(tmp_path) == 0o755


def test_symlinked_ledger_is_written_through_the_link(tmp_path):
    real = tmp_path / "real" / "releases.jsonl"
    write_lines(real, [json.dumps(entry(1, "a"))])
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    rl.record_release(str(link), release("b"))
    assert link.is_symlink()
    assert [e["tag"] for e in rl.read_ledger(str(real))] == ["a", "b"]


def test_check_mode_writes_nothing(ledger):
    out = rl.record_release(str(ledger), release(), check_mode=True, now=NOW)
    assert out["changed"] is True
    assert out["appended"]["id"] == 1
    assert out["entries"] == [out["appended"]]
    assert not ledger.parent.exists()  # not the directory, the ledger or the lock file

    rl.record_release(str(ledger), release("1.0.0"))
    content = ledger.read_bytes()
    out = rl.record_release(str(ledger), release("1.1.0", 2), check_mode=True)
    assert out["changed"] is True
    assert out["appended"]["id"] == 2
    assert rl.mark_release(str(ledger), "1.0.0", "bad", check_mode=True)["marked"] == [1]
    assert ledger.read_bytes() == content


def test_diff_shows_ledger_text_before_and_after(ledger):
    before = [entry(1, "a")]
    after = before + [entry(2, "b")]
    diff = rl.ledger_diff(str(ledger), before, after)
    assert diff["before"] == json.dumps(before[0]) + "\n"
    assert diff["after"].splitlines() == [json.dumps(e) for e in after]
    assert diff["before_header"] == diff["after_header"] == str(ledger)


def test_lock_excludes_a_second_writer_and_times_out_with_hint(ledger):
    expected = r"timed out after 0.2s waiting for the lock"
    with rl.ledger_lock(str(ledger)), pytest.raises(rl.LedgerError, match=expected) as error:
        rl.record_release(str(ledger), release(), lock_timeout=0.2)
    assert f"fuser {ledger}.lock" in str(error.value)
    rl.record_release(str(ledger), release(), lock_timeout=0.2)  # free again


def _append_many(path, worker, count, barrier):
    barrier.wait()
    for index in range(count):
        rl.record_release(path, release(f"w{worker}-{index}", worker * 1000 + index))


def test_concurrent_appends_from_several_processes_are_all_recorded(ledger):
    workers, count = 6, 8
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(workers)
    processes = [
        context.Process(target=_append_many, args=(str(ledger), worker, count, barrier))
        for worker in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0] * workers

    entries = rl.read_ledger(str(ledger))
    assert [e["id"] for e in entries] == list(range(1, workers * count + 1))
    assert sorted(e["tag"] for e in entries) == sorted(
        f"w{worker}-{index}" for worker in range(workers) for index in range(count)
    )
    for worker in range(workers):  # each writer's entries keep its own order
        tags = [e["tag"] for e in entries if e["tag"].startswith(f"w{worker}-")]
        assert tags == [f"w{worker}-{index}" for index in range(count)]


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"state": "present", "release": release(), "tag": "x"}, r"tag cannot be used"),
        ({"state": "mark", "tag": "x", "status": "bad", "release": release()}, "release"),
        ({"state": "query", "status": "bad"}, r"status cannot be used with state=query"),
    ],
)
def test_options_that_do_not_apply_to_the_state_are_rejected(ledger, params, message):
    with pytest.raises(rl.LedgerError, match=message):
        rl.run(dict(params, path=str(ledger)))


def load_module():
    spec = importlib.util.spec_from_file_location(
        "release_ledger_module", LIBRARY / "release_ledger.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_documentation_matches_argument_spec():
    module = load_module()
    doc = yaml.safe_load(module.DOCUMENTATION)

    def compare(doc_options, spec):
        assert set(doc_options) == set(spec)
        for name, option in spec.items():
            documented = doc_options[name]
            assert documented["type"] == option["type"], name
            assert documented.get("required", False) == option.get("required", False), name
            assert documented.get("choices") == option.get("choices"), name
            assert documented.get("default") == option.get("default"), name
            if "options" in option:
                compare(documented["suboptions"], option["options"])

    compare(doc["options"], module.ARGUMENT_SPEC)
    assert doc["attributes"]["check_mode"]["support"] == "full"
    assert doc["attributes"]["diff_mode"]["support"] == "full"
    assert doc["attributes"]["platform"]["platforms"] == "posix"
    returned = yaml.safe_load(module.RETURN)
    assert set(returned) == {
        "entries",
        "current",
        "last_good",
        "previous_good",
        "appended",
        "marked",
    }
    yaml.safe_load(module.EXAMPLES)


# --------------------------------------------------------------------------- end to end


def ansible_tool(name):
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed")
    return found


def ansible_env(tmp_path):
    config = tmp_path / "ansible.cfg"
    config.write_text("[defaults]\n", encoding="utf-8")
    return dict(
        os.environ,
        ANSIBLE_CONFIG=str(config),  # isolate from any other ansible.cfg
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-local"),
        ANSIBLE_REMOTE_TMP=str(tmp_path / "ansible-remote"),
        ANSIBLE_MODULE_UTILS=str(MODULE_UTILS),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_DEPRECATION_WARNINGS="0",
    )


RESULT_RE = re.compile(r"^localhost \| (SUCCESS|CHANGED|FAILED!) => ", re.MULTILINE)


def run_module(tmp_path, args, *flags):
    """Run release_ledger with the ansible ad-hoc command; return (status, result)."""
    command = [
        ansible_tool("ansible"),
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-M",
        str(LIBRARY),
        "-m",
        "release_ledger",
        "-a",
        json.dumps(args),
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        *flags,
    ]
    proc = subprocess.run(
        command,
        cwd=tmp_path,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = RESULT_RE.search(proc.stdout)
    assert match, f"no result in ansible output:\n{proc.stdout}\n{proc.stderr}"
    result, _ = json.JSONDecoder().raw_decode(proc.stdout, match.end())
    assert (proc.returncode == 0) == (match.group(1) != "FAILED!"), proc.stdout + proc.stderr
    return match.group(1), result


def test_module_end_to_end_present_check_mode_mark_query(tmp_path):
    ledger = tmp_path / "var" / "ledger" / "releases.jsonl"
    good = {
        "path": str(ledger),
        "release": {
            "tag": "1.1.0",
            "image_id": image_id(11),
            "images": {"backend": "fastapi-monolith/backend:1.1.0"},
            "health": "healthy",
            "project": "fastapi-monolith",
            "replicas": "2",  # converted to int by the argument spec
        },
    }

    status, result = run_module(tmp_path, good, "--check")
    assert status == "CHANGED"
    assert result["appended"]["tag"] == "1.1.0"
    assert result["appended"]["id"] == 1
    assert not ledger.parent.exists()  # check mode wrote nothing at all

    status, result = run_module(tmp_path, good)
    assert status == "CHANGED"
    documented = {"entries", "current", "last_good", "previous_good", "appended", "marked"}
    assert set(result) - {"changed", "invocation"} == documented
    assert result["appended"]["replicas"] == 2
    assert result["current"] == result["last_good"] == result["appended"]
    assert result["previous_good"] is None
    assert mode(ledger) == 0o600
    assert mode(ledger.parent) == 0o700
    content = ledger.read_bytes()

    status, result = run_module(tmp_path, good)
    assert status == "SUCCESS"
    assert result["changed"] is False
    assert result["appended"] is None
    assert ledger.read_bytes() == content

    broken = dict(good, release=dict(good["release"], tag="1.2.0", image_id=image_id(12)))
    broken["release"]["health"] = "unhealthy"
    status, result = run_module(tmp_path, broken, "--check", "--diff")
    assert status == "CHANGED"
    assert result["appended"]["status"] == "bad"
    assert result["previous_good"]["tag"] == "1.1.0"
    assert ledger.read_bytes() == content

    status, result = run_module(tmp_path, broken)
    assert status == "CHANGED"
    assert result["appended"]["id"] == 2

    mark = {"path": str(ledger), "state": "mark", "tag": "1.2.0", "status": "rolled_back"}
    status, result = run_module(tmp_path, mark, "--diff")
    assert status == "CHANGED"
    assert result["marked"] == [2]

    status, result = run_module(tmp_path, {"path": str(ledger), "state": "query"})
    assert status == "SUCCESS"
    assert [(e["tag"], e["status"]) for e in result["entries"]] == [
        ("1.1.0", "good"),
        ("1.2.0", "rolled_back"),
    ]
    assert result["entries"] == rl.read_ledger(str(ledger))


def test_module_end_to_end_corrupt_line_fails(tmp_path):
    ledger = tmp_path / "releases.jsonl"
    write_lines(ledger, [json.dumps(entry(1, "a")), "not json"])
    status, result = run_module(tmp_path, {"path": str(ledger), "state": "query"})
    assert status == "FAILED!"
    assert f"{ledger} line 2 is corrupt" in result["msg"]


def test_ansible_doc_renders(tmp_path):
    proc = subprocess.run(
        [ansible_tool("ansible-doc"), "-M", str(LIBRARY), "--json", "release_ledger"],
        cwd=tmp_path,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)["release_ledger"]
    assert doc["doc"]["attributes"]["check_mode"]["support"] == "full"
    assert "previous_good" in doc["return"]
