#!/usr/bin/python
"""Ansible module: snapshot a deployed project directory into a backup set, in one task."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: config_snapshot
short_description: Copy a deployed stack's configuration into a backup set, .env masked or encrypted
description:
  - Copies every regular file under O(src) (compose file, nginx and Prometheus configuration,
    release ledger) to the same relative path under O(dest). Files are written with mode
    C(0600) and directories with mode C(0700), each file atomically (temporary file, fsync,
    rename) and the directories fsynced.
  - Hidden files and directories (names starting with a dot) and names matching O(excludes)
    are left out. The O(env_file) is stored separately, never as a plain copy. Without
    O(encrypt_recipients) it is stored as C(env.masked), with the value of every variable
    whose name matches O(secret_name_pattern) replaced by C(***MASKED***). With
    O(encrypt_recipients) it is stored whole, encrypted with C(age) to those public keys, as
    C(env.age); only ciphertext reaches the disk.
  - Returns the sha256 of every stored file (RV(checksums)), which the backup role records
    in the set's C(SET.json).
  - Idempotent. A stored file with the same content and mode is left alone. An existing
    C(env.age) is kept (age output differs on every run), so re-running the same backup set
    reports no change.
  - Does the work of a find, a copy loop, a slurp, a masked copy and a stat loop in one task,
    which is most of the backup playbook's overhead on a small database.
author:
  - Operations automation team
options:
  src:
    description: The deployed project directory (C(stack_project_dir)).
    type: path
    required: true
  dest:
    description:
      - The snapshot directory inside the backup set, for example C(SET_DIR/config).
      - It is created with mode C(0700) if missing; its parent must exist.
    type: path
    required: true
  excludes:
    description: Shell patterns (matched against file names) of files to leave out.
    type: list
    elements: str
    default: ['*.lock']
  env_file:
    description:
      - The environment file, relative to O(src).
      - A missing file is skipped (RV(env_stored=absent)).
    type: str
    default: .env
  secret_name_pattern:
    description:
      - Regular expression searched (case-insensitively) in each variable name of
        O(env_file); matching variables have their value masked.
    type: str
    default: PASSWORD|SECRET|TOKEN|KEY
  redact_values:
    description:
      - Secret values replaced by C(***REDACTED***) wherever they occur in any stored file,
        not only in O(env_file). In text files, the values of settings and the defaults of
        variable references (C(${NAME:-value})) whose name matches O(secret_name_pattern)
        are redacted too (unless the name ends in C(_FILE) or the value only refers to a
        variable). Values shorter than 4 characters are not searched for.
    type: list
    elements: str
    default: []
  encrypt_recipients:
    description:
      - age public keys (C(age1...)). When given, O(env_file) is stored whole but encrypted
        (C(env.age)) instead of masked. Needs the C(age) binary on the host.
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
    description:
      - Compares and reports what would be written (RV(changes)); writes nothing. RV(checksums)
        then holds the checksums the stored files would have (C(null) for an C(env.age) that
        would be created).
  diff_mode:
    support: full
    description: Shows the names of the files that would be written.
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Snapshot the deployed configuration into the backup set
  config_snapshot:
    src: /opt/fastapi-monolith
    dest: /var/backups/fastapi-monolith/20261129T010000Z/config
  register: snapshot

- name: Keep .env whole, but only as age ciphertext
  config_snapshot:
    src: /opt/fastapi-monolith
    dest: /var/backups/fastapi-monolith/20261129T010000Z/config
    encrypt_recipients:
      - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
"""

RETURN = r"""
checksums:
  description: sha256 of every stored file, keyed by its path relative to O(dest).
  returned: always
  type: dict
  sample: {"compose.yaml": "9f86d081884c7d65...", "env.masked": "2c26b46b68ffc68f..."}
changes:
  description:
    - Files, and directories (ending in C(/)), written or fixed.
    - In check mode, those that would be.
  returned: always
  type: list
  elements: str
  sample: ["compose.yaml", "nginx.conf", "env.masked"]
redacted:
  description: Stored files in which secrets were redacted.
  returned: always
  type: list
  elements: str
  sample: ["compose.yaml"]
env_stored:
  description:
    - How O(env_file) was stored, V(masked) or V(encrypted).
    - V(absent) when it does not exist.
  returned: always
  type: str
  sample: masked
"""

import re

from ansible.module_utils.age import check_recipients
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.config_redact import SECRET_NAME_PATTERN
from ansible.module_utils.config_snapshot import Snapshot, SnapshotError, take_snapshot
from ansible.module_utils.ops_errors import PgError


def run(module):
    params = module.params
    try:
        recipients = check_recipients(params["encrypt_recipients"])
    except PgError as exc:
        raise SnapshotError(str(exc)) from None
    try:
        re.compile(params["secret_name_pattern"])
    except re.error as exc:
        raise SnapshotError(
            f"secret_name_pattern {params['secret_name_pattern']!r} is not a valid regular "
            f"expression ({exc}): fix it, for example PASSWORD|SECRET|TOKEN|KEY"
        ) from None
    snapshot = take_snapshot(
        Snapshot(
            params["src"],
            params["dest"],
            excludes=params["excludes"],
            env_file=params["env_file"],
            recipients=recipients,
            secret_pattern=params["secret_name_pattern"],
            redact_values=params["redact_values"],
        ),
        module.check_mode,
    )
    result = {
        "changed": bool(snapshot.changes),
        "checksums": snapshot.checksums,
        "changes": snapshot.changes,
        "env_stored": snapshot.env_stored,
        "redacted": snapshot.redacted,
    }
    if module._diff:
        unchanged = sorted(set(snapshot.checksums) - set(snapshot.changes))
        result["diff"] = {
            "before_header": params["dest"],
            "after_header": params["dest"],
            "before": "".join(f"{name}\n" for name in unchanged),
            "after": "".join(
                f"{name}\n" for name in sorted(set(unchanged) | set(snapshot.changes))
            ),
        }
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "src": {"type": "path", "required": True},
            "dest": {"type": "path", "required": True},
            "excludes": {"type": "list", "elements": "str", "default": ["*.lock"]},
            "env_file": {"type": "str", "default": ".env"},
            "secret_name_pattern": {"type": "str", "default": SECRET_NAME_PATTERN},
            "encrypt_recipients": {"type": "list", "elements": "str", "default": []},
            "redact_values": {"type": "list", "elements": "str", "default": [], "no_log": True},
        },
        supports_check_mode=True,
    )
    try:
        module.exit_json(**run(module))
    except SnapshotError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
