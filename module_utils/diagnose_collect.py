"""Collection of the facts a diagnosis of the FastAPI stack evaluates (read-only).

Used by library/stack_diagnose.py; module_utils/diagnose_checks.py evaluates the facts.
Everything is read: the docker CLI (ps, inspect, logs, images, compose config, exec of
pg_isready / python / curl / nginx -t inside the containers), /proc, os.statvfs, files of
the project directory and HTTP GETs to the published ports. Nothing is written, started or
stopped. The runner, the HTTP client, the clock and sleep are injected so the parsing is
unit-tested without Docker:

    run(argv, timeout) -> (rc, stdout, stderr)
    http_get(url, timeout, headers=None) -> {"status": int|None, "body": str, "ms": float,
                                             "error": str}

The kernel log, the daemon's journal, promtool, Prometheus's alerts and Grafana are read by
module_utils/diagnose_sources.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.diagnose_parse import (  # noqa: F401 (parsers re-exported)
    PROJECT_LABEL,
    SERVICE_LABEL,
    container_facts,
    finish_access,
    listening_ports,
    parse_env_keys,
    parse_meminfo,
    parse_probes,
    parse_targets,
    parse_textfile_metrics,
    parse_time,
    parse_upstream,
    parse_vector_sum,
    published_ports,
    scan_access_log,
    scan_logs,
    window_start,
)
from ansible.module_utils.diagnose_sources import (
    docker_journal,
    grafana,
    kernel_log,
    prometheus_alerts,
    promtool_check,
    systemd_booted,
)
from ansible.module_utils.release_ledger import LedgerError, read_ledger

# Runs inside a backend container with the application's own environment: resolve DB_HOST,
# log in as the application does, read connection counts and slow or blocked queries.
LOGIN_SCRIPT = r"""
import json, os, socket, sys, time
long_s, timeout = int(sys.argv[1]), int(sys.argv[2])
env = os.environ.get
out = {"host": env("DB_HOST", "db"), "user": env("DB_USER", "app"),
       "database": env("DB_NAME", "app")}
try:
    out["resolved"] = socket.gethostbyname(out["host"])
except OSError as exc:
    out["resolve_error"] = "%s: %s" % (type(exc).__name__, exc)
try:
    import psycopg2
    password = env("DB_PASSWORD", "")
    if env("DB_PASSWORD_FILE"):
        with open(env("DB_PASSWORD_FILE")) as fh:
            password = fh.read().rstrip("\r\n")
    start = time.monotonic()
    conn = psycopg2.connect(host=out["host"], port=int(env("DB_PORT") or 5432),
                            dbname=out["database"], user=out["user"], password=password,
                            connect_timeout=timeout, application_name="opsauto-diagnose",
                            options="-c statement_timeout=5000 -c default_transaction_read_only=on")
    out["login_ms"] = round((time.monotonic() - start) * 1000, 1)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT current_setting('max_connections')::int,"
                " count(*) FILTER (WHERE backend_type = 'client backend'),"
                " pg_database_size(current_database()) FROM pg_stat_activity")
    out["max_connections"], out["connections"], out["size"] = cur.fetchone()
    cur.execute("SELECT pid, extract(epoch FROM now() - query_start)::int, state,"
                " left(regexp_replace(query, '[[:space:]]+', ' ', 'g'), 120) FROM pg_stat_activity"
                " WHERE state <> 'idle' AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'"
                " AND now() - query_start > make_interval(secs => %s) ORDER BY 2 DESC LIMIT 5",
                (long_s,))
    out["long_queries"] = [dict(zip(("pid", "seconds", "state", "query"), r))
                           for r in cur.fetchall()]
    cur.execute("SELECT pid, extract(epoch FROM now() - query_start)::int,"
                " pg_blocking_pids(pid)::text,"
                " left(regexp_replace(query, '[[:space:]]+', ' ', 'g'), 120) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' ORDER BY 2 DESC LIMIT 5")
    out["lock_waits"] = [dict(zip(("pid", "seconds", "blocked_by", "query"), r))
                         for r in cur.fetchall()]
    conn.close()
except Exception as exc:
    text = str(exc).strip().splitlines()
    out["error"] = "%s: %s" % (type(exc).__name__, text[0] if text else "")
print(json.dumps(out))
"""

# Runs inside the nginx container: GET /health of each replica, the way nginx reaches it.
PROBE_SCRIPT = (
    'for u in "$@"; do '
    "r=$(curl -s -o /dev/null -m 3 -w '%{http_code} %{time_total}' \"$u\" 2>/dev/null); "
    'e=""; case "$r" in 000*|"") e=$(curl -sS -o /dev/null -m 3 "$u" 2>&1 | head -n 1);; esac; '
    'echo "$u|$r|$e"; done'
)


# --------------------------------------------------------------------------- real I/O


def subprocess_run(argv, timeout):
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return 124, "", f"timed out after {timeout} s: {' '.join(argv[:4])}"
    except OSError as exc:
        return 127, "", f"{argv[0]}: {exc.strerror}"
    return proc.returncode, proc.stdout, proc.stderr


def urllib_get(url, timeout, headers=None):
    start = time.monotonic()
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body = resp.read(65536).decode("utf-8", "replace")
            status = resp.status
        error = ""
    except urllib.error.HTTPError as exc:
        status, body, error = exc.code, exc.read(2048).decode("utf-8", "replace"), ""
    except (OSError, ValueError) as exc:
        status, body, error = None, "", f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    return {"status": status, "body": body, "ms": round((time.monotonic() - start) * 1000, 1),
            "error": error}  # fmt: skip


def statvfs_disk(label, path):
    try:
        st = os.statvfs(path)
    except OSError:
        return {"label": label, "path": path, "exists": False}
    return {
        "label": label,
        "path": path,
        "exists": True,
        "total": st.f_blocks * st.f_frsize,
        "free": st.f_bavail * st.f_frsize,
        "inodes_total": st.f_files,
        "inodes_free": st.f_favail,
    }


def read_text(path):
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


# --------------------------------------------------------------------------- collector


class Collector:
    """Reads everything once; ``collect()`` returns the facts dict the checks evaluate."""

    def __init__(self, p, run=subprocess_run, http_get=urllib_get, clock=time.time,
                 sleep=time.sleep, read=read_text, disk=statvfs_disk,
                 booted=systemd_booted):  # fmt: skip
        self.p = p
        self.booted = booted
        self.run = run
        self.http_get = http_get
        self.clock = clock
        self.sleep = sleep
        self.read = read
        self.disk = disk
        self.docker = p.get("docker_cli") or "docker"
        self.timeout = p.get("command_timeout", 10)
        self.services = p["services"]

    def docker_cmd(self, *args, timeout=None):
        return self.run([self.docker, *args], timeout or self.timeout)

    def compose(self, *args):
        return self.docker_cmd(
            "compose", "--project-directory", self.p["project_dir"], "-p", self.p["project_name"],
            *args,
        )  # fmt: skip

    # ---------------------------------------------------------------- pieces
    def containers(self, window_from):
        rc, out, err = self.docker_cmd(
            "ps", "-aq", "--no-trunc", "--filter", f"label={PROJECT_LABEL}={self.p['project_name']}"
        )
        ids = out.split()
        if rc != 0 or not ids:
            return []
        rc, out, err = self.docker_cmd("inspect", *ids)
        try:
            inspected = json.loads(out or "[]")
        except ValueError:
            return []
        facts = [container_facts(c, window_from) for c in inspected]
        return sorted(facts, key=lambda c: (c["service"], c["name"]))

    def restart_counts(self, containers):
        if not containers:
            return {}
        rc, out, _ = self.docker_cmd(
            "inspect", "--format", "{{.Name}} {{.RestartCount}}", *(c["name"] for c in containers)
        )
        counts = {}
        for line in out.splitlines():
            name, _, count = line.strip().lstrip("/").partition(" ")
            if count.isdigit():
                counts[name] = int(count)
        return counts

    def exit_codes(self, names, window_from):
        """The last exit code of each named container from its `die` events in the window.

        A container that restarted and runs again reads ExitCode 0 in `docker inspect`, so
        the code it died with is only in the daemon's events.
        """
        if not names:
            return {}
        filters = [x for name in names for x in ("--filter", f"container={name}")]
        rc, out, _ = self.docker_cmd(
            "events", "--since", str(int(window_from)), "--until", str(int(time.time()) + 1),
            "--filter", "event=die", *filters,
            "--format", "{{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}",
        )  # fmt: skip
        codes = {}
        for line in out.splitlines() if rc == 0 else []:
            name, _, code = line.strip().rpartition(" ")
            if code.lstrip("-").isdigit():
                codes[name] = int(code)
        return codes

    def first_running(self, containers, service):
        return next(
            (c for c in containers if c["service"] == service and c["state"] == "running"), None
        )

    def db_ready(self, containers):
        db = self.first_running(containers, self.services["db"])
        if db is None:
            return None
        rc, out, err = self.docker_cmd(
            "exec", db["name"], "pg_isready", "-h", "127.0.0.1", "-U", self.p["db_user"],
            "-d", self.p["db_name"], "-t", "3",
        )  # fmt: skip
        return {"container": db["name"], "rc": rc, "output": (out + err).strip()[:240]}

    def db_login(self, containers):
        backend = self.first_running(containers, self.services["backend"])
        if backend is None:
            return None
        rc, out, err = self.docker_cmd(
            "exec", backend["name"], "python3", "-c", LOGIN_SCRIPT,
            str(self.p["thresholds"]["long_query_seconds"]), "3",
        )  # fmt: skip
        try:
            facts = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            last = (err or out).strip().splitlines()
            facts = {
                "host": "?",
                "user": self.p["db_user"],
                "database": self.p["db_name"],
                "error": f"docker exec exit {rc}: {last[-1] if last else 'no output'}",
            }
        facts["container"] = backend["name"]
        return facts

    def replica_probes(self, containers):
        nginx = self.first_running(containers, self.services["nginx"])
        if nginx is None:
            return None
        urls = [
            f"http://{c['name']}:{self.p['backend_port']}{self.p.get('health_path', '/health')}"
            for c in containers
            if c["service"] == self.services["backend"] and c["state"] == "running"
        ]
        if not urls:
            return []
        rc, out, err = self.docker_cmd("exec", nginx["name"], "sh", "-c", PROBE_SCRIPT, "sh", *urls)
        probes = parse_probes(out)
        if not probes:
            probes = [{"url": u, "status": "000", "detail": err.strip()[:200]} for u in urls]
        return probes

    def metrics_probes(self, containers):
        """GET /metrics of each running backend replica from nginx's container (as scraped)."""
        nginx = self.first_running(containers, self.services["nginx"])
        urls = [
            f"http://{c['name']}:{self.p['backend_port']}/metrics"
            for c in containers
            if c["service"] == self.services["backend"] and c["state"] == "running"
        ]
        if nginx is None or not urls:
            return None
        rc, out, err = self.docker_cmd("exec", nginx["name"], "sh", "-c", PROBE_SCRIPT, "sh", *urls)
        probes = parse_probes(out)
        if not probes:
            probes = [{"url": u, "status": "000", "detail": err.strip()[:200]} for u in urls]
        return probes

    def backup_metrics(self):
        """The backup role's node_exporter textfile metrics (success and failure files)."""
        directory = self.p.get("backup_metrics_dir")
        if not directory:
            return None
        facts = {"dir": directory, "values": {}}
        for name in ("opsauto_backup.prom", "opsauto_backup_failure.prom"):
            try:
                facts["values"].update(
                    parse_textfile_metrics(self.read(os.path.join(directory, name)))
                )
                facts.setdefault("files", []).append(name)
            except OSError:
                continue
        return facts

    def nginx_test(self, containers):
        nginx = self.first_running(containers, self.services["nginx"])
        if nginx is None:
            return None
        argv = ["exec", nginx["name"], "nginx", "-t"]
        cmd = nginx["cmd"]
        if "-c" in cmd and cmd.index("-c") + 1 < len(cmd):
            argv += ["-c", cmd[cmd.index("-c") + 1]]
        rc, out, err = self.docker_cmd(*argv)
        return {"rc": rc, "output": (out + err).strip()[-600:]}

    def logs(self, containers, since):
        matches, access = {}, {}
        for c in containers:
            rc, out, err = self.docker_cmd(
                "logs", "--since", since, "--timestamps", "--tail", str(self.p["log_max_lines"]),
                c["name"],
            )  # fmt: skip
            text = out + "\n" + err
            scan_logs(c["name"], text, matches)
            if c["service"] == self.services["nginx"]:
                scan_access_log(out, access)
        return {
            "since": since,
            "matches": {cid: list(hits.values()) for cid, hits in matches.items()},
            "access": finish_access(access),
        }

    def compose_config(self):
        rc, out, err = self.compose("config", "-q")
        checked = {"rc": rc, "output": (err or out).strip()[-400:]}
        rc, out, _ = self.compose("config", "--no-interpolate", "--format", "json")
        wanted = None
        if rc == 0:
            try:
                services = json.loads(out).get("services") or {}
                wanted = {
                    name: int(((spec.get("deploy") or {}).get("replicas")) or 1)
                    for name, spec in services.items()
                }
            except (ValueError, TypeError, AttributeError):
                wanted = None
        return checked, wanted

    def env(self):
        try:
            return parse_env_keys(self.read(os.path.join(self.p["project_dir"], ".env"))), ""
        except OSError as exc:
            return None, f"{exc.strerror or exc}"

    def prometheus(self, window_seconds=900):
        base = f"http://{self.p['prometheus_bind']}:{self.p['prometheus_port']}"
        answer = self.http_get(base + "/api/v1/targets?state=active", 5)
        facts = {"url": base}
        if answer["status"] != 200:
            facts["error"] = answer["error"] or f"HTTP {answer['status']}"
            return facts
        try:
            facts["targets"] = parse_targets(answer["body"])
        except ValueError as exc:
            facts["error"] = f"targets API returned no JSON: {exc}"
            return facts
        facts["http_5xx"] = self.prometheus_5xx(base, max(10, int(window_seconds)))
        return facts

    def prometheus_5xx(self, base, seconds):
        """The backend's requests and 5xx answers in the window, from Prometheus's own series."""
        job, window = self.services["backend"], f"[{seconds}s]"
        queries = {
            "requests": f'sum(increase(http_requests_total{{job="{job}"}}{window}))',
            "errors": f'sum(increase(http_requests_total{{job="{job}",status=~"5.."}}{window}))',
        }
        out = {"window_seconds": seconds, "query": queries["errors"]}
        for key, query in queries.items():
            answer = self.http_get(base + "/api/v1/query?query=" + urllib.parse.quote(query), 5)
            try:
                if answer["status"] != 200:
                    raise ValueError(answer["error"] or f"HTTP {answer['status']}")
                out[key] = round(parse_vector_sum(answer["body"]), 1)
            except (ValueError, KeyError, TypeError) as exc:
                return {**out, "error": f"{query}: {exc}"}
        return out

    def ledger(self):
        path = self.p["ledger_path"]
        try:
            return {"path": path, "entries": read_ledger(path)}
        except LedgerError as exc:
            return {"path": path, "entries": [], "error": str(exc)}

    def images(self):
        rc, out, _ = self.docker_cmd("images", "--format", "{{.Repository}}:{{.Tag}}")
        return {line.strip(): True for line in out.splitlines() if line.strip()}

    def upstream(self):
        path = self.p["upstream_path"]
        try:
            text = self.read(path)
        except OSError:
            return None
        return {"path": path, "servers": parse_upstream(text)}

    def host(self, docker_root):
        try:
            load = [float(x) for x in self.read("/proc/loadavg").split()[:3]]
        except (OSError, ValueError):
            load = [0.0, 0.0, 0.0]
        try:
            mem = parse_meminfo(self.read("/proc/meminfo"))
        except OSError:
            mem = parse_meminfo("")
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        texts = []
        for path in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                texts.append(self.read(path))
            except OSError:
                continue
        disks = [("docker root", docker_root)] if docker_root else []
        disks += [("project dir", self.p["project_dir"]), ("backup dir", self.p["backup_dir"])]
        return {"load": load, "cpus": cpus, **mem, "listening": sorted(listening_ports(*texts)),
                "disks": [self.disk(label, path) for label, path in disks]}  # fmt: skip

    def _health_url(self):
        """The application's health endpoint through nginx (stack_health_path)."""
        path = self.p.get("health_path", "/health")
        return f"http://{self.p['http_bind']}:{self.p['http_port']}{path}"

    def http(self):
        url = self._health_url()
        answer = self.http_get(url, 5)
        facts = {"url": url, "status": answer["status"], "ms": answer["ms"],
                 "error": answer["error"], "body": answer["body"][:200]}  # fmt: skip
        try:
            facts["database"] = json.loads(answer["body"]).get("database", "?")
        except (ValueError, AttributeError):
            facts["database"] = "?"
        return facts

    def latency(self):
        url = self._health_url()
        ms, errors = [], 0
        for _ in range(self.p["latency_probes"]):
            answer = self.http_get(url, 5)
            if answer["status"] == 200:
                ms.append(round(answer["ms"]))
            else:
                errors += 1
        return {"ms": ms, "errors": errors}

    # ---------------------------------------------------------------- all
    def collect(self):
        started = self.clock()
        since = self.p["since"]
        window_from = window_start(since, started)
        facts = {
            "project": self.p["project_name"],
            "project_dir": self.p["project_dir"],
            "services": self.services,
            "backend_port": self.p["backend_port"],
            "route_alias": self.p.get("route_alias") or "",
            "env_required": self.p["env_required"],
            "since": since,
            "restart_sample_seconds": self.p["restart_sample_seconds"],
            "backup_alert": self.p.get("backup_alert", "BackupMissing"),
            "alert_fail_severities": self.p.get("alert_fail_severities") or ["critical"],
            "docker_journal_ignore": self.p.get("docker_journal_ignore") or [],
            # The control node's clock when it sent the task, against this host's.
            "clock": {"controller": self.p.get("controller_time"), "host": started},
        }
        rc, out, err = self.docker_cmd(
            "info", "--format", "{{.ServerVersion}} {{.DockerRootDir}}", timeout=15
        )
        facts["docker_ms"] = round((self.clock() - started) * 1000)
        version, _, root = out.strip().partition(" ")
        if rc != 0 or not version:
            facts["docker_error"] = (err or out).strip()[:300] or f"docker info exit {rc}"
        facts["docker_version"] = version
        containers = self.containers(window_from) if "docker_error" not in facts else []
        facts["containers"] = containers
        first_read = self.clock()
        # Probes through nginx first and alone, so the other reads do not slow them down.
        facts["http"] = self.http()
        # Latency of a failing /health says nothing more (and a hanging one costs seconds).
        facts["latency"] = self.latency() if facts["http"]["status"] == 200 else {}
        jobs = {
            "db_ready": lambda: self.db_ready(containers),
            "db_login": lambda: self.db_login(containers),
            "replica_probes": lambda: self.replica_probes(containers),
            "metrics_probes": lambda: self.metrics_probes(containers),
            "nginx_test": lambda: self.nginx_test(containers),
            "logs": lambda: self.logs(containers, since),
            "compose": self.compose_config,
            "prometheus": lambda: self.prometheus(started - window_from),
            "images_present": self.images,
            "kernel_oom": lambda: kernel_log(self.run, window_from, self.booted()),
            "docker_journal": lambda: docker_journal(self.run, window_from, self.booted()),
            "promtool": lambda: promtool_check(
                self.docker_cmd, self.first_running(containers, self.services["prometheus"])
            ),
            "prometheus_alerts": lambda: prometheus_alerts(
                self.http_get, f"http://{self.p['prometheus_bind']}:{self.p['prometheus_port']}"
            ),
            "grafana": lambda: grafana(
                self.http_get, self.p.get("grafana_url") or "", self.p.get("grafana_token") or ""
            ),
        }
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {key: pool.submit(job) for key, job in jobs.items()}
            # Plain file and /proc reads meanwhile.
            facts["env_keys"], facts["env_error"] = self.env()
            facts["ledger"] = self.ledger()
            facts["upstream"] = self.upstream()
            facts["host"] = self.host(root)
            facts["backup_metrics"] = self.backup_metrics()
            for key, future in futures.items():
                facts[key] = future.result()
        facts["compose_config"], facts["wanted_replicas"] = facts.pop("compose")
        # Restart loops: read the restart counts again after the sample interval.
        remaining = self.p["restart_sample_seconds"] - (self.clock() - first_read)
        if containers and remaining > 0:
            self.sleep(remaining)
        later = self.restart_counts(containers)
        for c in containers:
            c["restart_count_later"] = later.get(c["name"], c["restart_count"])
            c.pop("cmd", None)
        restarted = [
            c["name"]
            for c in containers
            if c["state"] == "restarting" or c["restart_count_later"] > c["restart_count"]
        ]
        by_name = {c["name"]: c for c in containers}
        for name, code in self.exit_codes(restarted, window_from).items():
            if name in by_name:
                by_name[name]["last_exit_code"] = code
        facts["collect_seconds"] = round(self.clock() - started, 2)
        return facts
