"""The SparkApplication of one series' decomposition job (kubernetes runtime).

``sparkapplication.yaml`` beside this module (package data: found wherever the package is
installed) is a Jinja template whose values all come from one dict: the deployment's settings
(:class:`~ctdenoise.orchestration.config.Settings`) and the job's argument list
(:meth:`ctdenoise.job.DssvdJob.arguments`). jinja2 and PyYAML come with Airflow.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from typing import Any

from ctdenoise.errors import ParameterError
from ctdenoise.job import DssvdJob
from ctdenoise.orchestration.config import Settings

TEMPLATE = "sparkapplication.yaml"
MAIN_APPLICATION_FILE = "local:///opt/ctdenoise/spark/dssvd.py"  # where images/Dockerfile.spark puts the job
SPARK_VERSION = "4.2.0"
RUN_AS = 185  # the spark user of the Apache Spark images
RETRIES = 2
RETRY_INTERVAL_SECONDS = 30
TTL_SECONDS = 3600

# Kubernetes object names (DNS-1123 subdomain); the operator derives pod and service names from
# it, so keep it short enough for the "-driver" / "-ui-svc" suffixes.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MAX_NAME = 54


def application_name(label: str) -> str:
    """A DNS-1123 name for the SparkApplication of a series folder (<= 40 characters + suffix)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", label.lower()).strip("-")[:22].strip("-") or "series"
    digest = hashlib.sha256(label.encode()).hexdigest()[:8]
    return f"dssvd-{slug}-{digest}"


def spark_values(job: DssvdJob, settings: Settings, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The template's values: ``name`` checked, everything else from the settings and the job."""
    if len(name) > _MAX_NAME or not _NAME.match(name):
        raise ParameterError(f"SparkApplication name {name!r}: lowercase letters, digits and '-', at most {_MAX_NAME} characters")
    return {
        "name": name,
        "namespace": settings.namespace,
        "image": settings.spark_image,
        "image_pull_policy": settings.image_pull_policy,
        "main_application_file": MAIN_APPLICATION_FILE,
        "spark_version": SPARK_VERSION,
        "service_account": settings.spark_service_account,
        "s3_secret": settings.s3_secret,
        "arguments": job.arguments(),
        "driver_cores": settings.spark_driver_cores,
        "driver_memory": settings.spark_driver_memory,
        "executor_cores": settings.spark_executor_cores,
        "executor_instances": settings.spark_executor_instances,
        "executor_memory": settings.spark_executor_memory,
        "retries": RETRIES,
        "retry_interval_seconds": RETRY_INTERVAL_SECONDS,
        "ttl_seconds": TTL_SECONDS,
        "run_as_user": RUN_AS,
        "labels": dict(labels or {}),
        "spark_conf": {},
    }


def spark_application(job: DssvdJob, settings: Settings, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The SparkApplication manifest (a dict), ready for ``SparkKubernetesOperator(template_spec=...)``."""
    import jinja2
    import yaml

    source = resources.files("ctdenoise.orchestration").joinpath(TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return yaml.safe_load(env.from_string(source).render(dssvd=spark_values(job, settings, name, labels)))
