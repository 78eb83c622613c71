"""ct_denoise: denoise the low-dose CT series of one arrival partition by low-rank models on Spark.

A run processes ``s3://<bucket>/incoming/<ds>/`` (one folder per uploaded series)::

    wait_for_scans >> wait_for_settled_upload >> discover_series >> convert[series]
        >> batch_series >> dssvd[batch] >> plan_ranks >> reconstruct[series, rank] >> report[series]
        >> plan_deliveries >> deliver[series, output]
                                             report[series] >> check_series
        >> clean_work[series] (a teardown: after report and deliver)

- ``wait_for_scans``: deferrable S3KeySensor for DICOM keys in the partition; an empty
  partition times out into *skipped* (soft fail), not failed.
- ``wait_for_settled_upload``: every series folder has stopped changing for
  ``CT_DENOISE_SETTLE_SECONDS`` (S3 LastModified; rule in ``ctdenoise.orchestration.discovery``).
- ``discover_series``: the series folders, minus those already published with the same
  parameters (``report.json`` params hash) unless ``force``.
- ``convert``: mapped per series (pods, or Python tasks).
- ``batch_series`` / ``dssvd``: one Spark application (SparkApplication, or spark-submit) per
  batch of ``CT_DENOISE_SPARK_BATCH_SERIES`` converted series (default 1: a task per series);
  a batch pays the session's start once, and a refused series in it does not stop the others.
- ``dssvd`` computes what the run's ``modes`` ask for: the global SVD and/or the local low-rank
  estimates (tiles through all slices, one estimate per threshold multiplier).
- ``plan_ranks``: the flat list of outputs: (series, rank) from each spectrum and the rank rules
  (global mode), (series, multiplier) for the local mode.
- ``reconstruct``: one task per output, labelled "<series> rank=<r>" or "<series> local x<m>".
- ``report``: per series; publishes ``report.html`` then ``report.json`` (the completion
  marker) only when every planned rank of the series was written.
- ``plan_deliveries`` / ``deliver``: the outputs the run's ``deliver`` parameter names, of the
  series completed now or by an earlier run, sent to the PACS of ``CT_DENOISE_DESTINATIONS``
  (one task per output, labelled "<series> <output>"; Python tasks in both runtimes). Delivery
  never holds back a report: a series is complete when its report is; a failed delivery fails
  the run, and clearing ``deliver`` (or a later run) delivers it.
- ``check_series``: runs only when a report failed, and fails the run (a run's state comes from
  its last tasks, which are now the delivery steps).
- ``clean_work``: per series, a teardown (it runs whatever happened before it, and does not
  decide the run's state); removes the work data of each series that every step in
  steps it needed completed (its report and its deliveries) (``CT_DENOISE_WORK_RETENTION``, docs/data-retention.md).

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

from ctdenoise.orchestration import config, pools
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


def check_run_start(context) -> None:  # noqa: ANN001 (the task's context)
    """Before wait_for_scans waits: the run's cross-field parameter rules, and the pools its
    tasks will wait in (a missing pool would hold them forever: ``ctdenoise.orchestration.pools``)."""
    check_params(context)
    pools.check(settings)



@task(task_id="discover_series", execution_timeout=timedelta(minutes=30))
def discover_series(params: dict | None = None, logical_date=None, ti=None) -> list[dict]:  # noqa: ANN001 (a pendulum DateTime)
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
    # Series published by an earlier run: plan_deliveries sends what that run could not.
    ti.xcom_push(key="published", value=[s["published"] for s in skipped if s.get("published")])
    if not series:
        reasons = "; ".join(f"{s['folder']}: {s['reason']}" for s in skipped[:5]) or "no series folders"
        raise AirflowSkipException(f"nothing to process in {partition} ({reasons})")
    return [s.to_xcom() for s in series]


@task(task_id="batch_series", trigger_rule=GOOD_SERIES_GO_ON, execution_timeout=timedelta(minutes=5))
def batch_series(converted) -> list[dict]:  # noqa: ANN001 (the mapped convert's XComs)
    """The converted series, CT_DENOISE_SPARK_BATCH_SERIES per dssvd task (one Spark application)."""
    from ctdenoise.records import Converted, SeriesBatch

    series = [Converted.from_xcom(c) for c in (converted[:] if converted else []) if c]
    return [b.to_xcom() for b in SeriesBatch.group(series, settings.spark_batch_series)]


@task(task_id="plan_ranks", trigger_rule=GOOD_SERIES_GO_ON, execution_timeout=timedelta(minutes=30))
def plan_ranks(converted, ti=None) -> list[dict]:  # noqa: ANN001 (the mapped convert's XComs)
    from ctdenoise.errors import InputError
    from ctdenoise.orchestration import aws
    from ctdenoise.plan import plan
    from ctdenoise.records import Converted

    # A slice reads every pushed XCom in one request (iterating would probe one past the end).
    series = [Converted.from_xcom(c) for c in (converted[:] if converted else []) if c]
    planned = plan(series, aws.storage_options(settings.aws_conn_id))
    ti.xcom_push(key="omitted", value=[o.to_xcom() for o in planned.omitted])  # the report states why
    if not planned.items:
        raise InputError("no series has a usable decomposition: " + "; ".join(s["reason"] for s in planned.left_out))
    return [i.to_xcom() for i in planned.items]


@task(
    task_id="report",
    trigger_rule=GOOD_SERIES_GO_ON,
    execution_timeout=timedelta(minutes=30),
    map_index_template="{{ task.op_kwargs['series']['label'] }}",
)
def report(series: dict, dag_run=None, ti=None) -> dict:  # noqa: ANN001
    from ctdenoise.orchestration import aws
    from ctdenoise.records import Omitted, Output, Reconstructed, Series
    from ctdenoise.report import RunInfo, publish_report

    run = RunInfo(dag_id=dag_run.dag_id, run_id=dag_run.run_id,
                  logical_date=dag_run.logical_date.isoformat() if dag_run.logical_date else None)  # fmt: skip
    planned = [Output.from_xcom(o) for o in as_list(ti.xcom_pull(task_ids="plan_ranks"))]
    omitted = [Omitted.from_xcom(o) for o in as_list(ti.xcom_pull(task_ids="plan_ranks", key="omitted"))]
    results = [Reconstructed.from_xcom(r) for r in as_list(ti.xcom_pull(task_ids="reconstruct"))]
    done = publish_report(Series.from_xcom(series), planned, results, run, aws.storage_options(settings.aws_conn_id), omitted)
    return done.to_xcom()


@task(task_id="plan_deliveries", trigger_rule=TriggerRule.ALL_DONE, execution_timeout=timedelta(minutes=30))
def plan_deliveries(reports, params: dict | None = None, ti=None) -> list[dict]:  # noqa: ANN001
    from ctdenoise.layout import series_url
    from ctdenoise.orchestration import aws, delivery
    from ctdenoise.params import RunParams
    from ctdenoise.records import SeriesReport

    run_params = RunParams.from_conf(params)
    if not settings.destination_ids or not run_params.deliver:
        why = "no destinations (CT_DENOISE_DESTINATIONS)" if not settings.destination_ids else "deliver is [] for this run"
        raise AirflowSkipException(f"delivery off: {why}")
    done = [SeriesReport.from_xcom(r) for r in (reports[:] if reports else []) if r]
    urls = [series_url(settings.denoised_url(), r.series_instance_uid) for r in done]
    urls += as_list(ti.xcom_pull(task_ids="discover_series", key="published"))
    items = delivery.plan(urls, run_params, settings.destination_ids, aws.storage_options(settings.aws_conn_id))
    if not items:
        raise AirflowSkipException(f"nothing to deliver ({len(urls)} completed series checked)")
    return [i.to_xcom() for i in items]


@task(
    task_id="deliver",
    pool=settings.delivery_pool,
    execution_timeout=timedelta(hours=1),
    map_index_template="{{ task.op_kwargs['item']['label'] }}",
)
def deliver(item: dict, dag_run=None, ti=None) -> dict:  # noqa: ANN001
    from ctdenoise.orchestration import aws, delivery
    from ctdenoise.records import DeliveryItem

    run = {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id, "try_number": ti.try_number}
    done = delivery.deliver_item(DeliveryItem.from_xcom(item), run, settings.delivery_verify_seconds,
                                 aws.storage_options(settings.aws_conn_id))  # fmt: skip
    return done.to_xcom()


@task(task_id="check_series", trigger_rule=TriggerRule.ONE_FAILED, execution_timeout=timedelta(minutes=5))
def check_series() -> None:
    """Fails the run when a series was not completed. Runs only then (one_failed): report is no
    longer a leaf once plan_deliveries follows it, and Airflow sets a run's state from its leaves,
    so without this task a run with a failed series would end successful."""
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException("a series was not completed: see the failed report task instances "
                               "(the other series were published and, where configured, delivered)")  # fmt: skip


@task(task_id="clean_work", execution_timeout=timedelta(minutes=30), map_index_template="{{ task.op_kwargs['series']['label'] }}")
def clean_work(series: dict, ti=None) -> dict:  # noqa: ANN001
    from ctdenoise.orchestration import aws
    from ctdenoise.orchestration.config import WorkRetention
    from ctdenoise.records import Series
    from ctdenoise.retention import clean_series_work, steps_pending

    one = Series.from_xcom(series)
    pending = steps_pending(one.folder, as_list(ti.xcom_pull(task_ids="report")), as_list(ti.xcom_pull(task_ids="plan_deliveries")),
                            as_list(ti.xcom_pull(task_ids="deliver")))  # fmt: skip
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
    params=dag_params({"selection": settings.selection} if settings.selection else None),
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
        pre_execute=check_run_start,
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
    svds = runtime.dssvd(settings, batch_series(converted))
    plan = plan_ranks(converted)
    denoised = runtime.reconstruct(settings, plan)
    reports = report.expand(series=series)
    delivered = deliver.expand(item=plan_deliveries(reports))
    reports >> check_series()
    cleaned = clean_work.expand(series=series)

    wait_for_scans >> wait_for_settled_upload >> series
    svds >> plan
    [plan, denoised] >> reports
    [reports, delivered] >> cleaned.as_teardown()


ct_denoise()
