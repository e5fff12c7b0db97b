"""Action plugin of ``backup_sets``: ``state=locked`` takes the backup run lock with the
controller's identity and stale-holder check of the run locks (action_plugins/op_lock.py);
every other state runs as the normal action."""

from __future__ import annotations

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "opsauto_action_op_lock", os.path.join(os.path.dirname(os.path.abspath(__file__)), "op_lock.py")
)
_op_lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_op_lock)


class ActionModule(_op_lock.ActionModule):
    pass
