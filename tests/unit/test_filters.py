"""Unit tests of the filter plugins in filter_plugins/ (scale and restart logic).

The roles that use them are tested against a real engine in
tests/integration/test_rollout_local.py and the Molecule restart and scale scenarios.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

FILTERS = Path(__file__).resolve().parents[2] / "filter_plugins"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, FILTERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


scale = load("opsauto_scale")
restart = load("opsauto_restart")

SERVICES = ["db", "backend", "nginx", "prometheus"]
FLOORS = {"db": 64, "backend": 48, "nginx": 8, "prometheus": 64}
GIB = 1024**3


def limits(requested, cpus=2, memory=4 * GIB, floors=None):
    return scale.resource_limits(
        requested, SERVICES, cpus, memory, FLOORS if floors is None else floors
    )


# --- sizes and CPU counts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "mib"),
    [
        ("512m", 512),
        ("512M", 512),
        ("1.5g", 1536),
        ("1g", 1024),
        ("256MiB", 256),
        ("256mb", 256),
        ("512 m", 512),
        ("2048k", 2),
        ("1t", 1024 * 1024),
        ("1048576", 1),
        ("1048576b", 1),
        (1048576, 1),
        (" 64m ", 64),
    ],
)
def test_memory_sizes_in_mib(value, mib):
    assert scale.memory_mb(value) == pytest.approx(mib)


@pytest.mark.parametrize("value", ["lots", "-1m", "1.5.2g", "1x", "", "m", None, True, "1e3m"])
def test_memory_that_is_not_a_size_is_refused(value):
    with pytest.raises(ValueError, match="is not a size"):
        scale.memory_mb(value)


@pytest.mark.parametrize(
    ("value", "number"), [("0.5", 0.5), (".5", 0.5), ("2", 2.0), (1, 1.0), (0.75, 0.75)]
)
def test_cpu_counts(value, number):
    assert scale.cpus(value) == number


@pytest.mark.parametrize("value", ["half", "1,5", "-1", "1e2", "", None, False, float("nan")])
def test_cpus_that_are_not_a_number_are_refused(value):
    with pytest.raises(ValueError, match="is not a number of CPUs"):
        scale.cpus(value)


def test_filter_wrappers_raise_ansible_errors_with_an_example():
    filters = scale.FilterModule().filters()
    assert filters["opsauto_memory_mb"]("1.5g") == 1536
    with pytest.raises(AnsibleFilterError, match=r"'lots' is not a size; for example 512m"):
        filters["opsauto_memory_mb"]("lots")
    with pytest.raises(AnsibleFilterError, match=r"'x' is not a number of CPUs; for example"):
        filters["opsauto_cpus"]("x")


# --- replicas ---------------------------------------------------------------------------


def replicas(requested, max_replicas=16):
    return scale.replicas(requested, "backend", ["db", "nginx", "prometheus"], max_replicas)


@pytest.mark.parametrize(("given", "count"), [(4, 4), ("3", 3), (1, 1), (16, 16)])
def test_valid_replica_counts(given, count):
    assert replicas({"backend": given}) == {"valid": {"backend": count}, "errors": []}


def test_no_replicas_is_valid_and_changes_nothing():
    assert replicas({}) == {"valid": {}, "errors": []}


@pytest.mark.parametrize("count", [0, -1, 17, "four", "2.5", 2.5, True, None])
def test_replica_count_outside_the_range_is_refused(count):
    result = replicas({"backend": count})
    assert result["valid"] == {}
    assert result["errors"] == [
        "scale_replicas must map backend to a whole number between 1 and 16 (scale_max_replicas): "
        f"scale_replicas.backend is {count!r}. For example {{backend: 4}}."
    ]


def test_the_replica_limit_is_the_variable():
    assert replicas({"backend": 5}, max_replicas=4)["errors"][0].startswith(
        "scale_replicas must map backend to a whole number between 1 and 4 (scale_max_replicas)"
    )


def test_only_the_backend_scales_out():
    result = replicas({"db": 2, "backend": 3})
    assert result["valid"] == {"backend": 3}
    assert result["errors"] == [
        "scale_replicas must map backend to a whole number between 1 and 16 (scale_max_replicas), "
        "got the service 'db'. Only backend scales out: it is stateless and behind nginx; db, "
        "nginx, prometheus run as single containers (use scale_resources for them). For example "
        "{backend: 4}."
    ]


def test_replicas_that_are_not_a_dict_are_refused():
    assert replicas("backend=4")["errors"] == [
        "scale_replicas must be a dict such as {backend: 4}, got 'backend=4'."
    ]


# --- CPU and memory limits --------------------------------------------------------------


def test_valid_limits_are_kept_as_given():
    result = limits(
        {
            "backend": {"cpus": "0.75", "memory": "192m"},
            "db": {"memory": "1.5g"},
            "nginx": {"cpus": 1},
        }
    )
    assert result == {
        "valid": {
            "backend": {"cpus": "0.75", "memory": "192m"},
            "db": {"memory": "1.5g"},
            "nginx": {"cpus": "1"},
        },
        "errors": [],
    }


def test_limits_at_the_bounds_are_valid():
    result = limits({"backend": {"cpus": "2", "memory": "48m"}, "db": {"memory": "4g"}})
    assert result["errors"] == []


def test_memory_below_what_the_service_needs_is_refused():
    assert limits({"backend": {"cpus": "0.5", "memory": "16m"}})["errors"] == [
        "memory of backend is below what the service needs to start (48m at least, "
        "scale_min_memory_mb): scale_resources.backend.memory is '16m'. For example memory: 256m."
    ]


def test_a_service_without_a_floor_gets_dockers_minimum():
    result = limits({"nginx": {"memory": "5m"}}, floors={})
    assert result["errors"] == [
        "memory of nginx is below what the service needs to start (6m at least, "
        "scale_min_memory_mb): scale_resources.nginx.memory is '5m'. For example memory: 256m."
    ]
    assert limits({"nginx": {"memory": "6m"}}, floors={})["errors"] == []


def test_memory_that_is_not_a_size_is_refused_with_an_example():
    assert limits({"db": {"memory": "lots"}})["errors"] == [
        "memory of db is not a size such as 256m or 1.5g: scale_resources.db.memory is 'lots' "
        "(k, m, g or t suffix, or bytes). For example memory: 512m."
    ]


def test_memory_above_the_hosts_is_refused():
    assert limits({"db": {"memory": "8g"}}, memory=2 * GIB)["errors"] == [
        "memory of db is more than the host has (2048m): scale_resources.db.memory is '8g'. "
        "For example memory: 1024m."
    ]


@pytest.mark.parametrize("value", ["0", "0.0", "3", "2.01", "-1", "all", True])
def test_cpus_outside_zero_and_the_host_count_are_refused(value):
    assert limits({"backend": {"cpus": value}})["errors"] == [
        "cpus of backend must be a number greater than 0 and at most the host's CPU count (2): "
        f'scale_resources.backend.cpus is {value!r}. For example cpus: "0.5".'
    ]


def test_unknown_services_are_refused_and_the_known_ones_still_checked():
    result = limits({"worker": {"cpus": "1"}, "redis": {}, "nginx": {"cpus": "9"}})
    assert result["errors"] == [
        "scale_resources: unknown service(s) worker, redis; the services are db, backend, nginx, "
        'prometheus. For example {backend: {cpus: "1.0", memory: 512m}}.',
        "cpus of nginx must be a number greater than 0 and at most the host's CPU count (2): "
        "scale_resources.nginx.cpus is '9'. For example cpus: \"0.5\".",
    ]
    assert result["valid"] == {}


@pytest.mark.parametrize("value", ["1g", {}, None, ["cpus"]])
def test_a_service_entry_must_be_a_dict_of_limits(value):
    assert limits({"db": value})["errors"] == [
        f"scale_resources.db must be a dict with cpus and/or memory, got {value!r}. For example "
        '{backend: {cpus: "1.0", memory: 512m}}.'
    ]


def test_only_cpus_and_memory_are_limits():
    result = limits({"db": {"memory": "128m", "disk": "1g", "pids": 10}})
    assert result["errors"] == [
        "scale_resources.db takes only cpus and memory, got disk, pids. For example "
        '{backend: {cpus: "1.0", memory: 512m}}.'
    ]
    assert result["valid"] == {"db": {"memory": "128m"}}


def test_every_problem_is_reported_at_once():
    result = limits({"backend": {"cpus": "0", "memory": "1m"}, "db": {"memory": "x"}})
    assert [e.split(":")[0] for e in result["errors"]] == [
        "cpus of backend must be a number greater than 0 and at most the host's CPU count (2)",
        "memory of backend is below what the service needs to start (48m at least, "
        "scale_min_memory_mb)",
        "memory of db is not a size such as 256m or 1.5g",
    ]
    assert result["valid"] == {}


def test_limits_that_are_not_a_dict_are_refused():
    assert limits("backend=1g")["errors"] == [
        'scale_resources must be a dict such as {backend: {cpus: "1.0", memory: 512m}}, got '
        "'backend=1g'."
    ]


# --- compose.override.yaml --------------------------------------------------------------


def test_override_from_nothing():
    text = scale.compose_override(
        "", {"backend": 4}, {"backend": {"cpus": "0.75", "memory": "192m"}}
    )
    assert text == (
        "services:\n"
        "  backend:\n"
        "    deploy:\n"
        "      replicas: 4\n"
        "      resources:\n"
        "        limits:\n"
        "          cpus: '0.75'\n"
        "          memory: 192m\n"
    )


def test_override_merges_into_what_the_file_holds():
    current = (
        "# Ansible managed\n"
        "services:\n"
        "  backend:\n"
        "    deploy:\n"
        "      replicas: 4\n"
        "      resources: {limits: {cpus: '0.75', memory: 192m}}\n"
        "  db:\n"
        "    deploy: {resources: {limits: {memory: 256m}}}\n"
    )
    merged = yaml.safe_load(
        scale.compose_override(
            current, {"backend": 2}, {"db": {"cpus": "1"}, "nginx": {"memory": "64m"}}
        )
    )
    assert merged == {
        "services": {
            "backend": {
                "deploy": {
                    "replicas": 2,
                    "resources": {"limits": {"cpus": "0.75", "memory": "192m"}},
                }
            },
            "db": {"deploy": {"resources": {"limits": {"cpus": "1", "memory": "256m"}}}},
            "nginx": {"deploy": {"resources": {"limits": {"memory": "64m"}}}},
        }
    }


def test_override_is_idempotent_and_deterministic():
    once = scale.compose_override(
        None, {"backend": 3}, {"nginx": {"cpus": "0.5"}, "db": {"memory": "1g"}}
    )
    again = scale.compose_override(
        once, {"backend": 3}, {"db": {"memory": "1g"}, "nginx": {"cpus": "0.5"}}
    )
    assert again == once
    assert once.index("  db:") < once.index("  nginx:")
    assert scale.compose_override(once, {}, {}) == once


def test_override_keeps_other_keys_and_replaces_non_mapping_entries():
    current = "name: x\nservices:\n  backend: null\n  db:\n    image: postgres\n    deploy: []\n"
    merged = yaml.safe_load(
        scale.compose_override(current, {"backend": 2}, {"db": {"memory": "1g"}})
    )
    assert merged == {
        "name": "x",
        "services": {
            "backend": {"deploy": {"replicas": 2}},
            "db": {"image": "postgres", "deploy": {"resources": {"limits": {"memory": "1g"}}}},
        },
    }


def test_override_writes_plain_yaml_from_subclassed_strings():
    class Tagged(str):  # Ansible hands filters str subclasses (data tagging)
        pass

    text = scale.compose_override(
        "", {Tagged("backend"): 2}, {Tagged("db"): {"memory": Tagged("1g")}}
    )
    assert "!!python" not in text
    assert yaml.safe_load(text)["services"]["db"]["deploy"]["resources"]["limits"]["memory"] == "1g"


@pytest.mark.parametrize(
    ("current", "message"),
    [
        ("services: [unclosed", "compose.override.yaml is not valid YAML"),
        ("- a list\n", "compose.override.yaml is not a Compose file with a services mapping"),
        (
            "services: [backend]\n",
            "compose.override.yaml is not a Compose file with a services mapping",
        ),
    ],
)
def test_a_broken_override_file_is_refused_with_the_fix(current, message):
    with pytest.raises(AnsibleFilterError, match=message) as raised:
        scale.compose_override(current, {"backend": 2}, {})
    assert "Fix it or remove it, then run playbooks/scale.yml again" in str(raised.value)


# --- scale summary ----------------------------------------------------------------------


def info(service, nano_cpus, memory, exists=True):
    return {
        "exists": exists,
        "container": {
            "Config": {"Labels": {"com.docker.compose.service": service}},
            "HostConfig": {"NanoCpus": nano_cpus, "Memory": memory},
        },
    }


def test_summary_counts_replicas_and_reads_limits():
    results = [
        info("backend", 750_000_000, 192 * 1024 * 1024),
        info("backend", 750_000_000, 192 * 1024 * 1024),
        info("db", 0, 0),
        info("nginx", 250_000_000, 64 * 1024 * 1024, exists=False),
        {"exists": True, "container": {"Config": {"Labels": {}}, "HostConfig": {}}},
    ]
    assert scale.scale_summary(results) == {
        "backend": {"replicas": 2, "cpus": 0.75, "memory_mb": 192},
        "db": {"replicas": 1, "cpus": 0.0, "memory_mb": 0},
    }


# --- restart ----------------------------------------------------------------------------

ORDER = ["db", "backend", "prometheus", "nginx"]


@pytest.mark.parametrize(
    ("given", "names"),
    [
        ("backend", ["backend"]),
        ("backend,nginx", ["backend", "nginx"]),
        ("[backend, nginx]", ["backend", "nginx"]),
        ("['backend']", ["backend"]),
        (["db", " nginx "], ["db", "nginx"]),
        ("", []),
        (None, []),
    ],
)
def test_service_list_reads_the_string_and_list_forms(given, names):
    assert restart.service_list(given) == names


@pytest.mark.parametrize(
    ("given", "targets"),
    [
        (["nginx", "db"], ["db", "nginx"]),
        ("nginx,backend", ["backend", "nginx"]),
        (["all"], ORDER),
        (["backend", "all"], ORDER),
    ],
)
def test_restart_targets_in_dependency_order(given, targets):
    assert restart.restart_targets(given, ORDER) == {"targets": targets, "errors": []}


def test_unknown_service_is_refused_naming_the_services():
    assert restart.restart_targets(["backend", "worker"], ORDER) == {
        "targets": [],
        "errors": [
            "restart_services: unknown service(s) worker in ['backend', 'worker']; the services "
            "are db, backend, prometheus, nginx. Give one or more of them, or all for every "
            "service (for example [all])."
        ],
    }


def test_an_empty_list_is_refused():
    assert restart.restart_targets([], ORDER)["errors"][0].startswith(
        "restart_services: unknown service(s) (empty list) in []"
    )


def ps(name, service, created, state="running", status="Up 5 minutes (healthy)"):
    return {
        "Names": [f"/{name}"],
        "Labels": {"com.docker.compose.service": service},
        "Created": created,
        "State": state,
        "Status": status,
    }


def test_broken_containers_of_the_targets_oldest_first():
    containers = [
        ps("p-backend-2", "backend", 30, state="exited", status="Exited (0) 1 minute ago"),
        ps("p-backend-1", "backend", 10, status="Up 2 minutes (unhealthy)"),
        ps("p-backend-3", "backend", 20),
        ps("p-db-1", "db", 5, state="restarting", status="Restarting (1) 2 seconds ago"),
        ps("p-nginx-1", "nginx", 1, state="exited", status="Exited (1)"),
        ps("p-prometheus-1", "prometheus", 2, status="Up 1 minute"),
    ]
    assert restart.broken_containers(containers, ["db", "backend"]) == [
        "p-db-1",
        "p-backend-1",
        "p-backend-2",
    ]


def test_no_broken_containers_when_all_are_healthy():
    containers = [ps("p-backend-1", "backend", 1), ps("p-db-1", "db", 2, status="Up 3 hours")]
    assert restart.broken_containers(containers, ORDER) == []


def test_filter_names_are_registered():
    assert set(scale.FilterModule().filters()) == {
        "opsauto_memory_mb",
        "opsauto_cpus",
        "opsauto_replicas",
        "opsauto_resource_limits",
        "opsauto_compose_override",
        "opsauto_scale_summary",
    }
    assert set(restart.FilterModule().filters()) == {
        "opsauto_service_list",
        "opsauto_restart_targets",
        "opsauto_broken_containers",
    }
