"""The checks every AWS module makes before its first call (rds_api.region_problem and
credentials_problem): a region botocore does not know, no credentials anywhere."""

from __future__ import annotations

import boto3
import pytest
from ansible.module_utils.rds_api import credentials_problem, region_problem


def test_known_regions_pass_and_a_typo_names_the_closest():
    assert region_problem(boto3, {"region": "eu-west-1", "source_region": "us-east-1"}) is None
    message = region_problem(boto3, {"region": "eu-westt-1"})
    assert message.startswith("region 'eu-westt-1' is not an AWS region name (did you mean")
    assert "eu-west-1" in message
    assert "Nothing was called" in message
    assert "pip install -U botocore" in message


def test_a_bad_source_region_is_named_as_such():
    message = region_problem(boto3, {"region": "us-east-1", "source_region": "us-east"})
    assert message.startswith("source_region 'us-east' is not an AWS region name")


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)


def test_no_credentials_is_one_clear_message(no_credentials):
    message = credentials_problem(boto3, {})
    assert message.startswith("no AWS credentials found. Nothing was called. Fix: ")
    assert "AWS_ACCESS_KEY_ID" in message


def test_credentials_from_the_environment_or_the_options_pass(no_credentials, monkeypatch):
    assert credentials_problem(boto3, {"access_key": "k", "secret_key": "s"}) is None
    assert credentials_problem(boto3, {"profile": "ops"}) is None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    assert credentials_problem(boto3, {}) is None
