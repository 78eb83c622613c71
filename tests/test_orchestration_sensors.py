"""wait_for_settled_upload pokes the partition with the connection's credentials."""

from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from airflow.sdk import PokeReturnValue

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


class _RescheduledTI:
    """What the sensor asks of its task instance in reschedule mode: when the first poke was."""

    def __init__(self, first: datetime | None) -> None:
        self.first = first

    def get_first_reschedule_date(self, context: object) -> datetime | None:
        return self.first


def test_a_folder_that_keeps_changing_does_not_hold_back_the_settled_ones(
    s3_bucket: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ctdenoise import storage
    from ctdenoise.orchestration import discovery
    from ctdenoise.orchestration.sensors import SettledUploadSensor

    conn = {"conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_CT_TEST_MOTO", json.dumps(conn))
    partition = f"s3://{s3_bucket}/incoming/2026-11-21"
    storage.write_bytes(f"{partition}/scan-a/IM0001.dcm", b"x")
    time.sleep(3)
    storage.write_bytes(f"{partition}/scan-b/IM0001.dcm", b"x")  # still being uploaded

    def poke(proceed_after: float | None, first_poke: datetime | None) -> PokeReturnValue:
        sensor = SettledUploadSensor(task_id="wait_for_settled_upload", partition_url=partition, settle_seconds=2,
                                     aws_conn_id="ct_test_moto", proceed_after_seconds=proceed_after)  # fmt: skip
        return sensor.poke({"ti": _RescheduledTI(first_poke)})

    now = datetime.now(timezone.utc)
    assert poke(None, now - timedelta(hours=5)).is_done is False  # no deadline: wait for every folder
    assert poke(3600, None).is_done is False  # the first poke: nothing waited yet
    assert poke(3600, now - timedelta(seconds=600)).is_done is False  # before the deadline
    result = poke(3600, now - timedelta(seconds=3601))
    assert result.is_done is True and list(result.xcom_value["proceeded_without"]) == ["scan-b"]
    assert result.xcom_value["folders"] == {"scan-a": 1, "scan-b": 1}
    # and discover_series, with the same rule, leaves scan-b out for it (scan-a is no DICOM here)
    from ctdenoise.params import RunParams

    _, skipped = discovery.discover(partition, ds="2026-11-21", work_url=f"s3://{s3_bucket}/work", denoised_url=f"s3://{s3_bucket}/denoised",
                                    params=RunParams(), settle_seconds=2)  # fmt: skip
    reasons = {s["folder"]: s["reason"] for s in skipped}
    assert reasons["scan-b"].startswith("upload not settled") and not reasons.get("scan-a", "").startswith("upload not settled")
    # with no folder settled, the deadline changes nothing: the sensor's timeout fails the run
    storage.write_bytes(f"{partition}/scan-a/IM0002.dcm", b"x")
    assert poke(3600, now - timedelta(seconds=3601)).is_done is False
