#!/usr/bin/python
"""Ansible module: record, query and mark deployments in a host's release ledger."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_ledger
short_description: Record, query and mark deployments in a JSON Lines release ledger
description:
  - Maintains a release ledger on the managed host, a JSON Lines file (one JSON object per line,
    oldest first) with one entry per deployment of the FastAPI stack.
  - The deploy role records every deployment with O(state=present); the rollback role reads the
    ledger with O(state=query) and uses RV(previous_good) as the rollback target, then marks the
    abandoned release with O(state=mark).
  - Each recorded entry has the keys C(id) (monotonic integer, previous largest id + 1),
    C(time) (UTC, ISO 8601 with C(Z) suffix), C(tag), C(image_id), C(images), C(health),
    C(status) (V(good) when O(release.health=healthy), else V(bad)), C(project), C(replicas) and
    C(note). Optional values that were not given are stored as C(null).
  - O(state=present) is idempotent. Nothing is appended when the last entry of the ledger has the
    same C(tag), C(image_id), C(images), C(replicas) and C(health), so re-running a deployment
    that changed nothing does not grow the ledger. C(project) and C(note) are not compared.
  - Every change rewrites the ledger atomically and durably (temporary file in the same directory,
    fsync, rename, fsync of the directory) while holding an exclusive C(flock) on O(path)C(.lock),
    so concurrent writers cannot interleave and ids stay unique.
  - A line that is not a valid entry is never dropped; the module fails naming the file and the
    line number, and changes nothing.
author:
  - Operations automation team
options:
  path:
    description:
      - Path of the ledger file on the managed host.
      - The file is created with mode C(0600) on the first O(state=present); a missing parent
        directory is created with mode C(0700). Existing directories are left as they are.
      - The lock file O(path)C(.lock) is created beside it and left in place.
    type: path
    required: true
  state:
    description:
      - V(present) records O(release) (appends an entry unless the last entry records the same
        release).
      - V(query) only reads the ledger. A missing ledger reads as empty and is not created.
      - V(mark) sets O(status) on every existing entry whose tag is O(tag). It fails when the
        ledger has no entry with that tag.
    type: str
    choices: [present, query, mark]
    default: present
  release:
    description:
      - The deployment to record. Required with O(state=present), not allowed otherwise.
    type: dict
    suboptions:
      tag:
        description: The backend image tag that was deployed, for example V(1.1.0).
        type: str
        required: true
      image_id:
        description:
          - Full ID of the deployed backend image, C(sha256:) followed by 64 hex digits, as printed
            by C(docker image inspect --format '{{.Id}}' IMAGE).
          - The full ID is enforced when O(release.health=healthy), because good entries are
            rollback targets. With O(release.health=unhealthy) any non-empty string is accepted,
            for example V(unknown) when the image could not be inspected.
        type: str
        required: true
      images:
        description: Image reference of every service of the stack, keyed by service name.
        type: dict
      health:
        description:
          - Result of the post-deployment health check. V(healthy) records the entry with
            C(status=good), V(unhealthy) with C(status=bad).
        type: str
        choices: [healthy, unhealthy]
        required: true
      project:
        description: Docker Compose project name of the stack.
        type: str
      replicas:
        description: Number of backend replicas that were deployed (0 or more).
        type: int
      note:
        description: Free text stored with the entry (not compared for idempotence).
        type: str
  tag:
    description:
      - Tag whose entries O(state=mark) updates. Required with O(state=mark), not allowed
        otherwise.
    type: str
  status:
    description:
      - Status O(state=mark) sets on the entries of O(tag). Required with O(state=mark), not
        allowed otherwise.
    type: str
    choices: [good, bad, rolled_back]
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying
      target.
    support: full
    details:
      - Reports the entry it would append (RV(appended)) or the ids it would mark (RV(marked)) and
        the resulting RV(entries); writes nothing, not even the lock file or the directory.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in
      check_mode), when in diff mode.
    support: full
    details:
      - The diff shows the ledger's JSON Lines content before and after the change.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - The ledger is rewritten as a whole on every change; readers (including O(state=query) and
    check mode) do not take the lock because they always see a complete file.
  - The owner and group of an existing ledger are preserved when the user is allowed to set them.
  - Ledger lines are validated on every run; each must be a JSON object with a positive integer
    C(id) (unique in the file), a non-empty string C(tag) and a C(status) of V(good), V(bad) or
    V(rolled_back).
"""

EXAMPLES = r"""
- name: Record the deployment of the backend
  release_ledger:
    path: /var/lib/fastapi-monolith/releases.jsonl
    release:
      tag: "{{ backend_tag }}"
      image_id: "{{ backend_image.images[0].Id }}"
      images:
        backend: "fastapi-monolith/backend:{{ backend_tag }}"
        nginx: fastapi-monolith/nginx:1.22
        postgres: fastapi-monolith/postgres:15
      health: "{{ 'healthy' if backend_health is succeeded else 'unhealthy' }}"
      project: fastapi-monolith
      replicas: 2
      note: "deployed by {{ awx_job_id | default('cli') }}"
  register: ledger

- name: Find the rollback target
  release_ledger:
    path: /var/lib/fastapi-monolith/releases.jsonl
    state: query
  register: ledger_before_rollback

- name: Fail when there is nothing to roll back to
  ansible.builtin.assert:
    that: ledger_before_rollback.previous_good is not none
    fail_msg: The release ledger has no good release with a tag other than the current one.

- name: Roll back to the previous good release
  ansible.builtin.include_role:
    name: deploy
  vars:
    backend_tag: "{{ ledger_before_rollback.previous_good.tag }}"

- name: Mark the abandoned release as rolled back
  release_ledger:
    path: /var/lib/fastapi-monolith/releases.jsonl
    state: mark
    tag: "{{ ledger_before_rollback.current.tag }}"
    status: rolled_back

- name: Preview what a deployment would record, without writing
  release_ledger:
    path: /var/lib/fastapi-monolith/releases.jsonl
    release:
      tag: 1.1.0
      image_id: "{{ backend_image_id }}"
      health: healthy
  check_mode: true
  diff: true
"""

RETURN = r"""
entries:
  description:
    - All ledger entries after the operation, oldest first (in check mode, as they would be).
    - Empty when the ledger does not exist.
  returned: always
  type: list
  elements: dict
  sample:
    - id: 1
      time: "2024-05-02T09:14:03Z"
      tag: 1.1.0
      image_id: "sha256:4f2c0c2b8f1e6d4b9a3e5f7c1d2b8a6e0f9c3d5b7a1e2f4c6d8b0a9e7c5d3b1f"
      images: {backend: "fastapi-monolith/backend:1.1.0", nginx: "fastapi-monolith/nginx:1.22"}
      health: healthy
      status: good
      project: fastapi-monolith
      replicas: 2
      note: null
current:
  description: The last entry of the ledger (the release deployed most recently), or V(null) when
    the ledger is empty.
  returned: always
  type: dict
  sample:
    id: 2
    time: "2024-05-03T10:01:44Z"
    tag: 1.2.0-broken
    image_id: "sha256:9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d"
    images: null
    health: unhealthy
    status: bad
    project: fastapi-monolith
    replicas: 2
    note: null
last_good:
  description: The newest entry whose status is V(good), or V(null) when there is none. It can be
    the current entry.
  returned: always
  type: dict
previous_good:
  description:
    - The rollback target, the newest entry whose status is V(good) and whose tag differs from the
      tag of RV(current). V(null) when there is none.
  returned: always
  type: dict
appended:
  description: The entry that was appended (or would be, in check mode), V(null) when nothing was
    appended.
  returned: always
  type: dict
marked:
  description: Ids of the entries whose status was (or would be, in check mode) changed by
    O(state=mark); empty for the other states and when the entries already had that status.
  returned: always
  type: list
  elements: int
  sample: [2, 5]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.ops_errors import OpsError
from ansible.module_utils.release_ledger import (
    HEALTH_CHOICES,
    STATUS_CHOICES,
    ledger_diff,
    run,
)

ARGUMENT_SPEC = {
    "path": {"type": "path", "required": True},
    "state": {"type": "str", "choices": ["present", "query", "mark"], "default": "present"},
    "release": {
        "type": "dict",
        "options": {
            "tag": {"type": "str", "required": True},
            "image_id": {"type": "str", "required": True},
            "images": {"type": "dict"},
            "health": {"type": "str", "choices": list(HEALTH_CHOICES), "required": True},
            "project": {"type": "str"},
            "replicas": {"type": "int"},
            "note": {"type": "str"},
        },
    },
    "tag": {"type": "str"},
    "status": {"type": "str", "choices": list(STATUS_CHOICES)},
}


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_if=[("state", "present", ["release"]), ("state", "mark", ["tag", "status"])],
        supports_check_mode=True,
    )
    path = module.params["path"]
    try:
        outcome = run(module.params, check_mode=module.check_mode)
    except OpsError as exc:  # LedgerError, or FileOpsError of its directory
        module.fail_json(msg=str(exc))
    before = outcome.pop("before_entries")
    if module._diff and outcome["changed"]:
        outcome["diff"] = ledger_diff(path, before, outcome["entries"])
    # no 'path' key in the result: exit_json would add the file's stat details to it
    module.exit_json(**outcome)


if __name__ == "__main__":
    main()
