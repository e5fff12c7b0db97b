"""Directory-format dumps (``pg_dump -Fd -j N``) staged on the host, never in the container.

pg_dump -Fd writes a directory, not a stream, so the dump has to land somewhere before it
becomes the set's one tar file. Staged in the database container (its writable layer,
``/tmp``), a large dump fills the file system that the server's container lives on. Here
pg_dump runs in a throwaway container of the database container's own image (the same
pg_dump) and writes into a staging directory in the set's directory on the host
(``.stage-<label>-XXXX``, 0700), bind-mounted. How it reaches the server:

* with a password: over TCP to 127.0.0.1 in the database container's network namespace
  (``--network container:<db>``);
* without one (socket mode, the guide's ``docker exec ... -U postgres``): through the server's
  socket, with no network at all. The throwaway container joins the database container's
  PID namespace (``--pid container:<db>``) and runs as the user of that container's PID 1, so
  it may follow ``/proc/1/root`` into the database container's file system and connect to
  ``/proc/1/root<socket dir>`` (the socket dir resolved with ``readlink -f`` inside the
  database container: Debian's ``/var/run`` is an absolute symlink that would otherwise
  resolve in the throwaway container). The staging directory is handed to that user. Only
  when this cannot be set up (the PID or its user unreadable on the host) is the dump staged
  in the database container as before (:func:`dump_in_container`), and the manifest says so.

The staged directory is then read by ``pg_restore --list`` (another
throwaway container, no network, read-only mount) and streamed by the host's ``tar``
through the same pipeline as every dump (optional age encryption), the stream checked by
``tar -t`` while it is written. The staging directory is removed in every case.

The throwaway containers carry the run's label (``opsauto.backup=<tag>``) and its
application_name, so a killed run's container is found and removed by the next run
(backup_cleanup.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid

from ansible.module_utils.ops_errors import CommandError, CorruptBackupError, PgError
from ansible.module_utils.pg_session import SOCKET_DIR
from ansible.module_utils.pipelines import find_binary, stream_to_file

STAGE_MOUNT = "/stage"
ADHOC_LABEL = "opsauto.backup=adhoc"
METHOD = (
    "pg_restore --list of the directory archive staged on the host (in a throwaway "
    "container of the database image) and tar -t of the tar stream while it was written"
)


def container_image(pg) -> str:
    """The image id of the database container."""
    argv = [pg.docker_cli, "inspect", "--format", "{{.Image}}", pg.container]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise PgError(pg.explain(proc.stderr, proc.returncode))
    return proc.stdout.strip()


def throwaway_argv(pg, plan, stage, command, access="tcp", user=None):
    """``docker run`` of ``command`` in a throwaway container of the database image with the
    staging directory at /stage. ``access``: ``tcp`` (the database container's network,
    the password), ``socket`` (its PID namespace, no network, as ``user``) or ``none`` (the
    stage read-only, no network)."""
    image = container_image(pg)
    name = f"{pg.app_name}-{uuid.uuid4().hex[:6]}"
    argv = [pg.docker_cli, "run", "--rm", "--name", name]
    argv += ["--label", plan.get("label_filter") or ADHOC_LABEL]
    # the owner of the staging directory runs it: the module's user, or in socket mode the
    # user of the database container's PID 1 (the only one allowed into /proc/1/root)
    argv += ["--user", user or f"{os.getuid()}:{os.getgid()}"]
    argv += ["-e", f"PGAPPNAME={pg.app_name}", "--entrypoint", command[0]]
    if access == "tcp":
        argv += ["--network", f"container:{pg.container}"]
        argv += ["-e", "PGPASSWORD", "-v", f"{stage}:{STAGE_MOUNT}"]
    elif access == "socket":
        argv += ["--network", "none", "--pid", f"container:{pg.container}"]
        argv += ["-v", f"{stage}:{STAGE_MOUNT}"]
    else:
        argv += ["--network", "none", "-v", f"{stage}:{STAGE_MOUNT}:ro"]
    return argv + [image, *command[1:]]


def socket_route(pg):
    """Socket mode: ``(uid, gid, socket dir)`` for a throwaway container in the database
    container's PID namespace - the user of its PID 1 (read from the host's /proc) and the
    socket directory as seen through ``/proc/1/root``. None when it cannot be set up."""
    argv = [pg.docker_cli, "inspect", "--format", "{{.State.Pid}}", pg.container]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    pid = proc.stdout.strip()
    if proc.returncode != 0 or not pid.isdigit() or pid == "0":
        return None
    ids = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                key, _, values = line.partition(":")
                if key in ("Uid", "Gid") and len(values.split()) > 1:
                    ids[key] = int(values.split()[1])  # the effective id
    except (OSError, ValueError):
        return None
    if set(ids) != {"Uid", "Gid"}:
        return None
    try:
        real = pg.run(["readlink", "-f", SOCKET_DIR], context=" (the socket directory)")
    except PgError:
        return None
    directory = real.decode("utf-8", errors="replace").strip() or SOCKET_DIR
    return ids["Uid"], ids["Gid"], f"/proc/1/root{directory}"


def through_socket(command, socket_dir):
    """``command`` with its ``-h`` (the socket directory) replaced by ``socket_dir``."""
    command = list(command)
    if "-h" in command:
        command[command.index("-h") + 1] = socket_dir
    return command


def _run(pg, argv, context, timeout=None):
    """Run a throwaway container; if this process is stopped meanwhile (timeout, signal),
    the container is removed too (killing the docker client alone would leave it running)."""
    name = argv[argv.index("--name") + 1]
    try:
        proc = subprocess.run(argv, capture_output=True, env=pg.env(), timeout=timeout, check=False)
    except BaseException as exc:
        subprocess.run(
            [pg.docker_cli, "rm", "-f", name], capture_output=True, timeout=120, check=False
        )
        if isinstance(exc, subprocess.TimeoutExpired):
            raise PgError(f"{argv[-1]} did not finish within {timeout:g}s{context}") from None
        raise
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", errors="replace").strip()
        raise CommandError(pg.explain(stderr, proc.returncode, context), proc.returncode, stderr)
    return proc.stdout


def dump_directory(pg, plan, partial, dump_command, context):
    """Dump into a host staging directory, check it, stream it as a tar into ``partial``.

    ``dump_command(target_dir)`` is the pg_dump argv writing to ``target_dir``. Returns
    ``(StreamResult, method)``. Without a password the throwaway container reaches the
    server's socket through the database container's PID namespace (see the module's
    docstring); only if that cannot be set up is the dump staged in the database container
    (:func:`dump_in_container`).
    """
    route = None
    if not pg.login_password:
        route = socket_route(pg)
        if route is None:
            return dump_in_container(pg, plan, partial, dump_command, context)
    stage = tempfile.mkdtemp(prefix=f".stage-{plan['label']}-", dir=plan["directory"])
    target = f"{STAGE_MOUNT}/dump"
    if route is not None:
        uid, gid, socket_dir = route
        try:
            os.chown(stage, uid, gid)  # still 0700: only that user (and root) reads it
        except OSError:  # the module does not run as root
            shutil.rmtree(stage, ignore_errors=True)
            return dump_in_container(pg, plan, partial, dump_command, context)
    try:
        if route is None:
            dump = throwaway_argv(pg, plan, stage, dump_command(target))
        else:
            command = through_socket(dump_command(target), socket_dir)
            dump = throwaway_argv(pg, plan, stage, command, "socket", f"{uid}:{gid}")
        _run(pg, dump, context)
        try:
            _run(
                pg, throwaway_argv(pg, plan, stage, ["pg_restore", "--list", target], "none"),
                " while listing the directory dump", timeout=1800,
            )  # fmt: skip
        except CommandError as exc:
            raise CorruptBackupError(
                f"the directory dump is not a readable archive: {exc.stderr or exc}"
            ) from None
        tar = find_binary("tar")
        argv = [tar, "-C", os.path.join(stage, "dump"), "-cf", "-", "."]
        stream = stream_to_file(
            argv, partial, pg.env(), "none", plan["recipients"], [tar, "-t", "-f", "-"]
        )
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(stage)
    return stream, METHOD


IN_CONTAINER_METHOD = (
    "pg_restore --list of the directory archive staged in the database container (socket "
    "mode) and tar -t of the tar stream while it was written"
)


def dump_in_container(pg, plan, partial, dump_command, context):
    """Socket mode: pg_dump -Fd into a temp dir of the database container (named with the
    run's prefix, so a killed run's directory is found by the next run), listed with
    ``pg_restore --list``, streamed by the container's tar and checked by ``tar -t``."""
    prefix = plan.get("temp_prefix")
    if prefix:
        tmp = pg.run(["mktemp", "-d", f"{prefix}XXXXXXXX"], context=" (mktemp)").decode().strip()
    else:
        tmp = pg.make_temp_dir()
    try:
        pg.run(dump_command(f"{tmp}/dump"), timeout=None, context=context)
        try:
            pg.run(["pg_restore", "--list", f"{tmp}/dump"], timeout=1800)
        except CommandError as exc:
            raise CorruptBackupError(
                f"the directory dump is not a readable archive: {exc.stderr or exc}"
            ) from None
        argv = pg.exec_argv(["tar", "-C", f"{tmp}/dump", "-cf", "-", "."])
        check = pg.exec_argv(["tar", "-t", "-f", "-"], interactive=True)
        stream = stream_to_file(argv, partial, pg.env(), "none", plan["recipients"], check)
    finally:
        with contextlib.suppress(PgError):
            pg.run(["rm", "-rf", "--", tmp], timeout=300)
    return stream, IN_CONTAINER_METHOD
