"""The configuration part of a backup set put back (module_utils/config_restore.py), on sets
made by the backup's own snapshot code (module_utils/config_snapshot.py)."""

from __future__ import annotations

import json
import os

import pytest
from ansible.module_utils.config_restore import ConfigRestoreError, apply_restore, plan_restore
from ansible.module_utils.config_snapshot import Snapshot, take_snapshot

PASSWORD = "db-password-0123"


def project(root):
    """A project directory: deploy's own files and the operator's extras."""
    files = {
        ".env": f"DB_PASSWORD={PASSWORD}\nAPP_ENV=prod\n",
        "compose.yaml": "services:\n  backend:\n    image: app:1.0\n",
        "nginx/nginx.conf": "events {}\n",
        "nginx/extra/cache.conf": "proxy_cache_valid 200 1m;\n",  # the operator's own
        "grafana/dashboards/app.json": '{"title": "app"}\n',  # the operator's own
        "scripts/notify.sh": f"curl -u admin:{PASSWORD} https://hooks.example/\n",  # a secret
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return files


def backup_set(tmp_path):
    """A set directory with config/ written by the backup's snapshot, and its checksums."""
    live = tmp_path / "old"
    project(live)
    set_dir = tmp_path / "backups" / "s1"
    set_dir.mkdir(parents=True)  # the backup creates the set's directory first
    snap = take_snapshot(
        Snapshot(str(live), str(set_dir / "config"), redact_values=[PASSWORD]), False
    )
    return set_dir, {f"config/{n}": d for n, d in snap.checksums.items() if d}


def deployed(tmp_path):
    """The replacement after deploy: only deploy's files (with the live secret)."""
    dest = tmp_path / "new"
    (dest / "nginx").mkdir(parents=True)
    (dest / ".env").write_text(f"DB_PASSWORD={PASSWORD}\nAPP_ENV=prod\n")
    (dest / "compose.yaml").write_text("services:\n  backend:\n    image: app:1.1\n")  # newer
    (dest / "nginx" / "nginx.conf").write_text("events {}\n")
    return dest


def test_missing_files_are_restored_deployed_ones_kept_and_secrets_named(tmp_path):
    set_dir, checksums = backup_set(tmp_path)
    dest = deployed(tmp_path)
    plan = plan_restore(str(set_dir), str(dest), checksums, [PASSWORD])
    assert plan["restore"] == ["grafana/dashboards/app.json", "nginx/extra/cache.conf"]
    assert plan["drifted"] == ["compose.yaml"]  # the deployment's version wins
    assert plan["same"] == ["nginx/nginx.conf"]
    assert plan["needs_secrets"] == ["scripts/notify.sh"]
    assert plan["env"] == ["env.masked"]
    apply_restore(str(set_dir), str(dest), plan["restore"])
    assert (dest / "nginx/extra/cache.conf").read_text() == "proxy_cache_valid 200 1m;\n"
    assert json.loads((dest / "grafana/dashboards/app.json").read_text()) == {"title": "app"}
    assert oct((dest / "grafana/dashboards/app.json").stat().st_mode & 0o777) == "0o644"
    assert oct((dest / "grafana").stat().st_mode & 0o777) == "0o755"
    assert "image: app:1.1" in (dest / "compose.yaml").read_text()  # untouched
    assert not (dest / "scripts").exists()
    assert PASSWORD in (dest / ".env").read_text()  # .env untouched
    # a second plan finds everything in place
    again = plan_restore(str(set_dir), str(dest), checksums, [PASSWORD])
    assert again["restore"] == []
    assert "nginx/extra/cache.conf" in again["same"]


def test_a_damaged_set_is_refused_before_anything_is_written(tmp_path):
    set_dir, checksums = backup_set(tmp_path)
    (set_dir / "config" / "nginx" / "extra" / "cache.conf").write_text("tampered\n")
    dest = deployed(tmp_path)
    with pytest.raises(ConfigRestoreError, match="does not match the checksum"):
        plan_restore(str(set_dir), str(dest), checksums, [PASSWORD])
    assert not (dest / "grafana").exists()


def test_names_outside_the_project_directory_are_refused(tmp_path):
    set_dir, checksums = backup_set(tmp_path)
    checksums["config/../../etc/cron.d/x"] = "0" * 64
    with pytest.raises(ConfigRestoreError, match="outside the project directory"):
        plan_restore(str(set_dir), str(deployed(tmp_path)), checksums, [PASSWORD])


def test_a_set_without_configuration_says_which_sets_have_it(tmp_path):
    with pytest.raises(ConfigRestoreError, match="holds no configuration"):
        plan_restore(str(tmp_path), str(tmp_path), {}, [])


def test_a_write_failure_names_the_file_and_keeps_what_was_restored(tmp_path):
    set_dir, checksums = backup_set(tmp_path)
    dest = deployed(tmp_path)
    (dest / "grafana").write_text("a file where a directory belongs\n")
    plan = plan_restore(str(set_dir), str(dest), checksums, [PASSWORD])
    assert "grafana/dashboards/app.json" in plan["restore"]
    with pytest.raises(ConfigRestoreError, match="cannot create .*new/grafana: File exists"):
        apply_restore(str(set_dir), str(dest), sorted(plan["restore"], reverse=True))
    assert os.path.isfile(dest / "nginx/extra/cache.conf")  # restored before the failure
