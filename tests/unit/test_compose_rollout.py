"""Unit tests of the rollout in module_utils/compose_rollout.py and compose_routing.py.

The rollout's abort, routing (network alias), gate, drain, soak and failure paths and the
release switch (image check, the compose file's image line, check mode) run here against a
fake docker CLI (FakeDocker: the runner, sleep, clock and /proc reader are injected),
asserting on the commands in the order they ran. The
real engine is used by tests/integration/test_rollout_local.py and the Molecule rollback,
restart and scale scenarios.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import ansible.module_utils
import pytest

MODULE_UTILS = Path(__file__).resolve().parents[2] / "module_utils"
if str(MODULE_UTILS) not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(MODULE_UTILS))
cr = importlib.import_module("ansible.module_utils.compose_rollout")
routing = importlib.import_module("ansible.module_utils.compose_routing")


def container(name, created, config_hash="new", status="running", health="healthy"):
    state = {"Status": status}
    if health is not None:
        state["Health"] = {"Status": health}
    return {
        "Name": f"/{name}",
        "Created": created,
        "State": state,
        "Config": {"Labels": {cr.HASH_LABEL: config_hash}},
    }


def test_up_to_date_service_needs_nothing():
    cs = [container("b-1", "2026-01-01T10:00:00.5Z"), container("b-2", "2026-01-01T10:00:01Z")]
    assert cr.plan(cs, "new", 2) == {
        "before": ["b-1", "b-2"],
        "keep": ["b-1", "b-2"],
        "remove": [],
        "missing": 0,
    }


def test_new_config_replaces_every_old_container():
    cs = [
        container("b-1", "2026-01-01T10:00:00Z", "old"),
        container("b-2", "2026-01-01T10:00:01Z", "old"),
    ]
    steps = cr.plan(cs, "new", 2)
    assert steps["keep"] == []
    assert steps["remove"] == ["b-1", "b-2"]
    assert steps["missing"] == 2


def test_unhealthy_or_exited_containers_are_replaced_and_healthy_ones_kept():
    cs = [
        container("b-1", "2026-01-01T10:00:00Z", health="unhealthy"),
        container("b-2", "2026-01-01T10:00:01Z"),
        container("b-3", "2026-01-01T10:00:02Z", status="exited", health=None),
    ]
    steps = cr.plan(cs, "new", 2)
    assert steps == {
        "before": ["b-1", "b-2", "b-3"],
        "keep": ["b-2"],
        "remove": ["b-1", "b-3"],
        "missing": 1,
    }


def test_scale_down_keeps_the_oldest_and_scale_up_starts_the_difference():
    # Docker trims trailing zeros from the fraction: .5 is later than .123456789 here.
    cs = [
        container("b-3", "2026-01-01T10:00:00.5Z"),
        container("b-1", "2026-01-01T10:00:00.123456789Z"),
        container("b-2", "2026-01-01T10:00:01Z"),
    ]
    assert cr.plan(cs, "new", 1) == {
        "before": ["b-1", "b-3", "b-2"],
        "keep": ["b-1"],
        "remove": ["b-3", "b-2"],
        "missing": 0,
    }
    assert cr.plan(cs, "new", 5)["missing"] == 2


def test_replace_all_replaces_even_up_to_date_containers():
    cs = [container("b-1", "2026-01-01T10:00:00Z"), container("b-2", "2026-01-01T10:00:01Z")]
    steps = cr.plan(cs, "new", 2, replace_all=True)
    assert steps["keep"] == []
    assert steps["remove"] == ["b-1", "b-2"]
    assert steps["missing"] == 2


def test_a_container_without_health_check_counts_as_up_to_date_while_running():
    cs = [container("b-1", "2026-01-01T10:00:00Z", health=None)]
    assert cr.plan(cs, "new", 1)["keep"] == ["b-1"]


def test_upstream_file_names_the_alias_nginx_resolves():
    text = routing.upstream_text("backend-live", 8000)
    assert [line for line in text.splitlines() if not line.startswith("#")] == [
        "set $backend_route backend-live:8000;"
    ]


TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000 10001
   1: 0300170A:1F40 0500170A:A2C4 01 00000000:00000000 00:00000000 00000000 10001
   2: 0100007F:1F40 0100007F:B00C 01 00000000:00000000 00:00000000 00000000 10001
   3: 0300170A:1F40 0500170A:A2C6 08 00000000:00000000 00:00000000 00000000 10001
   4: 0300170A:1F40 0500170A:A2C8 06 00000000:00000000 00:00000000 00000000 10001
   5: 0300170A:9C40 0200170A:1538 01 00000000:00000000 00:00000000 00000000 10001
"""


def test_busy_connections_count_requests_in_flight_on_the_port_but_not_the_health_check():
    # established and close-wait from nginx count; listen, loopback, time-wait, other ports not
    assert routing.busy_connections(TCP, 8000) == 2
    assert routing.busy_connections(TCP, 9000) == 0


def test_nginx_workers_are_told_apart_from_those_shutting_down():
    text = "7 nginx: worker process  \n9 nginx: worker process is shutting down \nx junk\n"
    assert routing.parse_workers(text) == ({"7"}, {"9"})


# --------------------------------------------------------------------------- fake docker CLI
# The Rollout class gets a fake runner, sleep and clock: a small model of the engine that
# records every command, so the tests assert on what was run, in which order, and on the
# upstream file nginx had at each reload.

PROJECT = "p"
ID_PREFIX = "0123456789ab"  # container IDs: Docker adds the first 12 characters as an alias
OLD, NEW = "hash-old", "hash-new"


class FakeDocker:
    def __init__(self, tmp_path, replicas=2, new_health="healthy", images=()):
        self.compose = tmp_path / "compose.yaml"
        self.compose.write_text(COMPOSE.format(tag="1.1.0"))
        self.upstream = tmp_path / "nginx" / "backend-upstream.conf"
        self.upstream.parent.mkdir()
        self.replicas = replicas
        self.desired = NEW
        self.new_health = new_health  # health of containers started by `compose up`
        self.new_state = {}
        self.images = set(images) or {
            "fastapi-monolith/backend:1.0.0",
            "fastapi-monolith/backend:1.1.0",
        }
        self.fail = {}  # first argv word(s) -> (rc, stderr)
        self.nginx_test_rc = 0
        self.log = []  # (kind, detail), in order
        self.now = 0.0
        self.containers = {}
        self.busy = {}  # container -> connection counts its /proc/<pid>/net/tcp shows in turn
        self.workers = [{"5", "6"}, {"7", "8"}]  # nginx workers before and after a reload
        for i in (1, 2):
            self.add(f"p-backend-{i}", OLD, "healthy", routed=True)
        self.containers["p-nginx-1"] = {"service": "nginx", "hash": "n", "status": "running"}
        self.containers["p-nginx-1"]["health"] = "healthy"

    def add(self, name, config_hash, health, image="fastapi-monolith/backend:1.1.0", routed=False):
        self.containers[name] = {
            "aliases": ["backend", name, "live"] if routed else ["backend", name],
            "pid": str(100 + len(self.containers)),
            "service": "backend",
            "hash": config_hash,
            "status": "running",
            "health": health,
            "created": f"2026-01-01T10:00:{len(self.containers):02d}Z",
            "image": image,
            "oom": False,
        }

    # the injected callables
    def sleep(self, seconds):
        self.log.append(("sleep", seconds))
        self.now += seconds

    def clock(self):
        return self.now

    def read(self, path):
        if path.endswith("tcp6"):
            return ""
        pid = path.split("/")[2]
        name = next(n for n, c in self.containers.items() if c.get("pid") == pid)
        counts = self.busy.get(name) or [0]
        count = counts.pop(0) if len(counts) > 1 else counts[0]
        rows = "".join(f"  {i}: 0300170A:1F40 0500170A:A2C{i} 01 0\n" for i in range(count))
        return "  sl  local_address rem_address   st\n" + rows

    def run(self, argv, data=None, timeout=None):
        if argv[0] == "nsenter":  # nsenter -t PID -n iptables -w -I|-D INPUT ...
            name = next(n for n, c in self.containers.items() if c.get("pid") == argv[2])
            assert argv[8:] == routing.gate_rule(8000)
            self.log.append(("gate" if argv[6] == "-I" else "ungate", name))
            return self.containers[name].get("gate_rc", 0), "", "iptables: not found"
        args = argv[1:]
        if args[0] == "compose":
            args = args[5:]  # --project-directory DIR -p NAME
        key = " ".join(args[:2])
        if key in self.fail:
            self.log.append(("failed", key))
            rc, err = self.fail[key]
            return rc, "", err
        handler = getattr(self, "do_" + args[0].replace("-", "_"))
        return handler(args)

    def do_config(self, args):
        if "--hash" in args:
            return 0, f"backend {self.desired}\n", ""
        return 0, json.dumps({"services": {"backend": {"deploy": {"replicas": self.replicas}}}}), ""

    def do_ps(self, args):
        filters = dict(args[i + 1].split("=", 1)[1].split("=", 1) for i, a in enumerate(args)
                       if a == "--filter")  # fmt: skip
        service = filters[cr.SERVICE_LABEL]
        assert filters[cr.ONEOFF_LABEL] == "False"
        running_only = "-a" not in args
        ids = [
            name
            for name, c in self.containers.items()
            if c["service"] == service
            and (c["status"] == "running" or not running_only)
            and not c.get("oneoff")
        ]
        return 0, "\n".join(ids), ""

    def do_network(self, args):
        op, network, name = args[1], args[-2], args[-1]
        assert network == "p_default"
        if op == "disconnect":
            self.containers[name]["aliases"] = None
        else:
            aliases = [a for i, a in enumerate(args) if args[i - 1] == "--alias"]
            self.containers[name]["aliases"] = aliases
            self.log.append(("route" if "live" in aliases else "unroute", name))
        return 0, "", ""

    def do_inspect(self, args):
        if args[1] == "--format":  # {{.State.Pid}}
            c = self.containers.get(args[-1]) or {}
            return (0, c["pid"] + "\n", "") if c.get("status") == "running" else (1, "", "gone")
        out = []
        for name in args[1:]:
            c = self.containers.get(name)
            if c is None:
                continue
            state = {"Status": c["status"], "OOMKilled": c.get("oom", False)}
            state["Health"] = {"Status": c["health"], "Log": [{"Output": "probe said no"}]}
            labels = {cr.HASH_LABEL: c["hash"], cr.SERVICE_LABEL: c["service"]}
            config = {"Labels": labels, "Image": c.get("image")}
            config["Healthcheck"] = {"Test": ["CMD", "python3", "-c", "probe"], "Timeout": 4e9}
            networks = {"p_default": {"Aliases": c.get("aliases")}} if c.get("aliases") else {}
            out.append(
                {
                    "Id": ID_PREFIX + name,
                    "Name": f"/{name}",
                    "Created": c.get("created", ""),
                    "State": state,
                }
                | {"Config": config, "NetworkSettings": {"Networks": networks}}
            )
        return (0 if len(out) == len(args) - 1 else 1), json.dumps(out), ""

    def do_up(self, args):
        total = int(args[args.index("--scale") + 1].split("=")[1])
        have = [n for n, c in self.containers.items() if c["service"] == "backend"]
        started = []
        for i in range(len(have) + 1, total + 1):
            name = f"p-backend-{i}"
            self.add(name, self.desired, self.new_health, image=self.compose_image())
            self.containers[name].update(self.new_state)
            started.append(name)
        self.log.append(("up", started))
        return 0, "", ""

    def do_exec(self, args):
        args = [args[0], args[1].removeprefix(ID_PREFIX), *args[2:]]
        if args[1] != "p-nginx-1":  # the module runs a new container's own health test
            assert args[2:] == ["python3", "-c", "probe"]
            self.log.append(("health test", args[1]))
            return self.containers[args[1]].get("probe_rc", 1), "", ""
        if args[2:] == ["sh", "-c", routing.NGINX_WORKERS]:
            pids = self.workers[0] if len(self.workers) == 1 else self.workers.pop(0)
            return 0, "".join(f"{p} nginx: worker process\n" for p in sorted(pids)), ""
        if self.nginx_test_rc:
            self.log.append(("nginx -t rejected", None))
            return self.nginx_test_rc, "", "nginx: [emerg] unknown directive"
        assert args[2:5] == ["sh", "-c", routing.NGINX_TEST_AND_RELOAD]  # test and reload at once
        self.log.append(("reload", None))
        return 0, "", ""

    def do_stop(self, args):
        assert args[1] == "--time"
        self.log.append(("stop", args[3:]))
        self.log.append(("grace", args[2]))
        for name in args[3:]:
            self.containers[name]["status"] = "exited"
        return 0, "", ""

    def do_start(self, args):
        name = args[1]
        self.log.append(("start", name))
        c = self.containers[name]
        c.update(status="running", health=c.get("health_after_start", "starting"))
        c["pid"] = str(int(c["pid"]) + 1000)  # a new process
        return 0, "", ""

    def do_rm(self, args):
        names = [a for a in args[1:] if a != "--force"]
        self.log.append(("rm --force" if "--force" in args else "rm", names))
        for name in names:
            self.containers.pop(name, None)
        return 0, "", ""

    def do_logs(self, args):
        return 0, "Traceback: database is down\n", ""

    def do_image(self, args):
        if args[1] == "ls":
            return 0, "".join(f"{ref}\n" for ref in sorted(self.images)) + "<none>:<none>\n", ""
        ref = args[-1]
        return (0, f"sha256:{'a' * 64}\n", "") if ref in self.images else (1, "", "No such image")

    def do_pull(self, args):
        self.log.append(("pull", args[1]))
        return 1, "", "Error response from daemon: manifest unknown"

    def compose_image(self):
        for line in self.compose.read_text().splitlines():
            if line.strip().startswith("image: fastapi-monolith/backend:"):
                return line.split("image: ", 1)[1]
        return None

    def kinds(self, *wanted):
        return [entry for entry in self.log if entry[0] in wanted]


COMPOSE = """\
# managed
name: p

x-logging: &logging
  driver: json-file

services:
  db:
    image: fastapi-monolith/postgres:15
    logging: *logging

  backend:
    # the release
    image: fastapi-monolith/backend:{tag}
    environment:
      DB_HOST: db
    deploy:
      replicas: 2

  nginx:
    image: fastapi-monolith/nginx:1.22
"""


def rollout(fake, check_mode=False, **params):
    base = {
        "project_dir": str(fake.compose.parent),
        "project_name": PROJECT,
        "service": "backend",
        "replace_all": False,
        "health_timeout": 30,
        "drain_seconds": 2,
        "poll_interval": 0.5,
        "nginx_service": "nginx",
        "nginx_conf": "/etc/nginx/opsauto/nginx.conf",
        "upstream_path": str(fake.upstream),
        "upstream_port": 8000,
        "route_alias": "live",
        "route_network": None,
        "resolver_valid": 1,
        "soak_seconds": 0,
        "docker_cli": "docker",
    }
    base.update(params)
    return cr.Rollout(
        fake.run, base, check_mode=check_mode, sleep=fake.sleep, clock=fake.clock, read=fake.read
    )


def routed(fake):
    return sorted(n for n, c in fake.containers.items() if "live" in (c.get("aliases") or []))


def test_rollout_routes_to_the_new_containers_then_gates_drains_and_stops_the_old(tmp_path):
    fake = FakeDocker(tmp_path)
    fake.busy = {"p-backend-1": [2, 1, 0], "p-backend-2": [1, 0]}
    result = rollout(fake).rollout()
    assert result["started"] == ["p-backend-3", "p-backend-4"]
    assert result["removed"] == ["p-backend-1", "p-backend-2"]
    assert fake.kinds("up", "route", "sleep", "gate", "stop", "grace", "rm", "reload") == [
        ("up", ["p-backend-3", "p-backend-4"]),
        ("route", "p-backend-3"),  # the health gate passed: they get the alias nginx resolves
        ("route", "p-backend-4"),
        ("sleep", 3.0),  # past nginx's DNS cache (valid=1s, kept to the end of the second)
        ("gate", "p-backend-1"),  # new connections refused, nginx uses another replica
        ("gate", "p-backend-2"),
        ("sleep", 0.25),  # requests still in flight: 3, then 1, then none
        ("sleep", 0.25),
        ("stop", ["p-backend-1", "p-backend-2"]),
        ("grace", "2"),
        ("rm", ["p-backend-1", "p-backend-2"]),
    ]  # and never an nginx reload
    assert routed(fake) == ["p-backend-3", "p-backend-4"]
    assert fake.containers["p-backend-3"]["aliases"] == ["backend", "p-backend-3", "live"]


def test_the_drain_ends_at_drain_seconds_and_stop_gets_the_grace(tmp_path):
    fake = FakeDocker(tmp_path, replicas=1)
    fake.desired = OLD
    fake.busy = {"p-backend-2": [1]}  # a request that outlasts the drain
    sw = rollout(fake, drain_seconds=30, stop_grace_seconds=45)
    sw.rollout()
    assert sum(s for kind, s in fake.log if kind == "sleep") == pytest.approx(30)
    assert fake.kinds("stop", "grace") == [("stop", ["p-backend-2"]), ("grace", "45")]
    assert "drain limit 30 s reached with 1 connection(s) still open" in str(sw.events)


def test_without_iptables_the_old_containers_are_stopped_without_a_drain(tmp_path):
    fake = FakeDocker(tmp_path, replicas=1)
    fake.desired = OLD
    fake.containers["p-backend-2"]["gate_rc"] = 127
    fake.busy = {"p-backend-2": [1]}
    sw = rollout(fake)
    sw.rollout()
    assert fake.kinds("sleep", "stop") == [("stop", ["p-backend-2"])]
    assert "could not refuse new connections" in str(sw.events)


def test_one_off_containers_are_not_replicas(tmp_path):
    fake = FakeDocker(tmp_path)
    fake.desired = OLD
    fake.add("p-backend-run-1a2b", OLD, "healthy")
    fake.containers["p-backend-run-1a2b"]["oneoff"] = True
    result = rollout(fake).rollout()
    assert (result["before"], result["removed"], result["started"]) == (
        ["p-backend-1", "p-backend-2"], [], []
    )  # fmt: skip
    assert fake.kinds("up", "stop", "rm", "rm --force") == []
    fake.replicas = 1
    assert rollout(fake).rollout()["removed"] == ["p-backend-2"]
    assert fake.containers["p-backend-run-1a2b"]["status"] == "running"


def test_a_new_container_that_turns_unhealthy_is_removed_and_the_old_ones_are_untouched(tmp_path):
    fake = FakeDocker(tmp_path, new_health="unhealthy")
    fake.new_state = {"oom": True}
    with pytest.raises(cr.RolloutError) as err:
        rollout(fake).rollout()
    message = str(err.value)
    assert "p-backend-3 running unhealthy" in message
    assert "They were removed; the old containers p-backend-1, p-backend-2 kept serving" in message
    assert "OOMKilled" in message
    assert "Last health check output: probe said no" in message
    assert "Last log line: Traceback: database is down" in message
    # the new ones went, nginx never routed to them, nothing old was stopped
    assert fake.kinds("rm --force", "stop", "rm", "route", "gate") == [
        ("rm --force", ["p-backend-3", "p-backend-4"])
    ]
    assert {n for n, c in fake.containers.items() if c["service"] == "backend"} == {
        "p-backend-1",
        "p-backend-2",
    }
    assert all(fake.containers[n]["status"] == "running" for n in ("p-backend-1", "p-backend-2"))
    assert routed(fake) == ["p-backend-1", "p-backend-2"]


def test_a_new_container_still_starting_at_the_deadline_is_removed(tmp_path):
    fake = FakeDocker(tmp_path, new_health="starting")
    with pytest.raises(cr.RolloutError, match="did not become healthy within 3 s"):
        rollout(fake, health_timeout=3).rollout()
    polls = [s for kind, s in fake.log if kind == "sleep"]
    assert polls == [0.5] * 6  # polled every poll_interval until the 3 s deadline, no longer
    assert fake.kinds("rm --force", "stop") == [("rm --force", ["p-backend-3", "p-backend-4"])]


def test_a_new_container_passing_its_own_health_test_is_routed_to_at_once(tmp_path):
    fake = FakeDocker(tmp_path, new_health="starting")  # Docker has not run its check yet
    fake.new_state = {"probe_rc": 0}
    result = rollout(fake).rollout()
    assert result["started"] == ["p-backend-3", "p-backend-4"]
    assert fake.kinds("health test", "sleep", "route")[:3] == [
        ("health test", "p-backend-3"),
        ("health test", "p-backend-4"),
        ("route", "p-backend-3"),  # no poll wait before the switch
    ]


def test_a_failing_health_test_run_by_the_module_does_not_pass_the_gate(tmp_path):
    fake = FakeDocker(tmp_path, new_health="starting")
    fake.new_state = {"probe_rc": 1}
    with pytest.raises(cr.RolloutError, match="p-backend-3 running starting"):
        rollout(fake, health_timeout=1).rollout()
    assert fake.kinds("health test").count(("health test", "p-backend-3")) == 3  # 0, .5, 1 s
    assert fake.kinds("route", "gate", "stop") == []


def test_soak_keeps_the_old_containers_until_the_new_ones_stayed_healthy(tmp_path):
    fake = FakeDocker(tmp_path)
    sw = rollout(fake, soak_seconds=3)
    sw.rollout()
    kinds = [k for k, _ in fake.kinds("route", "sleep", "gate")]
    assert kinds == ["route", "route", "sleep", "sleep", "sleep", "sleep", "gate", "gate"]
    assert "soak of 3 s passed" in str(sw.events)


def test_a_new_container_failing_during_the_soak_is_removed_and_the_old_ones_stay(tmp_path):
    fake = FakeDocker(tmp_path)
    real_sleep = fake.sleep

    def sleep(seconds):  # p-backend-4 turns unhealthy one second into the soak
        real_sleep(seconds)
        if "p-backend-4" in fake.containers and fake.kinds("route"):
            fake.containers["p-backend-4"]["health"] = "unhealthy"

    fake.sleep = sleep
    with pytest.raises(cr.RolloutError, match="did not stay healthy for the soak of 5 s"):
        rollout(fake, soak_seconds=5).rollout()
    assert fake.kinds("gate", "rm --force", "stop") == [
        ("gate", "p-backend-3"),
        ("gate", "p-backend-4"),
        ("rm --force", ["p-backend-3", "p-backend-4"]),
    ]
    assert routed(fake) == ["p-backend-1", "p-backend-2"]
    assert all(fake.containers[n]["status"] == "running" for n in ("p-backend-1", "p-backend-2"))


def test_health_test_argv_from_the_container_config():
    def cfg(test):
        return {"Config": {"Healthcheck": {"Test": test}}}

    assert cr.health_test(cfg(["CMD", "curl", "-f", "x"])) == ["curl", "-f", "x"]
    assert cr.health_test(cfg(["CMD-SHELL", "pg_isready"])) == ["/bin/sh", "-c", "pg_isready"]
    assert cr.health_test(cfg(["NONE"])) is None
    assert cr.health_test({"Config": {}}) is None


def test_status_lists_the_containers_oldest_first_and_the_running_ones(tmp_path):
    fake = FakeDocker(tmp_path)
    fake.containers["p-backend-2"]["status"] = "exited"
    result = rollout(fake).status()
    assert [(c["name"], c["status"]) for c in result["containers"]] == [
        ("p-backend-1", "running"),
        ("p-backend-2", "exited"),
    ]
    assert [c["image"] for c in result["running"]] == ["fastapi-monolith/backend:1.1.0"]
    assert not result["changed"]


def test_a_failure_before_the_stop_lets_the_old_containers_take_connections_again(tmp_path):
    fake = FakeDocker(tmp_path)
    fake.fail["stop --time"] = (1, "Error response from daemon: cannot stop")
    with pytest.raises(cr.RolloutError, match="stopping the old containers failed .*cannot stop"):
        rollout(fake).rollout()
    assert fake.kinds("gate", "ungate", "failed") == [
        ("gate", "p-backend-1"),
        ("gate", "p-backend-2"),
        ("failed", "stop --time"),
        ("ungate", "p-backend-1"),  # finally: they serve again
        ("ungate", "p-backend-2"),
    ]


def test_reload_checks_the_configuration_and_waits_for_a_new_worker_generation(tmp_path):
    fake = FakeDocker(tmp_path)
    fake.workers = [{"5", "6"}, {"5", "6"}, {"5", "6", "7"}, {"7", "8"}]
    sw = rollout(fake, action="reload")
    result = sw.reload()
    assert result["nginx_reloaded"]
    assert fake.kinds("reload", "sleep") == [("reload", None), ("sleep", 0.2), ("sleep", 0.2)]
    assert "nginx runs the new configuration (workers 7, 8)" in str(sw.events)


def test_a_reload_without_a_new_worker_generation_fails_naming_the_workers(tmp_path):
    fake = FakeDocker(tmp_path)
    fake.workers = [{"5", "6"}]
    with pytest.raises(cr.RolloutError, match="no new worker generation started within 10 s"):
        rollout(fake).reload()


def test_nginx_rejecting_the_configuration_is_not_reloaded(tmp_path):
    fake = FakeDocker(tmp_path)
    fake.nginx_test_rc = routing.NGINX_TEST_FAILED
    with pytest.raises(cr.RolloutError, match="nginx -t rejected .*unknown directive"):
        rollout(fake).reload()
    assert fake.kinds("reload") == []


def test_route_gives_the_alias_to_healthy_replicas_that_lack_it(tmp_path):
    fake = FakeDocker(tmp_path)
    fake.add("p-backend-3", OLD, "healthy")  # created by docker compose up
    fake.add("p-backend-4", OLD, "starting")
    result = rollout(fake).route()
    assert result == {"changed": True, "routed": ["p-backend-3"]}
    assert routed(fake) == ["p-backend-1", "p-backend-2", "p-backend-3"]
    assert rollout(fake).route() == {"changed": False, "routed": []}


def test_scale_down_gates_and_drains_before_stopping_and_starts_nothing(tmp_path):
    fake = FakeDocker(tmp_path, replicas=1)
    fake.desired = OLD
    result = rollout(fake).rollout()
    assert (result["kept"], result["removed"], result["started"]) == (
        ["p-backend-1"],
        ["p-backend-2"],
        [],
    )
    assert fake.kinds("up", "route", "sleep", "gate", "stop", "rm") == [
        ("gate", "p-backend-2"),  # the kept one was routed all along: no DNS wait
        ("stop", ["p-backend-2"]),
        ("rm", ["p-backend-2"]),
    ]


def test_check_mode_reports_the_plan_and_runs_nothing(tmp_path):
    fake = FakeDocker(tmp_path)
    result = rollout(fake, check_mode=True).rollout()
    assert result["changed"]
    assert result["removed"] == ["p-backend-1", "p-backend-2"]
    assert fake.kinds("up", "route", "gate", "sleep", "stop", "rm", "rm --force") == []


# --------------------------------------------------------------------------- the release switch


def test_switch_checks_the_image_sets_only_the_backend_line_and_rolls_out(tmp_path):
    fake = FakeDocker(tmp_path)
    before = fake.compose.read_text()
    result = rollout(fake, image="fastapi-monolith/backend:1.0.0").rollout()
    after = fake.compose.read_text()
    assert after == before.replace("backend:1.1.0", "backend:1.0.0")
    assert result["compose_changed"]
    assert result["image_id"] == f"sha256:{'a' * 64}"
    assert result["started"] == ["p-backend-3", "p-backend-4"]
    assert {c["image"] for c in fake.containers.values() if c["service"] == "backend"} == {
        "fastapi-monolith/backend:1.0.0"
    }


def test_switch_to_a_missing_tag_fails_before_anything_is_touched(tmp_path):
    fake = FakeDocker(tmp_path)
    before = fake.compose.read_text()
    with pytest.raises(cr.ImageMissing) as err:
        rollout(fake, image="fastapi-monolith/backend:9.9.9").rollout()
    assert err.value.missing == ["fastapi-monolith/backend:9.9.9"]
    message = str(err.value)
    assert "fastapi-monolith/backend:9.9.9 is not on this Docker host" in message
    assert "pulling is off" in message
    assert "Nothing was changed" in message
    assert "fastapi-monolith/backend tags on this host: 1.0.0, 1.1.0." in message
    assert fake.compose.read_text() == before
    assert fake.log == []  # no pull, no compose, no container command


def test_switch_pulls_a_missing_tag_when_allowed_and_names_the_pull_error(tmp_path):
    fake = FakeDocker(tmp_path)
    with pytest.raises(cr.ImageMissing, match="could not be pulled .*manifest unknown"):
        rollout(fake, image="fastapi-monolith/backend:9.9.9", pull=True).rollout()
    assert fake.log == [("pull", "fastapi-monolith/backend:9.9.9")]


def test_switch_in_check_mode_writes_nothing_and_reports_every_container_replaced(tmp_path):
    fake = FakeDocker(tmp_path)
    fake.desired = OLD  # the file on disk still names 1.1.0, whose hash the containers have
    before = fake.compose.read_text()
    sw = rollout(fake, check_mode=True, image="fastapi-monolith/backend:1.0.0")
    result = sw.rollout()
    assert result["changed"]
    assert result["compose_changed"]
    assert result["removed"] == ["p-backend-1", "p-backend-2"]
    assert fake.compose.read_text() == before
    assert "backend:1.0.0" in sw.compose_diff["after"]
    assert fake.log == []


def test_switch_to_the_running_release_changes_nothing(tmp_path):
    fake = FakeDocker(tmp_path)
    fake.desired = OLD
    result = rollout(fake, image="fastapi-monolith/backend:1.1.0").rollout()
    assert not result["changed"]
    assert not result["compose_changed"]
    assert fake.log == []


def test_switch_fails_when_a_container_does_not_run_the_image_afterwards(tmp_path):
    fake = FakeDocker(tmp_path)
    fake.desired = OLD  # hash says up to date, but the containers run another image
    for name in ("p-backend-1", "p-backend-2"):
        fake.containers[name]["image"] = "fastapi-monolith/backend:0.9.0"
    fake.replicas = 3  # something to do, so the rollout runs and re-reads
    with pytest.raises(cr.RolloutError, match="p-backend-1 runs fastapi-monolith/backend:0.9.0"):
        rollout(fake, image="fastapi-monolith/backend:1.1.0").rollout()


def test_images_action_lists_every_missing_image_once(tmp_path):
    fake = FakeDocker(tmp_path, images={"fastapi-monolith/nginx:1.22"})
    with pytest.raises(cr.ImageMissing) as err:
        rollout(fake, images=["fastapi-monolith/nginx:1.22", "fastapi-monolith/backend:2"]).images()
    assert err.value.missing == ["fastapi-monolith/backend:2"]
    assert "fastapi-monolith/backend tags on this host: none" in str(err.value)


def test_set_service_image_changes_one_line_of_the_named_service():
    text = COMPOSE.format(tag="1.1.0")
    new = cr.set_service_image(text, "backend", "registry:5000/fastapi-monolith/backend:2.0")
    changed = [(a, b) for a, b in zip(text.splitlines(), new.splitlines(), strict=True) if a != b]
    assert changed == [
        (
            "    image: fastapi-monolith/backend:1.1.0",
            "    image: registry:5000/fastapi-monolith/backend:2.0",
        )
    ]
    assert cr.set_service_image(text, "nginx", "n:2").count("image: n:2") == 1
    with pytest.raises(cr.RolloutError, match="service worker is not defined"):
        cr.set_service_image(text, "worker", "w:1")
    with pytest.raises(cr.RolloutError, match="service backend has no image line"):
        cr.set_service_image("services:\n  backend:\n    build: .\n", "backend", "b:1")


def test_image_references_are_compared_with_their_implicit_tag():
    assert cr.image_ref("nginx") == "nginx:latest"
    assert cr.image_ref("reg:5000/a/b") == "reg:5000/a/b:latest"
    assert cr.image_ref("reg:5000/a/b:1") == "reg:5000/a/b:1"
    assert cr.repository_of("reg:5000/a/b:1") == "reg:5000/a/b"
    assert cr.repository_of("a/b@sha256:00") == "a/b"


# --------------------------------------------------------------------------- restart in place


def test_restart_in_place_drains_and_keeps_the_replica_out_of_routing_until_healthy(tmp_path):
    fake = FakeDocker(tmp_path)
    fake.containers["p-backend-1"].update(health="unhealthy", probe_rc=0)
    fake.busy = {"p-backend-1": [1, 0]}
    result = rollout(fake, containers=["p-backend-1"]).restart()
    assert result["restarted"] == ["p-backend-1"]
    assert result["changed"]
    assert fake.kinds("gate", "stop", "unroute", "start", "health test", "route") == [
        ("gate", "p-backend-1"),  # nginx passes new connections to p-backend-2
        ("stop", ["p-backend-1"]),  # after its request in flight finished
        ("unroute", "p-backend-1"),  # started again, it would be resolved while it starts
        ("start", "p-backend-1"),
        ("health test", "p-backend-1"),
        ("route", "p-backend-1"),  # only once healthy
    ]
    assert routed(fake) == ["p-backend-1", "p-backend-2"]
    assert fake.containers["p-backend-1"]["aliases"] == ["backend", "p-backend-1", "live"]


def test_restart_in_place_of_an_exited_replica_starts_it_unrouted(tmp_path):
    fake = FakeDocker(tmp_path)
    fake.containers["p-backend-1"].update(status="exited", probe_rc=0)
    rollout(fake, containers=["p-backend-1"]).restart()
    assert fake.kinds("gate", "stop", "unroute", "start", "route") == [
        ("unroute", "p-backend-1"),
        ("start", "p-backend-1"),
        ("route", "p-backend-1"),
    ]


def test_restart_in_place_that_stays_unhealthy_is_not_routed_and_says_so(tmp_path):
    fake = FakeDocker(tmp_path)
    fake.containers["p-backend-1"].update(status="exited", health_after_start="unhealthy")
    with pytest.raises(cr.RolloutError) as err:
        rollout(fake, containers=["p-backend-1"]).restart()
    assert "p-backend-1" in str(err.value)
    assert "not healthy within 30 s" in str(err.value)
    assert "nginx does not route to it" in str(err.value)
    assert routed(fake) == ["p-backend-2"]
    assert fake.kinds("route") == []


def test_restart_in_place_refuses_names_of_other_services_and_check_mode_changes_nothing(
    tmp_path,
):
    fake = FakeDocker(tmp_path)
    with pytest.raises(cr.RolloutError, match="p-nginx-1: not containers of the service backend"):
        rollout(fake, containers=["p-backend-1", "p-nginx-1"]).restart()
    result = rollout(fake, check_mode=True, containers=["p-backend-1"]).restart()
    assert result["changed"]
    assert result["restarted"] == ["p-backend-1"]
    assert fake.kinds("gate", "stop", "unroute", "start", "route") == []
