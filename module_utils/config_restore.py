"""The configuration part of a backup set put back onto a (re)deployed project directory.

A set's ``config/`` holds the project directory as it was at backup time, redacted
(config_redact) and with .env masked or encrypted, and SET.json holds each file's sha256.
The deploy role writes the files it manages from the inventory, which stays their source:
the snapshot cannot replace them (their secrets are redacted in it, and an old copy would
undo the inventory). What the snapshot adds is everything else the operator kept in the
project directory - extra nginx snippets, dashboards, certificates' chains, scripts.

:func:`plan_restore` sorts every stored file into

* ``restore``: missing in the project directory, checksum as recorded, nothing redacted in
  it - copied back (files 0644, new directories 0755: the services' own users read them);
* ``needs_secrets``: missing, but a secret was redacted in it - not copied (it would not
  work); named so the operator puts it back from the vault;
* ``drifted``: present with other content than the set's (compared after redacting the
  live file the same way), never overwritten: the deployment's version wins, the report
  names the file so the difference can be brought into the inventory;
* ``same``: present with the set's content;
* ``env``: the stored .env (masked or encrypted) - never copied, deploy writes .env.

A file whose bytes do not match SET.json's checksum stops the run before anything is
written (a damaged set is not half restored). Paths are confined to the project directory.
"""

from __future__ import annotations

import hashlib
import os

from ansible.module_utils.config_redact import REDACTED, SECRET_NAME_PATTERN, redact
from ansible.module_utils.config_snapshot import ENCRYPTED_NAME, MASKED_NAME
from ansible.module_utils.fileops import atomic_file, fsync_directory
from ansible.module_utils.ops_errors import OpsError

PREFIX = "config/"
RESTORED_FILE_MODE = 0o644
RESTORED_DIR_MODE = 0o755


class ConfigRestoreError(OpsError):
    """The configuration cannot be restored; the message names the cause and the fix."""


def _inside(root: str, rel: str) -> str:
    """``root``/``rel``, refusing a name that leaves ``root`` (absolute, ``..``)."""
    if os.path.isabs(rel) or ".." in rel.split("/") or not rel:
        raise ConfigRestoreError(
            f"the set names the configuration file {rel!r}, which is outside the project "
            "directory: the set's SET.json is damaged or was not written by this project"
        )
    return os.path.join(root, rel)


def plan_restore(set_dir, dest, checksums, redact_values=(), secret_pattern=SECRET_NAME_PATTERN):
    """Sort the set's stored configuration files (see the module docstring).

    ``checksums`` is SET.json's ``config`` map (``config/<name>`` -> sha256). Returns a dict
    of lists of names (``restore``, ``needs_secrets``, ``drifted``, ``same``, ``env``).
    """
    plan = {"restore": [], "needs_secrets": [], "drifted": [], "same": [], "env": []}
    if not checksums:
        raise ConfigRestoreError(
            f"the set in {set_dir} holds no configuration (it was taken with "
            "backup_config=false, or it is an RDS snapshot record): choose a set taken by "
            "the backup role of a Docker host"
        )
    for key in sorted(checksums):
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX) :]
        if name in (MASKED_NAME, ENCRYPTED_NAME):
            plan["env"].append(name)
            continue
        source = _inside(os.path.join(set_dir, "config"), name)
        data = _read(source)
        if hashlib.sha256(data).hexdigest() != checksums[key]:
            raise ConfigRestoreError(
                f"{source} does not match the checksum SET.json recorded: the set is damaged. "
                "Nothing was restored; use another set (or fetch this one again from S3)"
            )
        target = _inside(dest, name)
        if os.path.lexists(target):
            live, _ = redact(_read(target), redact_values, secret_pattern)
            plan["same" if live == data else "drifted"].append(name)
        elif REDACTED.encode() in data:
            plan["needs_secrets"].append(name)
        else:
            plan["restore"].append(name)
    return plan


def apply_restore(set_dir, dest, names):
    """Copy ``names`` from the set's config/ into ``dest`` (atomic per file; 0644, 0755)."""
    for name in names:
        target = _inside(dest, name)
        _make_dirs(dest, os.path.dirname(name))
        data = _read(_inside(os.path.join(set_dir, "config"), name))
        try:
            with atomic_file(target, RESTORED_FILE_MODE) as out:
                out.write(data)
            os.chmod(target, RESTORED_FILE_MODE)
        except OSError as exc:
            raise ConfigRestoreError(
                f"cannot write {target}: {exc.strerror or exc}. Check the project directory's "
                "owner and free space, then re-run (files already restored are kept)"
            ) from None


def _make_dirs(dest, rel_dir):
    path = dest
    for part in [p for p in rel_dir.split("/") if p]:
        path = os.path.join(path, part)
        if os.path.isdir(path):
            continue
        try:
            os.mkdir(path, RESTORED_DIR_MODE)
            os.chmod(path, RESTORED_DIR_MODE)
            fsync_directory(os.path.dirname(path))
        except OSError as exc:
            raise ConfigRestoreError(
                f"cannot create {path}: {exc.strerror or exc}. Check the project directory"
            ) from None


def _read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigRestoreError(f"cannot read {path}: {exc.strerror or exc}") from None
