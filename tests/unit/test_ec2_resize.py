"""Unit tests of the EC2 vertical scaling (module_utils/ec2_resize.py).

moto changes a type and starts any instance, so the failures after the stop (no capacity
for the new type, the previous type that cannot start either) are driven here with a small
fake EC2 client that keeps the instance's state, type and the calls made.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import ansible.module_utils
import pytest
from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))
resize_mod = importlib.import_module("ansible.module_utils.ec2_resize")
waits = importlib.import_module("ansible.module_utils.rds_waits")

REGION = "eu-west-1"
IID = "i-0123456789abcdef0"
TYPES = {"t3.micro": ["x86_64"], "t3.large": ["x86_64"], "m6g.large": ["arm64"]}


def error(code, op):
    return ClientError({"Error": {"Code": code, "Message": code}}, op)


class FakeEc2:
    def __init__(self, instance_type="t3.micro", state="running", offered=None, no_capacity=()):
        self.type = instance_type
        self.state = state
        self.offered = set(TYPES) if offered is None else set(offered)
        self.no_capacity = set(no_capacity)
        self.calls = []

    def describe_instances(self, InstanceIds):
        return {"Reservations": [{"Instances": [{
            "InstanceId": IID, "State": {"Name": self.state}, "InstanceType": self.type,
            "Placement": {"AvailabilityZone": "eu-west-1a"}, "Architecture": "x86_64",
        }]}]}  # fmt: skip

    def describe_instance_status(self, InstanceIds, IncludeAllInstances):
        ok = {"Status": "ok"} if self.state == "running" else {"Status": "not-applicable"}
        return {"InstanceStatuses": [{"InstanceStatus": ok, "SystemStatus": ok}]}

    def describe_instance_types(self, InstanceTypes):
        name = InstanceTypes[0]
        if name not in TYPES:
            raise error("InvalidInstanceType", "DescribeInstanceTypes")
        return {
            "InstanceTypes": [
                {"InstanceType": name, "ProcessorInfo": {"SupportedArchitectures": TYPES[name]}}
            ]
        }

    def describe_instance_type_offerings(self, LocationType, Filters):
        name = Filters[0]["Values"][0]
        return {"InstanceTypeOfferings": [{"InstanceType": name}] if name in self.offered else []}

    def stop_instances(self, InstanceIds):
        self.calls.append("stop")
        self.state = "stopped"

    def modify_instance_attribute(self, InstanceId, InstanceType):
        assert self.state == "stopped", "AWS refuses a type change of a running instance"
        self.calls.append(f"type {InstanceType['Value']}")
        self.type = InstanceType["Value"]

    def start_instances(self, InstanceIds):
        if self.type in self.no_capacity:
            self.calls.append(f"start refused {self.type}")
            raise error("InsufficientInstanceCapacity", "StartInstances")
        self.calls.append("start")
        self.state = "running"


def poller():
    return waits.Poller(1, 5, sleep=lambda s: None)


def test_resize_stops_changes_starts_in_that_order():
    ec2 = FakeEc2()
    view = resize_mod.resize(ec2, IID, "t3.large", REGION, poller())
    assert ec2.calls == ["stop", "type t3.large", "start"]
    assert view["instance_type"] == "t3.large"
    assert view["state"] == "running"
    assert view["instance_status"] == "ok"


def test_same_type_running_changes_nothing():
    ec2 = FakeEc2(instance_type="t3.large")
    resize_mod.resize(ec2, IID, "t3.large", REGION, poller())
    assert ec2.calls == []


def test_same_type_stopped_is_started_again():
    ec2 = FakeEc2(instance_type="t3.large", state="stopped")
    resize_mod.resize(ec2, IID, "t3.large", REGION, poller())
    assert ec2.calls == ["start"]


@pytest.mark.parametrize(
    ("target", "offered", "expected"),
    [
        ("m6g.large", None, "supports arm64; i-0123456789abcdef0 runs x86_64"),
        ("t3.large", ["t3.micro"], "t3.large is not offered in eu-west-1a"),
        ("x9.huge", None, "instance type x9.huge does not exist in eu-west-1"),
    ],
)
def test_preflight_refuses_before_anything_stops(target, offered, expected):
    ec2 = FakeEc2(offered=offered)
    with pytest.raises(resize_mod.ResizeError) as caught:
        resize_mod.resize(ec2, IID, target, REGION, poller())
    assert expected in str(caught.value)
    assert ec2.calls == []
    assert (ec2.state, ec2.type) == ("running", "t3.micro")


def test_no_capacity_for_the_new_type_puts_the_old_type_back():
    ec2 = FakeEc2(no_capacity=["t3.large"])
    with pytest.raises(resize_mod.ResizeError) as caught:
        resize_mod.resize(ec2, IID, "t3.large", REGION, poller())
    message = str(caught.value)
    assert "InsufficientInstanceCapacity" in message
    assert "runs again as t3.micro" in message
    assert ec2.calls == [
        "stop",
        "type t3.large",
        "start refused t3.large",
        "type t3.micro",
        "start",
    ]
    assert (ec2.state, ec2.type) == ("running", "t3.micro")


def test_undo_that_fails_too_names_the_commands_to_finish_by_hand():
    ec2 = FakeEc2(no_capacity=["t3.large", "t3.micro"])
    with pytest.raises(resize_mod.ResizeError) as caught:
        resize_mod.resize(ec2, IID, "t3.large", REGION, poller())
    message = str(caught.value)
    assert "Putting back t3.micro failed too" in message
    assert (
        f"aws ec2 modify-instance-attribute --instance-id {IID} --instance-type t3.micro" in message
    )
