"""The project's error types.

Every error a custom module reports to the user derives from :class:`OpsError`; its
message names the cause and the fix, and the module turns it into ``fail_json(msg=...)``.
A module's ``main()`` therefore needs one ``except OpsError``.

The errors of one concept live beside it (``TransferError`` in s3_transfer,
``LedgerError`` in release_ledger, ...); the ones shared by several files live here.
"""

from __future__ import annotations


class OpsError(Exception):
    """An error to report to the user; the message says what is wrong and how to fix it."""


class FileOpsError(OpsError):
    """A file or directory could not be created, written, published or locked."""


class PgError(OpsError):
    """A PostgreSQL backup or restore problem (pg_backup, pg_backup_restore)."""


class CommandError(PgError):
    """A command (docker exec ...) failed; ``returncode`` and ``stderr`` tell how."""

    def __init__(self, message, returncode=None, stderr=""):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class CorruptBackupError(PgError):
    """A backup file failed a check (sha256, archive listing, trailer)."""
