"""age encryption of backups: recipients, identities, decryption, version.

pg_backup encrypts a dump to age public keys (:func:`check_recipients` validates them;
the encryption itself is a stage of :func:`pipelines.stream_to_file`), and
pg_backup_restore decrypts it with an identity file (:func:`require_identity`,
:func:`check_identity_file`, :func:`decrypted`).  Keys never appear in argv: recipients
are public, identities stay in their file and only its path is passed.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile

from ansible.module_utils.fileops import CHUNK_SIZE
from ansible.module_utils.ops_errors import CorruptBackupError, PgError
from ansible.module_utils.pipelines import find_binary, stderr_text

# An age X25519 public key: "age1" and 58 bech32 characters (what age-keygen -y prints).
AGE_RECIPIENT_RE = re.compile(r"^age1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{58}$")
AGE_SECRET_PREFIX = "AGE-SECRET-KEY-"


# --------------------------------------------------------------------------- keys


def check_recipients(values):
    """Validate age public keys (``age1...``); returns them without duplicates, in order.

    An age identity (secret key) given by mistake is refused without echoing it.
    """
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    recipients = []
    for value in values:
        text = value.strip() if isinstance(value, str) else value
        if isinstance(text, str) and text.upper().startswith(AGE_SECRET_PREFIX):
            raise PgError(
                "encrypt_recipients holds an age identity (a secret key starting with "
                f"{AGE_SECRET_PREFIX}), not a public key; the value is not shown. Give the public "
                "key instead (age-keygen -y IDENTITY_FILE prints it) and keep the identity off "
                "the backup host"
            )
        if not isinstance(text, str) or not AGE_RECIPIENT_RE.match(text):
            raise PgError(
                f"encrypt_recipients: {value!r} is not an age public key: it must be 'age1' "
                "followed by 58 lowercase bech32 characters, as printed by age-keygen "
                "(or age-keygen -y IDENTITY_FILE)"
            )
        if text not in recipients:
            recipients.append(text)
    return recipients


def check_identity_file(identity_file):
    if not identity_file:
        raise PgError("decrypt_identity_file is empty: give the path of an age identity file")
    if not os.path.isfile(identity_file) or not os.access(identity_file, os.R_OK):
        raise PgError(
            f"decrypt_identity_file {identity_file} does not exist or is not readable: give the "
            "path of the age identity file (from age-keygen) of one of the backup's recipients "
            "on the Docker host, readable by the user the task runs as"
        )


def require_identity(manifest, identity_file, path):
    """Fail unless an encrypted backup can be decrypted (an identity file is given)."""
    encryption = manifest.get("encryption")
    if not encryption:
        return
    if encryption.get("tool") != "age":
        raise PgError(
            f"backup {path} is encrypted with {encryption.get('tool')!r}; only age is supported"
        )
    if not identity_file:
        raise PgError(
            f"backup {path} is encrypted with age (recipients: "
            f"{', '.join(encryption.get('recipients') or [])}): set decrypt_identity_file to the "
            "age identity file of one of these recipients. Nothing was changed"
        )
    check_identity_file(identity_file)


# --------------------------------------------------------------------------- decryption


@contextlib.contextmanager
def decrypted(path, identity_file, what=None):
    """A readable binary stream of the plaintext of an age-encrypted file.

    ``age -d -i IDENTITY_FILE PATH`` decrypts in 64 KiB authenticated chunks; the key
    stays in its file (only its path is in argv).  After the body, the rest of the stream
    is drained and age's exit status checked: a wrong identity or a damaged file raises
    (CorruptBackupError for damage).  ``what`` names the file in messages.
    """
    what = what or path
    check_identity_file(identity_file)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [find_binary("age"), "-d", "-i", identity_file, path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        try:
            yield proc.stdout
            while proc.stdout.read(CHUNK_SIZE):
                pass
            returncode = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if returncode != 0:
            raise _decrypt_error(what, identity_file, stderr_text(err))


def _decrypt_error(what, identity_file, stderr):
    if "no identity matched" in stderr:
        return PgError(
            f"cannot decrypt {what} with decrypt_identity_file {identity_file}: it holds no key "
            "of the backup's recipients (age: no identity matched any of the recipients). "
            "Nothing was changed; give the identity file of one of the recipients listed in "
            "the manifest's encryption.recipients"
        )
    if "identity" in stderr and ("read" in stderr or "pars" in stderr or "malformed" in stderr):
        return PgError(
            f"decrypt_identity_file {identity_file} is not a usable age identity file (age: "
            f"{stderr.splitlines()[-1] if stderr else 'error'}): give a file written by "
            "age-keygen"
        )
    return CorruptBackupError(
        f"{what} is corrupt: age decryption failed ({stderr.splitlines()[-1] if stderr else ''}"
        "). Nothing was changed; restore another backup"
    )


def age_version():
    proc = subprocess.run(
        [find_binary("age"), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    return proc.stdout.strip() or None
