#!/usr/bin/python
"""Ansible module: put the configuration part of a backup set back onto a project directory."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: config_restore
short_description: Restore the configuration files of a backup set that a deployment does not write
description:
  - Reads the backup set O(backup_id) in O(path) (C(latest) - the newest complete container
    set) and compares every configuration file it stored (C(config/), checksums in SET.json)
    with the project directory O(dest), typically right after the deploy role wrote its own
    files on a replacement server.
  - Files missing in O(dest) are copied back (mode C(0644), new directories C(0755)), each
    written atomically, after its checksum matched SET.json. A set with a damaged file is
    refused before anything is written.
  - Files the deployment wrote are never overwritten - the inventory stays their source; one
    whose content differs from the set's (compared after redacting the live file the same
    way the backup did) is reported in RV(drifted).
  - A missing file in which the backup redacted a secret is not copied (it would not work)
    and is reported in RV(needs_secrets); the stored C(.env) (masked or encrypted) is never
    copied, deploy writes C(.env) from the vault.
author:
  - Operations automation team
options:
  path:
    description: Backup directory holding one sub-directory per set.
    type: path
    required: true
  backup_id:
    description: The set to read, or V(latest).
    type: str
    default: latest
  dest:
    description: The project directory on the host (C(stack_project_dir)).
    type: path
    required: true
  redact_values:
    description: Secret values the backup redacted (the stack's passwords, S3 keys), so a
      live file is compared with the set's in the same redacted form.
    type: list
    elements: str
    default: []
  secret_pattern:
    description: Names of settings whose values the backup redacted (regular expression,
      case-insensitive), as in the backup.
    type: str
    default: PASSWORD|SECRET|TOKEN|KEY
attributes:
  check_mode:
    support: full
    details: Reports what would be restored; writes nothing.
  diff_mode:
    support: full
    details: The files that would be created, with their content.
"""

EXAMPLES = r"""
- name: Restore the operator's own configuration files after a deploy
  config_restore:
    path: /var/backups/fastapi-monolith
    backup_id: latest
    dest: /opt/fastapi-monolith
    redact_values: ["{{ stack_db_password }}"]
  register: config
"""

RETURN = r"""
backup_id:
  description: The set that was read.
  returned: always
  type: str
restored:
  description: Files copied back into O(dest) (relative names).
  returned: always
  type: list
  elements: str
drifted:
  description: Files present in O(dest) whose content differs from the set's; left as they are.
  returned: always
  type: list
  elements: str
needs_secrets:
  description: Files missing in O(dest) in which the backup redacted a secret; not copied.
  returned: always
  type: list
  elements: str
same:
  description: Files present with the set's content.
  returned: always
  type: list
  elements: str
msg:
  description: One line for the report.
  returned: always
  type: str
"""

import platform

from ansible.module_utils.backup_sets import list_sets, read_set, select_set
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.config_redact import SECRET_NAME_PATTERN
from ansible.module_utils.config_restore import apply_restore, plan_restore
from ansible.module_utils.ops_errors import OpsError


def run(module: AnsibleModule) -> dict:
    params = module.params
    where = f"{params['path']} on {platform.node()}"
    chosen = select_set(list_sets(params["path"]), params["backup_id"], where)
    meta = read_set(chosen["path"])
    plan = plan_restore(
        chosen["path"],
        params["dest"],
        meta.get("config") or {},
        params["redact_values"],
        params["secret_pattern"],
    )
    if not module.check_mode:
        apply_restore(chosen["path"], params["dest"], plan["restore"])
    verb = "would restore" if module.check_mode else "restored"
    parts = [f"{verb} {len(plan['restore'])} configuration files from set {chosen['backup_id']}"]
    if plan["drifted"]:
        parts.append(
            "kept the deployment's version of "
            + ", ".join(plan["drifted"])
            + " (they differ from the set: bring wanted changes into the inventory)"
        )
    if plan["needs_secrets"]:
        parts.append(
            "not restored because a secret was redacted in them: "
            + ", ".join(plan["needs_secrets"])
            + " (put them back from the vault)"
        )
    result = {
        "changed": bool(plan["restore"]),
        "backup_id": chosen["backup_id"],
        "restored": plan["restore"],
        "drifted": plan["drifted"],
        "needs_secrets": plan["needs_secrets"],
        "same": plan["same"],
        "msg": "; ".join(parts) + ".",
    }
    if module._diff and plan["restore"]:
        result["diff"] = [
            {"before_header": f"{params['dest']}/{name} (absent)", "before": "",
             "after_header": f"{params['dest']}/{name}", "after": _text(chosen["path"], name)}
            for name in plan["restore"]
        ]  # fmt: skip
    return result


def _text(set_dir, name):
    with open(f"{set_dir}/config/{name}", "rb") as handle:
        return handle.read(65536).decode("utf-8", errors="replace")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "backup_id": {"type": "str", "default": "latest"},
            "dest": {"type": "path", "required": True},
            "redact_values": {"type": "list", "elements": "str", "default": [], "no_log": True},
            "secret_pattern": {"type": "str", "default": SECRET_NAME_PATTERN},
        },
        supports_check_mode=True,
    )
    try:
        module.exit_json(**run(module))
    except OpsError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
