"""Documentation shared by the modules that run PostgreSQL clients in a container."""

from __future__ import annotations


class ModuleDocFragment:
    # How pg_backup and pg_backup_restore reach the server: docker exec into the database
    # container, with the password only in the environment.  A module may extend an option's
    # entry (its own keys win), as both do for login_user.
    DOCUMENTATION = r"""
options:
  container:
    description: Name or ID of the running PostgreSQL container on the managed host.
    type: str
    required: true
  docker_cli:
    description: The docker CLI to run, a name looked up in PATH or a full path.
    type: path
    default: docker
  login_user:
    description: PostgreSQL role to connect as.
    type: str
    required: true
  login_password:
    description:
      - Password of O(login_user). It reaches the client programs only through C(PGPASSWORD) in
        the environment (C(docker exec -e PGPASSWORD)), never on a command line.
      - When set, the clients connect over TCP to C(127.0.0.1) inside the container, so the
        password is checked. When empty, they use the container's local socket
        C(/var/run/postgresql) (trusted in the project's image).
    type: str
"""
