"""The two waits at the head of the run: DICOM keys in the partition, then uploads settled."""

from __future__ import annotations

import types
from datetime import datetime, timezone
from typing import Any

import pytest



def rendered(op: Any, logical_date: str = "2026-11-20T00:00:00+00:00") -> Any:
    """Render ``op``'s templated fields as the run of ``logical_date`` would (``ds`` is its UTC date)."""
    when = datetime.fromisoformat(logical_date)
    ti = types.SimpleNamespace(dag_id="ct_denoise", task_id=op.task_id, map_index=-1, try_number=1)
    op.render_template_fields({"ds": when.astimezone(timezone.utc).date().isoformat(), "logical_date": when,
                               "ti": ti, "task": op, "params": {}})  # fmt: skip
    return op


def test_wait_for_scans_is_a_deferrable_wildcard_on_dicom_keys_of_the_partition(dag: Any) -> None:
    import fnmatch

    op = rendered(dag.task_dict["wait_for_scans"])
    assert op.deferrable is True and op.wildcard_match is True
    assert op.bucket_key == "s3://ct-denoise/incoming/2026-11-20/*/*.dcm"
    bucket, key = op.bucket_key[len("s3://") :].split("/", 1)
    assert fnmatch.fnmatch("incoming/2026-11-20/scan-a/IM0001.dcm", key)
    assert not fnmatch.fnmatch("incoming/2026-11-21/scan-a/IM0001.dcm", key)
    assert not fnmatch.fnmatch("incoming/2026-11-20/loose.dcm", key)  # outside a series folder
    assert op.soft_fail is True and op.timeout == 6 * 3600


def test_empty_partition_times_out_into_skipped(dag: Any) -> None:
    """The scheduler fails a deferred sensor at its timeout; soft_fail turns that into *skipped*."""
    from airflow.sdk.bases.operator import TRIGGER_FAIL_REPR, TriggerFailureReason
    from airflow.sdk.exceptions import AirflowSkipException

    op = dag.task_dict["wait_for_scans"]
    with pytest.raises(AirflowSkipException):
        op.resume_execution(TRIGGER_FAIL_REPR, {"error": TriggerFailureReason.TRIGGER_TIMEOUT}, {})


def test_settled_upload_sensor_watches_the_same_partition(dag: Any) -> None:
    op = rendered(dag.task_dict["wait_for_settled_upload"])
    assert op.partition_url == "s3://ct-denoise/incoming/2026-11-20"
    assert op.mode == "reschedule" and op.settle_seconds == 300
    # at the settle timeout it goes on with the settled folders; its own timeout comes 3 pokes later
    assert op.proceed_after_seconds == 7200 and op.timeout == 7200 + 3 * 60


def test_non_deferrable_option_reschedules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CT_DENOISE_DEFERRABLE", "false")
    from airflow.dag_processing.dagbag import DagBag
    from dag_fixtures import DAG_FILE

    monkeypatch.setenv("CT_DENOISE_RUNTIME", "local")
    op = DagBag(dag_folder=str(DAG_FILE), known_pools={"default_pool"}).dags["ct_denoise"].task_dict["wait_for_scans"]
    assert op.deferrable is False and op.mode == "reschedule"


def test_the_partition_is_the_day_in_the_dag_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """In Europe/Berlin the daily run of 20 November starts at its local midnight, 23:00 UTC on
    the 19th: Airflow's ``ds`` says 2026-11-19, the partition the hospital filled is the 20th."""
    from airflow.dag_processing.dagbag import DagBag
    from dag_fixtures import DAG_FILE

    from ctdenoise.errors import ParameterError

    monkeypatch.setenv("CT_DENOISE_RUNTIME", "local")
    monkeypatch.setenv("CT_DENOISE_TIMEZONE", "Europe/Berlin")
    dag = DagBag(dag_folder=str(DAG_FILE), known_pools={"default_pool"}).dags["ct_denoise"]
    # the logical date the scheduler gives the run of 20 November (core timetable, same cron and
    # zone as the DAG's), in UTC as the task SDK receives it
    import pendulum
    from airflow.timetables.base import TimeRestriction
    from airflow.timetables.interval import CronDataIntervalTimetable

    info = CronDataIntervalTimetable("@daily", timezone="Europe/Berlin").next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=pendulum.datetime(2026, 11, 20, tz="Europe/Berlin"), latest=None, catchup=True),
    )
    logical = info.logical_date.in_timezone("UTC").isoformat()
    assert logical == "2026-11-19T23:00:00+00:00"
    assert rendered(dag.task_dict["wait_for_scans"], logical).bucket_key == "s3://ct-denoise/incoming/2026-11-20/*/*.dcm"
    assert rendered(dag.task_dict["wait_for_settled_upload"], logical).partition_url == "s3://ct-denoise/incoming/2026-11-20"
    settings_date = dag.user_defined_macros["ctdenoise_partition_date"]
    assert settings_date(datetime.fromisoformat("2026-11-19T23:00:00+00:00")) == "2026-11-20"
    assert settings_date(datetime.fromisoformat("2026-11-20T22:59:59+00:00")) == "2026-11-20"
    with pytest.raises(ParameterError, match="no logical date"):
        settings_date(None)
