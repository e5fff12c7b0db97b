"""Filters of the restart role: which services to restart, in which order, and which
containers are broken, worked out in Python (not in Jinja loops) and unit-tested.
"""

from __future__ import annotations

import re

ALL = "all"
# What `-e restart_services=backend,nginx` or `=[backend]` may carry besides the names.
NOT_A_NAME = re.compile(r"[^A-Za-z0-9_.,-]")


def service_list(value) -> list[str]:
    """restart_services as a list: `-e restart_services=backend,nginx` (or `=[backend]`) arrives
    as a string; the argument spec accepts it as a list but does not convert the variable."""
    if value is None:
        return []
    if isinstance(value, str):
        return [name for name in NOT_A_NAME.sub("", value).split(",") if name]
    return [str(name).strip() for name in value if str(name).strip()]


def restart_targets(requested, services: list[str]) -> dict:
    """The services to restart, in `services` order (dependencies first), or the errors.

    requested: restart_services (a list or the string form, see service_list); `all` means
    every service. Returns {"targets": [...], "errors": [message, ...]}.
    """
    names = service_list(requested)
    unknown = [name for name in names if name not in services and name != ALL]
    errors = []
    if unknown or not names:
        errors.append(
            f"restart_services: unknown service(s) {', '.join(unknown) or '(empty list)'} in "
            f"{requested!r}; the services are {', '.join(services)}. Give one or more of them, "
            f"or all for every service (for example [all])."
        )
        return {"targets": [], "errors": errors}
    targets = list(services) if ALL in names else [name for name in services if name in names]
    return {"targets": targets, "errors": errors}


def broken_containers(containers: list, services: list[str]) -> list[str]:
    """Names of the containers of `services` that are not running or are unhealthy, oldest first.

    containers: docker_host_info's `containers` (verbose: Names, Labels, State, Status, Created).
    A restart-looping container is not `running` most of the time, or reports `(unhealthy)`.
    """
    broken = []
    for container in sorted(containers, key=lambda c: c.get("Created", 0)):
        labels = container.get("Labels") or {}
        if labels.get("com.docker.compose.service") not in services:
            continue
        if container.get("State") != "running" or "(unhealthy)" in (container.get("Status") or ""):
            broken.append(container["Names"][0].lstrip("/"))
    return broken


class FilterModule:
    """Restart filters (roles/restart)."""

    def filters(self):
        return {
            "opsauto_service_list": service_list,
            "opsauto_restart_targets": restart_targets,
            "opsauto_broken_containers": broken_containers,
        }
