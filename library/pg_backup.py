#!/usr/bin/python
"""Ansible module: take a verified logical backup of PostgreSQL running in a container."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_backup
short_description: Take a verified logical backup of a PostgreSQL server running in a container
description:
  - Runs C(pg_dump) (O(mode=database)) or C(pg_dumpall) (O(mode=cluster), O(mode=globals)) inside
    a running PostgreSQL container with C(docker exec) (no TTY) on the managed host, and streams
    the output to O(dest_dir)C(/)O(backup_id)C(/)C({label}.{ext}) on that host, with a manifest
    C({label}.manifest.json) beside it.
  - The extension is C(dump) (custom format), C(dir.tar) (directory format, a tar of the pg_dump
    directory), C(sql), C(sql.gz) or C(sql.zst) (plain format).
  - The output is streamed in 1 MiB chunks, so memory use does not grow with the size of the
    database. It goes to a temporary file C(.{name}.partial-XXXX) in the same directory while its
    sha256 is computed; the file is then verified, fsynced and renamed into place atomically, and
    the directory is fsynced. On any failure (pg_dump error, container killed during the dump,
    disk full, failed verification) the temporary file is removed, so the final name only ever
    holds a complete, verified dump. Other backups are never touched.
  - The manifest is written (atomically) just before the dump is renamed into place. A manifest
    without its dump (an interrupted run) is overwritten by the next run.
  - For O(mode=database), one psql session (one C(docker exec)) first reads the server version
    and the database's encoding, so that a wrong password or a missing database fails before
    anything is created. After the lock is taken it opens a REPEATABLE READ transaction, exports
    its snapshot and, while C(pg_dump --snapshot) dumps exactly that snapshot, counts the rows of
    every ordinary user table (tables of extensions excluded). The count runs without parallel
    workers or JIT, on one core, so it takes little from the dump. The counts are stored in the
    manifest and checked by M(pg_backup_restore).
  - For O(mode=cluster) and O(mode=globals) no row counts are recorded (C(row_counts) is empty),
    because C(pg_dumpall) dumps each database in its own snapshot, so counts could not be
    consistent with the dump.
  - Verification before success. Custom format, C(pg_restore --list) in the container reads the
    dump as it streams (the archive's header and table of contents come first, and they are what
    it checks), so the check costs no time after the dump; a run that finds the backup already
    there checks the file itself the same way. Directory format, the tar is unpacked in a
    container temporary directory and listed with C(pg_restore --list); plain format, the
    completion trailer
    (C(-- PostgreSQL database dump complete) or C(-- PostgreSQL database cluster dump complete))
    must end the decompressed content.
  - Idempotent. When the dump and its manifest exist for O(backup_id) and O(label), the file's
    sha256 matches the manifest and the file verifies, nothing is dumped and C(changed=false).
    An existing file that does not match its manifest makes the module fail, leaving it untouched.
  - With O(encrypt_recipients), the dump is encrypted on the fly with C(age) to those public keys
    and the file gets the extra suffix C(.age) (for example C(app.dump.age)). Only ciphertext is
    ever written on the host, the temporary file included. The plaintext is checked while it
    streams, before the file is published. Custom format, it is fed at the same time to
    C(pg_restore -f /dev/null) in the container, which reads and decompresses every block of the
    archive and writes nothing. Directory format, C(pg_restore --list) runs on the dump directory
    in the container before it is streamed as a tar, and the streamed tar is read by C(tar -t).
    Plain format, the completion trailer must end the uncompressed stream. The manifest (not
    encrypted) records C(encryption), the sha256 and size of the ciphertext file (C(sha256),
    C(size), what S3 and the checksum checks see) and those of the plaintext
    (C(plaintext_sha256), C(plaintext_size)), which M(pg_backup_restore) checks after
    decrypting.
  - Concurrent runs for the same O(backup_id) and O(label) serialise on an C(flock) of
    C(.{label}.lock) in the backup directory; the second run then finds the backup complete and
    reports C(changed=false).
author:
  - Operations automation team
extends_documentation_fragment:
  - pg_container
options:
  login_user:
    description: PostgreSQL role to connect as. It needs read access to everything it dumps
      (a superuser for O(mode=cluster) and O(mode=globals)).
  mode:
    description:
      - V(database) dumps one database with C(pg_dump) (needs O(database)).
      - V(cluster) dumps every database and the globals with C(pg_dumpall).
      - V(globals) dumps roles and tablespaces only (C(pg_dumpall --globals-only)).
    type: str
    choices: [database, cluster, globals]
    default: database
  database:
    description:
      - The database to dump. Required with O(mode=database).
      - With O(mode=cluster), the database C(pg_dumpall) connects to first (its C(-l)).
    type: str
  format:
    description:
      - C(pg_dump) output format. V(custom) (C(-Fc)) is the default for O(mode=database).
      - V(directory) (C(-Fd)) is written inside the container in a temporary directory, streamed
        out as a tar and the temporary directory is removed in every case. It allows O(jobs).
      - O(mode=cluster) and O(mode=globals) always write V(plain); another value fails.
    type: str
    choices: [custom, directory, plain]
  jobs:
    description: Number of parallel C(pg_dump) jobs; more than 1 requires O(format=directory).
    type: int
    default: 1
  compression:
    description:
      - Compression of V(plain) output, done on the host while streaming. V(gzip) uses Python's
        zlib; V(zstd) needs the C(zstd) binary on the managed host (package C(zstd)).
      - Custom and directory formats are compressed by C(pg_dump); any value but V(none) fails
        with them.
    type: str
    choices: [none, gzip, zstd]
    default: none
  compress_level:
    description:
      - C(pg_dump -Z) for the custom and directory formats, from V(0) (no compression) to V(9)
        (smallest file, slowest). Omitted, pg_dump's own default applies (zlib level 6).
      - pg_dump compresses in a single process, so on data that does not compress well the
        compression, not the server, sets the dump's speed. On 1 GB of random text V(1) took
        less than half the time of the default for a 2.5% larger file (docs/benchmarks.md). The
        level is recorded in the manifest.
      - Fails with O(format=plain) (use O(compression) there).
    type: int
  dest_dir:
    description:
      - Directory of the backups on the managed host. The dump goes to
        O(dest_dir)C(/)O(backup_id)C(/). Directories the module creates get mode C(0700), files
        mode C(0600).
    type: path
    required: true
  backup_id:
    description: Identifier of this backup (letters, digits, C(.), C(_), C(-); not starting with
      C(.)), for example a timestamp. It names the backup's directory.
    type: str
    required: true
  label:
    description:
      - Base name of the dump and its manifest. Defaults to the database name (characters other
        than letters, digits, C(.), C(_) and C(-) replaced by C(_)) for O(mode=database),
        V(cluster) or V(globals) otherwise.
    type: str
  encrypt_recipients:
    description:
      - age public keys (C(age1...), as printed by C(age-keygen) or C(age-keygen -y IDENTITY_FILE))
        to encrypt the dump to. Any one of the matching identities decrypts it. Empty, the dump is
        not encrypted.
      - Needs the C(age) binary on the managed host (C(apt-get install age)). Only public keys are
        given here; the identity files (secret keys) belong off the backup host, with whoever
        restores.
      - A value that is not an age public key fails with a message naming it; a secret key given by
        mistake is refused without being echoed.
      - An existing backup encrypted to other recipients makes the module fail (choose another
        O(backup_id)).
    type: list
    elements: str
    default: []
  lock_timeout:
    description: Seconds to wait for another run writing the same backup before failing.
    type: int
    default: 600
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying
      target.
    support: full
    details:
      - Connects to the server (read-only) to detect a stopped container, a wrong password or a
        missing database, and verifies an existing backup; reports
        C(would dump database X from container Y to PATH) without running pg_dump or creating
        anything.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in
      check_mode), when in diff mode.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - Runs on the Docker host and needs the docker CLI there. The container must provide
    C(pg_dump), C(pg_dumpall), C(pg_restore), C(psql), C(tar) and C(mktemp).
  - Because the result contains C(path), Ansible adds the file's details (C(mode), C(owner),
    C(state)...) to the result.
  - The backup directory needs free space for one dump; a container temporary directory needs
    the same for O(format=directory).
  - With O(encrypt_recipients) the file on the host is ciphertext, but O(format=directory) still
    writes the plaintext dump directory in the container's temporary directory (beside the database
    it comes from) while it is dumped and streamed; it is removed in every case.
  - The empty lock file C(.{label}.lock) stays in the backup directory (removing it while a run
    holds it would let a second run in).
  - When a run fails after C(pg_dump) started, the module terminates the server sessions its
    clients opened (found by their C(application_name)), so no abandoned C(pg_dump) keeps a
    snapshot open.
seealso:
  - module: pg_backup_restore
"""

EXAMPLES = r"""
- name: Back up the application database (custom format)
  pg_backup:
    container: fastapi-monolith-db-1
    login_user: app
    login_password: "{{ vault_db_password }}"
    database: app
    dest_dir: /var/backups/postgres
    backup_id: "{{ ansible_date_time.iso8601_basic_short }}"
  no_log: false
  register: backup

- name: Parallel directory-format backup
  pg_backup:
    container: fastapi-monolith-db-1
    login_user: postgres
    database: app
    format: directory
    jobs: 2
    dest_dir: /var/backups/postgres
    backup_id: nightly-2024-05-02

- name: Roles and tablespaces, zstd-compressed
  pg_backup:
    container: fastapi-monolith-db-1
    login_user: postgres
    mode: globals
    compression: zstd
    dest_dir: /var/backups/postgres
    backup_id: nightly-2024-05-02

- name: Whole cluster as gzip-compressed SQL
  pg_backup:
    container: fastapi-monolith-db-1
    login_user: postgres
    mode: cluster
    compression: gzip
    dest_dir: /var/backups/postgres
    backup_id: nightly-2024-05-02

- name: Custom-format backup encrypted to two age public keys (only ciphertext on disk)
  pg_backup:
    container: fastapi-monolith-db-1
    login_user: postgres
    database: app
    dest_dir: /var/backups/postgres
    backup_id: nightly-2024-05-02
    encrypt_recipients:
      - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
      - age1lggyhqrw2nlhcxprm67z43rta597azn8gknawjehu9d9dl0jq3yqqvfafg
  register: backup

- name: Show what a backup would do
  pg_backup:
    container: fastapi-monolith-db-1
    login_user: postgres
    database: app
    dest_dir: /var/backups/postgres
    backup_id: preview
  check_mode: true
"""

RETURN = r"""
path:
  description: Path of the dump file (in check mode, where it would be written).
  returned: always
  type: str
  sample: /var/backups/postgres/20240502T091403/app.dump
manifest_path:
  description: Path of the manifest beside the dump.
  returned: always
  type: str
  sample: /var/backups/postgres/20240502T091403/app.manifest.json
manifest:
  description:
    - The backup's manifest, also stored as JSON in RV(manifest_path). V(null) in check mode when
      the backup does not exist yet.
    - Keys, C(manifest_format), C(backup_id), C(label), C(file), C(created) (UTC ISO 8601),
      C(mode), C(format), C(compression), C(database), C(databases), C(jobs), C(container),
      C(server_version), C(pg_dump_version), C(tools) (client versions), C(snapshot), C(size),
      C(sha256), C(duration_seconds), C(timings) (C(dump_seconds), from the start until the dump
      stream ended, and C(verify_seconds), the readability check after it, about 0 for custom
      archives, which are checked while they stream), C(row_counts)
      (C(schema.table) to exact rows, counted while the dump streams, in its snapshot),
      C(row_counts_scope), C(database_encoding), C(verified) (always V(true)), C(verify_method),
      C(encryption) (V(null), or C(tool) V(age) and its C(recipients)).
    - Encrypted dumps also have C(plaintext_sha256) and C(plaintext_size); C(sha256) and C(size)
      are then those of the ciphertext file.
  returned: always
  type: dict
  sample:
    backup_id: "20240502T091403"
    label: app
    file: app.dump
    created: "2024-05-02T09:14:05Z"
    mode: database
    format: custom
    compression: none
    database: app
    databases: [app]
    server_version: "15.18 (Debian 15.18-0+deb12u1)"
    pg_dump_version: "15.18 (Debian 15.18-0+deb12u1)"
    size: 48213
    sha256: 9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d
    duration_seconds: 0.84
    timings: {dump_seconds: 0.61, verify_seconds: 0.12}
    row_counts: {public.items: 120, public.users: 12}
    verified: true
    verify_method: pg_restore --list (custom archive read from stdin in the container)
sha256:
  description: sha256 of the dump file, the ciphertext when encrypted (V(null) in check mode when
    the backup does not exist).
  returned: always
  type: str
size:
  description: Size of the dump file in bytes (V(null) in check mode when it does not exist).
  returned: always
  type: int
duration_seconds:
  description: Time the dump and its verification took (from the snapshot to the rename, under
    the backup's lock); 0 when nothing was dumped.
  returned: always
  type: float
elapsed_seconds:
  description: Wall time of the whole module run on the host, also when nothing was dumped
    (connecting, locking, dumping, verifying, publishing; Ansible's own start-up is not in it).
  returned: always
  type: float
  sample: 0.95
msg:
  description: What was done, or would be done in check mode.
  returned: always
  type: str
  sample: dumped database app from container fastapi-monolith-db-1 to /var/backups/x/app.dump
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.ops_errors import OpsError
from ansible.module_utils.pg_artifacts import COMPRESSIONS, FORMATS, MODES
from ansible.module_utils.pg_dump import run_backup
from ansible.module_utils.pg_session import CONNECTION_ARGUMENT_SPEC

ARGUMENT_SPEC = {
    **CONNECTION_ARGUMENT_SPEC,
    "mode": {"type": "str", "choices": list(MODES), "default": "database"},
    "database": {"type": "str"},
    "format": {"type": "str", "choices": list(FORMATS)},
    "jobs": {"type": "int", "default": 1},
    "compression": {"type": "str", "choices": list(COMPRESSIONS), "default": "none"},
    "compress_level": {"type": "int"},
    "dest_dir": {"type": "path", "required": True},
    "backup_id": {"type": "str", "required": True},
    "label": {"type": "str"},
    "encrypt_recipients": {"type": "list", "elements": "str", "default": []},
    "lock_timeout": {"type": "int", "default": 600},
}


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_if=[("mode", "database", ["database"])],
        supports_check_mode=True,
    )
    try:
        result = run_backup(module.params, check_mode=module.check_mode)
    except OpsError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
