"""Settings of the ``ct_denoise`` DAG, read from ``CT_DENOISE_*`` environment variables at parse time.

The DAG file holds no deployment detail: bucket, images, namespace, pools, schedule and timeouts
come from the environment of the DAG processor (and of the workers, which parse the same file).
One variable chooses how the work runs:

``CT_DENOISE_RUNTIME``
    ``local`` (default): ``convert`` and ``reconstruct`` are Python tasks calling the package,
    ``dssvd`` is a SparkSubmitOperator running ``spark/dssvd.py`` against the ``spark_default``
    connection (``local[*]`` or a standalone master); S3 through the Airflow AWS connection.
    ``kubernetes``: ``convert`` and ``reconstruct`` are KubernetesPodOperator pods of the worker
    image, ``dssvd`` is a SparkApplication (SparkKubernetesOperator); S3 credentials come from
    a Kubernetes secret. Both runtimes have the same task ids and dependencies.

Bucket layout (``CT_DENOISE_BUCKET``; the three prefixes are configurable)::

    incoming/<ds>/<series-folder>/<files>                 uploads: one folder per series
    work/<ds>/<series-folder>/matrix/<SeriesInstanceUID>.zarr      convert
    work/<ds>/<series-folder>/svd-k<k>-o<o>-q<q>-s<seed>.zarr      dssvd (one per SVD parameter set)
    denoised/<SeriesInstanceUID>/rank-<r>/                 reconstruct: dicom/, preview.png,
                                                           metrics.json, _SUCCESS
    denoised/<SeriesInstanceUID>/report.html, report.json  report; report.json is written last
                                                           and marks the series complete

``<ds>`` is the run's partition date: its logical date as a calendar day in
``CT_DENOISE_TIMEZONE`` (``YYYY-MM-DD``; Airflow's own ``ds`` is the UTC date, a day early for a
run at local midnight east of UTC). With the default schedule (``@daily`` as a data-interval
timetable) the run of day D starts once D is over and processes ``incoming/D/``.

Every variable, its default and meaning is in :data:`VARIABLES`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ctdenoise.errors import ParameterError

RUNTIMES = ("local", "kubernetes")
REPO_ROOT = Path(__file__).resolve().parents[3]

#: name -> (default, meaning). The defaults suit the local runtime and the docker-compose stack.
VARIABLES: dict[str, tuple[str, str]] = {
    "CT_DENOISE_RUNTIME": ("local", "local or kubernetes: which operators run convert, dssvd and reconstruct"),
    "CT_DENOISE_BUCKET": ("ct-denoise", "S3 bucket holding incoming/, work/ and denoised/"),
    "CT_DENOISE_INCOMING_PREFIX": ("incoming", "prefix of the arrival partitions (<prefix>/<ds>/<series-folder>/)"),
    "CT_DENOISE_WORK_PREFIX": ("work", "prefix of intermediate matrices and SVDs"),
    "CT_DENOISE_DENOISED_PREFIX": ("denoised", "prefix of the published results"),
    "CT_DENOISE_DICOM_GLOB": ("*.dcm", "file name pattern wait_for_scans waits for inside series folders"),
    "CT_DENOISE_SCHEDULE": ("@daily", "cron expression or preset (data-interval timetable); 'none': manual runs only"),
    "CT_DENOISE_TIMEZONE": ("UTC", "time zone of the schedule and of the partition dates"),
    "CT_DENOISE_START_DATE": ("2026-01-01", "first logical date of the schedule (YYYY-MM-DD)"),
    "CT_DENOISE_CATCHUP": ("false", "create runs for missed intervals when the DAG is switched on"),
    "CT_DENOISE_MAX_ACTIVE_RUNS": ("1", "runs of ct_denoise in flight at once (a backfill queues behind)"),
    "CT_DENOISE_MAX_ACTIVE_TASKS": ("8", "task instances of one run in flight at once"),
    "CT_DENOISE_SPARK_POOL": ("ct_denoise_spark", "Airflow pool of the dssvd tasks (slots = concurrent Spark jobs)"),
    "CT_DENOISE_POD_POOL": ("ct_denoise_pods", "Airflow pool of convert and reconstruct"),
    "CT_DENOISE_RETRIES": ("2", "retries of tasks that touch S3 or Spark"),
    "CT_DENOISE_RETRY_DELAY_SECONDS": ("60", "first retry delay; doubles at each retry (exponential backoff)"),
    "CT_DENOISE_MAX_RETRY_DELAY_SECONDS": ("1800", "upper bound of the retry delay"),
    "CT_DENOISE_POKE_INTERVAL_SECONDS": ("60", "how often the sensors look at the bucket"),
    "CT_DENOISE_DEFERRABLE": ("true", "wait_for_scans waits in the triggerer (false: reschedule mode; "
                              "`airflow dags test` runs triggers inline and never times them out)"),
    "CT_DENOISE_WAIT_TIMEOUT_SECONDS": ("21600", "wait_for_scans gives up (run skipped) after this long"),
    "CT_DENOISE_SETTLE_SECONDS": ("300", "a series folder is settled when none of its objects is younger than this"),
    "CT_DENOISE_SETTLE_TIMEOUT_SECONDS": ("7200", "after this long wait_for_settled_upload goes on with the settled folders, leaving out (and naming) the ones still changing; it fails if none has settled"),
    "CT_DENOISE_AWS_CONN_ID": ("aws_default", "Airflow AWS connection (sensors, and all S3 access of the local runtime)"),
    "CT_DENOISE_SPARK_CONN_ID": ("spark_default", "Airflow Spark connection of the local runtime (master URL)"),
    "CT_DENOISE_SPARK_APPLICATION": ("", "path of dssvd.py for spark-submit (default: <repo>/spark/dssvd.py)"),
    "CT_DENOISE_SPARK_CONF": ("{}", "JSON object of extra spark-submit --conf entries (local runtime)"),
    "CT_DENOISE_KUBERNETES_CONN_ID": ("kubernetes_default", "Airflow Kubernetes connection (kubernetes runtime)"),
    "CT_DENOISE_NAMESPACE": ("ct-denoise", "namespace of the pods and SparkApplications"),
    "CT_DENOISE_WORKER_IMAGE": ("ctdenoise-worker:0.1.0", "image of convert/reconstruct pods (images/Dockerfile.worker)"),
    "CT_DENOISE_SPARK_IMAGE": ("ctdenoise-spark:0.1.0", "image of the SparkApplication (images/Dockerfile.spark)"),
    "CT_DENOISE_IMAGE_PULL_POLICY": ("IfNotPresent", "imagePullPolicy of the pods"),
    "CT_DENOISE_S3_SECRET": ("ct-denoise-s3", "Kubernetes secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
                             "(and optionally AWS_ENDPOINT_URL, AWS_DEFAULT_REGION) for pods and Spark"),
    "CT_DENOISE_SERVICE_ACCOUNT": ("", "service account of convert/reconstruct pods (empty: namespace default)"),
    "CT_DENOISE_SPARK_SERVICE_ACCOUNT": ("spark-operator-spark", "service account of the Spark driver"),
    "CT_DENOISE_POD_CPU_REQUEST": ("1", "CPU request of convert/reconstruct pods"),
    "CT_DENOISE_POD_CPU_LIMIT": ("2", "CPU limit of convert/reconstruct pods"),
    "CT_DENOISE_POD_MEMORY_REQUEST": ("2Gi", "memory request of convert/reconstruct pods"),
    "CT_DENOISE_POD_MEMORY_LIMIT": ("4Gi", "memory limit of convert/reconstruct pods"),
    "CT_DENOISE_SPARK_DRIVER_CORES": ("1", "Spark driver cores"),
    "CT_DENOISE_SPARK_DRIVER_MEMORY": ("1g", "Spark driver memory"),
    "CT_DENOISE_SPARK_EXECUTOR_INSTANCES": ("2", "Spark executors per SparkApplication"),
    "CT_DENOISE_SPARK_EXECUTOR_CORES": ("1", "cores per Spark executor"),
    "CT_DENOISE_SPARK_EXECUTOR_MEMORY": ("2g", "memory per Spark executor"),
}


@dataclass(frozen=True)
class Settings:
    """Everything the DAG reads from the environment (see :data:`VARIABLES`)."""

    runtime: str = "local"
    bucket: str = "ct-denoise"
    incoming_prefix: str = "incoming"
    work_prefix: str = "work"
    denoised_prefix: str = "denoised"
    dicom_glob: str = "*.dcm"
    schedule: str | None = "@daily"
    timezone: str = "UTC"
    start_date: str = "2026-01-01"
    catchup: bool = False
    max_active_runs: int = 1
    max_active_tasks: int = 8
    spark_pool: str = "ct_denoise_spark"
    pod_pool: str = "ct_denoise_pods"
    retries: int = 2
    retry_delay_seconds: float = 60.0
    max_retry_delay_seconds: float = 1800.0
    poke_interval_seconds: float = 60.0
    deferrable: bool = True
    wait_timeout_seconds: float = 21600.0
    settle_seconds: float = 300.0
    settle_timeout_seconds: float = 7200.0
    aws_conn_id: str = "aws_default"
    spark_conn_id: str = "spark_default"
    spark_application: str = str(REPO_ROOT / "spark" / "dssvd.py")
    spark_conf: dict[str, str] = field(default_factory=dict)
    kubernetes_conn_id: str = "kubernetes_default"
    namespace: str = "ct-denoise"
    worker_image: str = "ctdenoise-worker:0.1.0"
    spark_image: str = "ctdenoise-spark:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    s3_secret: str = "ct-denoise-s3"
    service_account: str | None = None
    spark_service_account: str = "spark-operator-spark"
    pod_cpu_request: str = "1"
    pod_cpu_limit: str = "2"
    pod_memory_request: str = "2Gi"
    pod_memory_limit: str = "4Gi"
    spark_driver_cores: int = 1
    spark_driver_memory: str = "1g"
    spark_executor_instances: int = 2
    spark_executor_cores: int = 1
    spark_executor_memory: str = "2g"

    # -- bucket layout -------------------------------------------------------------------------

    def partition_url(self, ds: str) -> str:
        """``s3://<bucket>/<incoming>/<ds>``: the arrival partition of one logical date."""
        return f"s3://{self.bucket}/{self.incoming_prefix.strip('/')}/{ds}"

    def partition_date(self, logical_date: datetime | None) -> str:
        """The run's partition date: its logical date as a day in ``timezone`` (``YYYY-MM-DD``).

        Not Airflow's ``ds``, which is the UTC date: in Europe/Berlin the daily run of 20 November
        has the logical date 2026-11-19T23:00Z, and ``ds`` would name the 19th's partition."""
        if logical_date is None:
            raise ParameterError("this run has no logical date, which names its partition: trigger it with one")
        return logical_date.astimezone(ZoneInfo(self.timezone)).date().isoformat()

    def partition_template(self) -> str:
        """The same, templated on the run's logical date (for sensors' templated fields; the DAG
        provides :meth:`partition_date` as the ``ctdenoise_partition_date`` macro: not
        ``partition_date``, a context key of Airflow 3's own, which would hide it)."""
        return self.partition_url("{{ ctdenoise_partition_date(logical_date) }}")

    def work_url(self, ds: str) -> str:
        return f"s3://{self.bucket}/{self.work_prefix.strip('/')}/{ds}"

    def denoised_url(self) -> str:
        return f"s3://{self.bucket}/{self.denoised_prefix.strip('/')}"


def _get(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    return VARIABLES[name][0] if value is None or value.strip() == "" else value.strip()


def _int(env: Mapping[str, str], name: str, minimum: int = 0) -> int:
    text = _get(env, name)
    try:
        value = int(text)
    except ValueError:
        raise ParameterError(f"{name}={text!r}: not an integer") from None
    if value < minimum:
        raise ParameterError(f"{name}={value}: must be >= {minimum}")
    return value


def _seconds(env: Mapping[str, str], name: str) -> float:
    text = _get(env, name)
    try:
        value = float(text)
    except ValueError:
        raise ParameterError(f"{name}={text!r}: not a number of seconds") from None
    if value < 0:
        raise ParameterError(f"{name}={value}: must be >= 0 seconds")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    text = _get(env, name).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ParameterError(f"{name}={text!r}: expected true or false")


def _spark_conf(env: Mapping[str, str]) -> dict[str, str]:
    text = _get(env, "CT_DENOISE_SPARK_CONF")
    try:
        conf = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParameterError(f"CT_DENOISE_SPARK_CONF is not JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise ParameterError("CT_DENOISE_SPARK_CONF must be a JSON object of Spark properties")
    return {str(k): str(v) for k, v in conf.items()}


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default ``os.environ``); a clear :class:`ParameterError` if one is invalid."""
    env = os.environ if env is None else env
    runtime = _get(env, "CT_DENOISE_RUNTIME").lower()
    if runtime not in RUNTIMES:
        raise ParameterError(f"CT_DENOISE_RUNTIME={runtime!r}: expected one of {', '.join(RUNTIMES)}")
    schedule = _get(env, "CT_DENOISE_SCHEDULE")
    tz = _get(env, "CT_DENOISE_TIMEZONE")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ParameterError(f"CT_DENOISE_TIMEZONE={tz!r}: not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
    start = _get(env, "CT_DENOISE_START_DATE")
    try:
        datetime.fromisoformat(start)
    except ValueError:
        raise ParameterError(f"CT_DENOISE_START_DATE={start!r}: expected a date YYYY-MM-DD") from None
    bucket = _get(env, "CT_DENOISE_BUCKET")
    if "/" in bucket or bucket.startswith("s3:"):
        raise ParameterError(f"CT_DENOISE_BUCKET={bucket!r}: a bucket name only (prefixes have their own variables)")
    return Settings(
        runtime=runtime,
        bucket=bucket,
        incoming_prefix=_get(env, "CT_DENOISE_INCOMING_PREFIX").strip("/"),
        work_prefix=_get(env, "CT_DENOISE_WORK_PREFIX").strip("/"),
        denoised_prefix=_get(env, "CT_DENOISE_DENOISED_PREFIX").strip("/"),
        dicom_glob=_get(env, "CT_DENOISE_DICOM_GLOB"),
        schedule=None if schedule.lower() in ("none", "null", "manual") else schedule,
        timezone=tz,
        start_date=start,
        catchup=_bool(env, "CT_DENOISE_CATCHUP"),
        max_active_runs=_int(env, "CT_DENOISE_MAX_ACTIVE_RUNS", 1),
        max_active_tasks=_int(env, "CT_DENOISE_MAX_ACTIVE_TASKS", 1),
        spark_pool=_get(env, "CT_DENOISE_SPARK_POOL"),
        pod_pool=_get(env, "CT_DENOISE_POD_POOL"),
        retries=_int(env, "CT_DENOISE_RETRIES"),
        retry_delay_seconds=_seconds(env, "CT_DENOISE_RETRY_DELAY_SECONDS"),
        max_retry_delay_seconds=_seconds(env, "CT_DENOISE_MAX_RETRY_DELAY_SECONDS"),
        poke_interval_seconds=_seconds(env, "CT_DENOISE_POKE_INTERVAL_SECONDS"),
        deferrable=_bool(env, "CT_DENOISE_DEFERRABLE"),
        wait_timeout_seconds=_seconds(env, "CT_DENOISE_WAIT_TIMEOUT_SECONDS"),
        settle_seconds=_seconds(env, "CT_DENOISE_SETTLE_SECONDS"),
        settle_timeout_seconds=_seconds(env, "CT_DENOISE_SETTLE_TIMEOUT_SECONDS"),
        aws_conn_id=_get(env, "CT_DENOISE_AWS_CONN_ID"),
        spark_conn_id=_get(env, "CT_DENOISE_SPARK_CONN_ID"),
        spark_application=_get(env, "CT_DENOISE_SPARK_APPLICATION") or str(REPO_ROOT / "spark" / "dssvd.py"),
        spark_conf=_spark_conf(env),
        kubernetes_conn_id=_get(env, "CT_DENOISE_KUBERNETES_CONN_ID"),
        namespace=_get(env, "CT_DENOISE_NAMESPACE"),
        worker_image=_get(env, "CT_DENOISE_WORKER_IMAGE"),
        spark_image=_get(env, "CT_DENOISE_SPARK_IMAGE"),
        image_pull_policy=_get(env, "CT_DENOISE_IMAGE_PULL_POLICY"),
        s3_secret=_get(env, "CT_DENOISE_S3_SECRET"),
        service_account=_get(env, "CT_DENOISE_SERVICE_ACCOUNT") or None,
        spark_service_account=_get(env, "CT_DENOISE_SPARK_SERVICE_ACCOUNT"),
        pod_cpu_request=_get(env, "CT_DENOISE_POD_CPU_REQUEST"),
        pod_cpu_limit=_get(env, "CT_DENOISE_POD_CPU_LIMIT"),
        pod_memory_request=_get(env, "CT_DENOISE_POD_MEMORY_REQUEST"),
        pod_memory_limit=_get(env, "CT_DENOISE_POD_MEMORY_LIMIT"),
        spark_driver_cores=_int(env, "CT_DENOISE_SPARK_DRIVER_CORES", 1),
        spark_driver_memory=_get(env, "CT_DENOISE_SPARK_DRIVER_MEMORY"),
        spark_executor_instances=_int(env, "CT_DENOISE_SPARK_EXECUTOR_INSTANCES", 1),
        spark_executor_cores=_int(env, "CT_DENOISE_SPARK_EXECUTOR_CORES", 1),
        spark_executor_memory=_get(env, "CT_DENOISE_SPARK_EXECUTOR_MEMORY"),
    )

