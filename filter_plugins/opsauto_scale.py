"""Filters of the scale role: replica counts and CPU/memory limits parsed and validated in
Python (not in Jinja loops), merged into compose.override.yaml, and summarised after the run.

The validating filters never raise on bad input: they return ``{"valid": ..., "errors": [...]}``
so that the role fails in one ``assert`` whose message lists every problem, each naming the
variable, the value given and an example of a valid one.
"""

from __future__ import annotations

import math
import re

import yaml
from ansible.errors import AnsibleFilterError

MIB = 1024 * 1024
# Docker's smallest memory limit; services without a floor in scale_min_memory_mb get it.
DOCKER_MIN_MEMORY_MB = 6
# A size as Compose and `docker run --memory` read it: 512m, 1.5g, 1g, 256MiB, 1048576 (bytes).
SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgt]?)(?:i?b)?$", re.IGNORECASE)
UNIT_MB = {"": 1 / MIB, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
CPUS = re.compile(r"^\d*\.?\d+$")
LIMIT_KEYS = ("cpus", "memory")
LIMITS_EXAMPLE = '{backend: {cpus: "1.0", memory: 512m}}'


def memory_mb(value) -> float:
    """A memory size (512m, 1.5g, 1048576 bytes) in MiB; ValueError naming the value otherwise."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        return value / MIB
    match = SIZE.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a size")
    return float(match.group(1)) * UNIT_MB[match.group(2).lower()]


def cpus(value) -> float:
    """A CPU count (0.5, "1.5", 2) as a float; ValueError naming the value otherwise."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{value!r} is not a number of CPUs")
    if isinstance(value, int | float):
        number = float(value)
    elif CPUS.match(str(value).strip()):
        number = float(str(value).strip())
    else:
        raise ValueError(f"{value!r} is not a number of CPUs")
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a number of CPUs")
    return number


def _mb(value: float) -> str:
    return f"{value:g}m"


def replicas(requested, scalable: str, others: list[str], max_replicas: int) -> dict:
    """Validate scale_replicas: only `scalable` (the backend) scales out, 1..max_replicas.

    Returns {"valid": {service: int}, "errors": [message, ...]}.
    """
    if not isinstance(requested, dict):
        return {
            "valid": {},
            "errors": [
                f"scale_replicas must be a dict such as {{{scalable}: 4}}, got {requested!r}."
            ],
        }
    valid, errors = {}, []
    rule = (
        f"scale_replicas must map {scalable} to a whole number between 1 and {max_replicas} "
        f"(scale_max_replicas)"
    )
    for service, count in requested.items():
        if service != scalable:
            errors.append(
                f"{rule}, got the service {service!r}. Only {scalable} scales out: it is stateless "
                f"and behind nginx; {', '.join(others)} run as single containers (use "
                f"scale_resources for them). For example {{{scalable}: 4}}."
            )
            continue
        text = str(count).strip()
        number = int(text) if not isinstance(count, bool) and re.fullmatch(r"-?\d+", text) else None
        if number is None or not 1 <= number <= max_replicas:
            errors.append(
                f"{rule}: scale_replicas.{service} is {count!r}. For example {{{scalable}: 4}}."
            )
            continue
        valid[service] = number
    return {"valid": valid, "errors": errors}


def resource_limits(
    requested,
    services: list[str],
    host_cpus,
    host_memory_bytes,
    min_memory_mb: dict | None = None,
) -> dict:
    """Validate scale_resources against the known services and this host's CPUs and memory.

    Returns {"valid": {service: {"cpus": str, "memory": str}}, "errors": [message, ...]}; the
    valid values are kept as given (as strings), the way Compose reads them.
    """
    if not isinstance(requested, dict):
        return {
            "valid": {},
            "errors": [
                f"scale_resources must be a dict such as {LIMITS_EXAMPLE}, got {requested!r}."
            ],
        }
    floors = min_memory_mb or {}
    host_cpus = int(host_cpus)
    host_mb = int(host_memory_bytes) / MIB
    valid, errors = {}, []
    unknown = [service for service in requested if service not in services]
    if unknown:
        errors.append(
            f"scale_resources: unknown service(s) {', '.join(map(str, unknown))}; the services are "
            f"{', '.join(services)}. For example {LIMITS_EXAMPLE}."
        )
    for service, limits in requested.items():
        if service in unknown:
            continue
        if not isinstance(limits, dict) or not limits:
            errors.append(
                f"scale_resources.{service} must be a dict with cpus and/or memory, got "
                f"{limits!r}. For example {LIMITS_EXAMPLE}."
            )
            continue
        extra = [key for key in limits if key not in LIMIT_KEYS]
        if extra:
            errors.append(
                f"scale_resources.{service} takes only cpus and memory, got "
                f"{', '.join(map(str, extra))}. For example {LIMITS_EXAMPLE}."
            )
        good = {}
        if "cpus" in limits:
            value = limits["cpus"]
            try:
                number = cpus(value)
            except ValueError:
                number = None
            if number is None or not 0 < number <= host_cpus:
                errors.append(
                    f"cpus of {service} must be a number greater than 0 and at most the host's CPU "
                    f"count ({host_cpus}): scale_resources.{service}.cpus is {value!r}. For "
                    f'example cpus: "0.5".'
                )
            else:
                good["cpus"] = str(value).strip()
        if "memory" in limits:
            value = limits["memory"]
            floor = floors.get(service, DOCKER_MIN_MEMORY_MB)
            try:
                size = memory_mb(value)
            except ValueError:
                size = None
            if size is None:
                errors.append(
                    f"memory of {service} is not a size such as 256m or 1.5g: "
                    f"scale_resources.{service}.memory is {value!r} (k, m, g or t suffix, or "
                    f"bytes). For example memory: 512m."
                )
            elif size < floor:
                errors.append(
                    f"memory of {service} is below what the service needs to start "
                    f"({_mb(floor)} at least, scale_min_memory_mb): "
                    f"scale_resources.{service}.memory is {value!r}. "
                    f"For example memory: {_mb(max(floor * 2, 256))}."
                )
            elif size > host_mb:
                errors.append(
                    f"memory of {service} is more than the host has ({host_mb:.0f}m): "
                    f"scale_resources.{service}.memory is {value!r}. For example memory: "
                    f"{_mb(max(floor, math.floor(host_mb / 2)))}."
                )
            else:
                good["memory"] = value if isinstance(value, int) else str(value).strip()
        if good and len(good) == len([key for key in limits if key in LIMIT_KEYS]):
            valid[service] = good
    return {"valid": valid, "errors": errors}


def compose_override(current: str | None, replicas: dict, resources: dict) -> str:
    """Merge replica counts and limits into the text of compose.override.yaml.

    `current` is the file's text ('' or None when there is none). Services and keys already in
    it are kept; a limit not given again keeps its value. The result is YAML with sorted keys,
    so the same inputs give the same bytes (the copy task that writes it stays idempotent).
    """
    try:
        doc = yaml.safe_load(current or "") or {}
    except yaml.YAMLError as exc:
        raise AnsibleFilterError(
            f"compose.override.yaml is not valid YAML ({exc}). Fix it or remove it, then run "
            "playbooks/scale.yml again with the scaling you want."
        ) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("services") or {}, dict):
        raise AnsibleFilterError(
            "compose.override.yaml is not a Compose file with a services mapping. Fix it or "
            "remove it, then run playbooks/scale.yml again with the scaling you want."
        )
    services = doc.setdefault("services", {}) or {}
    doc["services"] = services
    for service, count in (replicas or {}).items():
        deploy = _mapping(_mapping(services, service), "deploy")
        deploy["replicas"] = int(count)
    for service, limits in (resources or {}).items():
        deploy = _mapping(_mapping(services, service), "deploy")
        merged = _mapping(_mapping(deploy, "resources"), "limits")
        for key, value in limits.items():
            merged[key] = value if isinstance(value, int) else str(value)
    return yaml.safe_dump(_plain(doc), sort_keys=True, default_flow_style=False, indent=2)


def _plain(value):
    """Plain Python types for yaml.safe_dump (Ansible hands filters str/dict subclasses)."""
    if isinstance(value, dict):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    for kind in (str, int, float):
        if isinstance(value, kind):
            return kind(value)
    return value


def _mapping(parent: dict, key: str) -> dict:
    if not isinstance(parent.get(key), dict):
        parent[key] = {}
    return parent[key]


def scale_summary(container_infos: list) -> dict:
    """Replicas and limits per compose service from docker_container_info results.

    `container_infos`: the results of a looped docker_container_info (``exists`` and
    ``container``). Returns {service: {"replicas": n, "cpus": float, "memory_mb": int}}, the
    limits of the first container of each service (0: no limit).
    """
    out: dict = {}
    for result in container_infos:
        if not result.get("exists"):
            continue
        container = result["container"]
        service = container["Config"]["Labels"].get("com.docker.compose.service")
        if service is None:
            continue
        entry = out.setdefault(
            service,
            {
                "replicas": 0,
                "cpus": (container["HostConfig"].get("NanoCpus") or 0) / 1e9,
                "memory_mb": (container["HostConfig"].get("Memory") or 0) // MIB,
            },
        )
        entry["replicas"] += 1
    return out


def _filter_memory_mb(value):
    try:
        return memory_mb(value)
    except ValueError as exc:
        raise AnsibleFilterError(f"opsauto_memory_mb: {exc}; for example 512m or 1.5g") from exc


def _filter_cpus(value):
    try:
        return cpus(value)
    except ValueError as exc:
        raise AnsibleFilterError(f'opsauto_cpus: {exc}; for example "0.5" or 2') from exc


class FilterModule:
    """Scaling filters (roles/scale)."""

    def filters(self):
        return {
            "opsauto_memory_mb": _filter_memory_mb,
            "opsauto_cpus": _filter_cpus,
            "opsauto_replicas": replicas,
            "opsauto_resource_limits": resource_limits,
            "opsauto_compose_override": compose_override,
            "opsauto_scale_summary": scale_summary,
        }
