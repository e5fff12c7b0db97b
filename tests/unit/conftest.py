"""Make the project's module_utils importable as `ansible.module_utils.<name>`, the way
ansible.cfg's `module_utils = ./module_utils` does for modules."""

from pathlib import Path

import ansible.module_utils

MODULE_UTILS = Path(__file__).resolve().parents[2] / "module_utils"
if str(MODULE_UTILS) not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(MODULE_UTILS))
