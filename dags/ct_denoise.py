"""ct_denoise: denoise the low-dose CT series of one arrival partition by low-rank models on Spark.

A run processes ``s3://<bucket>/incoming/<ds>/`` (one folder per uploaded series)::

    wait_for_scans >> wait_for_settled_upload >> discover_series >> convert[series]
        >> dssvd[series] >> plan_ranks >> reconstruct[series, rank] >> report[series]
        >> clean_work[series]

- ``wait_for_scans``: deferrable S3KeySensor for DICOM keys in the partition; an empty
  partition times out into *skipped* (soft fail), not failed.
- ``wait_for_settled_upload``: every series folder has stopped changing for
  ``CT_DENOISE_SETTLE_SECONDS`` (S3 LastModified; rule in ``ctdenoise.orchestration.discovery``).
- ``discover_series``: the series folders, minus those already published with the same
  parameters (``report.json`` params hash) unless ``force``.
- ``convert`` / ``dssvd``: mapped per series (pods + SparkApplication, or Python + spark-submit).
- ``dssvd`` computes what the run's ``modes`` ask for: the global SVD and/or the local low-rank
  estimates (tiles through all slices, one estimate per threshold multiplier).
- ``plan_ranks``: the flat list of outputs: (series, rank) from each spectrum and the rank rules
  (global mode), (series, multiplier) for the local mode.
- ``reconstruct``: one task per output, labelled "<series> rank=<r>" or "<series> local x<m>".
- ``report``: per series; publishes ``report.html`` then ``report.json`` (the completion
  marker) only when every planned rank of the series was written.
- ``clean_work``: per series, a teardown (it runs whatever happened before it, and does not
  decide the run's state); removes the work data of each series that every step in
  ``RETENTION_AFTER`` completed (``CT_DENOISE_WORK_RETENTION``, docs/data-retention.md).

A failing series fails its own task instances; the others finish (see the trigger rules below
and ``ctdenoise.report.publish_report``). The runtime (``local`` or ``kubernetes``) and the
deployment (bucket, images, pools, schedule...) come from ``CT_DENOISE_*`` environment
variables: see ``ctdenoise.orchestration.config``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.sdk import (
    CronDataIntervalTimetable,
    ExceptionRetryPolicy,
    RetryAction,
    RetryRule,
    TriggerRule,
    dag,
    task,
)
from airflow.sdk.exceptions import AirflowSkipException

from ctdenoise.orchestration import config
from ctdenoise.orchestration.sensors import SettledUploadSensor
from ctdenoise.orchestration.trigger import check_params, dag_params

settings = config.load_settings().with_application(Path(__file__).parent)
if settings.runtime == config.Runtime.KUBERNETES:
    from ctdenoise.orchestration import pods as runtime
else:
    from ctdenoise.orchestration import local as runtime

# Expected problems (bad input, bad parameters) fail at once; S3, Spark and pod errors retry.
RETRY_POLICY = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception="ctdenoise.errors.CtDenoiseError",
            action=RetryAction.FAIL,
            reason="input or parameter error: retrying cannot fix it",
        )
    ]
)
# Downstream of per-series mapped tasks: run once every upstream instance is done, if at least
# one succeeded, so that one bad series does not hold back the others.
GOOD_SERIES_GO_ON = TriggerRule.ALL_DONE_MIN_ONE_SUCCESS

default_args = {
    "owner": "ctdenoise",
    "retries": settings.retries,
    "retry_delay": timedelta(seconds=settings.retry_delay_seconds),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(seconds=settings.max_retry_delay_seconds),
    "retry_policy": RETRY_POLICY,
}


# The Airflow-side steps, in the order data flows; convert, dssvd and reconstruct are the runtime's.


@task(task_id="discover_series", execution_timeout=timedelta(minutes=30))
def discover_series(params: dict | None = None, logical_date=None) -> list[dict]:  # noqa: ANN001 (a pendulum DateTime)
    from ctdenoise.orchestration import aws, discovery
    from ctdenoise.params import RunParams

    ds = settings.partition_date(logical_date)
    partition = settings.partition_url(ds)
    series, skipped = discovery.discover(
        partition,
        ds=ds,
        work_url=settings.work_url(ds),
        denoised_url=settings.denoised_url(),
        params=RunParams.from_conf(params),
        settle_seconds=settings.settle_seconds,
        storage_options=aws.storage_options(settings.aws_conn_id),
    )
    if not series:
        reasons = "; ".join(f"{s['folder']}: {s['reason']}" for s in skipped[:5]) or "no series folders"
        raise AirflowSkipException(f"nothing to process in {partition} ({reasons})")
    return [s.to_xcom() for s in series]


@task(task_id="plan_ranks", trigger_rule=GOOD_SERIES_GO_ON, execution_timeout=timedelta(minutes=30))
def plan_ranks(converted) -> list[dict]:  # noqa: ANN001 (the mapped convert's XComs)
    from ctdenoise.errors import InputError
    from ctdenoise.orchestration import aws
    from ctdenoise.plan import plan
    from ctdenoise.records import Converted

    # A slice reads every pushed XCom in one request (iterating would probe one past the end).
    series = [Converted.from_xcom(c) for c in (converted[:] if converted else []) if c]
    items, left_out = plan(series, aws.storage_options(settings.aws_conn_id))
    if not items:
        raise InputError("no series has a usable decomposition: " + "; ".join(s["reason"] for s in left_out))
    return [i.to_xcom() for i in items]


@task(
    task_id="report",
    trigger_rule=GOOD_SERIES_GO_ON,
    execution_timeout=timedelta(minutes=30),
    map_index_template="{{ task.op_kwargs['series']['label'] }}",
)
def report(series: dict, dag_run=None, ti=None) -> dict:  # noqa: ANN001
    from ctdenoise.orchestration import aws
    from ctdenoise.records import Output, Reconstructed, Series
    from ctdenoise.report import RunInfo, publish_report

    run = RunInfo(dag_id=dag_run.dag_id, run_id=dag_run.run_id,
                  logical_date=dag_run.logical_date.isoformat() if dag_run.logical_date else None)  # fmt: skip
    planned = [Output.from_xcom(o) for o in as_list(ti.xcom_pull(task_ids="plan_ranks"))]
    results = [Reconstructed.from_xcom(r) for r in as_list(ti.xcom_pull(task_ids="reconstruct"))]
    done = publish_report(Series.from_xcom(series), planned, results, run, aws.storage_options(settings.aws_conn_id))
    return done.to_xcom()


# A series' work data (patient data) goes once every one of these succeeded for it. When the DAG
# delivers to a PACS, add "deliver" here and put the deliver task between report and clean_work.
RETENTION_AFTER = ("report",)


@task(task_id="clean_work", execution_timeout=timedelta(minutes=30), map_index_template="{{ task.op_kwargs['series']['label'] }}")
def clean_work(series: dict, ti=None) -> dict:  # noqa: ANN001
    from ctdenoise.orchestration import aws
    from ctdenoise.orchestration.config import WorkRetention
    from ctdenoise.records import Series
    from ctdenoise.retention import clean_series_work

    one = Series.from_xcom(series)
    pending = [t for t in RETENTION_AFTER if one.folder not in {r.get("folder") for r in as_list(ti.xcom_pull(task_ids=t))}]
    if pending:
        raise AirflowSkipException(f"{one.where}: work data kept ({', '.join(pending)} did not complete for it)")
    remove = settings.work_retention == WorkRetention.REMOVE
    return clean_series_work(one, remove, aws.storage_options(settings.aws_conn_id))


def as_list(value) -> list:  # noqa: ANN001
    """XCom pulls give a value, a list, or None: always a list without Nones."""
    if value is None:
        return []
    return [value] if isinstance(value, dict) else [v for v in value if v is not None]


@dag(
    dag_id="ct_denoise",
    description="Denoise low-dose CT series by global and local low-rank models (Spark), one arrival partition per run",
    schedule=CronDataIntervalTimetable(settings.schedule, timezone=settings.timezone) if settings.schedule else None,
    start_date=settings.start_datetime(),
    catchup=settings.catchup,
    max_active_runs=settings.max_active_runs,
    max_active_tasks=settings.max_active_tasks,
    dagrun_timeout=timedelta(hours=24),
    default_args=default_args,
    params=dag_params(),
    user_defined_macros={"ctdenoise_partition_date": settings.partition_date},
    tags=["ctdenoise", "ct", "svd", "spark", settings.runtime.value],
    doc_md=__doc__,
)
def ct_denoise() -> None:
    wait_for_scans = S3KeySensor(
        task_id="wait_for_scans",
        bucket_key=f"{settings.partition_template()}/*/{settings.dicom_glob}",
        wildcard_match=True,
        deferrable=settings.deferrable,
        mode="poke" if settings.deferrable else "reschedule",
        aws_conn_id=settings.aws_conn_id,
        poke_interval=settings.poke_interval_seconds,
        timeout=settings.wait_timeout_seconds,
        soft_fail=True,
        pre_execute=check_params,
    )
    wait_for_settled_upload = SettledUploadSensor(
        task_id="wait_for_settled_upload",
        partition_url=settings.partition_template(),
        settle_seconds=settings.settle_seconds,
        aws_conn_id=settings.aws_conn_id,
        poke_interval=settings.poke_interval_seconds,
        # At the settle timeout it goes on with the settled folders; its own timeout, a few pokes
        # later, only fails a partition where none has settled.
        proceed_after_seconds=settings.settle_timeout_seconds,
        timeout=settings.settle_timeout_seconds + 3 * settings.poke_interval_seconds,
    )

    series = discover_series()
    converted = runtime.convert(settings, series)
    svds = runtime.dssvd(settings, converted, GOOD_SERIES_GO_ON)
    plan = plan_ranks(converted)
    denoised = runtime.reconstruct(settings, plan)
    reports = report.expand(series=series)
    cleaned = clean_work.expand(series=series)

    wait_for_scans >> wait_for_settled_upload >> series
    svds >> plan
    [plan, denoised] >> reports
    reports >> cleaned.as_teardown()


ct_denoise()
