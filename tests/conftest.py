"""Shared helpers for the project's tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import ansible.module_utils
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Make the project's module_utils importable as `ansible.module_utils.<name>`, the way
# ansible.cfg's `module_utils = ./module_utils` does for modules.
if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))
VENV_BIN = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for the project's tools: the venv first on PATH, the project's ansible.cfg."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["PY_COLORS"] = "0"
    env.update(extra)
    return env


def run(argv: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run a command from the repository root; output captured as text, ANSI codes removed."""
    proc = subprocess.run(
        argv,
        cwd=kwargs.pop("cwd", ROOT),
        env=kwargs.pop("env", tool_env()),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    proc.stdout = ANSI.sub("", proc.stdout)
    proc.stderr = ANSI.sub("", proc.stderr)
    return proc


def tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def docker_ready() -> None:
    """The bootstrap must have started an engine; fail (not skip) when it is missing."""
    proc = run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30)
    assert proc.returncode == 0, (
        "no Docker engine answers: run `bash scripts/bootstrap.sh` first\n" + proc.stderr
    )


def run_playbook(
    private_dir: Path, playbook: str, extravars: dict, timeout: int = 900, cmdline: str = ""
):
    """Run playbooks/<playbook> on the local inventory through ansible-runner, as AWX does.

    cmdline: extra ansible-playbook options (e.g. "--check --diff", as an AWX job template's
    check job type). ansible-runner keeps it in private_dir: give a later run without it a
    private_dir of its own.

    Returns (runner result, messages of the failed tasks).
    """
    import ansible_runner  # imported here: only the integration tests need it

    private_dir.mkdir(parents=True, exist_ok=True)

    result = ansible_runner.run(
        private_data_dir=str(private_dir),
        project_dir=str(ROOT),
        playbook=str(ROOT / "playbooks" / playbook),
        inventory=str(ROOT / "inventories" / "local" / "hosts.yml"),
        extravars=extravars,
        envvars={
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        },
        quiet=True,
        timeout=timeout,
        cmdline=cmdline or None,
    )
    failures = [
        e["event_data"]["res"].get("msg", "")
        for e in result.events
        if e.get("event") == "runner_on_failed" and not e["event_data"].get("ignore_errors")
    ]
    return result, failures


def compose_down(project: str) -> None:
    """Remove a test's compose project with its volumes (teardown; errors ignored)."""
    subprocess.run(
        ["docker", "compose", "-p", project, "down", "--volumes", "--remove-orphans", "-t", "2"],
        capture_output=True,
        check=False,
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real local S3 endpoint: moto's server on 127.0.0.1, stopped after the session."""
    import time
    import urllib.request

    port = free_port()
    server = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            assert time.monotonic() < deadline, "moto_server did not start within 30 s"
            time.sleep(0.2)
    yield url
    server.terminate()
    server.wait(timeout=10)


AWS_TEST_CREDENTIALS = {"access_key": "testing-key", "secret_key": "testing-secret"}


@pytest.fixture(scope="session")
def s3_client(moto_endpoint):
    """A boto3 S3 client of the local moto endpoint."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id=AWS_TEST_CREDENTIALS["access_key"],
        aws_secret_access_key=AWS_TEST_CREDENTIALS["secret_key"],
    )


# moto set-up shared by the AWS integration tests (test_aws_runbooks.py, test_rds_snapshot.py).


def moto_client(endpoint, service, region="us-east-1"):
    """A boto3 client of ``service`` in ``region`` on the local moto endpoint."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=AWS_TEST_CREDENTIALS["access_key"],
        aws_secret_access_key=AWS_TEST_CREDENTIALS["secret_key"],
    )


def unique_name(prefix: str) -> str:
    """``prefix`` with a random suffix: each test's AWS resources get names of their own."""
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_postgres_instance(rds, name: str, **extra) -> str:
    """A small PostgreSQL DB instance ``name`` in moto; ``extra``: more CreateDBInstance args."""
    rds.create_db_instance(
        DBInstanceIdentifier=name,
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        AllocatedStorage=20,
        MasterUsername="app",
        MasterUserPassword="not-a-secret-1",
        **extra,
    )
    return name


def create_vpc_with_subnets(ec2, octet: int, region: str):
    """A VPC 10.<octet>.0.0/16 with two /24 subnets in zones a and b of ``region``.

    Returns (VPC id, [subnet ids]).
    """
    vpc = ec2.create_vpc(CidrBlock=f"10.{octet}.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(
            VpcId=vpc, CidrBlock=f"10.{octet}.{n}.0/24", AvailabilityZone=f"{region}{zone}"
        )["Subnet"]["SubnetId"]
        for n, zone in ((1, "a"), (2, "b"))
    ]
    return vpc, subnets
