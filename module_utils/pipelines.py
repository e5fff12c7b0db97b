"""Process pipelines: a command's output streamed into a file, and a stream fed to a command.

:func:`stream_to_file` is the one way a dump reaches the disk.  The producer's stdout is
read here in 1 MiB chunks (memory use is flat whatever the size) and

* kept as a tail (the last TAIL_BYTES, for the plain-dump trailer check);
* fed, uncompressed, to an optional check process (``pg_restore --list`` or ``tar -t``
  in the container) for as long as it reads;
* compressed if asked (gzip in Python, zstd through the ``zstd`` binary);
* written to the file and hashed, or, with age recipients, hashed as plaintext and
  written to ``age -r KEY...`` whose stdout is the file (only ciphertext reaches it).

It returns a :class:`StreamResult`; a failing producer, compressor or age raises
:class:`CommandError`, a failed write (disk full) :class:`FileOpsError`.
:func:`feed_command` is the other direction: a readable stream, decompressed if asked,
on a command's stdin (a plain dump into psql).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import zlib

from ansible.module_utils.fileops import CHUNK_SIZE, os_error_message, sha256_file
from ansible.module_utils.ops_errors import CommandError, FileOpsError, PgError

TAIL_BYTES = 4096
PACKAGE_HINTS = {"zstd": "zstd (apt-get install zstd / dnf install zstd)"}


@dataclasses.dataclass(frozen=True)
class StreamResult:
    """What :func:`stream_to_file` wrote and saw."""

    sha256: str  # of the file as written (the ciphertext when encrypted)
    size: int
    tail: bytes  # the last TAIL_BYTES of the producer's (uncompressed) output
    check_error: str | None  # the check's stderr when it failed; None if it passed or none ran
    plaintext_sha256: str | None = None  # encrypted: of the bytes given to age
    plaintext_size: int | None = None


def find_binary(name):
    """Absolute path of a program needed on the host (age, zstd), or a PgError naming the fix."""
    path = shutil.which(name)
    if path is None and name == "age":
        raise PgError(
            "the age binary is required on the Docker host for encrypt_recipients and "
            "decrypt_identity_file but was not found in PATH: install the age package: "
            "apt-get install age"
        )
    if path is None:
        raise PgError(
            f"the {name} binary is required on the Docker host for compression={name} but was "
            f"not found in PATH: install the package {PACKAGE_HINTS.get(name, name)} or use "
            "compression=gzip"
        )
    return path


def stderr_text(handle, limit=4000):
    """The end of what a child wrote to ``handle`` (a temporary file), as text."""
    handle.seek(0)
    return handle.read().decode("utf-8", errors="replace").strip()[-limit:]


def _widen_pipe(stream):
    """Let the pipe behind ``stream`` hold CHUNK_SIZE bytes (Linux; best effort).

    With the default 64 KiB the writer (the docker CLI) and this process wake each other
    16 times per MiB; on a busy host those switches cost measurable CPU on big dumps.
    """
    with contextlib.suppress(AttributeError, OSError):
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, CHUNK_SIZE)


def _write_quietly(handle, data):
    """Write to a child's stdin; False when the child has closed it (it exited)."""
    try:
        handle.write(data)
    except BrokenPipeError:
        return False
    return True


class _Gzip:
    def __init__(self):
        self._obj = zlib.compressobj(6, zlib.DEFLATED, 31)

    def feed(self, data):
        return self._obj.compress(data)

    def finish(self):
        return self._obj.flush()


class _Children:
    """The processes of one pipeline, each with its stderr in a temporary file."""

    def __init__(self):
        self.procs = []  # (process, stderr file), in start order

    def start(self, command, **kwargs):
        err = tempfile.TemporaryFile()
        try:
            proc = subprocess.Popen(command, stderr=err, **kwargs)
        except BaseException:
            err.close()
            raise
        self.procs.append((proc, err))
        return proc

    def stderr(self, proc):
        return stderr_text(next(err for child, err in self.procs if child is proc))

    def failed(self, proc):
        """CommandError of a child that exited non-zero (waits for it)."""
        returncode = proc.wait()
        stderr = self.stderr(proc)
        return CommandError(
            f"{os.path.basename(proc.args[0])} exited with status {returncode}: {stderr}",
            returncode,
            stderr,
        )

    def close(self):
        """Kill what still runs, close every pipe and stderr file."""
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for proc, err in self.procs:
            for stream in (proc.stdin, proc.stdout):
                if stream:
                    with contextlib.suppress(OSError):
                        stream.close()
            err.close()


class _Sink:
    """Where the (compressed) bytes go: the file itself, or age's stdin (age writes the file)."""

    def __init__(self, out, age, children):
        self.out = out
        self.age = age
        self.children = children
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.digest.update(data)
        self.size += len(data)
        if self.age is None:
            self.out.write(data)
        elif not _write_quietly(self.age.stdin, data):
            raise self.children.failed(self.age)


class _Pump(threading.Thread):
    """Moves the compressor's output into the sink while the main thread feeds it."""

    def __init__(self, source, sink):
        super().__init__(daemon=True)
        self.source = source
        self.sink = sink
        self.error = None

    def run(self):
        try:
            while chunk := self.source.read(CHUNK_SIZE):
                self.sink.write(chunk)
        except BaseException as exc:  # re-raised by the main thread
            self.error = exc
            with contextlib.suppress(OSError, ValueError):
                while self.source.read(CHUNK_SIZE):  # keep zstd from blocking the main thread
                    pass

    def finish(self):
        self.join()
        if self.error is not None:
            raise self.error


def stream_to_file(argv, out_path, env=None, compression="none", recipients=(), check_argv=None):
    """Run ``argv``; write its stdout to ``out_path`` as the module description says.

    ``compression`` is none, gzip or zstd; ``recipients`` (age public keys) encrypt the
    file; ``check_argv`` is a process fed the uncompressed output on its stdin.  The
    caller owns ``out_path`` (and removes it on failure).  Returns a StreamResult.
    """
    children = _Children()
    pump = None
    try:
        with open(out_path, "wb") as out:
            producer = children.start(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env
            )
            age = None
            if recipients:
                age_argv = [find_binary("age")]
                for recipient in recipients:
                    age_argv += ["-r", recipient]
                age = children.start(age_argv, stdin=subprocess.PIPE, stdout=out)
            sink = _Sink(out, age, children)
            zstd = None
            if compression == "zstd":
                zstd = children.start(
                    [find_binary("zstd"), "-q", "-c", "-"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                pump = _Pump(zstd.stdout, sink)
                pump.start()
            gzip = _Gzip() if compression == "gzip" else None
            check = None
            if check_argv:
                check = children.start(
                    check_argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env
                )
            check_open = check is not None
            tail = b""
            _widen_pipe(producer.stdout)
            while chunk := producer.stdout.read(CHUNK_SIZE):
                tail = (tail + chunk[-TAIL_BYTES:])[-TAIL_BYTES:]
                if check_open:
                    check_open = _write_quietly(check.stdin, chunk)
                if zstd is not None:
                    if not _write_quietly(zstd.stdin, chunk):
                        raise children.failed(zstd)
                elif gzip is not None:
                    sink.write(gzip.feed(chunk))
                else:
                    sink.write(chunk)
            if gzip is not None:
                sink.write(gzip.finish())
            for proc in (zstd, check):
                if proc is not None:
                    with contextlib.suppress(BrokenPipeError):
                        proc.stdin.close()
            if pump is not None:
                pump.finish()
            if age is not None:
                with contextlib.suppress(BrokenPipeError):
                    age.stdin.close()
            for proc, _ in children.procs:
                if proc is not check and proc.wait() != 0:
                    raise children.failed(proc)
            check_error = None
            if check is not None and check.wait() != 0:
                check_error = children.stderr(check) or f"exit {check.returncode}"
            out.flush()
            os.fsync(out.fileno())
        if age is None:
            sha256, size = sink.digest.hexdigest(), sink.size
        else:
            sha256, size = sha256_file(out_path)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and exc.filename == argv[0]:
            raise PgError(
                f"{argv[0]} not found: install the docker CLI or set docker_cli"
            ) from None
        raise FileOpsError(os_error_message(exc, f"write {out_path}")) from None
    finally:
        children.close()
        if pump is not None:
            pump.join()
    return StreamResult(
        sha256=sha256,
        size=size,
        tail=tail,
        check_error=check_error,
        plaintext_sha256=sink.digest.hexdigest() if age is not None else None,
        plaintext_size=sink.size if age is not None else None,
    )


def feed_command(argv, source, compression="none", env=None):
    """Run ``argv`` with ``source`` (a readable binary stream) on its stdin.

    ``compression`` gzip is undone in Python, zstd by the ``zstd`` binary reading
    ``source``.  Returns ``(returncode, stderr text)`` of the command, or of zstd when
    only zstd failed; the caller words a failure.
    """
    children = _Children()
    try:
        feeder = None
        if compression == "zstd":
            feeder = children.start(
                [find_binary("zstd"), "-d", "-c", "-q"], stdin=source, stdout=subprocess.PIPE
            )
            stdin = feeder.stdout
        elif compression == "gzip":
            stdin = subprocess.PIPE
        else:
            stdin = source
        proc = children.start(argv, stdin=stdin, stdout=subprocess.DEVNULL, env=env)
        if feeder is not None:
            feeder.stdout.close()  # only the command reads it now
        elif compression == "gzip":
            decomp = zlib.decompressobj(wbits=31)
            try:
                while chunk := source.read(CHUNK_SIZE):
                    proc.stdin.write(decomp.decompress(chunk))
                proc.stdin.write(decomp.flush())
            except BrokenPipeError:
                pass  # the command stopped on an error; its status and stderr tell why
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        if proc.wait() != 0:
            return proc.returncode, children.stderr(proc)
        if feeder is not None and feeder.wait() != 0:  # a damaged file: the input was cut short
            return feeder.returncode, children.stderr(feeder)
        return 0, ""
    finally:
        children.close()
