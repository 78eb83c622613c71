"""Settings of the ``ct_denoise`` DAG, each declared once and read from ``CT_DENOISE_<NAME>`` at parse time.

The DAG file holds no deployment detail: bucket, images, namespace, pools, schedule and timeouts
come from the environment of the DAG processor (and of the workers, which parse the same file).
Each field of :class:`Settings` is one variable: its name is ``CT_DENOISE_`` + the field name in
capitals, its default, bounds and meaning are the field's; ``docs/configuration.md`` lists them
(:func:`markdown_table`, compared with the page by a test). One variable chooses how work runs:

``CT_DENOISE_RUNTIME``
    ``local`` (default): ``convert`` and ``reconstruct`` are Python tasks calling the package,
    ``dssvd`` is a SparkSubmitOperator running ``spark/dssvd.py`` against the ``spark_default``
    connection; S3 through the Airflow AWS connection. ``kubernetes``: ``convert`` and
    ``reconstruct`` are pods of the worker image, ``dssvd`` is a SparkApplication; S3 credentials
    come from a Kubernetes secret. Both runtimes have the same task ids and dependencies.

The bucket layout is :mod:`ctdenoise.layout` under the three prefixes. ``<ds>`` is the run's
partition date: its logical date as a calendar day in ``CT_DENOISE_TIMEZONE`` (Airflow's own
``ds`` is the UTC date, a day early for a run at local midnight east of UTC).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ctdenoise.errors import ParameterError

PREFIX = "CT_DENOISE_"


class Runtime(StrEnum):
    LOCAL = "local"
    KUBERNETES = "kubernetes"


class WorkRetention(StrEnum):
    """How long a series' work data (matrices with their DICOM header, decompositions) is kept."""

    REMOVE = "remove"
    KEEP = "keep"


class Settings(BaseModel):
    """Everything the DAG reads from the environment, one field per ``CT_DENOISE_*`` variable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    runtime: Runtime = Field(Runtime.LOCAL, description="local or kubernetes: which operators run convert, dssvd and reconstruct")
    bucket: str = Field("ct-denoise", description="S3 bucket holding incoming/, work/ and denoised/")
    incoming_prefix: str = Field("incoming", description="prefix of the arrival partitions (<prefix>/<ds>/<series-folder>/)")
    work_prefix: str = Field("work", description="prefix of intermediate matrices and SVDs")
    denoised_prefix: str = Field("denoised", description="prefix of the published results")
    dicom_glob: str = Field("*.dcm", description="file name pattern wait_for_scans waits for inside series folders")
    schedule: str | None = Field("@daily", description="cron expression or preset (data-interval timetable); 'none': manual runs only")
    timezone: str = Field("UTC", description="time zone of the schedule and of the partition dates")
    start_date: date = Field(date(2026, 1, 1), description="first logical date of the schedule (YYYY-MM-DD)")
    catchup: bool = Field(False, description="create runs for missed intervals when the DAG is switched on")
    max_active_runs: int = Field(1, ge=1, description="runs of ct_denoise in flight at once (a backfill queues behind)")
    max_active_tasks: int = Field(8, ge=1, description="task instances of one run in flight at once")
    spark_pool: str = Field("ct_denoise_spark", description="Airflow pool of the dssvd tasks (slots = concurrent Spark jobs)")
    pod_pool: str = Field("ct_denoise_pods", description="Airflow pool of convert and reconstruct")
    retries: int = Field(2, ge=0, description="retries of tasks that touch S3 or Spark")
    retry_delay_seconds: float = Field(60.0, ge=0, description="first retry delay; doubles at each retry (exponential backoff)")
    max_retry_delay_seconds: float = Field(1800.0, ge=0, description="upper bound of the retry delay")
    poke_interval_seconds: float = Field(60.0, ge=0, description="how often the sensors look at the bucket")
    deferrable: bool = Field(True, description="wait_for_scans waits in the triggerer (false: reschedule mode; "
                             "`airflow dags test` runs triggers inline and never times them out)")  # fmt: skip
    wait_timeout_seconds: float = Field(21600.0, ge=0, description="wait_for_scans gives up (run skipped) after this long")
    settle_seconds: float = Field(300.0, ge=0, description="a series folder is settled when none of its objects is younger than this")
    settle_timeout_seconds: float = Field(7200.0, ge=0, description="after this long wait_for_settled_upload goes on with the "
                                          "settled folders, leaving out (and naming) the ones still changing; it fails if none has settled")  # fmt: skip
    aws_conn_id: str = Field("aws_default", description="Airflow AWS connection (sensors, and all S3 access of the local runtime)")
    spark_conn_id: str = Field("spark_default", description="Airflow Spark connection of the local runtime (master URL)")
    spark_application: str = Field("", description="path of dssvd.py for spark-submit (empty: spark/dssvd.py beside the DAG folder)")
    spark_conf: dict[str, str] = Field(default_factory=dict, description="JSON object of extra spark-submit --conf entries (local runtime)")
    kubernetes_conn_id: str = Field("kubernetes_default", description="Airflow Kubernetes connection (kubernetes runtime)")
    namespace: str = Field("ct-denoise", description="namespace of the pods and SparkApplications")
    worker_image: str = Field("ctdenoise-worker:0.1.0", description="image of convert/reconstruct pods (images/Dockerfile.worker)")
    spark_image: str = Field("ctdenoise-spark:0.1.0", description="image of the SparkApplication (images/Dockerfile.spark)")
    image_pull_policy: str = Field("IfNotPresent", description="imagePullPolicy of the pods")
    s3_secret: str = Field("ct-denoise-s3", description="Kubernetes secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
                           "(and optionally AWS_ENDPOINT_URL, AWS_DEFAULT_REGION) for pods and Spark")  # fmt: skip
    service_account: str | None = Field(None, description="service account of convert/reconstruct pods (empty: namespace default)")
    spark_service_account: str = Field("spark-operator-spark", description="service account of the Spark driver")
    pod_cpu_request: str = Field("1", description="CPU request of convert/reconstruct pods")
    pod_cpu_limit: str = Field("2", description="CPU limit of convert/reconstruct pods")
    pod_memory_request: str = Field("2Gi", description="memory request of convert/reconstruct pods")
    pod_memory_limit: str = Field("4Gi", description="memory limit of convert/reconstruct pods")
    spark_driver_cores: int = Field(1, ge=1, description="Spark driver cores")
    spark_driver_memory: str = Field("1g", description="Spark driver memory")
    spark_executor_instances: int = Field(2, ge=1, description="Spark executors per SparkApplication")
    spark_executor_cores: int = Field(1, ge=1, description="cores per Spark executor")
    spark_executor_memory: str = Field("2g", description="memory per Spark executor")
    work_retention: WorkRetention = Field(WorkRetention.REMOVE, description="remove: clean_work deletes a series' work data "
                                          "(its matrix holds the DICOM header) once its outputs are published and delivered "
                                          "(see docs/data-retention.md); keep: never (debugging)")  # fmt: skip

    @field_validator("schedule", mode="before")
    @classmethod
    def _manual(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in ("none", "null", "manual") else value

    @field_validator("runtime", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("incoming_prefix", "work_prefix", "denoised_prefix")
    @classmethod
    def _strip_slashes(cls, value: str) -> str:
        return value.strip("/")

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if "/" in value or value.startswith("s3:"):
            raise ValueError("a bucket name only (prefixes have their own variables)")
        return value

    @field_validator("timezone")
    @classmethod
    def _iana(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
        return value

    @field_validator("spark_conf", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object of Spark properties")
        return {str(k): str(v) for k, v in value.items()}

    # -- bucket layout -------------------------------------------------------------------------

    def partition_url(self, ds: str) -> str:
        """``s3://<bucket>/<incoming>/<ds>``: the arrival partition of one logical date."""
        return f"s3://{self.bucket}/{self.incoming_prefix}/{ds}"

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
        return f"s3://{self.bucket}/{self.work_prefix}/{ds}"

    def denoised_url(self) -> str:
        return f"s3://{self.bucket}/{self.denoised_prefix}"

    def start_datetime(self) -> datetime:
        return datetime.combine(self.start_date, datetime.min.time(), tzinfo=ZoneInfo(self.timezone))

    def with_application(self, dags_folder: Path) -> Self:
        """These settings with the spark-submit application resolved: ``spark/dssvd.py`` beside the
        DAG folder of a source checkout unless ``CT_DENOISE_SPARK_APPLICATION`` names one."""
        if self.spark_application:
            return self
        return self.model_copy(update={"spark_application": str(Path(dags_folder).resolve().parent / "spark" / "dssvd.py")})


def variable(name: str) -> str:
    return PREFIX + name.upper()


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default ``os.environ``): unset or blank variables take their
    defaults; a one-line :class:`ParameterError` naming the variable if one is invalid."""
    env = os.environ if env is None else env
    given = {name: env[variable(name)].strip() for name in Settings.model_fields if (env.get(variable(name)) or "").strip()}
    try:
        return Settings.model_validate(given)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        raise ParameterError(f"{variable(name)}={given.get(name)!r}: {message}") from None


def markdown_table() -> str:
    """The settings table of docs/configuration.md: variable, default, meaning."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = json.dumps(default) if isinstance(default, dict) else ("" if default is None else str(default))
        lines.append(f"| `{variable(name)}` | {f'`{shown}`' if shown else ''} | {info.description} |")
    return "\n".join(lines) + "\n"
