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
from ctdenoise.job import DssvdBatch, DssvdJob
from ctdenoise.orchestration.config import Settings

TEMPLATE = "sparkapplication.yaml"
MAIN_APPLICATION_FILE = "local:///opt/ctdenoise/spark/dssvd.py"  # where images/Dockerfile.spark puts the job
SPARK_VERSION = "4.2.0"
RUN_AS = 185  # the spark user of the Apache Spark images
BASE_SPARK_CONF = {
    "spark.python.worker.reuse": "true",
    "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",  # one BLAS thread per task: tasks are the parallelism
    "spark.executorEnv.OMP_NUM_THREADS": "1",
}
LABELS = {"app.kubernetes.io/name": "ctdenoise", "app.kubernetes.io/component": "dssvd"}

# Kubernetes object names (DNS-1123 subdomain); the operator derives pod and service names from
# it, so keep it short enough for the "-driver" / "-ui-svc" suffixes.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MAX_NAME = 54


def application_name(label: str) -> str:
    """A DNS-1123 name for the SparkApplication of a series folder (<= 40 characters + suffix)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", label.lower()).strip("-")[:22].strip("-") or "series"
    digest = hashlib.sha256(label.encode()).hexdigest()[:8]
    return f"dssvd-{slug}-{digest}"


def spark_values(job: DssvdJob | DssvdBatch, settings: Settings, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The template's values: ``name`` checked, everything else from the settings and the job."""
    if len(name) > _MAX_NAME or not _NAME.match(name):
        raise ParameterError(f"SparkApplication name {name!r}: lowercase letters, digits and '-', at most {_MAX_NAME} characters")
    image = settings.image("spark")
    common = {**LABELS, **settings.spark_labels, **(labels or {})}
    return {
        "name": name,
        "namespace": settings.namespace,
        "labels": common,
        "image": image,
        "image_pull_policy": settings.pull_policy(image),
        "image_pull_secrets": list(settings.image_pull_secrets),
        "main_application_file": MAIN_APPLICATION_FILE,
        "spark_version": SPARK_VERSION,
        "s3_secret": settings.s3_secret,
        "arguments": job.arguments(),
        "spark_conf": {**BASE_SPARK_CONF, **settings.spark_conf},
        "ttl_seconds": settings.spark_ttl_seconds,
        "run_as_user": RUN_AS,
        "nodeSelector": dict(settings.spark_node_selector),
        "tolerations": list(settings.spark_tolerations),
        "affinity": dict(settings.spark_affinity),
        "driver": _role(settings, common, "driver", cores=settings.spark_driver_cores, memory=settings.spark_driver_memory),
        "executor": _role(settings, common, "executor", cores=settings.spark_executor_cores, memory=settings.spark_executor_memory,
                          instances=settings.spark_executor_instances),  # fmt: skip
    }


def _role(settings: Settings, labels: dict[str, str], role: str, **sizes: Any) -> dict[str, Any]:
    """Driver or executor: size, identity, limits and labels of its pods."""
    return {
        **sizes,
        "labels": {**labels, "app.kubernetes.io/component": f"dssvd-{role}"},
        "service_account": settings.spark_service_account if role == "driver" else settings.spark_executor_service_account,
        "coreLimit": getattr(settings, f"spark_{role}_core_limit"),
        "memoryOverhead": getattr(settings, f"spark_{role}_memory_overhead"),
        "priorityClassName": settings.spark_priority_class,
    }


def spark_application(job: DssvdJob | DssvdBatch, settings: Settings, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The SparkApplication manifest (a dict), ready for ``SparkKubernetesOperator(template_spec=...)``."""
    import jinja2
    import yaml

    source = resources.files("ctdenoise.orchestration").joinpath(TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return yaml.safe_load(env.from_string(source).render(dssvd=spark_values(job, settings, name, labels)))
