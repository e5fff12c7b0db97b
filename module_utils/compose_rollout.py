# Zero-downtime rollout of one Docker Compose service behind nginx, in one process.
#
# Used by library/compose_rollout.py; nginx routing (network alias, gate, drain, reload) is
# in compose_routing.py, the guarantees and limits in docs/rollout.md. Everything goes
# through the docker CLI (the same engine and compose plugin an operator uses); `run` is a
# callable like AnsibleModule.run_command: run(argv, data=None) -> (rc, stdout, stderr).
from __future__ import annotations

import json
import os
import stat
import time

from ansible.module_utils.compose_routing import Routing
from ansible.module_utils.fileops import write_bytes_atomic
from ansible.module_utils.ops_errors import OpsError

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
HASH_LABEL = "com.docker.compose.config-hash"
# `docker compose run` containers carry the service label too; they are never replicas.
ONEOFF_LABEL = "com.docker.compose.oneoff"


class RolloutError(OpsError):
    """A step failed; the message says what happened and what still serves."""


class ImageMissing(RolloutError):
    """Images are neither on the host nor pullable; nothing was touched."""

    def __init__(self, message, missing):
        super().__init__(message)
        self.missing = missing


def image_ref(ref):
    """``ref`` with the implicit ``:latest`` tag spelled out (digests are left as they are)."""
    if "@" in ref or ":" in ref.rsplit("/", 1)[-1]:
        return ref
    return f"{ref}:latest"


def repository_of(ref):
    """The repository of an image reference: ``reg:5000/a/b:1.0`` -> ``reg:5000/a/b``."""
    ref = ref.split("@", 1)[0]
    head, _, last = ref.rpartition("/")
    name = last.split(":", 1)[0]
    return f"{head}/{name}" if head else name


def missing_images_message(missing, present, pull, pull_errors=None):
    """Why the images cannot be used, what was left alone, and the tags that do exist."""
    listing = []
    for repo in dict.fromkeys(repository_of(ref) for ref in missing):
        tags = sorted(t.split(":")[-1] for t in present if repository_of(t) == repo)
        listing.append(f"{repo} tags on this host: {', '.join(tags) or 'none'}")
    if pull:
        errors = "; ".join(f"{ref}: {err}" for ref, err in (pull_errors or {}).items())
        why = f"and could not be pulled ({errors or 'pull failed'})"
    else:
        why = "(pulling is off: deploy_image_pull is false)"
    return (
        f"Image {', '.join(missing)} is not on this Docker host {why}. Nothing was changed; "
        "what runs keeps running. Fix: build or load the image on the host (docker load -i "
        "FILE), let it be pulled from a registry (-e deploy_image_pull=true), or choose a "
        f"release that is there; {'; '.join(listing)}."
    )


def set_service_image(text, service, image):
    """The compose file ``text`` with ``services.<service>.image`` set to ``image``.

    Only that one line changes (comments, anchors and every other service stay byte for
    byte), so a switch of release touches nothing else in the project. Raises RolloutError
    when the file has no such service or the service no ``image:`` line.
    """
    lines = text.splitlines(keepends=True)
    in_services = in_service = found = False
    service_indent = key_indent = None
    for number, line in enumerate(lines):
        body = line.strip()
        if not body or body.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0:
            in_services, in_service = body == "services:", False
            continue
        if not in_services:
            continue
        if service_indent is None:
            service_indent = indent
        if indent == service_indent:
            in_service, key_indent = body == f"{service}:", None
            found = found or in_service
            continue
        if not in_service:
            continue
        key_indent = indent if key_indent is None else key_indent
        if indent == key_indent and body.split(":", 1)[0].strip() == "image":
            end = "\n" if line.endswith("\n") else ""
            lines[number] = f"{' ' * indent}image: {image}{end}"
            return "".join(lines)
    where = "has no image line" if found else "is not defined"
    raise RolloutError(
        f"service {service} {where} in the compose file; write it with the deploy role "
        "(playbooks/deploy.yml) first. Nothing was changed."
    )


def created_key(container):
    """Sort key for Docker's RFC 3339 'Created' (the fraction has a variable length)."""
    stamp = container.get("Created", "")
    head, _, frac = stamp.partition(".")
    digits = "".join(ch for ch in frac if ch.isdigit())
    return (head, digits.ljust(9, "0"))


def health_of(container):
    """'healthy', 'unhealthy', 'starting', or 'none' when the image has no health check."""
    return ((container.get("State") or {}).get("Health") or {}).get("Status") or "none"


def state_line(name, info):
    """'NAME STATUS HEALTH' of an inspected container; 'NAME gone' (or the status the caller
    recorded) when there is nothing to inspect."""
    if not info or "State" not in info:
        return f"{name} {(info or {}).get('status', 'gone')}"
    return f"{name} {info['State']['Status']} {health_of(info)}"


def health_test(container):
    """The container's own health test as an argv for docker exec, or None when it has none."""
    test = ((container.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
    if len(test) > 1 and test[0] == "CMD":
        return test[1:]
    if len(test) == 2 and test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", test[1]]
    return None


def plan(containers, desired_hash, replicas, replace_all=False):
    """Which containers stay, which go, how many must start.

    Up to date = running, not unhealthy, created from the desired config; the oldest
    up-to-date containers are kept (they have served longest).
    """
    ordered = sorted(containers, key=created_key)
    names = [c["Name"].lstrip("/") for c in ordered]
    fresh = [
        c["Name"].lstrip("/")
        for c in ordered
        if not replace_all
        and c["State"]["Status"] == "running"
        and health_of(c) != "unhealthy"
        and (c["Config"].get("Labels") or {}).get(HASH_LABEL) == desired_hash
    ]
    keep = fresh[:replicas]
    return {
        "before": names,
        "keep": keep,
        "remove": [name for name in names if name not in keep],
        "missing": max(replicas - len(fresh), 0),
    }


def dns_cache_seconds(resolver_valid):
    """How long nginx may still use a DNS answer received just before the routing changed.

    nginx keeps an answer while `valid >= ngx_time()`, with `valid = ngx_time() + valid=`
    and ngx_time() in whole seconds: an answer received at t.99 s of a second is used until
    the end of second t + valid, i.e. up to valid + 1 s later. A margin of 1 s covers a
    worker's cached clock lagging under load and Docker's DNS taking the new alias. Waiting
    only valid + 0.5 s failed requests: both addresses nginx still had were refusing.
    """
    return float(resolver_valid) + 2.0


def read_text(path):
    with open(path, encoding="ascii") as handle:
        return handle.read()


class Rollout(Routing):
    error = RolloutError
    health_of = staticmethod(health_of)

    def __init__(
        self, run, params, check_mode=False, sleep=time.sleep, clock=time.monotonic, read=None
    ):
        self.run = run
        self.read = read or read_text  # /proc/<pid>/net/tcp of the containers being drained
        self.p = params
        self.check_mode = check_mode
        self.sleep = sleep
        self.clock = clock
        self.docker = params.get("docker_cli") or "docker"
        self.events = []  # (seconds since start, what happened): the operator's timeline
        self.diff = {"before": "", "after": ""}
        self.upstream_diff = {"before": "", "after": ""}
        self.compose_diff = None  # the compose file's image line, when O(image) changes it
        self.image_info = {}  # image, image_id, pulled, compose_changed: returned on failure too
        self.started = clock()

    # ------------------------------------------------------------------ helpers
    def note(self, what):
        self.events.append({"t": round(self.clock() - self.started, 2), "event": what})

    def cmd(self, argv, what, data=None, check=True):
        rc, out, err = self.run(argv, data=data)
        if check and rc != 0:
            detail = (err or out or "").strip().splitlines()
            last = detail[-1] if detail else "no output"
            raise RolloutError(f"{what} failed (exit {rc}): {last}")
        return rc, out, err

    def compose(self, *args, what):
        argv = [self.docker, "compose", "--project-directory", self.p["project_dir"]]
        argv += ["-p", self.p["project_name"], *args]
        return self.cmd(argv, what)[1]

    def containers(self, service, running_only=False):
        argv = [self.docker, "ps", "-q", "--no-trunc"]
        if not running_only:
            argv.append("-a")
        argv += ["--filter", f"label={PROJECT_LABEL}={self.p['project_name']}"]
        argv += ["--filter", f"label={SERVICE_LABEL}={service}"]
        argv += ["--filter", f"label={ONEOFF_LABEL}=False"]
        ids = self.cmd(argv, f"listing the {service} containers")[1].split()
        return self.inspect(ids)

    def inspect(self, ids):
        if not ids:
            return []
        rc, out, _ = self.cmd([self.docker, "inspect", *ids], "docker inspect", check=False)
        # A container removed between ps and inspect makes inspect exit 1 but still print the rest.
        try:
            return json.loads(out or "[]")
        except ValueError as exc:
            raise RolloutError(f"docker inspect returned no JSON (exit {rc})") from exc

    # ------------------------------------------------------------------ desired state
    def desired(self):
        service = self.p["service"]
        out = self.compose("config", "--hash", service, what="docker compose config --hash")
        fields = out.split()
        if len(fields) < 2:
            raise RolloutError(f"service {service} is not defined in {self.p['project_dir']}")
        # --no-interpolate keeps the credentials from .env out of this process's data.
        config = json.loads(
            self.compose(
                "config", "--no-interpolate", "--format", "json", what="docker compose config"
            )
        )
        deploy = (config.get("services", {}).get(service) or {}).get("deploy") or {}
        return fields[-1], int(deploy.get("replicas") or 1)

    # ------------------------------------------------------------------ images
    def local_images(self):
        out = self.cmd(
            [self.docker, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"],
            "listing the images on the host",
        )[1]
        return {line.strip() for line in out.splitlines() if "<none>" not in line and line.strip()}

    def ensure_images(self, images):
        """Present-or-pull: every image is on the host before anything running is touched.

        Returns the images pulled (or that would be, in check mode); raises ImageMissing,
        naming the tags that exist, when one is neither present nor pullable.
        """
        wanted = [image_ref(ref) for ref in images]
        present = self.local_images()
        missing = [ref for ref in wanted if ref not in present]
        pull, errors, pulled = bool(self.p.get("pull")), {}, []
        if missing and pull and self.check_mode:
            self.note(f"would pull {', '.join(missing)}")
            return missing
        if missing and pull:
            for ref in missing:
                rc, out, err = self.run([self.docker, "pull", ref])
                lines = (err or out or "").strip().splitlines()
                if rc == 0:
                    pulled.append(ref)
                else:
                    errors[ref] = lines[-1][:200] if lines else f"exit {rc}"
            if pulled:
                self.note(f"pulled {', '.join(pulled)}")
            present = self.local_images()
            missing = [ref for ref in wanted if ref not in present]
        if missing:
            raise ImageMissing(missing_images_message(missing, present, pull, errors), missing)
        return pulled

    def image_id(self, ref):
        """The local image ID of ``ref`` ('' when it is not there, e.g. a pull in check mode)."""
        rc, out, _ = self.run([self.docker, "image", "inspect", "--format", "{{.Id}}", ref])
        return out.strip() if rc == 0 else ""

    def compose_path(self):
        return self.p.get("compose_file") or os.path.join(self.p["project_dir"], "compose.yaml")

    def switch_image(self, image):
        """Name ``image`` for the service in the compose file; True when the file changes."""
        path = self.compose_path()
        try:
            with open(path, encoding="utf-8") as handle:
                current = handle.read()
        except FileNotFoundError:
            if self.check_mode:  # a first deploy in check mode: the file is not written yet
                return True
            raise RolloutError(
                f"compose file {path} does not exist: deploy the stack first "
                "(playbooks/deploy.yml). Nothing was changed."
            ) from None
        text = set_service_image(current, self.p["service"], image)
        if text == current:
            return False
        self.compose_diff = {
            "before": current,
            "after": text,
            "before_header": path,
            "after_header": path,
        }
        if not self.check_mode:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            write_bytes_atomic(path, text.encode("utf-8"), mode=mode)
        self.note(f"compose file names {image}")
        return True

    def check_running_image(self, image):
        """Re-read: every running container of the service runs ``image``."""
        wrong = [
            f"{c['Name'].lstrip('/')} runs {c['Config'].get('Image')}"
            for c in self.containers(self.p["service"], running_only=True)
            if image_ref(c["Config"].get("Image") or "") != image_ref(image)
        ]
        if wrong:
            raise RolloutError(
                f"after the rollout not every {self.p['service']} container runs {image}: "
                f"{'; '.join(wrong)}. Check with docker compose -p {self.p['project_name']} ps "
                "and run the rollback or deploy again."
            )

    def status(self):
        """Read-only: the service's containers (oldest first), and which of them run."""
        listing = [
            {
                "name": c["Name"].lstrip("/"),
                "image": c["Config"].get("Image") or "",
                "status": c["State"]["Status"],
                "health": health_of(c),
            }
            for c in sorted(self.containers(self.p["service"]), key=created_key)
        ]
        running = [c for c in listing if c["status"] == "running"]
        return {"changed": False, "containers": listing, "running": running}

    def images(self):
        pulled = self.ensure_images(self.p["images"])
        return {"changed": bool(pulled), "pulled": pulled, "images": self.p["images"]}

    # ------------------------------------------------------------------ rollout steps
    def start_missing(self, before, count):
        service = self.p["service"]
        self.compose(
            "up", "--detach", "--no-deps", "--no-recreate", "--no-build", "--pull", "never",
            "--scale", f"{service}={len(before) + count}", service,
            what=f"starting {count} new {service} container(s)",
        )  # fmt: skip
        names = [c["Name"].lstrip("/") for c in self.containers(service)]
        new = sorted(name for name in names if name not in before)
        self.note(f"started {', '.join(new) or 'nothing'}")
        return new

    def passes_health_test(self, container):
        """Run the container's own health test now (docker exec); True when it passes.

        Docker runs the test first one health-check interval after the start; running the
        same test as soon as the container runs lets a ready container take traffic then.
        A test that fails changes nothing: Docker's own checks still decide unhealthy.
        """
        argv = health_test(container)
        if argv is None:
            return False
        timeout = (container["Config"].get("Healthcheck") or {}).get("Timeout") or 0
        timeout = timeout / 1e9 if timeout else 30.0  # Docker states it in nanoseconds
        name = container["Name"].lstrip("/")
        rc, _, _ = self.run([self.docker, "exec", name, *argv], timeout=timeout)
        return rc == 0

    def wait_healthy(self, names):
        """Poll until every container is healthy or has failed; returns the failed ones' states."""
        deadline = self.clock() + float(self.p["health_timeout"])
        passed = set()  # their own health test passed when the module ran it
        while True:
            states = {c["Name"].lstrip("/"): c for c in self.inspect(names)}
            pending = [
                n
                for n in names
                if n in states
                and n not in passed
                and states[n]["State"]["Status"] == "running"
                and health_of(states[n]) == "starting"
            ]
            passed.update(n for n in pending if self.passes_health_test(states[n]))
            pending = [n for n in pending if n not in passed]
            if not pending or self.clock() >= deadline:
                break
            self.sleep(float(self.p["poll_interval"]))
        sick = {}
        for name in names:
            info = states.get(name)
            health = "healthy" if name in passed else health_of(info or {})
            if info is None:
                sick[name] = {"status": "gone"}
            elif info["State"]["Status"] != "running" or health not in ("healthy", "none"):
                sick[name] = info
        if not sick:
            self.note(f"healthy: {', '.join(names)}")
        return sick

    def abort(self, new, sick, before):
        """New containers failed: collect the evidence, remove them, explain."""
        parts, oom, health_out, last_log = [], False, "none", "none"
        for name in new:
            info = sick.get(name)
            parts.append(f"{name} healthy" if info is None else state_line(name, info))
            if info is None or "State" not in info:
                continue
            state = info["State"]
            oom = oom or bool(state.get("OOMKilled"))
            log = (state.get("Health") or {}).get("Log") or []
            if log:
                health_out = (log[-1].get("Output") or "").strip()[:200] or health_out
            _, out, err = self.run([self.docker, "logs", "--tail", "5", name])
            lines = (err or out or "").strip().splitlines()
            if lines:
                last_log = lines[-1][:300]
        if new:
            self.run([self.docker, "rm", "--force", *new])
        self.note(f"removed the failed container(s) {', '.join(new)}")
        message = (
            f"Rollout of {self.p['service']} in {self.p['project_name']} stopped: the new "
            f"container(s) {', '.join(new)} did not become healthy within "
            f"{self.p['health_timeout']} s ({'; '.join(parts)}). They were removed; the old "
            f"containers {', '.join(before) or 'none'} kept serving."
        )
        if oom:
            message += (
                " A container was killed for lack of memory (OOMKilled): raise its memory limit."
            )
        message += f" Last health check output: {health_out}. Last log line: {last_log}"
        raise RolloutError(message)

    def soak(self, new):
        """Keep the old containers until the new ones stayed healthy soak_seconds."""
        seconds = float(self.p.get("soak_seconds") or 0)
        if not new or seconds <= 0:
            return
        deadline = self.clock() + seconds
        while True:
            states = {c["Name"].lstrip("/"): c for c in self.inspect(new)}
            sick = [
                state_line(n, states.get(n))
                for n in new
                if n not in states
                or states[n]["State"]["Status"] != "running"
                or health_of(states[n]) == "unhealthy"
            ]  # fmt: skip
            if sick:
                self.drain(self.gate([n for n in new if n in states]))
                self.run([self.docker, "rm", "--force", *new])
                self.note(f"removed {', '.join(new)}: not healthy during the soak")
                raise RolloutError(
                    f"Rollout of {self.p['service']} stopped: the new container(s) did not stay "
                    f"healthy for the soak of {seconds:g} s ({'; '.join(sick)}). They were "
                    "removed; the old containers kept serving and were not touched."
                )
            if self.clock() >= deadline:
                break
            self.sleep(min(1.0, max(deadline - self.clock(), 0.01)))
        self.note(f"soak of {seconds:g} s passed: {', '.join(new)} stayed healthy")

    def retire(self, remove, wait_dns):
        """Refuse new connections to the old containers, drain them, stop and remove them."""
        gated = {}
        try:
            if wait_dns:
                # Until nginx's cached DNS answer (the old containers only) has expired, the
                # old containers may be all it knows: refusing them then fails requests.
                self.sleep(dns_cache_seconds(self.p["resolver_valid"]))
            gated = self.gate(remove)
            if gated:
                self.drain(gated)
            # One `docker stop` stops them in parallel (SIGTERM: in-flight requests finish).
            grace = str(self.stop_grace())
            self.cmd([self.docker, "stop", "--time", grace, *remove], "stopping the old containers")
            gated = {}
            self.cmd([self.docker, "rm", *remove], "removing the old containers")
            self.note(f"stopped and removed {', '.join(remove)}")
        finally:
            # A failure before the stop: the old containers take new connections again.
            self.ungate(gated)

    # ------------------------------------------------------------------ entry points
    def rollout(self):
        image = self.p.get("image")
        image_result = self.image_info
        if image:
            # The switch of release: the image first (nothing touched when it is missing),
            # then the compose file's one image line, then the rollout to it.
            pulled = self.ensure_images([image])
            image_result.update(image=image, image_id=self.image_id(image), pulled=pulled)
            image_result["compose_changed"] = self.switch_image(image)
            if self.check_mode and not os.path.exists(self.compose_path()):
                return dict(image_result, service=self.p["service"], changed=True, started=[])
        desired_hash, replicas = self.desired()
        if self.check_mode and image_result.get("compose_changed"):
            desired_hash = None  # the file on disk still names the old image: all would go
        containers = self.containers(self.p["service"])
        if image and not containers:
            # A first deploy: nothing runs next to which to roll out; compose up starts it.
            return dict(
                image_result,
                service=self.p["service"],
                replicas=replicas,
                desired_hash=desired_hash,
                before=[],
                kept=[],
                started=[],
                removed=[],
                changed=image_result["compose_changed"],
            )
        steps = plan(containers, desired_hash, replicas, self.p["replace_all"])
        before, keep, remove, missing = (steps[k] for k in ("before", "keep", "remove", "missing"))
        result = {
            "service": self.p["service"],
            "replicas": replicas,
            "desired_hash": desired_hash,
            "before": before,
            "kept": keep,
            "started": [],
            "removed": remove,
            "changed": bool(missing or remove or image_result.get("compose_changed")),
            **image_result,
        }
        self.diff = {
            "before": "".join(f"{n}\n" for n in before),
            "after": "".join(f"{n}\n" for n in keep)
            + "".join(f"(new {self.p['service']} container {i + 1})\n" for i in range(missing)),
        }
        if self.check_mode or not (missing or remove):
            return result
        new = []
        if missing:
            try:
                new = self.start_missing(before, missing)
            except RolloutError as exc:
                # compose may have created some containers before it failed: remove them.
                partial = [
                    c["Name"].lstrip("/")
                    for c in self.containers(self.p["service"])
                    if c["Name"].lstrip("/") not in before
                ]
                if partial:
                    self.run([self.docker, "rm", "--force", *partial])
                raise RolloutError(
                    f"{exc}. Removed: {', '.join(partial) or 'nothing'}; the old containers "
                    f"{', '.join(before) or 'none'} kept serving."
                ) from exc
            result["started"] = new
            sick = self.wait_healthy(new)
            if sick:
                self.abort(new, sick, before)
        # The health gate passed: the new containers (and any kept one not yet routed, e.g.
        # created by compose) get the alias nginx resolves; no reload.
        attached = self.attach(self.inspect(keep + new))
        self.soak(new)
        if remove:
            self.retire(remove, wait_dns=bool(attached))
        if image:
            self.check_running_image(image)
        return result

    def restart(self):
        """Restart the named containers of the service in place, one after another, without
        sending them a request while they stop and start (the restart role's unhealthy mode).

        A running one that nginx routes to refuses new connections (the others take them) and
        drains first; then it is stopped, loses the route alias (a restarted container would
        keep it and be resolved again while it starts), is started and gets the alias back
        once healthy. One that does not become healthy stays out of the routing.
        """
        service, names = self.p["service"], list(self.p.get("containers") or [])
        found = {c["Name"].lstrip("/"): c for c in self.inspect(names)} if names else {}
        labels = {n: c["Config"].get("Labels") or {} for n, c in found.items()}
        strangers = [n for n in names if labels.get(n, {}).get(SERVICE_LABEL) != service]
        if strangers:
            raise RolloutError(
                f"{', '.join(strangers)}: not containers of the service {service} of "
                f"{self.p['project_name']}; nothing was restarted."
            )
        result = {"service": service, "restarted": names, "changed": bool(names)}
        self.diff = {
            "before": "".join(
                f"{n} {found[n]['State']['Status']} {health_of(found[n])}\n" for n in names
            ),
            "after": "".join(f"{n} running healthy\n" for n in names),
        }
        if self.check_mode or not names:
            return result
        sick = {}
        for name in names:
            info = found[name]
            if info["State"]["Status"] in ("running", "restarting", "paused"):
                if info["State"]["Status"] == "running" and self.routed(info):
                    self.drain(self.gate([name]))
                grace = str(self.stop_grace())
                self.cmd([self.docker, "stop", "--time", grace, name], f"stopping {name}")
            if self.routed(info):
                self.unroute(info)
            self.cmd([self.docker, "start", name], f"starting {name}")
            failed = self.wait_healthy([name])
            if failed:
                sick.update(failed)
                self.note(f"{name} did not become healthy: left out of nginx's routing")
                continue
            self.attach(self.inspect([name]))
        if sick:
            states = "; ".join(state_line(n, s) for n, s in sick.items())
            raise RolloutError(
                f"Restarted {', '.join(sick)} of {service} in place, but not healthy within "
                f"{self.p['health_timeout']} s ({states}). nginx does not route to "
                f"{'it' if len(sick) == 1 else 'them'}; the other replicas serve. Read "
                "`docker logs NAME`; a broken release: playbooks/rollback.yml."
            )
        return result

    def upstream(self):
        changed = self.write_upstream()
        routed = self.adopt()
        reloaded = self.reload_nginx() if changed else False
        self.diff = self.upstream_diff
        return {"changed": changed or bool(routed), "routed": routed, "nginx_reloaded": reloaded}

    def route(self):
        routed = self.adopt()
        return {"changed": bool(routed), "routed": routed}

    def reload(self):
        routed = self.adopt()
        reloaded = self.reload_nginx() and not self.check_mode
        return {"changed": bool(reloaded or routed), "routed": routed, "nginx_reloaded": reloaded}
