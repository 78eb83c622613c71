"""S3 access of Airflow-side tasks comes from the Airflow AWS connection, resolved at run time."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("AIRFLOW_HOME", str(Path(tempfile.gettempdir()) / f"ctdenoise-test-airflow-{os.getuid()}"))


@pytest.fixture()
def connection(monkeypatch: pytest.MonkeyPatch) -> str:
    extra = {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-3"}
    conn = {"conn_type": "aws", "login": "AKIDEXAMPLE", "password": "s3cr3t", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_CT_TEST_S3", json.dumps(conn))
    return "ct_test_s3"


def test_storage_options_from_connection(connection: str) -> None:
    from ctdenoise.orchestration import aws

    assert aws.storage_options(connection) == {
        "key": "AKIDEXAMPLE",
        "secret": "s3cr3t",
        "endpoint_url": "http://127.0.0.1:9000",
        "client_kwargs": {"region_name": "eu-west-3"},
    }


def test_environment_from_connection(connection: str) -> None:
    from ctdenoise.orchestration import aws

    assert aws.environment(connection) == {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_DEFAULT_REGION": "eu-west-3",
    }


def test_options_reach_the_bucket(s3_bucket: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the connection's options (and no AWS_* environment) the moto bucket is readable."""
    from ctdenoise import storage
    from ctdenoise.orchestration import aws

    conn = {"conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_CT_TEST_MOTO", json.dumps(conn))
    storage.write_bytes(f"s3://{s3_bucket}/probe.txt", b"hello")
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    options = aws.storage_options("ct_test_moto")
    assert storage.read_bytes(f"s3://{s3_bucket}/probe.txt", options) == b"hello"
