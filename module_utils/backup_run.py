"""One backup run, from the run lock to the seal (backup_sets state=sealed, then finished).

``take_set`` dumps every database and the cluster globals (pg_dump.run_backup, each dump
verified and described by its manifest), snapshots the deployed configuration
(config_snapshot), then writes SET.json from the manifests on disk and the snapshot's
checksums (backup_sets.build_set). A run that fails removes the set it started, records
the failure for monitoring and releases the run lock before it reports the cause.

``finish`` ends a run: retention, the node_exporter metrics of the newest set, and the
release of the run lock. The backup role calls it in the same module run as ``take_set``,
or after the off-site copy when there is one.

The run lock (backup_sets.open_run) is the only lock of a run: the dumps are taken under
it without pg_dump's own per-backup lock.
"""

from __future__ import annotations

import os
import shutil

from ansible.module_utils.backup_cleanup import clean_leftovers, run_names, stop_on_signals
from ansible.module_utils.backup_retention import Policy, delete_sets, plan_retention, start_set
from ansible.module_utils.backup_sets import (
    FAILURE_FILE,
    METRICS_FILE,
    OFFSITE_FILE,
    SET_FILE,
    BackupSetError,
    build_set,
    failure_text,
    list_sets,
    metrics_text,
    release_run,
    set_path,
    write_metric_file,
    write_set,
)
from ansible.module_utils.backup_space import check as check_space
from ansible.module_utils.backup_space import database_sizes, estimate
from ansible.module_utils.config_snapshot import Snapshot, take_snapshot
from ansible.module_utils.ops_errors import OpsError
from ansible.module_utils.pg_artifacts import manifest_name, read_manifest, sanitize_label
from ansible.module_utils.pg_dump import run_backup
from ansible.module_utils.pg_session import PgContainer

CONFIG_DIR = "config"
DUMP_OPTIONS = ("format", "jobs", "compression", "compress_level")
CONNECTION_OPTIONS = ("container", "docker_cli", "login_user", "login_password")


class RunFailed(BackupSetError):
    """A sealed run failed and was cleaned up; ``released``: the run lock was released."""

    def __init__(self, message: str, released: bool):
        super().__init__(message)
        self.released = released


def dump_requests(params: dict) -> list[dict]:
    """The pg_backup parameters of each dump of the set: every database, then the globals."""
    common = {key: params.get(key) for key in CONNECTION_OPTIONS}
    common.update(
        dest_dir=params["path"],
        backup_id=params["backup_id"],
        encrypt_recipients=params.get("encrypt_recipients") or [],
        run_lock_held=bool(params.get("lock_held")),  # then the run lock is the only lock
        # the run's names: its clients, temp dirs and containers are recognisable
        app_name=params.get("app_name"),
        temp_prefix=params.get("temp_prefix"),
        container_label=params.get("container_label"),
    )
    requests = [
        {**common, **{key: params.get(key) for key in DUMP_OPTIONS}, "mode": "database",
         "database": name}
        for name in params["databases"]
    ]  # fmt: skip
    if params.get("globals"):
        requests.append({**common, "mode": "globals"})
    return requests


def _label(request: dict) -> str:
    return sanitize_label(request["database"]) if request["mode"] == "database" else "globals"


def take_set(params: dict, check_mode: bool) -> dict:
    """Dump, snapshot and seal the set; on failure clean up, record it and say why."""
    set_dir = set_path(params["path"], params["backup_id"])
    existed = os.path.isdir(set_dir)
    params = {**params, **run_names(params["path"])}
    try:
        with stop_on_signals():
            return _take(params, set_dir, existed, check_mode)
    except OpsError as exc:
        message, released = _failed(params, set_dir, existed, check_mode, str(exc))
        raise RunFailed(message, released) from None


def _take(params: dict, set_dir: str, existed: bool, check_mode: bool) -> dict:
    requests = dump_requests(params)
    cleaned = []
    if params.get("lock_held") and not check_mode:
        # Under the run lock no other run of this backup directory lives: what carries its
        # names was left by a killed run (clients, sessions, temp dirs, partial sets).
        cleaned = clean_leftovers(
            PgContainer.from_params(params), params["path"], set_dir,
            (params["databases"] or ["postgres"])[0],
        )  # fmt: skip
    space = None
    if params.get("space_check", True) and not os.path.isfile(os.path.join(set_dir, SET_FILE)):
        # before the first dump: refused with the figures rather than a disk filled midway
        pg = PgContainer.from_params(params)
        items = estimate(
            list_sets(params["path"]), params["databases"], bool(params.get("globals")),
            database_sizes(pg, (params["databases"] or ["postgres"])[0]),
            params.get("format") or "custom",
        )  # fmt: skip
        space = check_space(params["path"], items)
    if not check_mode:
        # The start marker makes the set ours (retention deletes nothing else) and says
        # whether it is a scheduled or a safety set; a foreign directory is refused here.
        start_set(
            set_dir, params["backup_id"], params.get("purpose") or "scheduled", params["host"],
            params["project"],
        )  # fmt: skip
    dumps = [run_backup(request, check_mode=check_mode) for request in requests]
    result = {
        "changed": any(d["changed"] for d in dumps),
        "backup_id": params["backup_id"],
        "set_dir": set_dir,
        "set_exists": existed,
        "dumps": [{"path": d["path"], "changed": d["changed"], "msg": d["msg"]} for d in dumps],
        "config_changes": [],
        "set": None,
        "cleaned": cleaned,
        "space": space,
    }
    if check_mode and not existed:
        # Nothing on disk to snapshot into or describe: say what the run would write.
        result["msg"] = (
            f"Check mode: would write backup set {params['backup_id']} in {set_dir}: dumps of "
            f"{', '.join(params['databases'])}"
            + (", the globals" if params.get("globals") else "")
            + (", the configuration snapshot" if params.get("config_src") else "")
            + " and SET.json."
        )
        return result
    checksums = {}
    if params.get("config_src"):
        snapshot = take_snapshot(
            Snapshot(
                params["config_src"],
                os.path.join(set_dir, CONFIG_DIR),
                recipients=params.get("encrypt_recipients") or [],
                redact_values=params.get("config_redact_values") or [],
            ),
            check_mode,
        )
        checksums = snapshot.checksums
        result["config_changes"] = snapshot.changes
        result["config_redacted"] = snapshot.redacted
        result["changed"] = result["changed"] or bool(snapshot.changes)
    # The manifests on disk are the dumps' own description of themselves.
    manifests = [read_manifest(os.path.join(set_dir, manifest_name(_label(r)))) for r in requests]
    meta = build_set(
        params["backup_id"], params["host"], params["project"], params["databases"],
        manifests, checksums,
    )  # fmt: skip
    sealed = write_set(set_dir, meta, check_mode)
    result.update(set=meta, changed=result["changed"] or sealed)
    files = ", ".join(d["file"] for d in meta["dumps"])
    size = sum(int(d["size"]) for d in meta["dumps"])
    result["msg"] = (
        ("Check mode: backup set " if check_mode else "Backup set ")
        + f"{params['backup_id']} in {set_dir}: {files} ({_human(size)}, verified)"
        + ("" if sealed else "; it was complete already")
        + "."
        + (f" Removed what an earlier, killed run left: {'; '.join(cleaned)}." if cleaned else "")
    )
    return result


def _failed(
    params: dict, set_dir: str, existed: bool, check_mode: bool, cause: str
) -> tuple[str, bool]:
    """Clean up after a failed run (not in check mode): the message, and whether the lock
    was released."""
    where = params["path"]
    cause = cause.rstrip()
    cause += "" if cause.endswith(".") else "."
    if check_mode:
        return f"Backup {params['backup_id']} would fail: {cause} Nothing was written.", False
    notes = []
    released = False
    if not existed and os.path.isdir(set_dir):
        try:
            shutil.rmtree(set_dir)
            notes.append(f"No incomplete set was left in {where}; earlier backups are untouched.")
        except OSError as exc:
            notes.append(
                f"The incomplete set {set_dir} could not be removed ({exc.strerror or exc}): "
                "remove it by hand; it has no SET.json and is never restored from."
            )
    elif existed:
        notes.append(f"The set {set_dir} existed before this run and was left as it was.")
    else:
        notes.append(f"Nothing was written in {where}; earlier backups are untouched.")
    try:
        _record_failure(params)
    except OpsError as exc:
        notes.append(f"Could not record the failure metric: {exc}")
    try:
        released = _release(params)
    except OpsError as exc:
        notes.append(str(exc))
    message = (
        f"Backup {params['backup_id']} of {params['project']} on {params['host']} failed: "
        f"{cause} " + " ".join(notes)
    )
    return message, released


def _record_failure(params: dict) -> None:
    if params.get("metrics_dir"):
        write_metric_file(params["metrics_dir"], FAILURE_FILE, failure_text(params["project"]),
                          check_mode=False)  # fmt: skip


def _release(params: dict) -> bool:
    return bool(params.get("lock_held")) and release_run(params["path"])


def finish(params: dict, check_mode: bool, result: dict) -> dict:
    """Retention (when asked), metrics (when metrics_dir is set) and the lock's release."""
    sets = list_sets(params["path"])
    deleted, kept, left_alone = [], {}, {}
    if params.get("retention"):
        plan = plan_retention(sets, retention_policy(params))
        if not check_mode:
            delete_sets(plan.delete)
        kept, left_alone = plan.keep, plan.left_alone
        gone = {b.backup_id for b in plan.delete}
        deleted = sorted(gone)
        if params.get("diff"):
            result["diff"] = {
                "before": "".join(f"{b}\n" for b in sorted(s.backup_id for s in sets)),
                "after": "".join(
                    f"{b}\n" for b in sorted(s.backup_id for s in sets if s.backup_id not in gone)
                ),
            }
        sets = [b for b in sets if b.backup_id not in gone]
    complete = [b.as_dict() for b in sets if b.complete]
    result.update(
        sets=complete,
        latest=complete[0] if complete else None,
        incomplete=[b.backup_id for b in sets if not b.complete],
        deleted=deleted,
        kept=kept,
        left_alone=left_alone,
        changed=result.get("changed", False) or bool(deleted),
    )
    if params.get("metrics_dir"):
        offsite = params.get("offsite_success")
        text = metrics_text(params["project"], result["latest"], len(complete), offsite)
        wrote = write_metric_file(params["metrics_dir"], METRICS_FILE, text, check_mode)
        if offsite:  # the newest set is off-site: an earlier failure no longer holds
            wrote = (
                write_metric_file(params["metrics_dir"], OFFSITE_FILE, None, check_mode) or wrote
            )
        result["metrics_changed"] = wrote
        result["changed"] = result["changed"] or wrote
    summary = (
        f"{len(complete)} sets kept, deleted: {', '.join(deleted) or 'none'}."
        if params.get("retention")
        else f"{len(complete)} complete sets."
    )
    result["msg"] = f"{result['msg']} {summary}" if result.get("msg") else summary
    result["released"] = False if check_mode else _release(params)
    return result


def retention_policy(params: dict) -> Policy:
    """The retention policy of the module's parameters."""
    return Policy(
        keep_last=params["keep_last"],
        keep_daily=params["keep_daily"],
        keep_weekly=params["keep_weekly"],
        keep_monthly=params["keep_monthly"],
        keep_safety=params.get("keep_safety", Policy.keep_safety),
        incomplete_max_age_hours=params["incomplete_max_age_hours"],
    )


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
