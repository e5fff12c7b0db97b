"""File IO shared by every module that writes a file.

* directories: :func:`ensure_directory` (mode 0700, parents too);
* content: :func:`sha256_file`;
* atomic writes: a ``.{name}.partial-XXXX`` file beside the target
  (:func:`new_partial_path`), filled, then :func:`publish` (fsync, rename, fsync of the
  directory) or :func:`discard`; :func:`produce_file` (a path) and :func:`atomic_file`
  (an open file) wrap the three in a ``with`` block, :func:`write_bytes_atomic` and
  :func:`write_json_atomic` write whole contents;
* locks: :func:`flock_file`, an exclusive flock with a deadline, and :func:`held_flock`,
  the same with its failures worded once for every caller;
* messages: :func:`os_error_message`, an OSError as "cannot WHAT: cause and fix".

Problems are raised as :class:`FileOpsError` (an ``OpsError``) unless a function says
it lets OSError through for its caller to word.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import time

from ansible.module_utils.ops_errors import FileOpsError

CHUNK_SIZE = 1024 * 1024
FILE_MODE = 0o600
DIR_MODE = 0o700
POLL_INTERVAL = 0.2


class LockTimeout(FileOpsError):
    """The lock was still held by another process when the deadline passed."""


class LockUnsupported(FileOpsError):
    """The file system refused flock (for example some network file systems)."""


def os_error_message(exc, what):
    """``cannot WHAT: HINT`` for an OSError, the hint naming the usual fix."""
    hint = {
        errno.ENOSPC: "no space left on the device: free some space or choose another dest_dir",
        errno.EDQUOT: "disk quota exceeded: free some space or choose another dest_dir",
        errno.EROFS: "the file system is read-only: choose another dest_dir",
        errno.EACCES: "permission denied: run the task with become: true or fix the permissions",
        errno.EPERM: "permission denied: run the task with become: true or fix the permissions",
    }.get(exc.errno, exc.strerror or str(exc))
    return f"cannot {what}: {hint}"


# --------------------------------------------------------------------------- directories


def ensure_directory(path):
    """Create ``path`` and missing parents with mode 0700; True if ``path`` was created."""
    if os.path.isdir(path):
        return False
    try:
        os.makedirs(path, DIR_MODE)
    except FileExistsError:
        if os.path.isdir(path):
            return False
        raise FileOpsError(
            f"{path} exists and is not a directory: move it away or choose another dest_dir"
        ) from None
    except OSError as exc:
        raise FileOpsError(os_error_message(exc, f"create directory {path}")) from None
    os.chmod(path, DIR_MODE)
    return True


def fsync_directory(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path):
    """(sha256 hex digest, size) of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# --------------------------------------------------------------------------- atomic writes


def _make_partial(final_path, mode):
    """Create an empty ``.{name}.partial-XXXX`` beside ``final_path``; OSError propagates."""
    directory, name = os.path.split(os.path.abspath(final_path))
    fd, path = tempfile.mkstemp(prefix=f".{name}.partial-", dir=directory)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return path


def new_partial_path(final_path, mode=FILE_MODE):
    """Create an empty ``.{name}.partial-XXXX`` (``mode``, default 0600) beside ``final_path``."""
    try:
        return _make_partial(final_path, mode)
    except OSError as exc:
        directory = os.path.dirname(os.path.abspath(final_path))
        raise FileOpsError(os_error_message(exc, f"create a file in {directory}")) from None


def publish(partial_path, final_path):
    """fsync ``partial_path``, rename it to ``final_path`` atomically, fsync the directory.

    OSError propagates (the caller words it).
    """
    fd = os.open(partial_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial_path, final_path)
    fsync_directory(os.path.dirname(os.path.abspath(final_path)))


def discard(path):
    """Remove ``path`` if it is given and exists (a partial file after a failure)."""
    if path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def atomic_file(target, mode=FILE_MODE):
    """A binary file handle whose content becomes ``target`` only if the block succeeds.

    The handle writes a partial file beside ``target`` (created with ``mode``); after the
    block it is fsynced and renamed over ``target`` and the directory is fsynced.  On any
    exception the partial file is removed and ``target`` is untouched.  OSError
    propagates unchanged, so each caller words it for its own users.
    """
    partial = _make_partial(target, mode)
    try:
        with open(partial, "wb") as out:
            yield out
        publish(partial, target)
        partial = None
    finally:
        discard(partial)


@contextlib.contextmanager
def produce_file(final_path, mode=FILE_MODE):
    """The path of a partial file that becomes ``final_path`` only if the block succeeds.

    The block fills (and verifies) ``.{name}.partial-XXXX`` beside ``final_path`` and does
    whatever must come before publication; when it ends without an exception the file is
    fsynced and renamed to ``final_path`` and the directory fsynced.  On any exception
    the partial file is removed and ``final_path`` is not created.  Creating and
    publishing the file raise FileOpsError; errors of the block pass unchanged.
    """
    partial = new_partial_path(final_path, mode)
    try:
        yield partial
        try:
            publish(partial, final_path)
        except OSError as exc:
            raise FileOpsError(os_error_message(exc, f"publish {final_path}")) from None
        partial = None
    finally:
        discard(partial)


def write_bytes_atomic(path, data, mode=FILE_MODE):
    """Replace ``path`` with ``data`` (bytes) atomically and durably (partial file, rename)."""
    try:
        with atomic_file(path, mode) as out:
            out.write(data)
    except OSError as exc:
        raise FileOpsError(os_error_message(exc, f"write {path}")) from None


def write_json_atomic(path, data, mode=FILE_MODE):
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically (mode 0600)."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"), mode)


# --------------------------------------------------------------------------- locks


@contextlib.contextmanager
def flock_file(path, timeout, mode=FILE_MODE):
    """Hold an exclusive flock on ``path`` (created with ``mode``), waiting ``timeout`` s.

    Raises LockTimeout when another process still holds it at the deadline and
    LockUnsupported when the file system refuses flock.  OSError from opening the file
    propagates; the callers turn it into their own message.
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


@contextlib.contextmanager
def held_flock(path, timeout, error, busy, mode=FILE_MODE):
    """Hold :func:`flock_file` on ``path``, its failures raised as ``error`` (the caller's
    OpsError class) in one wording: the lock file cannot be opened (the OS error and its
    fix), the file system refuses flock, or the deadline passed (``busy`` says who holds
    the lock and what to do). Errors of the block under the lock pass unchanged.
    """
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(flock_file(path, timeout, mode))
        except OSError as exc:
            raise error(os_error_message(exc, f"lock {path}")) from None
        except LockUnsupported as exc:
            raise error(
                f"cannot lock {path}: the file system refuses flock ({exc}); keep it on a "
                "local file system"
            ) from None
        except LockTimeout:
            raise error(
                f"timed out after {timeout:g}s waiting for the lock on {path}: {busy}"
            ) from None
        yield path
