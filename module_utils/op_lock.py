"""Locks that span a whole run (several Ansible tasks): the stack's operation lock (deploy,
rollback, restart, scale, replace restore) and the backup run lock share this holder record
and this staleness rule.

A lock is a directory on the target host holding ``holder.json``, the holder record:
the operation, the controller that runs it (host name, the ``ansible-playbook`` pid and that
process's start time), the target's boot id and the start time. It is published with one
``rename`` of a fully written temporary directory, so a lock never exists without its
record, and of two runs at once exactly one gets it.

Staleness (:func:`stale_reason`). A lock is broken, with a warning, when

* its record is missing or unreadable (a lock of an older version, or a damaged one);
* the target's boot id differs from the recorded one (the host rebooted since: no process
  of that run survives);
* the controller reported that the holder's controller process has ended (``dead_token``):
  only a controller that is the holder's own can know this (the action plugin
  ``op_lock`` compares host name, pid and the pid's start time there).

* the operator named that lock's token (``forced_token``, from ``-e oplock_force_break=TOKEN``
  or ``-e backup_lock_force_break=TOKEN``): the way out for a holder on another controller
  that crashed, which no rule here can declare dead. The refusal prints the token; a token
  breaks only the lock it was read from, never a newer one taken since.

Otherwise the holder is live and blocks.

Breaking renames the lock directory away first (atomic: of two breakers one wins), then
deletes it; a release does the same after checking that the lock is still its own (token).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timezone

from ansible.module_utils.fileops import ensure_directory, os_error_message
from ansible.module_utils.ops_errors import FileOpsError, OpsError

HOLDER_FILE = "holder.json"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
CONTROLLER_KEYS = ("host", "pid", "pid_start")
ATTEMPTS = 5


class LockHeld(OpsError):
    """A live holder has the lock; ``holder`` is its record (None: unreadable)."""

    def __init__(self, message: str, holder: dict | None):
        super().__init__(message)
        self.holder = holder


def boot_id(path: str = BOOT_ID_PATH) -> str:
    """The running kernel's boot id ('' where the system has none)."""
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def utc_text(now: float) -> str:
    return datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_holder(
    operation: str, controller: dict, now: float | None = None, boot: str | None = None
) -> dict:
    """The record of a run of ``operation`` from ``controller`` (host, pid, pid_start)."""
    now = time.time() if now is None else now
    return {
        "operation": operation,
        "token": uuid.uuid4().hex,
        "controller": {key: (controller or {}).get(key) for key in CONTROLLER_KEYS},
        "boot_id": boot_id() if boot is None else boot,
        "target_pid": os.getpid(),
        "started": utc_text(now),
        "started_epoch": round(now, 3),
    }


def same_controller(holder: dict | None, controller: dict | None) -> bool:
    """The holder was taken by this very controller process (a nested include of the run)."""
    if not holder or not controller or not controller.get("pid"):
        return False
    recorded = holder.get("controller") or {}
    return all(recorded.get(key) == controller.get(key) for key in CONTROLLER_KEYS)


def stale_reason(
    holder: dict | None,
    current_boot: str,
    dead_token: str | None = None,
    forced_token: str | None = None,
):
    """Why the lock of ``holder`` is stale (or broken on the operator's word), or None when its
    holder may be alive."""
    if not isinstance(holder, dict):
        return "it has no readable holder record (a damaged lock, or one of an older version)"
    recorded_boot = holder.get("boot_id") or ""
    if recorded_boot and current_boot and recorded_boot != current_boot:
        return f"the host rebooted since it was taken (boot id {recorded_boot}, now {current_boot})"
    if dead_token and holder.get("token") == dead_token:
        return "its controller process has ended without releasing it"
    if forced_token and holder.get("token") == forced_token:
        return "the operator broke it by its token (force break)"
    return None


def read_holder(path: str) -> dict | None:
    """The record of the lock at ``path``; None when it is missing or unreadable."""
    try:
        with open(os.path.join(path, HOLDER_FILE), encoding="utf-8") as handle:
            holder = json.load(handle)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def describe(holder: dict | None, now: float | None = None) -> str:
    """'deploy (controller pid 123 on ctl1, started 2026-11-29T14:00:00Z, 5 min ago)'."""
    if not holder:
        return "an unknown holder (no readable record)"
    now = time.time() if now is None else now
    ctl = holder.get("controller") or {}
    ago = ""
    if isinstance(holder.get("started_epoch"), (int, float)):
        ago = f", {_age(now - holder['started_epoch'])} ago"
    return (
        f"{holder.get('operation') or 'an operation'} (controller pid {ctl.get('pid')} on "
        f"{ctl.get('host')}, started {holder.get('started')}{ago})"
    )


def _age(seconds: float) -> str:
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def force_hint(holder: dict | None, variable: str, path: str) -> str:
    """How the operator breaks exactly this lock."""
    token = (holder or {}).get("token")
    if not token:
        return f"remove it: rm -rf {path}"
    return f"re-run with -e {variable}={token} (breaks this lock only), or remove it: rm -rf {path}"


def held_message(
    path: str,
    holder: dict | None,
    operation: str,
    now: float | None = None,
    variable: str = "oplock_force_break",
) -> str:
    """Cause, what was left untouched, and the ways out."""
    return (
        f"{operation} refused: the lock {path} is held by {describe(holder, now)}. Nothing was "
        "changed. Wait until it ends and re-run (or give a wait timeout); a holder whose "
        "controller process has ended on this same controller, or taken before the host's "
        "last reboot, is broken automatically. Only if you are sure that run is gone (for "
        "example it ran from another controller that crashed), "
        + force_hint(holder, variable, path)
    )


def acquire(
    path: str,
    holder: dict,
    dead_token: str | None = None,
    check_mode: bool = False,
    current_boot: str | None = None,
    forced_token: str | None = None,
) -> dict:
    """Take the lock at ``path`` for ``holder`` (from :func:`new_holder`). ``forced_token``:
    the token of a lock the operator breaks (see :func:`stale_reason`).

    Returns ``acquired`` (this call took it), ``reentrant`` (this controller process holds
    it already: an outer task owns it), ``holder`` (the record that now holds it) and
    ``broken`` (the reasons of stale locks broken on the way, for warnings). Raises
    LockHeld when a live holder has it. In check mode nothing is written: ``acquired``
    stays false and a live holder is reported in ``held_by`` instead of raised.
    """
    current_boot = boot_id() if current_boot is None else current_boot
    result = {"acquired": False, "reentrant": False, "holder": None, "broken": []}
    for _ in range(ATTEMPTS):
        if not check_mode and _publish(path, holder):
            result.update(acquired=True, holder=holder)
            return result
        if not os.path.lexists(path):
            if check_mode:
                return result
            continue  # released in between: try again
        current = read_holder(path)
        if same_controller(current, holder.get("controller")):
            result.update(reentrant=True, holder=current)
            return result
        reason = stale_reason(current, current_boot, dead_token, forced_token)
        if reason is None:
            if check_mode:
                result.update(held_by=current)
                return result
            message = held_message(path, current, holder.get("operation", ""))
            if forced_token:
                message += (
                    f". The token given to break it ({forced_token}) is not this lock's: the lock"
                    " was taken again since, by the holder named above"
                )
            raise LockHeld(message, current)
        if check_mode:
            result["broken"].append(f"would break the stale lock {path} of "
                                    f"{describe(current)}: {reason}")  # fmt: skip
            return result
        if _break(path):
            result["broken"].append(f"broke the stale lock {path} of {describe(current)}: {reason}")
    raise FileOpsError(
        f"could not take the lock {path} after {ATTEMPTS} attempts: other runs keep taking and "
        "releasing it. Re-run when they are done."
    )


def _publish(path: str, holder: dict) -> bool:
    """Create the lock directory with its record in one rename; False if it exists."""
    parent = os.path.dirname(os.path.abspath(path))
    ensure_directory(parent)
    if os.path.lexists(path):
        return False
    try:
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.new-", dir=parent)
    except OSError as exc:
        raise FileOpsError(os_error_message(exc, f"create the lock {path}")) from None
    try:
        with open(os.path.join(staging, HOLDER_FILE), "w", encoding="utf-8") as handle:
            json.dump(holder, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            # rename(2) replaces only an absent or EMPTY directory: a lock always has its
            # record, and an empty directory left by an older version was checked above.
            os.rename(staging, path)
        except OSError as exc:
            if os.path.lexists(path):
                return False
            raise FileOpsError(os_error_message(exc, f"create the lock {path}")) from None
        staging = None
        return True
    except OSError as exc:
        raise FileOpsError(os_error_message(exc, f"create the lock {path}")) from None
    finally:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)


def _break(path: str) -> bool:
    """Move the lock at ``path`` away and delete it; False if another run moved it first."""
    doomed = f"{path}.stale-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise FileOpsError(os_error_message(exc, f"remove the stale lock {path}")) from None
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def release(path: str, token: str | None) -> dict:
    """Remove the lock at ``path`` if it is still the one taken with ``token``.

    Returns ``released`` and, when the lock is another run's now (this run's was broken as
    stale and taken again), ``held_by`` (left in place).
    """
    current = read_holder(path)
    if current is None and not os.path.lexists(path):
        return {"released": False, "held_by": None}
    if token and current is not None and current.get("token") != token:
        return {"released": False, "held_by": current}
    return {"released": _break(path), "held_by": None}
