"""fileops.held_flock: the one wording of a flock's failures, used by the release ledger's
lock and pg_dump's per-backup lock."""

from __future__ import annotations

import fcntl
import os

import pytest
from ansible.module_utils import fileops, pg_dump
from ansible.module_utils import release_ledger as rl
from ansible.module_utils.ops_errors import OpsError, PgError


class CallerError(OpsError):
    pass


def test_a_held_lock_times_out_with_the_callers_advice(tmp_path):
    lock = tmp_path / "x.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with (
            pytest.raises(
                CallerError, match=r"timed out after 0.3s waiting for the lock on "
            ) as error,
            fileops.held_flock(str(lock), 0.3, CallerError, "stop the other run"),
        ):
            pass
        assert str(error.value).endswith(": stop the other run")
    finally:
        os.close(fd)
    with fileops.held_flock(str(lock), 0.3, CallerError, "unused") as held:
        assert held == str(lock)


def test_a_lock_file_that_cannot_be_opened_names_the_cause(tmp_path):
    missing = tmp_path / "no-such-dir" / "x.lock"
    with (
        pytest.raises(CallerError, match=f"cannot lock {missing}"),
        fileops.held_flock(str(missing), 0.3, CallerError, "unused"),
    ):
        pass


def test_errors_under_the_lock_pass_unchanged(tmp_path):
    with (
        pytest.raises(OSError, match="inside"),
        fileops.held_flock(str(tmp_path / "x.lock"), 0.3, CallerError, "unused"),
    ):
        raise OSError("inside")


def test_the_ledger_and_the_dump_lock_use_it_with_their_error_types(tmp_path):
    missing = tmp_path / "file"
    missing.write_text("x")  # a file where the ledger's directory should be
    with pytest.raises(OpsError, match="not a directory"), rl.ledger_lock(str(missing / "l")):
        pass
    with (
        pytest.raises(PgError, match="cannot lock"),
        pg_dump.file_lock(str(tmp_path / "nodir" / "x.lock"), 0.3),
    ):
        pass
