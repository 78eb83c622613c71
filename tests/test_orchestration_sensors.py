"""wait_for_settled_upload pokes the partition with the connection's credentials."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("AIRFLOW_HOME", str(Path(tempfile.gettempdir()) / f"ctdenoise-test-airflow-{os.getuid()}"))


def test_poke_is_done_only_when_every_folder_is_settled(s3_bucket: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctdenoise import storage
    from ctdenoise.orchestration.sensors import SettledUploadSensor

    conn = {"conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_CT_TEST_MOTO", json.dumps(conn))
    partition = f"s3://{s3_bucket}/incoming/2026-11-20"

    def sensor(settle_seconds: float) -> SettledUploadSensor:
        return SettledUploadSensor(
            task_id="wait_for_settled_upload", partition_url=partition, settle_seconds=settle_seconds, aws_conn_id="ct_test_moto"
        )

    assert sensor(0).mode == "reschedule"
    assert sensor(0).poke({}).is_done is False  # nothing uploaded yet
    storage.write_bytes(f"{partition}/scan-a/IM0001.dcm", b"x")
    result = sensor(3600).poke({})
    assert result.is_done is False and "scan-a" in result.xcom_value["unsettled"]
    result = sensor(0).poke({})
    assert result.is_done is True and result.xcom_value["folders"] == {"scan-a": 1}
