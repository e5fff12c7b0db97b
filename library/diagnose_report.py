#!/usr/bin/python
"""Ansible module: write the diagnosis reports on the control node in one call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: diagnose_report
short_description: Write the diagnosis reports (JSON, Markdown, HTML) into one directory
description:
  - Writes every given file into O(dest_dir) atomically (partial file, then rename), creating
    the directory (mode 0700) when missing. Files whose content is unchanged are left alone.
  - One module call for every report file of a diagnose run, instead of one C(copy) task per
    file (the role renders the contents with its templates).
author: opsauto
options:
  dest_dir:
    description: Directory for the reports.
    type: path
    required: true
  files:
    description: File name (no directory part) to its text content.
    type: dict
    required: true
attributes:
  check_mode:
    support: full
    details: In check mode nothing is written; C(written) lists what would change.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Write the reports
  diagnose_report:
    dest_dir: /srv/opsauto/artifacts/diagnose
    files:
      web1.json: "{{ diagnose_report | to_nice_json }}"
  delegate_to: localhost
"""

RETURN = r"""
written:
  description: Names of the files written (or that would be written in check mode).
  returned: always
  type: list
  elements: str
paths:
  description: Absolute path of every file given.
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.fileops import ensure_directory, write_bytes_atomic
from ansible.module_utils.ops_errors import OpsError

FILE_MODE = 0o600


def plan(dest_dir, files):
    """Names whose content differs from what is on disk (missing files included)."""
    changed = []
    for name, content in sorted(files.items()):
        path = os.path.join(dest_dir, name)
        try:
            with open(path, "rb") as handle:
                current = handle.read()
        except OSError:
            current = None
        if current != content.encode("utf-8"):
            changed.append(name)
    return changed


def main():
    module = AnsibleModule(
        argument_spec={
            "dest_dir": {"type": "path", "required": True},
            "files": {"type": "dict", "required": True},
        },
        supports_check_mode=True,
    )
    dest_dir, files = module.params["dest_dir"], module.params["files"]
    bad = [name for name in files if not name or os.path.basename(name) != name]
    if bad:
        module.fail_json(msg=f"files: {', '.join(bad)} must be plain file names, no directory")
    files = {name: str(content) for name, content in files.items()}
    paths = [os.path.join(dest_dir, name) for name in sorted(files)]
    written = plan(dest_dir, files)
    if not module.check_mode and written:
        try:
            ensure_directory(dest_dir)
            for name in written:
                write_bytes_atomic(
                    os.path.join(dest_dir, name), files[name].encode("utf-8"), FILE_MODE
                )
        except OpsError as exc:
            module.fail_json(msg=str(exc))
    module.exit_json(changed=bool(written), written=written, paths=paths)


if __name__ == "__main__":
    main()
