"""The ``local`` runtime: convert, dssvd and reconstruct in the Airflow worker and spark-submit.

Same task ids, same mapping and same XCom documents as :mod:`.pods`; only the operators differ:

- ``convert`` and ``reconstruct`` are Python tasks calling :func:`ctdenoise.convert.convert` and
  :func:`ctdenoise.writer.reconstruct`, with S3 ``storage_options`` built from the Airflow AWS
  connection when the task runs (:mod:`.aws`);
- ``dssvd`` is :class:`AwsSparkSubmitOperator`, a SparkSubmitOperator running the same
  ``spark/dssvd.py`` against the ``spark_default`` connection (``local[*]`` or a standalone
  master ``spark://host:7077``). The AWS connection becomes ``AWS_*`` variables of the
  spark-submit process when the task runs, so credentials never appear in rendered fields;
  dssvd.py forwards them to the executors of a standalone cluster.

Nothing heavy is imported at module level (the DAG file imports this module at parse time).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import task

from ctdenoise.orchestration import aws
from ctdenoise.orchestration.config import Settings

log = logging.getLogger(__name__)


def convert_series(series: dict[str, Any], aws_conn_id: str) -> dict[str, Any]:
    """``ctdenoise convert <source_url> <matrix_dir>`` for one series folder; the convert XCom."""
    from ctdenoise.convert import convert
    from ctdenoise.records import Converted, Series

    one = Series.from_xcom(series)
    outcomes = list(convert(one.source_url, one.matrix_dir, storage_options=aws.storage_options(aws_conn_id), params=one.params))
    return Converted.from_outcomes(one, outcomes).to_xcom()


def reconstruct_output(item: dict[str, Any], aws_conn_id: str, series_description_prefix: str = "DENOISED") -> dict[str, Any]:
    """``ctdenoise reconstruct`` of one planned output (a global rank or a local multiplier); the reconstruct XCom."""
    from ctdenoise.records import Output, Reconstructed
    from ctdenoise.writer import reconstruct

    output = Output.from_xcom(item)
    metrics = reconstruct(**output.reconstruct_kwargs(), storage_options=aws.storage_options(aws_conn_id),
                          series_description_prefix=series_description_prefix)  # fmt: skip
    return Reconstructed.from_metrics(output, [metrics]).to_xcom()


class AwsSparkSubmitOperator(SparkSubmitOperator):
    """SparkSubmitOperator whose spark-submit process gets S3 access from an Airflow AWS connection.

    :param aws_conn_id: the connection resolved when the task runs into ``AWS_ACCESS_KEY_ID``,
        ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL`` and
        ``AWS_DEFAULT_REGION`` (added to ``env_vars`` after template rendering, so they are not
        stored with the rendered fields).
    """

    def __init__(self, *, aws_conn_id: str = "aws_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Any) -> None:
        self.env_vars = {**aws.environment(self.aws_conn_id), **(self.env_vars or {})}
        super().execute(context)


def _task_kwargs(settings: Settings, minutes: int) -> dict[str, Any]:
    return {"pool": settings.pod_pool, "execution_timeout": timedelta(minutes=minutes)}


def convert(settings: Settings, series: Any) -> Any:
    """``convert`` mapped over the discovered series (an XComArg of ``discover_series``)."""

    @task(task_id="convert", map_index_template="{{ task.op_kwargs['series']['label'] }}", **_task_kwargs(settings, 60))
    def convert_task(series: dict[str, Any], aws_conn_id: str) -> dict[str, Any]:
        return convert_series(series, aws_conn_id)

    return convert_task.partial(aws_conn_id=settings.aws_conn_id).expand(series=series)


def dssvd_kwargs(batch: dict[str, Any]) -> dict[str, Any]:
    """Per-batch kwargs of the mapped SparkSubmitOperator (an ``XComArg.map`` function)."""
    from ctdenoise.job import DssvdBatch
    from ctdenoise.records import SeriesBatch

    one = SeriesBatch.from_xcom(batch)
    return {"application_args": DssvdBatch.for_series(one.converted).arguments(), "name": one.label}


def dssvd(settings: Settings, batches: Any) -> Any:
    """``dssvd`` mapped over the batches of converted series (``batch_series``)."""
    return AwsSparkSubmitOperator.partial(
        task_id="dssvd",
        application=settings.spark_application,
        conn_id=settings.spark_conn_id,
        aws_conn_id=settings.aws_conn_id,
        conf=dict(settings.spark_conf),
        driver_memory=settings.spark_driver_memory,
        executor_memory=settings.spark_executor_memory,
        executor_cores=settings.spark_executor_cores,
        pool=settings.spark_pool,
        execution_timeout=timedelta(hours=2),
        map_index_template="{{ task.name }}",
    ).expand_kwargs(batches.map(dssvd_kwargs)).output


def reconstruct(settings: Settings, plan: Any) -> Any:
    """``reconstruct`` mapped over the flat plan, labelled "<series> rank=<r>" or "<series> local x<m>"."""

    @task(task_id="reconstruct", map_index_template="{{ task.op_kwargs['item']['label'] }}", **_task_kwargs(settings, 60))
    def reconstruct_task(item: dict[str, Any], aws_conn_id: str, series_description_prefix: str) -> dict[str, Any]:
        return reconstruct_output(item, aws_conn_id, series_description_prefix)

    return reconstruct_task.partial(aws_conn_id=settings.aws_conn_id, series_description_prefix=settings.series_description_prefix
                                    ).expand_kwargs(plan.map(plan_item_kwargs))  # fmt: skip


def plan_item_kwargs(item: dict[str, Any]) -> dict[str, Any]:
    """``expand_kwargs`` entry of one plan item for the local reconstruct task."""
    return {"item": item}
