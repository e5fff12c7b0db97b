"""The diagnose_report module (library/diagnose_report.py): the reports written in one call,
unchanged files left alone, check mode writing nothing, path names refused."""

from __future__ import annotations

import stat

from tests.ansible_cli import run_module


def test_writes_every_file_then_nothing_when_unchanged(tmp_path):
    dest = tmp_path / "reports"
    files = {"web1.json": '{"a": 1}\n', "index.html": "<html></html>\n"}
    first = run_module("diagnose_report", {"dest_dir": str(dest), "files": files})
    assert first["status"] == "CHANGED", first
    assert sorted(first["written"]) == ["index.html", "web1.json"]
    assert (dest / "web1.json").read_text() == '{"a": 1}\n'
    assert stat.S_IMODE((dest / "web1.json").stat().st_mode) == 0o600
    again = run_module("diagnose_report", {"dest_dir": str(dest), "files": files})
    assert again["status"] == "SUCCESS", again
    assert again["written"] == []
    changed = {**files, "web1.json": '{"a": 2}\n'}
    third = run_module("diagnose_report", {"dest_dir": str(dest), "files": changed})
    assert third["written"] == ["web1.json"]


def test_check_mode_writes_nothing(tmp_path):
    dest = tmp_path / "reports"
    result = run_module("diagnose_report", {"dest_dir": str(dest), "files": {"a.md": "x"}}, "-C")
    assert result["written"] == ["a.md"]
    assert not dest.exists()


def test_a_name_with_a_directory_is_refused(tmp_path):
    result = run_module(
        "diagnose_report", {"dest_dir": str(tmp_path), "files": {"../escape.json": "{}"}}
    )
    assert result["status"].startswith("FAILED")
    assert "plain file names" in result["msg"]
    assert not (tmp_path.parent / "escape.json").exists()
