#!/usr/bin/python
"""Ansible module: zero-downtime rollout of a Docker Compose service behind nginx."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: compose_rollout
short_description: Roll a Docker Compose service out behind nginx without dropping a request
description:
  - Converges one service of a Docker Compose v2 project (the backend behind nginx) to its
    compose files, the way docker-rollout and Kamal do it, in one task.
  - "O(action=rollout): reads the service's desired config hash (C(docker compose config --hash))
    and replica count; keeps the running containers that are up to date and not unhealthy
    (oldest first); starts the missing ones next to the old ones
    (C(up --no-deps --no-recreate --scale)); waits until every new container is healthy; gives
    them the network alias O(route_alias) that nginx resolves through Docker's DNS at request
    time (no nginx reload, so no client connection is closed); optionally waits
    O(soak_seconds) while they must stay healthy; waits until nginx's DNS cache
    (O(resolver_valid) + 2 s: nginx keeps an answer to the end of a whole second) knows
    them; makes the old containers refuse new connections (an iptables REJECT of SYNs to
    O(upstream_port) in their network namespace, through C(nsenter): nginx passes the
    request to another replica) and waits until their requests in flight are done, at most
    O(drain_seconds); stops them (SIGTERM, C(--time) O(stop_grace_seconds), all at once) and
    removes them. docs/rollout.md states the guarantees and limits."
  - A new container that exits or turns unhealthy, or is still starting after
    O(health_timeout) seconds, is removed again before nginx ever routes to it; the old
    containers never stopped serving. The module fails naming the containers, their state,
    the last health check output, the last log line and, when the kernel killed it for lack
    of memory, that the memory limit must be raised.
  - Whatever fails after the old containers were made to refuse new connections and before
    they stopped, they take connections again before the module returns.
  - "One-off containers of the service (C(docker compose run), label
    C(com.docker.compose.oneoff=True)) are never counted, kept, stopped or removed."
  - "With O(image) (the release switch of the deploy role), O(action=rollout) first makes sure
    the image is on the host (present, or pulled when O(pull) is true; otherwise the module
    fails naming the image and the tags of its repository that exist, before anything is
    touched), then sets it as the service's C(image:) in O(compose_file) (that one line, nothing
    else in the file), then rolls out, and finally re-reads the running containers to check
    that each runs O(image). A service without any container yet (a first deploy) is not
    started here: C(docker compose up) starts the whole project."
  - O(action=images) is the same present-or-pull check for a list of O(images) and nothing else.
  - "The health gate is each new container's own health test. Docker runs it first one
    health-check interval after the start; the module also runs that same test (C(docker exec),
    bounded by the check's timeout) as soon as the container runs, so a ready container takes
    traffic at once. A failing test changes nothing: Docker's checks still decide unhealthy."
  - "O(action=status) only reads the service's containers (name, image, state, health)."
  - "O(action=restart) restarts the O(containers) of the service in place, one after another:
    a running one that nginx routes to first refuses new connections and drains like an old
    container of a rollout; then it is stopped, loses O(route_alias) (a restarted container
    keeps its aliases and nginx would resolve it while it starts), is started, and gets the
    alias back once its health check passes. One that does not become healthy within
    O(health_timeout) stays out of the routing and the module fails naming it."
  - O(action=route) gives O(route_alias) to every running replica that passed its health check
    and lacks it (replicas that C(docker compose up) created); O(action=upstream) also writes
    the file O(upstream_path) with the address nginx resolves and reloads nginx when it
    changed; O(action=reload) routes the same way, then checks the configuration with
    C(nginx -t), reloads nginx and waits until a new generation of nginx workers runs (or
    fails naming the workers).
  - Idempotent. A service that is up to date is reported C(changed=false) and nothing is touched.
    Check mode reports the plan without starting, stopping or writing anything; diff mode shows
    the containers before and after (or the upstream file for O(action=upstream)).
  - Runs the docker CLI on the managed host (the engine and compose plugin operators use); no
    credentials are read (C(docker compose config) runs with C(--no-interpolate)).
author:
  - Operations automation team
options:
  project_dir:
    description: Directory with the project's compose files (compose.yaml, compose.override.yaml).
    type: path
    required: true
  project_name:
    description: Compose project name.
    type: str
    required: true
  service:
    description: The service to roll out; it must have a health check for the rollout to be gated.
    type: str
    default: backend
  action:
    description: What to do, see the description.
    type: str
    choices: [rollout, upstream, route, reload, images, status, restart]
    default: rollout
  containers:
    description: Names of the containers of O(service) to restart, for O(action=restart).
    type: list
    elements: str
  image:
    description:
      - Image reference (repository:tag) the service must run; see the description.
        Only with O(action=rollout).
    type: str
  images:
    description: Images that must be on the host, for O(action=images).
    type: list
    elements: str
  pull:
    description: Pull a missing O(image) or O(images) from its registry instead of failing.
    type: bool
    default: false
  compose_file:
    description:
      - The compose file holding the service's C(image:) line that O(image) rewrites;
        C(compose.yaml) in O(project_dir) when not given.
    type: path
  replace_all:
    description: Replace every container, even the up-to-date ones (a rolling restart).
    type: bool
    default: false
  health_timeout:
    description: Seconds to wait for the new containers to become healthy.
    type: int
    default: 120
  drain_seconds:
    description:
      - At most this many seconds of waiting for the requests in flight on the old containers
        (their established connections) after they refuse new ones; the roles pass nginx's
        C(proxy_read_timeout), the longest request the stack allows.
    type: float
    default: 30
  stop_grace_seconds:
    description:
      - Seconds C(docker stop) gives an old container between SIGTERM and SIGKILL; the
        ceiling of O(drain_seconds) when not given.
    type: int
  soak_seconds:
    description:
      - Seconds the new containers must stay running and not unhealthy while serving before
        the old ones are drained; 0 skips it. A failure removes the new ones, the old ones stay.
    type: float
    default: 0
  route_alias:
    description:
      - Network alias nginx resolves (C(resolver 127.0.0.11) and a variable in C(proxy_pass));
        only replicas that passed the health gate carry it. Required unless O(action) is
        C(images) or C(status).
    type: str
  route_network:
    description:
      - Docker network nginx and the service share; C(<project_name>_default) when not given.
    type: str
  resolver_valid:
    description: Seconds nginx caches a DNS answer (its C(resolver ... valid=)).
    type: float
    default: 1
  poll_interval:
    description: Seconds between two looks at the new containers' health.
    type: float
    default: 0.25
  nginx_service:
    description: Compose service of the nginx in front of O(service).
    type: str
    default: nginx
  nginx_conf:
    description: Path of nginx's main configuration file inside the nginx container.
    type: str
    default: /etc/nginx/opsauto/nginx.conf
  upstream_path:
    description:
      - Path on the host of the file nginx's server block includes, naming the address nginx
        resolves at request time (C(set $backend_route <route_alias>:<port>;)); written by
        O(action=upstream) with mode C(0644). Its directory is mounted into the nginx
        container; a change is read at the next reload.
    type: path
  upstream_port:
    description:
      - Port of O(service) inside its containers; required unless O(action) is C(images) or
        C(status).
    type: int
  docker_cli:
    description: Name or path of the docker CLI on the managed host.
    type: str
    default: docker
attributes:
  check_mode:
    support: full
    details:
      - Reads the real state (images, containers, compose config) and reports what would change;
        starts, stops, pulls and writes nothing. A missing image still fails (nothing would work).
  diff_mode:
    support: full
  platform:
    platforms: posix
notes:
  - The rollback, deploy, restart (rolling) and scale roles all switch the backend through this
    module; the reference compose project gives the backend a 2 s health check interval, so a
    new release serves a few seconds after the module starts.
"""

EXAMPLES = r"""
- name: Switch the backend to release 1.0.0 (image check, compose.yaml's image line, rollout)
  compose_rollout:
    project_dir: /srv/fastapi-monolith
    project_name: fastapi-monolith
    image: fastapi-monolith/backend:1.0.0
    upstream_port: 8000
    route_alias: backend-live

- name: Refuse before anything changes when an image is neither here nor pullable
  compose_rollout:
    project_dir: /srv/fastapi-monolith
    project_name: fastapi-monolith
    action: images
    images: [fastapi-monolith/backend:1.1.0, fastapi-monolith/nginx:1.22]

- name: Roll the backend out to what compose.yaml now says, without downtime
  compose_rollout:
    project_dir: /srv/fastapi-monolith
    project_name: fastapi-monolith
    upstream_port: 8000
    route_alias: backend-live
    drain_seconds: 30
    soak_seconds: 10
  register: rollout

- name: Rolling restart (every replica replaced, one health-gated switch)
  compose_rollout:
    project_dir: /srv/fastapi-monolith
    project_name: fastapi-monolith
    upstream_port: 8000
    route_alias: backend-live
    replace_all: true

- name: Check and reload nginx's configuration, confirmed by a new worker generation
  compose_rollout:
    project_dir: /srv/fastapi-monolith
    project_name: fastapi-monolith
    upstream_port: 8000
    route_alias: backend-live
    action: reload
"""

RETURN = r"""
service:
  description: The service rolled out.
  returned: action is rollout
  type: str
  sample: backend
replicas:
  description: Replica count the compose files ask for.
  returned: action is rollout
  type: int
  sample: 2
desired_hash:
  description: The service's config hash from the compose files.
  returned: action is rollout
  type: str
before:
  description: Containers of the service before the rollout (any state), oldest first.
  returned: action is rollout
  type: list
  elements: str
  sample: [fastapi-monolith-backend-1, fastapi-monolith-backend-2]
kept:
  description: Up-to-date containers that stayed.
  returned: action is rollout
  type: list
  elements: str
started:
  description: Containers started (and found healthy).
  returned: action is rollout
  type: list
  elements: str
  sample: [fastapi-monolith-backend-3, fastapi-monolith-backend-4]
removed:
  description: Containers stopped and removed (or that would be, in check mode).
  returned: action is rollout
  type: list
  elements: str
image:
  description: The image the service was switched to (O(image)).
  returned: action is rollout and image is given
  type: str
  sample: fastapi-monolith/backend:1.0.0
image_id:
  description: Local ID of O(image); empty when it would be pulled (check mode).
  returned: action is rollout and image is given
  type: str
compose_changed:
  description: Whether the compose file's image line changed (or would, in check mode).
  returned: action is rollout and image is given
  type: bool
pulled:
  description: Images pulled (or that would be, in check mode).
  returned: action is images, or rollout with image
  type: list
  elements: str
containers:
  description: The service's containers, oldest first (name, image, status, health).
  returned: action is status
  type: list
  elements: dict
  sample: [{name: fastapi-monolith-backend-1, image: "fastapi-monolith/backend:1.1.0",
            status: running, health: healthy}]
running:
  description: The running ones among RV(containers).
  returned: action is status
  type: list
  elements: dict
missing_images:
  description: The images neither present nor pullable (the module failed, nothing was touched).
  returned: failed
  type: list
  elements: str
nginx_reloaded:
  description: Whether nginx was reloaded (and runs a new worker generation).
  returned: action is upstream or reload
  type: bool
routed:
  description: Replicas that were given O(route_alias) (or would be, in check mode).
  returned: action is upstream, route or reload
  type: list
  elements: str
events:
  description: Timeline of the rollout, seconds since the module started and what happened.
  returned: always
  type: list
  elements: dict
  sample:
    - {t: 1.21, event: "started fastapi-monolith-backend-3"}
    - {t: 3.65, event: "routed to fastapi-monolith-backend-3 (alias backend-live)"}
"""

import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.compose_rollout import ImageMissing, Rollout, RolloutError

ARGUMENT_SPEC = {
    "project_dir": {"type": "path", "required": True},
    "project_name": {"type": "str", "required": True},
    "service": {"type": "str", "default": "backend"},
    "action": {
        "type": "str",
        "choices": ["rollout", "upstream", "route", "reload", "images", "status", "restart"],
        "default": "rollout",
    },
    "image": {"type": "str"},
    "containers": {"type": "list", "elements": "str"},
    "images": {"type": "list", "elements": "str"},
    "pull": {"type": "bool", "default": False},
    "compose_file": {"type": "path"},
    "replace_all": {"type": "bool", "default": False},
    "health_timeout": {"type": "int", "default": 120},
    "drain_seconds": {"type": "float", "default": 30},
    "stop_grace_seconds": {"type": "int"},
    "soak_seconds": {"type": "float", "default": 0},
    "route_alias": {"type": "str"},
    "route_network": {"type": "str"},
    "resolver_valid": {"type": "float", "default": 1},
    "poll_interval": {"type": "float", "default": 0.25},
    "nginx_service": {"type": "str", "default": "nginx"},
    "nginx_conf": {"type": "str", "default": "/etc/nginx/opsauto/nginx.conf"},
    "upstream_path": {"type": "path"},
    "upstream_port": {"type": "int"},
    "docker_cli": {"type": "str", "default": "docker"},
}
NGINX_ACTIONS = ("rollout", "upstream", "route", "reload", "restart")


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        supports_check_mode=True,
        required_if=[
            *(("action", a, ("upstream_port", "route_alias")) for a in NGINX_ACTIONS),
            ("action", "upstream", ("upstream_path",)),
            ("action", "images", ("images",)),
            ("action", "restart", ("containers",)),
        ],
    )
    params = module.params
    for name in ("health_timeout", "drain_seconds", "poll_interval", "soak_seconds",
                 "resolver_valid", "stop_grace_seconds"):  # fmt: skip
        if (params[name] or 0) < 0:
            module.fail_json(msg=f"{name} must be 0 or more, got {params[name]}")
    docker = module.get_bin_path(params["docker_cli"])
    if docker is None:
        module.fail_json(
            msg=f"{params['docker_cli']} not found on the managed host: install the Docker CLI "
            "and compose plugin, or set docker_cli to its path"
        )
    # The gate of draining containers (docs/rollout.md); without them the module says so.
    tools = {
        f"{tool}_cli": module.get_bin_path(tool, opt_dirs=["/usr/sbin", "/sbin"]) or tool
        for tool in ("nsenter", "iptables")
    }
    params = dict(params, docker_cli=docker, **tools)

    def run(argv, data=None, timeout=None):
        if timeout is None:
            return module.run_command(argv, data=data)
        # A health test run by the module: bounded like Docker bounds it.
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return 124, "", f"timed out after {timeout:g} s"
        except OSError as exc:
            return 127, "", str(exc)
        return proc.returncode, proc.stdout, proc.stderr

    rollout = Rollout(run, params, check_mode=module.check_mode)
    try:
        result = getattr(rollout, params["action"])()
    except ImageMissing as exc:
        module.fail_json(msg=str(exc), missing_images=exc.missing, events=rollout.events)
    except RolloutError as exc:
        module.fail_json(msg=str(exc), events=rollout.events, **rollout.image_info)
    except OSError as exc:
        module.fail_json(
            msg=f"{params['action']} of {params['service']} failed: {exc}", events=rollout.events
        )
    result["events"] = rollout.events
    if module._diff and result["changed"]:
        result["diff"] = [d for d in (rollout.compose_diff, rollout.diff) if d]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
