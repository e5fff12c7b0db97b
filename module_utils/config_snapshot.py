"""The configuration snapshot of a deployed project directory, in one pass.

Walks the project directory, copies every regular file into the snapshot directory
(files 0600, directories 0700, each write atomic and durable) with every known secret
redacted (config_redact: the given secret values wherever they occur, secret-named
settings and variable defaults), stores .env either with its secret values masked or whole
but encrypted with age, and returns the sha256 of every file it stored.
Files already stored with the same content and mode are left alone, so a re-run
of the same backup set reports no change.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import subprocess

from ansible.module_utils.config_redact import SECRET_NAME_PATTERN, redact
from ansible.module_utils.fileops import (
    DIR_MODE,
    FILE_MODE,
    atomic_file,
    sha256_file,
)
from ansible.module_utils.ops_errors import FileOpsError, OpsError

MASK = "***MASKED***"
MASKED_NAME = "env.masked"
ENCRYPTED_NAME = "env.age"
ENV_LINE_RE = re.compile(r"^(\s*(?:export\s+)?)([A-Za-z_][A-Za-z0-9_]*)(\s*=).*$")


class SnapshotError(OpsError):
    """A snapshot step failed; the message names the cause and the fix."""


def _os_message(exc, what):
    return f"{what}: {exc.strerror or exc} ({getattr(exc, 'filename', None) or ''})"


def list_files(src, env_name, excludes):
    """Relative paths of the regular files to copy, sorted.

    Hidden files and directories (a name starting with '.') are left out, .env among them
    (it is stored masked or encrypted instead); so are names matching an ``excludes``
    pattern. Symbolic links to files are followed; links to directories are not walked.
    """
    if not os.path.isdir(src):
        raise SnapshotError(
            f"project directory {src} does not exist or is not a directory: check "
            "stack_project_dir (the directory holding compose.yaml on the host)"
        )
    found = []
    for top, dirs, files in os.walk(src, onerror=_raise_walk_error):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith(".") or name == env_name:
                continue
            if any(fnmatch.fnmatch(name, pattern) for pattern in excludes):
                continue
            path = os.path.join(top, name)
            if os.path.isfile(path):
                found.append(os.path.relpath(path, src))
    return sorted(found)


def _raise_walk_error(exc):
    raise SnapshotError(_os_message(exc, "cannot read the project directory"))


def mask_env(text, secret_pattern):
    """.env text with the value of every variable whose name matches ``secret_pattern``
    (case-insensitive search) replaced by ***MASKED***; other lines unchanged."""
    secret = re.compile(secret_pattern, re.IGNORECASE)
    lines = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        match = ENV_LINE_RE.match(body)
        if match and secret.search(match.group(2)):
            line = f"{match.group(1)}{match.group(2)}{match.group(3)}{MASK}{line[len(body) :]}"
        lines.append(line)
    return "".join(lines)


class Snapshot:
    """One snapshot run: ``plan`` compares, ``apply`` writes (not called in check mode)."""

    def __init__(self, src, dest, excludes=("*.lock",), env_file=".env", recipients=(),
                 secret_pattern=SECRET_NAME_PATTERN, age_binary=None,
                 redact_values=()):  # fmt: skip
        self.src = src
        self.dest = dest
        self.excludes = list(excludes)
        self.env_file = env_file
        self.recipients = list(recipients)
        self.secret_pattern = secret_pattern
        self.age_binary = age_binary
        # every stored file is redacted (config_redact): known values, secret-named settings
        self.redact_values = list(redact_values)
        self.redacted = []  # stored names in which something was redacted
        self._contents = {}  # relative name -> redacted bytes to store
        self.checksums = {}  # stored name -> sha256 (None: would be created by age)
        self.changes = []  # stored names written (or that would be)
        self.env_stored = "absent"
        self._copies = []  # relative names to copy (stored under the same name)
        self._masked = None  # masked .env bytes to write
        self._encrypt = False

    # ------------------------------------------------------------------ compare

    def plan(self):
        for rel in list_files(self.src, os.path.basename(self.env_file), self.excludes):
            with open(os.path.join(self.src, rel), "rb") as handle:
                data, hits = redact(handle.read(), self.redact_values, self.secret_pattern)
            if hits:
                self.redacted.append(rel)
            self._contents[rel] = data
            digest = hashlib.sha256(data).hexdigest()
            self.checksums[rel] = digest
            if not self._stored_as(rel, digest):
                self._copies.append(rel)
                self.changes.append(rel)
        self._plan_env()
        for rel in sorted({os.path.dirname(name) for name in self.checksums} | {""}):
            for part in _ancestors(rel):
                path = os.path.join(self.dest, part)
                if not (os.path.isdir(path) and _mode(path) == DIR_MODE):
                    label = f"{part}/" if part else "./"
                    if label not in self.changes:
                        self.changes.append(label)
        return self

    def _plan_env(self):
        env_path = os.path.join(self.src, self.env_file)
        if not os.path.isfile(env_path):
            return
        if self.recipients:
            self.env_stored = "encrypted"
            stored = os.path.join(self.dest, ENCRYPTED_NAME)
            if os.path.isfile(stored):  # age output differs on every run: keep the first one
                self.checksums[ENCRYPTED_NAME] = _sha256(stored)
                if _mode(stored) != FILE_MODE:
                    self.changes.append(ENCRYPTED_NAME)
            else:
                self.checksums[ENCRYPTED_NAME] = None
                self.changes.append(ENCRYPTED_NAME)
                self._encrypt = True
        else:
            self.env_stored = "masked"
            with open(env_path, encoding="utf-8", errors="surrogateescape") as handle:
                masked = mask_env(handle.read(), self.secret_pattern)
            data, hits = redact(
                masked.encode("utf-8", errors="surrogateescape"), self.redact_values
            )
            if hits:
                self.redacted.append(MASKED_NAME)
            digest = hashlib.sha256(data).hexdigest()
            self.checksums[MASKED_NAME] = digest
            if not self._stored_as(MASKED_NAME, digest):
                self._masked = data
                self.changes.append(MASKED_NAME)

    def _stored_as(self, name, digest):
        path = os.path.join(self.dest, name)
        try:
            return os.path.isfile(path) and _mode(path) == FILE_MODE and _sha256(path) == digest
        except OSError:
            return False

    # ------------------------------------------------------------------ act

    def apply(self):
        dirs = sorted({os.path.dirname(name) for name in self.checksums} | {""})
        for directory in dirs:
            self._make_dirs(directory)
        for rel in self._copies:
            self.checksums[rel] = self._write(rel, [self._contents[rel]])
        if self._masked is not None:
            self._write(MASKED_NAME, [self._masked])
        if self._encrypt:
            self.checksums[ENCRYPTED_NAME] = self._encrypt_env()
        elif self.env_stored == "encrypted" and ENCRYPTED_NAME in self.changes:
            os.chmod(os.path.join(self.dest, ENCRYPTED_NAME), FILE_MODE)
        return self

    def _make_dirs(self, rel):
        for part in _ancestors(rel):
            path = os.path.join(self.dest, part)
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                if not os.path.isdir(path):
                    raise SnapshotError(
                        f"{path} exists in the backup set but is not a directory: move it away "
                        "and re-run"
                    ) from None
            os.chmod(path, DIR_MODE)

    def _write(self, name, chunks):
        """Write ``chunks`` (an iterable of bytes) to dest/name atomically; return its sha256."""
        digest = hashlib.sha256()
        with atomic_file(os.path.join(self.dest, name)) as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
        return digest.hexdigest()

    def _encrypt_env(self):
        """age-encrypt the env file into dest/env.age (only ciphertext is written)."""
        age = self.age_binary or shutil.which("age")
        if age is None:
            raise SnapshotError(
                "the age binary is required on the host to store .env encrypted "
                "(backup_encrypt_recipients) but was not found in PATH: apt-get install age"
            )
        argv = [age]
        for recipient in self.recipients:
            argv += ["-r", recipient]
        argv.append(os.path.join(self.src, self.env_file))
        target = os.path.join(self.dest, ENCRYPTED_NAME)
        with atomic_file(target) as out:
            try:
                proc = subprocess.run(
                    argv, stdout=out, stderr=subprocess.PIPE, timeout=60, check=False
                )
            except subprocess.TimeoutExpired:
                raise SnapshotError(
                    f"age did not finish encrypting {self.env_file} within 60 s: check the host's "
                    "load and the age binary, then re-run"
                ) from None
            if proc.returncode != 0:
                error = proc.stderr.decode("utf-8", errors="replace").strip()
                raise SnapshotError(
                    f"age could not encrypt {self.env_file} (exit {proc.returncode}): "
                    f"{error[-500:]}; check backup_encrypt_recipients"
                )
        return _sha256(target)


def _sha256(path):
    return sha256_file(path)[0]


def _ancestors(rel):
    """'' and every parent of the relative directory ``rel``, outermost first."""
    parts = [p for p in rel.split(os.sep) if p]
    return [""] + [os.sep.join(parts[: i + 1]) for i in range(len(parts))]


def _mode(path):
    return os.stat(path).st_mode & 0o7777


def take_snapshot(snapshot, check_mode):
    """Plan, and apply unless ``check_mode``; OSError becomes a SnapshotError naming the file."""
    try:
        snapshot.plan()
        if not check_mode and snapshot.changes:
            snapshot.apply()
    except FileOpsError as exc:
        raise SnapshotError(str(exc)) from None
    except OSError as exc:
        raise SnapshotError(
            _os_message(exc, "the configuration snapshot failed")
            + ": check free space and permissions of the backup directory, then re-run"
        ) from None
    return snapshot
