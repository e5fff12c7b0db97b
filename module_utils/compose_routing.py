# Routing of a Compose service's replicas behind nginx without reloading nginx.
#
# nginx resolves a network alias (route_alias) through Docker's DNS at request time
# (`resolver 127.0.0.11 valid=1s` and a variable in proxy_pass, see the deploy role's
# nginx.conf.j2), so it routes to whichever containers carry the alias, with no reload and
# so without closing a client's keep-alive connection. Only replicas that passed the health
# gate carry the alias:
#   attach   a new, healthy container gets the alias (docker network disconnect/connect of a
#            container nginx does not route to yet, so nothing is in flight on it);
#   gate     an old container refuses new TCP connections from outside (an iptables REJECT
#            with tcp-reset of SYNs to its port, in its own network namespace), so nginx's
#            connect fails at once and nginx passes the request (GET or POST: nothing was
#            sent yet) to another replica, while the requests in flight finish;
#   drain    wait until the old container has no established connection on its port (or
#            the longest request the stack allows has passed), then stop it.
# Docker's DNS drops a container's alias when it stops. Used by module_utils/compose_rollout.py
# (class Rollout inherits Routing); `self.run`, `self.cmd`, `self.sleep`, `self.clock`,
# `self.note`, `self.p` and `self.containers` come from there.
from __future__ import annotations

import math

from ansible.module_utils.fileops import write_bytes_atomic

NGINX_TEST_FAILED = 97
NGINX_TEST_AND_RELOAD = (
    f'nginx -t -q -c "$1" || exit {NGINX_TEST_FAILED}; exec nginx -c "$1" -s reload'
)
# Lists nginx's worker processes in its container: "<pid> <process title>" per line.
NGINX_WORKERS = (
    'for d in /proc/[0-9]*; do t=$(tr "\\000" " " < "$d/cmdline" 2>/dev/null) || continue; '
    'case "$t" in "nginx: worker process"*) echo "${d#/proc/} $t";; esac; done'
)
UPSTREAM_HEADER = (
    "# Managed by opsauto (compose_rollout module), included by nginx.conf's server block.\n"
    "# nginx resolves this address through Docker's DNS at request time (proxy_pass\n"
    "# http://$backend_route); only replicas that passed the rollout's health gate carry\n"
    "# the network alias {alias}, so a rollout needs no nginx reload.\n"
)
# /proc/net/tcp states of a connection a request may still be using: ESTABLISHED, CLOSE_WAIT.
BUSY_STATES = ("01", "08")
LOOPBACK = ("0100007F", "00000000000000000000000001000000")


def upstream_text(alias, port):
    """The upstream file: the address nginx resolves at request time."""
    return UPSTREAM_HEADER.format(alias=alias) + f"set $backend_route {alias}:{port};\n"


def busy_connections(tcp_text, port):
    """Connections to ``port`` in a /proc/<pid>/net/tcp(6) text that a request may still use.

    Loopback peers (the container's own health check) do not count.
    """
    count = 0
    for line in tcp_text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        local, remote, state = fields[1], fields[2], fields[3]
        local_port = int(local.rsplit(":", 1)[-1], 16)
        if local_port == port and state in BUSY_STATES:
            count += remote.rsplit(":", 1)[0] not in LOOPBACK
    return count


def parse_workers(text):
    """(current worker pids, pids of workers shutting down) from NGINX_WORKERS' output."""
    live, leaving = set(), set()
    for line in text.splitlines():
        pid, _, title = line.strip().partition(" ")
        if pid.isdigit():
            (leaving if "shutting down" in title else live).add(pid)
    return live, leaving


def gate_rule(port):
    """iptables arguments (after -I/-D INPUT) refusing new outside connections to ``port``."""
    return ["!", "-i", "lo", "-p", "tcp", "--dport", str(port), "--syn",
            "-j", "REJECT", "--reject-with", "tcp-reset"]  # fmt: skip


class Routing:
    # ------------------------------------------------------------------ network alias
    def network(self):
        return self.p.get("route_network") or f"{self.p['project_name']}_default"

    def endpoint(self, container):
        """The container's settings on the route network, or None when it is not on it."""
        networks = (container.get("NetworkSettings") or {}).get("Networks") or {}
        return networks.get(self.network())

    def routed(self, container):
        endpoint = self.endpoint(container) or {}
        return self.p["route_alias"] in (endpoint.get("Aliases") or [])

    def attach(self, containers):
        """Give each (not yet routed) container the route alias: it takes requests from now."""
        network, alias = self.network(), self.p["route_alias"]
        names = []
        for container in containers:
            name = container["Name"].lstrip("/")
            endpoint = self.endpoint(container)
            if endpoint is None:
                raise self.error(
                    f"{name} is not on the network {network} that nginx resolves "
                    f"{alias} in; set stack_backend_route_network to the network nginx and "
                    "the backend share (by default the project's default network)."
                )
            if self.routed(container):
                continue
            # Not routed yet, so nothing from nginx is in flight on it: reconnect with the alias.
            self.reconnect(container, routed=True)
            names.append(name)
        if names:
            self.note(f"routed to {', '.join(names)} (alias {alias})")
        return names

    def unroute(self, container):
        """Take the route alias from a stopped container: nginx no longer resolves it."""
        self.reconnect(container, routed=False)
        self.note(f"took the alias {self.p['route_alias']} from {container['Name'].lstrip('/')}")

    def reconnect(self, container, routed):
        """Disconnect the container from the route network and connect it again with its own
        aliases, plus the route alias when `routed` (Docker has no way to change an alias)."""
        network, alias, name = self.network(), self.p["route_alias"], container["Name"].lstrip("/")
        short = container["Id"][:12]
        endpoint = self.endpoint(container) or {}
        aliases = [a for a in endpoint.get("Aliases") or [] if a not in (short, alias)]
        argv = [self.docker, "network", "connect"]
        for each in [*aliases, alias] if routed else aliases:
            argv += ["--alias", each]
        self.cmd([self.docker, "network", "disconnect", network, name], f"disconnecting {name}")
        what = f"connecting {name} with the alias {alias}" if routed else f"connecting {name}"
        self.cmd([*argv, network, name], what)

    def adopt(self):
        """Route every running replica that passed its health check and lacks the alias."""
        ready = [
            c
            for c in self.containers(self.p["service"], running_only=True)
            if self.health_of(c) in ("healthy", "none") and not self.routed(c)
        ]
        if self.check_mode:
            return [c["Name"].lstrip("/") for c in ready]
        return self.attach(ready)

    # ------------------------------------------------------------------ gate and drain
    def pid_of(self, name):
        rc, out, _ = self.run([self.docker, "inspect", "--format", "{{.State.Pid}}", name])
        pid = out.strip()
        return pid if rc == 0 and pid.isdigit() and pid != "0" else None

    def iptables(self, pid, op):
        nsenter, iptables = self.p.get("nsenter_cli"), self.p.get("iptables_cli")
        argv = [nsenter or "nsenter", "-t", pid, "-n", iptables or "iptables", "-w", op, "INPUT"]
        rc, out, err = self.run(argv + gate_rule(self.p["upstream_port"]))
        return rc, (err or out or "").strip()

    def gate(self, names):
        """Refuse new connections to the containers; returns the ones gated (pid by name)."""
        gated, failed = {}, []
        for name in names:
            pid = self.pid_of(name)
            rc, why = self.iptables(pid, "-I") if pid else (1, "not running")
            if rc == 0:
                gated[name] = pid
            else:
                failed.append(f"{name}: {why.splitlines()[-1] if why else rc}")
        if gated:
            self.note(f"new connections to {', '.join(gated)} refused (nginx uses the others)")
        if failed:
            self.note(
                "could not refuse new connections (nsenter and iptables as root on the Docker "
                f"host are needed), they get SIGTERM while routed: {'; '.join(failed)}"
            )
        return gated

    def ungate(self, gated):
        for name, pid in gated.items():
            if self.pid_of(name) == pid:
                self.iptables(pid, "-D")

    def busy(self, pids):
        total = 0
        for pid in pids:
            for table in ("tcp", "tcp6"):
                try:
                    text = self.read(f"/proc/{pid}/net/{table}")
                except OSError:
                    continue
                total += busy_connections(text, self.p["upstream_port"])
        return total

    def drain(self, gated):
        """Wait until no request is in flight on the gated containers, at most drain_seconds."""
        limit = float(self.p["drain_seconds"])
        deadline, waited = self.clock() + limit, self.clock()
        busy = self.busy(gated.values())
        while busy and self.clock() < deadline:
            self.sleep(min(0.25, max(deadline - self.clock(), 0)))
            busy = self.busy(gated.values())
        seconds = round(self.clock() - waited, 2)
        if busy:
            self.note(f"drain limit {limit:g} s reached with {busy} connection(s) still open")
        else:
            self.note(f"drained in {seconds} s")
        return busy

    def stop_grace(self):
        grace = self.p.get("stop_grace_seconds")
        return int(grace if grace is not None else math.ceil(float(self.p["drain_seconds"])))

    # ------------------------------------------------------------------ nginx
    def write_upstream(self):
        """Write the upstream file if its text differs; returns True when it was rewritten."""
        path = self.p["upstream_path"]
        text = upstream_text(self.p["route_alias"], self.p["upstream_port"])
        try:
            with open(path, encoding="utf-8") as handle:
                current = handle.read()
        except FileNotFoundError:
            current = None
        self.upstream_diff = {"before": current or "", "after": text}
        if current == text:
            return False
        if not self.check_mode:
            # nginx mounts the directory: the atomic rename is seen by the next reload
            write_bytes_atomic(path, text.encode("utf-8"), mode=0o644)
        return True

    def nginx_workers(self, container):
        rc, out, _ = self.run([self.docker, "exec", container, "sh", "-c", NGINX_WORKERS])
        return parse_workers(out) if rc == 0 else (set(), set())

    def confirm_generation(self, container, before):
        """After a reload: wait until nginx runs workers that did not exist before it."""
        deadline = self.clock() + float(self.p.get("reload_timeout") or 10)
        while True:
            live, _ = self.nginx_workers(container)
            if live and not live & before:
                self.note(f"nginx runs the new configuration (workers {', '.join(sorted(live))})")
                return live
            if self.clock() >= deadline:
                raise self.error(
                    "nginx accepted the reload but no new worker generation started within "
                    f"{self.p.get('reload_timeout') or 10} s (workers {', '.join(sorted(live))}, "
                    f"before {', '.join(sorted(before))}): the new configuration is not in use. "
                    f"Nothing was removed. Check docker logs of the {self.p['nginx_service']} "
                    "container."
                )
            self.sleep(0.2)

    def reload_nginx(self):
        """nginx -t, a graceful reload, and a new worker generation; False when nginx is down."""
        running = self.containers(self.p["nginx_service"], running_only=True)
        if not running or self.check_mode:
            return bool(running)
        container = running[0]["Id"]
        conf = self.p["nginx_conf"]
        before, _ = self.nginx_workers(container)
        # One docker exec for the test and the reload; exit 97: the test failed, no reload.
        rc, out, err = self.run(
            [self.docker, "exec", container, "sh", "-c", NGINX_TEST_AND_RELOAD, "sh", conf]
        )
        if rc == NGINX_TEST_FAILED:
            raise self.error(
                "nginx -t rejected the configuration, nginx was not reloaded: "
                f"{(err or out).strip()}"
            )
        if rc != 0:
            lines = (err or out or "").strip().splitlines()
            raise self.error(
                f"nginx reload failed (exit {rc}): {lines[-1] if lines else 'no output'}"
            )
        self.note("nginx reloaded")
        if before:
            self.confirm_generation(container, before)
        return True
