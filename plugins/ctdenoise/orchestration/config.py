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
import re
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


class OnFinish(StrEnum):
    """What the provider does with a finished pod (its ``on_finish_action``); the Spark operator follows suit."""

    DELETE = "delete_pod"
    DELETE_SUCCEEDED = "delete_succeeded_pod"
    KEEP = "keep_pod"


class PodResources(BaseModel):
    """A container's resource requests and limits, as Kubernetes spells them (``cpu``, ``memory``, ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


class PullPolicy(StrEnum):
    """Kubernetes' imagePullPolicy values."""

    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


# Fields given as JSON in their variable; the Kubernetes model each must match, field by field.
_JSON_FIELDS = {"spark_conf": None, "selection": None, "convert_resources": None, "reconstruct_resources": None, "spark_labels": None,
                "pod_node_selector": None, "spark_node_selector": None, "pod_tolerations": "V1Toleration",
                "spark_tolerations": "V1Toleration", "pod_affinity": "V1Affinity", "spark_affinity": "V1Affinity"}  # fmt: skip
_NONE_WORDS = ("none", "null", "manual")
_VERSION_TAG = re.compile(r":v?\d+(\.\d+)*([-+.][0-9A-Za-z.-]+)?$")


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
    spark_batch_series: int = Field(1, ge=1, description="series per dssvd task: one Spark application decomposes this many "
                                    "series one after the other, paying the session's start once (a partition of many small "
                                    "series); 1: a task per series")  # fmt: skip
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
    spark_conf: dict[str, str] = Field(default_factory=dict, description="JSON object of extra Spark properties: spark-submit --conf (local runtime), the "
                                      "SparkApplication's sparkConf (kubernetes)")  # fmt: skip
    kubernetes_conn_id: str = Field("kubernetes_default", description="Airflow Kubernetes connection (kubernetes runtime)")
    namespace: str = Field("ct-denoise", description="namespace of the pods and SparkApplications")
    # -- kubernetes runtime: images --------------------------------------------------------------
    image_registry: str = Field("registry.example.com/ctdenoise", description="registry and path of the default images: "
                                "<registry>/ctdenoise-worker:<version> and <registry>/ctdenoise-spark:<version> (the package's version)")  # fmt: skip
    worker_image: str | None = Field(None, description="image of convert/reconstruct pods (images/Dockerfile.worker); "
                                     "empty: the default under CT_DENOISE_IMAGE_REGISTRY")  # fmt: skip
    spark_image: str | None = Field(None, description="image of the SparkApplication (images/Dockerfile.spark); "
                                    "empty: the default under CT_DENOISE_IMAGE_REGISTRY")  # fmt: skip
    image_pull_policy: PullPolicy | None = Field(None, description="imagePullPolicy of pods and Spark; empty: IfNotPresent "
                                                 "for an image pinned by digest or version tag, Always for any other tag")  # fmt: skip
    image_pull_secrets: list[str] = Field(default_factory=list, description="names of docker-registry secrets for pods and "
                                          "Spark (JSON list or comma-separated)")  # fmt: skip
    # -- kubernetes runtime: identity and S3 ------------------------------------------------------
    s3_secret: str | None = Field("ct-denoise-s3", description="Kubernetes secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
                                  "(and optionally AWS_ENDPOINT_URL, AWS_DEFAULT_REGION) for pods and Spark; 'none': no secret, "
                                  "S3 access through the service accounts (IRSA, workload identity)")  # fmt: skip
    service_account: str | None = Field("ct-denoise-pods", description="service account of convert/reconstruct pods "
                                        "('none': the namespace default); its token is not mounted")  # fmt: skip
    spark_service_account: str = Field("ct-denoise-spark-driver", description="service account of the Spark driver (creates the executors)")
    spark_executor_service_account: str = Field("ct-denoise-spark-executor", description="service account of the Spark executors "
                                                "(no API access, no token; give it the S3 role for IRSA / workload identity)")  # fmt: skip
    # -- kubernetes runtime: convert and reconstruct pods -----------------------------------------
    convert_resources: PodResources = Field(
        default_factory=lambda: PodResources(requests={"cpu": "1", "memory": "3Gi"}, limits={"cpu": "2", "memory": "6Gi"}),
        description="JSON {requests, limits} of the convert pods' container (memory grows with the slices: "
                    "a 512 x 512 x 1000 series peaks at 2.2 GiB, docs/benchmarks.md)",
    )
    reconstruct_resources: PodResources = Field(
        default_factory=lambda: PodResources(requests={"cpu": "1", "memory": "2Gi"}, limits={"cpu": "2", "memory": "4Gi"}),
        description="JSON {requests, limits} of the reconstruct pods' container",
    )
    pod_tmp_size: str = Field("20Gi", description="size of the /tmp emptyDir of convert/reconstruct pods (staging), "
                              "also requested as ephemeral-storage")  # fmt: skip
    pod_node_selector: dict[str, str] = Field(default_factory=dict, description="JSON nodeSelector of convert/reconstruct pods")
    pod_tolerations: list[dict[str, Any]] = Field(default_factory=list, description="JSON list of tolerations of convert/reconstruct pods")
    pod_affinity: dict[str, Any] = Field(default_factory=dict, description="JSON affinity of convert/reconstruct pods")
    pod_priority_class: str | None = Field(None, description="priorityClassName of convert/reconstruct pods")
    pod_timeout_minutes: int = Field(60, ge=1, description="activeDeadlineSeconds of a convert/reconstruct pod (its task "
                                     "times out 10 minutes later)")  # fmt: skip
    pod_startup_timeout_seconds: int = Field(600, ge=1, description="a pod not running after this long (unschedulable, "
                                             "image not pulled) fails its task")  # fmt: skip
    pod_on_finish_action: OnFinish = Field(OnFinish.DELETE_SUCCEEDED, description="what happens to a finished pod or "
                                           "SparkApplication: delete_succeeded_pod keeps failed ones for inspection "
                                           "(SparkApplications until CT_DENOISE_SPARK_TTL_SECONDS)")  # fmt: skip
    kubernetes_deferrable: bool = Field(True, description="convert, reconstruct and dssvd wait in the triggerer, not "
                                        "in a worker slot (kubernetes runtime)")  # fmt: skip
    # -- Spark -------------------------------------------------------------------------------------
    spark_driver_cores: int = Field(1, ge=1, description="Spark driver cores")
    spark_driver_memory: str = Field("1g", description="Spark driver memory")
    spark_executor_instances: int = Field(2, ge=1, description="Spark executors per SparkApplication")
    spark_executor_cores: int = Field(1, ge=1, description="cores per Spark executor")
    spark_executor_memory: str = Field("2g", description="memory per Spark executor")
    spark_driver_core_limit: str | None = Field(None, description="CPU limit of the Spark driver pod (e.g. 1200m)")
    spark_executor_core_limit: str | None = Field(None, description="CPU limit of a Spark executor pod (e.g. 1200m)")
    spark_driver_memory_overhead: str | None = Field(None, description="non-heap memory of the Spark driver pod (e.g. 512m)")
    spark_executor_memory_overhead: str | None = Field(None, description="non-heap memory of a Spark executor pod (e.g. 1g; "
                                                       "its Python workers live there)")  # fmt: skip
    spark_labels: dict[str, str] = Field(default_factory=dict, description="JSON labels of the SparkApplications and their pods")
    spark_node_selector: dict[str, str] = Field(default_factory=dict, description="JSON nodeSelector of Spark driver and executors")
    spark_tolerations: list[dict[str, Any]] = Field(default_factory=list, description="JSON list of tolerations of Spark driver and executors")
    spark_affinity: dict[str, Any] = Field(default_factory=dict, description="JSON affinity of Spark driver and executors")
    spark_priority_class: str | None = Field(None, description="priorityClassName of Spark driver and executors")
    spark_timeout_minutes: int = Field(120, ge=1, description="a dssvd task (its Spark job) times out after this long")
    spark_startup_timeout_seconds: int = Field(900, ge=1, description="a SparkApplication whose driver is not running after "
                                               "this long fails its task")  # fmt: skip
    spark_ttl_seconds: int = Field(3600, ge=1, description="timeToLiveSeconds: a finished SparkApplication left in place "
                                   "is deleted after this long")  # fmt: skip
    # -- pools ---------------------------------------------------------------------------------------
    spark_pool_slots: int = Field(1, ge=1, description="slots of CT_DENOISE_SPARK_POOL that `ctdenoise pools` creates")
    pod_pool_slots: int = Field(4, ge=1, description="slots of CT_DENOISE_POD_POOL that `ctdenoise pools` creates")
    check_pools: bool | None = Field(None, description="fail a run at its start, naming the pool, when `ctdenoise pools` has "
                                     "not created a pool the DAG uses (its tasks would wait forever); empty: on in the "
                                     "kubernetes runtime")  # fmt: skip
    selection: dict[str, Any] | None = Field(None, description="JSON selection rules, the default of the run parameter "
                                             "selection (empty: axial original CT with at least 8 slices; see docs/delivery.md)")  # fmt: skip
    destinations: str = Field("", description="comma-separated Airflow connection ids of the PACS that deliver sends outputs to "
                              "(DICOMweb or DIMSE, see docs/delivery.md); empty: no delivery")  # fmt: skip
    delivery_pool: str = Field("ct_denoise_delivery", description="Airflow pool of the deliver tasks (slots = deliveries in flight, "
                               "i.e. concurrent associations or STOW-RS requests at the PACS)")  # fmt: skip
    delivery_pool_slots: int = Field(2, ge=1, description="slots of CT_DENOISE_DELIVERY_POOL that `ctdenoise pools` creates")
    delivery_verify_seconds: float = Field(30.0, ge=0, description="how long a destination may take to show delivered instances "
                                           "in its QIDO-RS / C-FIND answers before the delivery counts as unconfirmed (retried)")  # fmt: skip
    series_description_prefix: str = Field("DENOISED", max_length=24, description="start of the SeriesDescription of every derived "
                                           "series, before the output ('SVD rank 9', 'local x0.5') and the source's description")  # fmt: skip
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

    @field_validator("selection")
    @classmethod
    def _selection_object(cls, value: Any) -> Any:
        """A JSON object here; the rules themselves are checked when a run starts (their keyword
        check needs pydicom's dictionary, which the DAG file must not import)."""
        if value is not None and not isinstance(value, dict):
            raise ValueError('must be a JSON object {"selections": [...]}')
        return value

    @property
    def destination_ids(self) -> list[str]:
        """The Airflow connection ids of :attr:`destinations`, in order."""
        return [c.strip() for c in self.destinations.split(",") if c.strip()]

    @field_validator(*_JSON_FIELDS, mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON: {exc}") from None
        return value

    @field_validator("spark_conf", mode="before")
    @classmethod
    def _spark_properties(cls, value: Any) -> Any:
        value = cls._json(value)  # "before" validators run last-defined first
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object of Spark properties")
        return {str(k): str(v) for k, v in value.items()}

    @field_validator("pod_tolerations", "spark_tolerations", "pod_affinity", "spark_affinity")
    @classmethod
    def _kubernetes_model(cls, value: Any, info: Any) -> Any:
        kind = _JSON_FIELDS[info.field_name]
        for item in value if isinstance(value, list) else [value] if value else []:
            _check_kubernetes_model(item, kind)
        return value

    @field_validator("s3_secret", "service_account", mode="before")
    @classmethod
    def _none_word(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in _NONE_WORDS else value

    @field_validator("image_pull_secrets", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("image_pull_policy", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> Any:
        return {p.value.lower(): p.value for p in PullPolicy}.get(value.strip().lower(), value) if isinstance(value, str) else value

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

    # -- kubernetes runtime -----------------------------------------------------------------------

    def image(self, kind: str) -> str:
        """The image of ``worker`` pods or of ``spark`` applications: the setting, or
        ``<image_registry>/ctdenoise-<kind>:<package version>`` (one version for every image)."""
        from ctdenoise import __version__

        chosen = {"worker": self.worker_image, "spark": self.spark_image}[kind]
        return chosen or f"{self.image_registry.rstrip('/')}/ctdenoise-{kind}:{__version__}"

    def pull_policy(self, image: str) -> str:
        """``image_pull_policy``, or IfNotPresent for an image pinned by digest or version tag
        (it never changes under that name) and Always for any other tag (``latest``, ``main``...)."""
        if self.image_pull_policy is not None:
            return self.image_pull_policy.value
        pinned = "@sha256:" in image or bool(_VERSION_TAG.search(image))
        return (PullPolicy.IF_NOT_PRESENT if pinned else PullPolicy.ALWAYS).value

    def pools_checked(self) -> bool:
        """Whether a run checks its pools at the start (``check_pools``; default: kubernetes runtime)."""
        return self.runtime == Runtime.KUBERNETES if self.check_pools is None else self.check_pools

    def with_application(self, dags_folder: Path) -> Self:
        """These settings with the spark-submit application resolved: ``spark/dssvd.py`` beside the
        DAG folder of a source checkout unless ``CT_DENOISE_SPARK_APPLICATION`` names one."""
        if self.spark_application:
            return self
        return self.model_copy(update={"spark_application": str(Path(dags_folder).resolve().parent / "spark" / "dssvd.py")})


def _check_kubernetes_model(value: Any, kind: str) -> None:
    """Refuse a ``kind`` (e.g. ``V1Toleration``) with a field Kubernetes does not know: the
    provider deserializes these dicts with the Kubernetes client, which drops unknown keys
    silently (a misspelt ``tolerationSeconds`` would vanish)."""
    from kubernetes.client import ApiClient

    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object ({kind[2:]})")
    client = ApiClient()
    back = client.sanitize_for_serialization(client._ApiClient__deserialize(value, kind))  # the provider's own conversion
    unknown = _unknown_keys(value, back)
    if unknown:
        raise ValueError(f"not a Kubernetes {kind[2:]}: unknown field {unknown[0]!r}")


def _unknown_keys(given: Any, known: Any, path: str = "") -> list[str]:
    if isinstance(given, dict):
        known = known if isinstance(known, dict) else {}
        return [p for key, value in given.items()
                for p in ([f"{path}{key}"] if key not in known else _unknown_keys(value, known[key], f"{path}{key}."))]  # fmt: skip
    if isinstance(given, list) and isinstance(known, list):
        return [p for g, k in zip(given, known) for p in _unknown_keys(g, k, path)]
    return []


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
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        shown = json.dumps(default) if isinstance(default, dict | list) and default else ("" if default in (None, {}, []) else str(default))
        lines.append(f"| `{variable(name)}` | {f'`{shown}`' if shown else ''} | {info.description} |")
    return "\n".join(lines) + "\n"
