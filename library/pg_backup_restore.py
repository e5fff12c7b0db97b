#!/usr/bin/python
"""Ansible module: restore a pg_backup dump into a database of a PostgreSQL container."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_backup_restore
short_description: Restore a pg_backup dump into a database of a PostgreSQL container
description:
  - Restores a single-database dump written by M(pg_backup) into a database of a PostgreSQL
    server running in a container on the managed host, using C(docker exec) (no TTY).
  - Before any database is touched, the backup is checked read-only. The file must exist, its
    sha256 and size must match the manifest, and it must be readable (C(pg_restore --list) for
    custom and directory dumps, the completion trailer for plain dumps). A failed check fails the
    task with a message saying the backup is corrupt and which check failed.
  - Idempotent. A database restored by this module carries the COMMENT
    C(opsauto-restore backup_id=<id> sha256=<sha256> writes=<n>), where C(n) is the server's
    count of rows inserted, updated and deleted in that database (C(pg_stat_database)
    C(tup_inserted + tup_updated + tup_deleted)), read once the restore's sessions have ended and
    before the swap, so no application write after the swap is taken for part of the restore.
    When the target database carries the marker of this backup, that counter is unchanged and (with
    O(verify_rows)) its exact row counts equal the manifest's, nothing is done and
    C(changed=false). A database written since (an C(UPDATE) keeps the row counts but moves the
    counter) is restored again. The counter is cheap to read and only grows; anything that resets
    it (C(pg_stat_reset), a server crash) makes the database count as changed, so it is restored
    again rather than wrongly left alone. Writes of sessions still open may reach the counter up to
    a few seconds late.
  - Every run first repairs what an interrupted earlier replace of O(database) left, and says so
    in RV(msg) and RV(repairs). A target that does not accept connections
    (C(datallowconn = false)) gets them back; a C({database}__pre_*) database that does not accept
    connections (the swap committed, the old database was not reopened) gets them back; when the
    target is missing and exactly one blocked C({database}__pre_*) exists (the live database
    renamed away without its successor), it is renamed back; leftover work databases
    C({database}__restore_*) are dropped. In check mode these are only reported.
  - The swap goes through recovery on any failure, not only a failing command. A timeout of
    the swap call or an interrupt (C(KeyboardInterrupt), or C(SIGTERM)/C(SIGHUP), which this
    module turns into an exit that runs the recovery) first ends our own sessions still running
    in the server, then looks up the state. A swap that committed only gets the old database's
    connections back, otherwise the target gets them back and the work database is dropped.
    A C(SIGKILL) runs nothing; the next run's repair covers it.
  - Before a replace (in check mode too), the server's volume must have room for a second copy
    of the database. C(pg_database_size) of the target plus 10% must be free in its data
    directory (C(data_directory), or C($PGDATA) for a role that may not read it), as C(df)
    reports it inside the container. Otherwise the module fails before anything is changed,
    naming the space needed, the space free and where (RV(space)). Tablespaces other than the
    default are not measured.
  - A dump whose manifest records a C(pg_dump) of a newer major version than the target server
    is refused before anything is changed, naming both versions (a server reads dumps of its own
    major version or older only).
  - O(mode=new) creates the target database (from C(template0), with the encoding and locale the
    manifest recorded), restores into it and checks the row counts. If any step fails, the new
    database is dropped again.
  - O(mode=replace) restores into a temporary database C({database}__restore_{sha256[:8]}) and
    checks the row counts there. Only then does it block new connections to the live database
    (C(ALLOW_CONNECTIONS false)), terminate its sessions and, in one transaction, rename the live
    database to C({database}__pre_{backup_id}) and the temporary one to the target name; the old
    database gets its connection permission back. The marker and these steps go to the server in
    one psql call; if that call fails, the module looks up how far it got and does the remaining
    steps one by one, retrying while old sessions linger. If anything fails before the swap, the
    temporary database is dropped and the live database is untouched; it is never half restored.
    Without a live database, O(mode=replace) behaves like O(mode=new).
  - Custom dumps are restored with C(pg_restore --exit-on-error), read from stdin, or from a copy
    in a container temporary directory when O(jobs) > 1. Directory dumps are unpacked into a
    container temporary directory and restored with C(pg_restore -j). Plain dumps are streamed
    (decompressed on the host) into C(psql -v ON_ERROR_STOP=1). Container temporary directories
    are removed in every case.
  - Row counts are compared exactly with the manifest (every ordinary table, C(schema.table)).
  - Encrypted backups (written by M(pg_backup) with C(encrypt_recipients), file suffix C(.age))
    need O(decrypt_identity_file); without it the module fails before connecting, naming the
    option and the recipients. The checks then are, before any database is touched, the sha256
    of the ciphertext against the manifest, and a full streaming decryption (C(age -d), which
    authenticates every 64 KiB chunk, so a wrong key or damaged data fails) whose plaintext sha256
    must equal the manifest's C(plaintext_sha256). That plaintext is exactly what M(pg_backup)
    verified before publishing the backup. The restore then decrypts again, streaming into the
    same restore path; no plaintext file is written on the host.
author:
  - Operations automation team
extends_documentation_fragment:
  - pg_container
options:
  login_user:
    description:
      - PostgreSQL role to connect as. It must be able to create, rename and drop databases and
        terminate sessions (a superuser, or the owner of the databases with CREATEDB).
  path:
    description: The dump file on the managed host, as written by M(pg_backup).
    type: path
    required: true
  manifest_path:
    description: The manifest of O(path). Defaults to C({label}.manifest.json) beside O(path).
    type: path
  database:
    description: Name of the database to restore into.
    type: str
    required: true
  mode:
    description:
      - V(new) creates O(database) and fails when it already exists (unless it already holds
        this backup).
      - V(replace) swaps a freshly restored and verified copy in place of O(database).
    type: str
    choices: [new, replace]
    default: new
  jobs:
    description: Parallel C(pg_restore) jobs for custom and directory dumps.
    type: int
    default: 1
  owner:
    description:
      - Owner of the created database. Defaults to the owner of the replaced database with
        O(mode=replace), else to O(login_user).
    type: str
  no_owner:
    description:
      - Restore objects owned by O(login_user) and without their privileges
        (C(pg_restore --no-owner --no-acl)) instead of owned by the roles that owned them when
        dumped. Needed when those roles do not exist on the target server; without it a
        missing role fails the restore (rolled back) with an error naming the roles.
        Has no effect on plain dumps (they carry C(ALTER ... OWNER) statements).
    type: bool
    default: false
  restore_globals:
    description:
      - V(missing) first creates the roles that the set's globals dump (O(globals_path)) holds
        and the server lacks - C(CREATE ROLE) with the attributes and password hash the dump
        recorded, the role's own settings and its memberships - in one transaction, after
        that dump was checked against its manifest. A role that exists is never changed (not
        its password, attributes, settings or memberships).
      - V(none) creates no role; a missing role fails the restore (rolled back), naming the
        roles and the ways out.
    type: str
    choices: [missing, none]
    default: none
  globals_path:
    description:
      - The set's globals dump (C(globals.sql), or C(globals.sql.age)), with its manifest
        beside it. Needed by O(restore_globals=missing).
    type: path
  keep_previous:
    description:
      - With O(mode=replace), keep the replaced database renamed as C({database}__pre_{backup_id})
        (cut to PostgreSQL's 63-byte name limit) instead of dropping it.
    type: bool
    default: true
  verify_rows:
    description: Compare the restored row counts with the manifest and fail (rolling back) when
      they differ.
    type: bool
    default: true
  rows_timeout:
    description:
      - Seconds the row count (O(verify_rows)) may take before the run fails (and rolls back).
      - Unset, it scales with the database counted, C(max(1800, size in GiB * 120)).
    type: int
  decrypt_identity_file:
    description:
      - Path on the managed host of the C(age) identity file (from C(age-keygen)) of one of the
        recipients an encrypted backup was written for. Only its path is passed to C(age -d -i);
        the module never reads the key. Ignored for backups that are not encrypted.
      - Needs the C(age) binary on the managed host (C(apt-get install age)).
    type: path
  maintenance_db:
    description: Database to connect to for C(CREATE), C(ALTER) and C(DROP DATABASE).
    type: str
    default: postgres
  repair_only:
    description:
      - Only repair what an interrupted earlier replace of O(database) left (see the description)
        and return; O(path) is not read. C(changed) says whether anything was repaired. The
        restore role runs this before its safety backup, which cannot connect to a blocked
        database.
    type: bool
    default: false
  verified:
    description:
      - The RV(verification.backup) result of an earlier run of this module on the same O(path),
        typically the check-mode run that planned this restore, so that one restore reads and
        verifies the whole dump once.
      - It is used only when it was made for the manifest's sha256 and the file still has the
        device, inode, size and modification time recorded then; otherwise the backup is verified
        again as usual. The restore itself still fails on unreadable data and still checks the
        row counts.
    type: dict
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying
      target.
    support: full
    details:
      - Verifies the backup (sha256 and readability, read-only), checks the target database and
        reports what would be done; no database is created, changed or dropped.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in
      check_mode), when in diff mode.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - Only O(mode=database) dumps of M(pg_backup) are restored. Dumps of V(cluster) and V(globals)
    (pg_dumpall output) are refused with a clear error; restore them as a superuser with
    C(psql -f) after reviewing them.
  - Database-level settings that C(pg_dump) writes only with C(--create) (database GRANTs,
    C(ALTER DATABASE ... SET)) are not restored. The restored database's COMMENT is the marker.
  - Applications must reconnect after a replace; sessions to the old database are terminated.
  - When a previous database from an earlier replace with the same backup id exists, the next
    replace keeps the old content as C({database}__pre_{backup_id}_2) (then C(_3)... up to C(_20),
    after which it fails before anything is changed).
seealso:
  - module: pg_backup
"""

EXAMPLES = r"""
- name: Restore last night's backup into a new database for inspection
  pg_backup_restore:
    container: fastapi-monolith-db-1
    login_user: postgres
    path: /var/backups/postgres/nightly-2024-05-02/app.dump
    database: app_inspect

- name: Replace the live database with a verified restore, keeping the old one
  pg_backup_restore:
    container: fastapi-monolith-db-1
    login_user: postgres
    login_password: "{{ vault_db_password }}"
    path: /var/backups/postgres/nightly-2024-05-02/app.dir.tar
    database: app
    mode: replace
    jobs: 2
  register: restore

- name: Restore an age-encrypted backup (the identity file stays on the host, never in the output)
  pg_backup_restore:
    container: fastapi-monolith-db-1
    login_user: postgres
    path: /var/backups/postgres/nightly-2024-05-02/app.dump.age
    decrypt_identity_file: /root/.config/opsauto/backup-age-identity.txt
    database: app
    mode: replace

- name: Show what a restore would do
  pg_backup_restore:
    container: fastapi-monolith-db-1
    login_user: postgres
    path: /var/backups/postgres/nightly-2024-05-02/app.sql.gz
    database: app
    mode: replace
  check_mode: true
"""

RETURN = r"""
database:
  description: The target database.
  returned: always
  type: str
  sample: app
backup_id:
  description: The backup id from the manifest.
  returned: always
  type: str
  sample: nightly-2024-05-02
restored_rows:
  description:
    - Exact row counts of the restored database, C(schema.table) to rows. Empty in check mode
      and when O(verify_rows=false).
  returned: always
  type: dict
  sample: {public.items: 120, public.users: 12}
previous_database:
  description:
    - With O(mode=replace), the name the replaced database was kept under (the name it would get
      in check mode); V(null) otherwise and when O(keep_previous=false).
  returned: always
  type: str
  sample: app__pre_nightly-2024-05-02
roles_created:
  description:
    - Roles created from the globals dump (O(restore_globals=missing)); in check mode, those
      that would be.
  returned: when the module got as far as restoring
  type: list
  elements: str
  sample: [app, reporting]
database_properties:
  description:
    - With O(mode=replace), what was read from the live database and given to the restored one
      before the swap (pg_restore without C(--create) carries none of it) - C(owner),
      C(encoding), C(collate), C(ctype), C(tablespace) (the work database is created with them),
      C(connection_limit), C(acl) (copied by C(GRANT)s after C(REVOKE ALL ... FROM PUBLIC)); its
      C(ALTER DATABASE ... SET) and C(ALTER ROLE ... IN DATABASE ... SET) settings are copied too.
  returned: when a replace changed the database
  type: dict
  sample: {owner: app, encoding: UTF8, collate: C, ctype: C, tablespace: pg_default,
           connection_limit: -1, acl: "{app=CTc/app,reader=c/app}"}
space:
  description:
    - With O(mode=replace) over an existing database, the free space check in bytes
      (C(needed), C(free), C(database_size)) and C(where) (the data directory measured); or
      C(skipped) with the reason when C(df) could not be run in the container.
  returned: when a database is replaced
  type: dict
  sample:
    needed: 9227468
    free: 51539607552
    where: /var/lib/postgresql/data
    database_size: 8388608
repairs:
  description:
    - What an interrupted earlier run had left and this run repaired first (with "would be" in
      check mode); empty when there was nothing to repair.
  returned: always
  type: list
  elements: str
  sample:
    - "database app did not accept connections (ALLOW_CONNECTIONS false, left by an interrupted
      replace): connections allowed again"
duration_seconds:
  description: Time the run took.
  returned: always
  type: float
timings:
  description:
    - Seconds per phase, for the phases that ran; C(prepare_seconds) (manifest, container
      check), C(verify_seconds) (the backup's verification, with the database lookups beside
      it), C(create_seconds), C(restore_seconds), C(rows_seconds) (the row count) and
      C(swap_seconds) (the marker and, with O(mode=replace), the swap).
  returned: always
  type: dict
  sample: {prepare_seconds: 0.12, verify_seconds: 0.35, create_seconds: 0.18, restore_seconds: 9.4}
verification:
  description:
    - C(backup), the checks of the file (C(sha256), C(readable), and C(plaintext_sha256) for an
      encrypted backup; C(file), the device, inode, size and mtime_ns the file had when checked;
      C(reused) when the checks of O(verified) were taken over instead of reading the file
      again); C(rows), the row count check result (V(null) when not run).
  returned: always
  type: dict
  sample:
    backup:
      sha256: 9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d
      readable: pg_restore --list (custom archive read from stdin in the container)
      file: {device: 2049, inode: 1835011, size: 52817, mtime_ns: 1714608000123456789}
    rows: exact match with the manifest's row counts
msg:
  description: What was done, or would be done in check mode.
  returned: always
  type: str
"""

import signal
import sys

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.ops_errors import OpsError
from ansible.module_utils.pg_restore import run_restore
from ansible.module_utils.pg_session import CONNECTION_ARGUMENT_SPEC
from ansible.module_utils.pg_swap import run_repair

ARGUMENT_SPEC = {
    **CONNECTION_ARGUMENT_SPEC,
    "path": {"type": "path", "required": True},
    "manifest_path": {"type": "path"},
    "database": {"type": "str", "required": True},
    "mode": {"type": "str", "choices": ["new", "replace"], "default": "new"},
    "jobs": {"type": "int", "default": 1},
    "owner": {"type": "str"},
    "no_owner": {"type": "bool", "default": False},
    "restore_globals": {"type": "str", "choices": ["missing", "none"], "default": "none"},
    "globals_path": {"type": "path"},
    "keep_previous": {"type": "bool", "default": True},
    "verify_rows": {"type": "bool", "default": True},
    "rows_timeout": {"type": "int"},
    "decrypt_identity_file": {"type": "path"},
    "maintenance_db": {"type": "str", "default": "postgres"},
    "verified": {"type": "dict"},
    "repair_only": {"type": "bool", "default": False},
}


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if module.params["jobs"] < 1:
        module.fail_json(msg=f"jobs must be 1 or more, got {module.params['jobs']}")
    # A killed run (ansible's timeout, a dropped SSH connection) raises SystemExit here, so
    # the swap's recovery runs instead of leaving the live database blocked.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    try:
        run = run_repair if module.params["repair_only"] else run_restore
        result = run(module.params, check_mode=module.check_mode)
    except OpsError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


def _exit_on_signal(signum, _frame):
    sys.exit(128 + signum)


if __name__ == "__main__":
    main()
