"""The deploy and cut-over steps of the AWS runbooks on a real Docker host (issue 13).

The AWS side runs on moto's server (as in test_aws_runbooks.py); the Docker host is this
machine's engine, with a compose project of its own per test playing the application server
(the DR host, the replacement EC2 instance). The seams, and why:

- moto's RDS instances have a DNS name but no PostgreSQL behind it. Each test runs a real
  PostgreSQL container (the stack's image, the inventory's user and password, as an RDS
  restore keeps the master credentials) on a Docker network of its own, under the restored
  instance's endpoint name as a network alias, and joins the backend to that network through
  compose.override.yaml, written before the run. In a VPC, the RDS endpoint resolves to the
  instance the same way. The runbooks merge their DB_HOST and DB_PORT into that file; the
  test never sets DB_HOST itself.
- moto's EC2 instances have no SSH: the host the runbook adds to the inventory (moto's
  address of the launched instance) is reached with ``ansible_connection=local``, an extra
  variable of the run. Everything the deploy play does then happens on this Docker engine.

What is asserted is real: the containers the runbooks left running (image, DB_HOST), /health
and /items through nginx answered from the restored database, the step record, and reruns that
change nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.conftest import compose_down, free_port, moto_client, run, run_playbook, unique_name
from tests.integration import test_aws_runbooks as aws
from tests.integration.test_aws_runbooks import DR, SOURCE, dr_vars, play, record_values

# The moto world (instance, snapshot, DR network, key, template, zone) and the fake
# credentials of the AWS runbook tests, used here by name.
world = aws.world
fake_credentials = aws.fake_credentials

PASSWORD = "integration-password-13"
PG_IMAGE = "fastapi-monolith/postgres:15"
RESTORED_ITEM = "restored-from-snapshot"
# A machine's own engine plays the EC2 host: no SSH, the venv's Python with the Docker SDK.
LOCAL_HOST = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}


def rds_endpoint(instance: str, region: str) -> str:
    """The DNS name moto gives a DB instance (as RDS does: <id>.<hash>.<region>.rds...)."""
    return f"{instance}.aaaaaaaaaa.{region}.rds.amazonaws.com"


def docker(*argv: str, check: bool = True) -> str:
    proc = run(["docker", *argv], timeout=300)
    assert proc.returncode == 0 or not check, f"docker {' '.join(argv)}: {proc.stderr}"
    return proc.stdout.strip()


def psql(container: str, sql: str, db: str = "appdb") -> str:
    return docker("exec", container, "psql", "-U", "app", "-d", db, "-v", "ON_ERROR_STOP=1",
                  "-tAc", sql)  # fmt: skip


@pytest.fixture
def restored_instance(docker_ready):
    """A PostgreSQL container answering to an RDS endpoint name on its own network.

    Returns a function (endpoint) -> network name; everything is removed afterwards.
    """
    made = []

    def start(endpoint: str) -> str:
        name = unique_name("opsauto-it-rds")
        docker("network", "create", name)
        made.append(name)
        docker("run", "-d", "--name", name, "--network", name, "--network-alias", endpoint,
               "-e", "POSTGRES_DB=appdb", "-e", "POSTGRES_USER=app",
               "-e", f"POSTGRES_PASSWORD={PASSWORD}", PG_IMAGE)  # fmt: skip
        ready = subprocess.run(
            ["bash", "-c", f"for i in $(seq 60); do docker exec {name} pg_isready -U app -d appdb"
             " -h 127.0.0.1 && exit 0; sleep 1; done; exit 1"],
            capture_output=True, check=False, timeout=120,
        )  # fmt: skip
        assert ready.returncode == 0, docker("logs", name, check=False)
        # The data the snapshot holds: the application must serve it after the cut-over.
        psql(
            name,
            "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL,"
            " value integer NOT NULL DEFAULT 0, created_at timestamptz DEFAULT now())",
        )
        psql(name, f"INSERT INTO items (name, value) VALUES ('{RESTORED_ITEM}', 13)")
        return name

    yield start
    for name in made:
        docker("rm", "-f", "-v", name, check=False)
        docker("network", "rm", name, check=False)


def write_override(project_dir, network: str) -> None:
    """The seam: the backend joins the network where the restored instance's name resolves."""
    project_dir.mkdir(parents=True, exist_ok=True)
    (project_dir / "compose.override.yaml").write_text(
        "services:\n  backend:\n    networks: [default, rds]\n"
        f"networks:\n  rds:\n    external: true\n    name: {network}\n"
    )


def stack_vars(project: str, project_dir, port: int) -> dict:
    return {
        "stack_project_name": project,
        "stack_project_dir": str(project_dir),
        "stack_http_port": port,
        "stack_prometheus_port": free_port(),
        "stack_db_password": PASSWORD,
        "deploy_backend_replicas": 2,
        "deploy_health_timeout": 120,
    }


def http(port: int, path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def backends(project: str) -> dict[str, dict]:
    """Running backend containers of the project: name -> {image, env, id}."""
    ids = docker("ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                 "--filter", "label=com.docker.compose.service=backend").split()  # fmt: skip
    found = {}
    for item in json.loads(docker("inspect", *ids)) if ids else []:
        env = dict(e.split("=", 1) for e in item["Config"]["Env"])
        found[item["Name"].lstrip("/")] = {"image": item["Config"]["Image"], "env": env,
                                           "id": item["Id"]}  # fmt: skip
    return found


def assert_serves_restored_db(project: str, port: int, endpoint: str) -> dict[str, dict]:
    running = backends(project)
    assert len(running) == 2, running
    for name, backend in running.items():
        assert backend["image"] == "fastapi-monolith/backend:1.1.0", name
        assert backend["env"]["DB_HOST"] == endpoint, name
        assert backend["env"]["DB_PORT"] == "5432", name
    status, body = http(port, "/health")
    assert (status, body.get("database")) == (200, "ok"), body
    status, items = http(port, "/items")
    assert status == 200
    assert [(i["name"], i["value"]) for i in items] == [(RESTORED_ITEM, 13)]
    return running


def changed_tasks(result) -> list[str]:
    """Tasks that reported a change; the stack's operation lock (taken and released by every
    deploy, a lock file written) is left out: it is not a change of the stack."""
    return [
        f"{e['event_data'].get('host')}: {e['event_data'].get('task')}"
        for e in result.events
        if e.get("event") == "runner_on_ok"
        and e["event_data"].get("res", {}).get("changed")
        and "operation lock" not in e["event_data"].get("task", "")
    ]


@pytest.fixture
def project(tmp_path, restored_instance):
    """The test's compose project; removed before the restored instance's network (which
    its backend containers join)."""
    name = unique_name("opsauto-it-rec")
    yield name, tmp_path / name
    compose_down(name)


def test_rds_restore_cutover_points_the_running_stack_at_the_restored_instance(
    world, tmp_path, project, restored_instance
):
    name, project_dir = project
    port = free_port()
    common = stack_vars(name, project_dir, port)
    # The application as it runs before the restore, on its own database container.
    result, failures = run_playbook(tmp_path / "deploy", "deploy.yml", common)
    assert result.rc == 0, failures
    assert http(port, "/health")[0] == 200

    target = f"{world['db']}-restored"
    endpoint = rds_endpoint(target, SOURCE)
    write_override(project_dir, restored_instance(endpoint))
    variables = {
        **common,
        "rds_restore_region": SOURCE,
        "rds_restore_endpoint_url": world["endpoint"],
        "rds_restore_poll_interval": 1,
        "rds_restore_snapshot": f"{world['db']}-nightly",
        "rds_restore_target": target,
        "rds_restore_cutover": True,
        "rds_restore_cutover_confirm": target,
    }
    status, failures, _, stats, _ = play(tmp_path, "rds_restore.yml", variables)
    assert status == "successful", "\n".join(failures)
    assert stats["rds_restore_report"]["endpoint"]["address"] == endpoint
    before = assert_serves_restored_db(name, port, endpoint)
    override = (project_dir / "compose.override.yaml").read_text()
    assert "external: true" in override  # the operator's own keys are kept

    # A rerun restores nothing and redeploys nothing: the same containers serve.
    result, failures = run_playbook(tmp_path / "rerun", "rds_restore.yml", variables)
    assert result.rc == 0, failures
    assert changed_tasks(result) == []
    assert assert_serves_restored_db(name, port, endpoint) == before


def test_dr_failover_deploys_onto_the_dr_host_against_the_restored_instance(
    world, tmp_path, project, restored_instance
):
    name, project_dir = project
    port = free_port()
    endpoint = rds_endpoint(f"{world['db']}-dr", DR)
    write_override(project_dir, restored_instance(endpoint))  # a fresh host: nothing else there
    variables = {
        **dr_vars(world, tmp_path),
        **stack_vars(name, project_dir, port),
        **LOCAL_HOST,
        "dr_failover_deploy": True,
        "dr_failover_smoke_url": f"http://127.0.0.1:{port}/health",
    }
    status, failures, _, stats, _ = play(tmp_path, "dr_failover.yml", variables)
    assert status == "successful", "\n".join(failures)
    before = assert_serves_restored_db(name, port, endpoint)
    state = json.loads((tmp_path / "dr-state.json").read_text())
    phases = state["phases"]
    assert {p: phases[p]["status"] for p in phases} == {
        p: "done" for p in
        ("preflight", "snapshot", "copy", "restore", "app_host", "deploy", "smoke_test", "dns")
    }  # fmt: skip
    assert phases["deploy"]["data"]["db_host"] == endpoint
    assert phases["restore"]["data"]["endpoint_address"] == endpoint
    assert phases["smoke_test"]["data"]["http_status"] in (200, "200")
    report = stats["dr_failover_report"]
    assert report["db_endpoint"] == endpoint
    assert record_values(world) == [[report["app_host"]]]

    again, failures, _, stats, _ = play(tmp_path, "dr_failover.yml", variables, name="rerun")
    assert again == "successful", "\n".join(failures)
    steps = stats["dr_failover_report"]["steps"]
    assert all(s.endswith("done earlier, skipped") for s in steps), steps
    assert json.loads((tmp_path / "dr-state.json").read_text())["phases"] == phases
    assert assert_serves_restored_db(name, port, endpoint) == before


def test_server_recovery_deploys_the_replacement_and_restores_the_newest_backup(
    world, tmp_path, project, docker_ready
):
    # The old server: a stack with data, backed up by the backup role.
    old = unique_name("opsauto-it-old")
    old_port = free_port()
    backups = tmp_path / "backups"
    try:
        old_vars = {**stack_vars(old, tmp_path / old, old_port), "stack_backup_dir": str(backups),
                    "backup_metrics_dir": str(tmp_path / "metrics")}  # fmt: skip
        result, failures = run_playbook(tmp_path / "old", "deploy.yml", old_vars)
        assert result.rc == 0, failures
        for n in range(1, 6):
            body = json.dumps({"name": f"order-{n}", "value": n}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{old_port}/items", data=body,
                headers={"Content-Type": "application/json"}, method="POST",
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=10) as resp:
                assert resp.status == 201
        # the operator's own files beside deploy's: one plain, one holding the password
        dashboard = tmp_path / old / "grafana" / "dashboards" / "app.json"
        dashboard.parent.mkdir(parents=True)
        dashboard.write_text('{"title": "orders"}\n')
        hook = tmp_path / old / "scripts" / "notify.sh"
        hook.parent.mkdir()
        hook.write_text(f"psql postgresql://app:{old_vars['stack_db_password']}@db/app\n")
        result, failures = run_playbook(tmp_path / "backup", "backup.yml",
                                        {**old_vars, "backup_id": "before-loss"})  # fmt: skip
        assert result.rc == 0, failures
    finally:
        compose_down(old)  # the old server is lost

    name, project_dir = project
    port = free_port()
    ec2 = moto_client(world["endpoint"], "ec2", DR)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    failed = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro")[
        "Instances"
    ][0]  # fmt: skip
    variables = {
        **stack_vars(name, project_dir, port),
        **LOCAL_HOST,
        "stack_backup_dir": str(backups),
        "server_recovery_region": DR,
        "server_recovery_endpoint_url": world["endpoint"],
        "server_recovery_old_instance_id": failed["InstanceId"],
        "server_recovery_launch_template": world["template"],
        "server_recovery_subnet_id": world["subnets"][0],
        "server_recovery_name": unique_name("app"),
        "server_recovery_deploy": True,
        "server_recovery_restore_data": True,
        "server_recovery_restore_config": True,
        "server_recovery_health_url": f"http://127.0.0.1:{port}/health",
        "server_recovery_switch": "route53",
        "server_recovery_dns_zone": world["zone"],
        "server_recovery_dns_record": world["record"],
        "server_recovery_poll_interval": 1,
    }
    status, failures, debug, stats, _ = play(tmp_path, "server_recovery.yml", variables)
    assert status == "successful", "\n".join(failures)
    status, items = http(port, "/items")
    assert status == 200
    assert [(i["name"], i["value"]) for i in items] == [(f"order-{n}", n) for n in range(1, 6)]
    db = docker("ps", "-q", "--filter", f"label=com.docker.compose.project={name}",
                "--filter", "label=com.docker.compose.service=db")  # fmt: skip
    assert psql(db, "SELECT count(*) FROM items") == "5"
    # the set's configuration: the operator's file is back, the one with a secret is named
    restored = project_dir / "grafana" / "dashboards" / "app.json"
    assert restored.read_text() == '{"title": "orders"}\n'
    assert oct(restored.stat().st_mode & 0o777) == "0o644"
    assert not (project_dir / "scripts" / "notify.sh").exists()
    said = " ".join(str(m) for m in debug)
    assert "restored 1 configuration files from set before-loss" in said, said
    assert "scripts/notify.sh" in said
    report = stats["server_recovery_report"]
    assert report["health_checked"] in (True, "True")
    assert record_values(world) == [[report["new"]["public_ip"]]]

    # A rerun finds the same replacement and does not restore over the data it now serves.
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/items", data=json.dumps({"name": "after", "value": 6}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 201
    status, failures, _, stats, _ = play(tmp_path, "server_recovery.yml", variables, name="rerun")
    assert status == "successful", "\n".join(failures)
    assert stats["server_recovery_report"]["new"]["instance_id"] == report["new"]["instance_id"]
    assert psql(db, "SELECT count(*) FROM items") == "6"
