"""File operations shared by the project's modules: an exclusive flock with a deadline,
and fsync of a directory (so a rename into it survives a crash)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time

POLL_INTERVAL = 0.2


class LockTimeout(Exception):
    """The lock was still held by another process when the deadline passed."""


class LockUnsupported(Exception):
    """The file system refused flock (for example some network file systems)."""


@contextlib.contextmanager
def flock_file(path, timeout, mode=0o600):
    """Hold an exclusive flock on ``path`` (created with ``mode``), waiting ``timeout`` s.

    OSError from opening the file propagates; the callers turn it into their own message.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise LockUnsupported(exc.strerror) from None
            if time.monotonic() >= deadline:
                raise LockTimeout(path)
            time.sleep(POLL_INTERVAL)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def fsync_directory(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
