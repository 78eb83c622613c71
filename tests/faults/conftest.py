"""Fixtures of the fault-injection suite: the embedded S3 (moto) behind a fault-injecting proxy
(:mod:`proxy`), a fresh bucket per test, and the DAG's retry policy.

The S3 clients' own retries are turned off here (botocore: one attempt; s3fs: one try), so
that a test sees what the pipeline itself does with a fault; in production they come on top.
"""

from __future__ import annotations

import json
import os
import runpy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_env import CONN_ID, Bucket
from proxy import FaultProxy

from ctdenoise import storage


@pytest.fixture(scope="session")
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    server = FaultProxy(s3_endpoint)
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def bucket(proxy: FaultProxy, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    import boto3
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    monkeypatch.setattr(storage, "READ_BACKOFF_SECONDS", 0.01, raising=False)
    conn = {"conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": proxy.endpoint, "region_name": "us-east-1"}}  # fmt: skip
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    name = f"faults-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    fs, _ = storage.get_fs(f"s3://{name}")
    yield Bucket(name, proxy, fs)
    proxy.clear()


@pytest.fixture(scope="session")
def retry_policy() -> Any:
    """The DAG's retry policy (input errors fail at once, everything else retries), from the DAG file."""
    os.environ.setdefault("CT_DENOISE_RUNTIME", "local")
    dag_file = Path(__file__).resolve().parents[2] / "dags" / "ct_denoise.py"
    return runpy.run_path(str(dag_file), run_name="ct_denoise_faults")["RETRY_POLICY"]


@pytest.fixture()
def pipeline(bucket: Bucket, retry_policy: Any, tmp_path: Path) -> Any:
    """The DAG's steps on this test's bucket (:class:`steps.Pipeline`)."""
    from steps import Pipeline

    return Pipeline(bucket, retry_policy, tmp_path)
