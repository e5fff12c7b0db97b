"""Action plugin (runs on the controller) of the run locks: ``op_lock`` (the stack's
operation lock) and ``backup_sets`` with ``state=locked`` (the backup run lock).

It adds what only the controller knows to the module's arguments and to the staleness rule
of module_utils/op_lock.py:

* ``controller``: this controller's host name, the pid of ``ansible-playbook`` (the parent
  of the worker process running this plugin) and that process's start time (field 22 of
  /proc/PID/stat, so a reused pid is not taken for the holder);
* when the module reports a live holder (``held_by``) that was taken from this same
  controller by a process that has ended, it runs the module again with ``break_token``:
  the module breaks that lock with a warning and takes it;
* ``wait_timeout`` (op_lock): while a live holder has the lock, it asks again every
  POLL_SECONDS until the timeout, then reports the module's refusal.

Every other task of these modules (``backup_sets`` with another state, async or not) runs
as the normal action.
"""

from __future__ import annotations

import os
import socket
import time

from ansible.plugins.action.normal import ActionModule as NormalAction

POLL_SECONDS = 2.0
# module -> the state whose run takes a lock
LOCKING_STATES = {"op_lock": "acquired", "backup_sets": "locked"}
DEFAULT_STATES = {"op_lock": "acquired", "backup_sets": "query"}


def pid_start(pid: int, proc: str = "/proc"):
    """Start time of process ``pid`` in clock ticks since boot; None where unknown."""
    try:
        with open(f"{proc}/{int(pid)}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except (OSError, ValueError):
        return None
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    try:
        return int(fields[19])  # field 22 of stat; fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def controller_identity() -> dict:
    pid = os.getppid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": pid_start(pid)}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_gone(holder, me: dict, alive=pid_alive, start_of=pid_start) -> bool:
    """True only when ``holder`` was taken from this controller (``me``) by a process that
    has ended (or whose pid now belongs to a process started later)."""
    ctl = (holder or {}).get("controller") or {}
    pid = ctl.get("pid")
    if not isinstance(pid, int) or pid <= 0 or ctl.get("host") != me.get("host"):
        return False
    if not alive(pid):
        return True
    recorded = ctl.get("pid_start")
    current = start_of(pid)
    return recorded is not None and current is not None and recorded != current


class ActionModule(NormalAction):
    def run(self, tmp=None, task_vars=None):
        name = self._task.action.rsplit(".", 1)[-1]
        args = self._task.args
        if args.get("state", DEFAULT_STATES.get(name)) != LOCKING_STATES.get(name):
            return super().run(tmp, task_vars)
        result = super(NormalAction, self).run(tmp, task_vars)
        me = controller_identity()
        timeout = float(args.get("wait_timeout") or 0) if name == "op_lock" else 0.0
        started = time.monotonic()
        broken_tokens = set()
        break_token = None
        while True:
            module_args = dict(args, controller=me)
            if break_token:
                module_args["break_token"] = break_token
            answer = self._execute_module(
                module_name=self._task.action, module_args=module_args, task_vars=task_vars
            )
            holder = answer.get("held_by")
            if not (answer.get("failed") and holder):
                break
            token = holder.get("token")
            if token and token not in broken_tokens and holder_gone(holder, me):
                broken_tokens.add(token)
                break_token = token
                continue
            if time.monotonic() - started >= timeout:
                break
            time.sleep(POLL_SECONDS)
        result.update(answer)
        if name == "op_lock":
            result["waited_seconds"] = round(time.monotonic() - started, 1)
        self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
