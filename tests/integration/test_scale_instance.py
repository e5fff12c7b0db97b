"""EC2 vertical scaling (playbooks/scale.yml with scale_instance_type): the instance is
moto's (127.0.0.1), the Docker host playing it is this machine's engine with a compose
project of the test's own. The playbook runs through ansible-runner as AWX runs it.

What is real here: the stack stops before the instance stops and answers its health check
through nginx after the start; the instance's type and state read back from the EC2 API;
refusals leave both untouched. What moto cannot show: the minutes a real stop and start
take, and a public IP that changes (docs/aws.md).
"""

from __future__ import annotations

import urllib.request

import pytest

from tests.conftest import (
    compose_down,
    moto_client,
    run,
    run_playbook,
)
from tests.integration.test_aws_runbooks import fake_credentials  # noqa: F401 (autouse)

PROJECT = "opsauto-it-ec2"
HTTP_PORT = 18580
PROM_PORT = 19580
REGION = "us-east-1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_ready):
    project_dir = tmp_path_factory.mktemp("ec2") / PROJECT
    result, failures = play(tmp_path_factory.mktemp("deploy"), project_dir, "deploy", None)
    assert result.rc == 0, failures
    yield project_dir
    compose_down(PROJECT)


@pytest.fixture
def instance(moto_endpoint):
    ec2 = moto_client(moto_endpoint, "ec2", REGION)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    made = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    instance_id = made["Instances"][0]["InstanceId"]
    yield ec2, instance_id
    ec2.terminate_instances(InstanceIds=[instance_id])


def play(tmp_path, project_dir, playbook, endpoint, **extravars):
    variables = {
        "stack_project_name": PROJECT,
        "stack_project_dir": str(project_dir),
        "stack_http_port": HTTP_PORT,
        "stack_prometheus_port": PROM_PORT,
        "stack_db_password": "integration-password-ec2",
        "deploy_backend_replicas": 2,
        "deploy_health_timeout": 60,
    }
    if endpoint:
        variables.update(
            scale_aws_endpoint_url=endpoint,
            scale_instance_region=REGION,
            scale_instance_poll_interval=1,
            scale_instance_wait_timeout=60,
        )
    variables.update(extravars)
    return run_playbook(tmp_path, f"{playbook}.yml", variables)


def described(ec2, instance_id):
    found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return found["InstanceType"], found["State"]["Name"]


def started_at() -> dict[str, str]:
    """Container name -> its State.StartedAt: a container stopped and started again changes."""
    names = run(["docker", "compose", "-p", PROJECT, "ps", "-q"]).stdout.split()
    out = run(["docker", "inspect", "-f", "{{.Name}} {{.State.StartedAt}}", *names]).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def health() -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/health", timeout=5) as resp:
        return resp.status


def test_resize_stops_the_stack_changes_the_type_and_starts_it_again(
    tmp_path, stack, instance, moto_endpoint
):
    ec2, instance_id = instance
    before = started_at()
    result, failures = play(tmp_path / "a", stack, "scale", moto_endpoint,
                            scale_instance_type="t3.large", scale_instance_id=instance_id,
                            scale_instance_confirm=instance_id)  # fmt: skip
    assert result.rc == 0, failures
    assert described(ec2, instance_id) == ("t3.large", "running")
    after = started_at()
    assert set(after) == set(before)
    assert all(after[name] != before[name] for name in before), (before, after)
    assert health() == 200
    # The same inputs again: nothing stops.
    result, failures = play(tmp_path / "b", stack, "scale", moto_endpoint,
                            scale_instance_type="t3.large", scale_instance_id=instance_id,
                            scale_instance_confirm=instance_id)  # fmt: skip
    assert result.rc == 0, failures
    assert started_at() == after
    changed = [e for e in result.events if e.get("event") == "runner_on_ok"
               and e["event_data"]["res"].get("changed")]  # fmt: skip
    assert changed == [], [e["event_data"]["task"] for e in changed]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"scale_instance_type": "m6g.large"}, "supports arm64"),
        (
            {"scale_instance_type": "t3.large", "scale_instance_confirm": "i-other"},
            "confirm with -e scale_instance_confirm=<the same id>",
        ),
    ],
)
def test_refusals_change_nothing(tmp_path, stack, instance, moto_endpoint, extra, expected):
    ec2, instance_id = instance
    before = started_at()
    variables = {"scale_instance_id": instance_id, "scale_instance_confirm": instance_id, **extra}
    result, failures = play(tmp_path, stack, "scale", moto_endpoint, **variables)
    assert result.rc != 0
    assert expected in " ".join(failures), failures
    assert described(ec2, instance_id) == ("t3.micro", "running")
    assert started_at() == before


def test_a_failed_health_check_puts_the_old_type_back(tmp_path, stack, instance, moto_endpoint):
    # The stack comes back but its health check fails (a health path that does not exist):
    # the previous type is put back, and since the health check fails again the play says
    # the undo failed too, naming both steps.
    ec2, instance_id = instance
    result, failures = play(tmp_path, stack, "scale", moto_endpoint,
                            scale_instance_type="t3.large", scale_instance_id=instance_id,
                            scale_instance_confirm=instance_id, scale_health_timeout=6,
                            stack_health_path="/no-such-health")  # fmt: skip
    assert result.rc != 0
    message = " ".join(failures)
    assert "answers through nginx on /no-such-health" in message, failures  # the failed step
    assert "Putting t3.micro back and starting the stack failed too" in message, failures
    assert described(ec2, instance_id) == ("t3.micro", "running")
    assert health() == 200  # the stack itself runs again
