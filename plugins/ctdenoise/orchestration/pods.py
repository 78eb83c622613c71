"""The ``kubernetes`` runtime: convert and reconstruct as pods, dssvd as a SparkApplication.

Pods run the worker image (``images/Dockerfile.worker``) through the entry point
:mod:`ctdenoise.orchestration.podrun`, which runs ``ctdenoise convert`` / ``ctdenoise
reconstruct`` and writes the task's XCom document to ``/airflow/xcom/return.json`` (the
operator's sidecar hands it back to Airflow). Every pod:

- runs as a non-root user (uid/gid 10001) with a read-only root file system, no privilege
  escalation, all capabilities dropped and the runtime's default seccomp profile; ``/tmp`` is
  an ``emptyDir`` (staging of Zarr stores and DICOM files before publication);
- has CPU/memory requests and limits (``CT_DENOISE_POD_*``) and an active deadline;
- gets S3 access from the Kubernetes secret ``CT_DENOISE_S3_SECRET`` (``envFrom``), never from
  the DAG file or the Airflow metadata;
- that exits with 2 (``ctdenoise``'s bad input or parameters) fails its task at once, as the
  local runtime's ``CtDenoiseError`` does; other failures (S3, eviction, OOM) retry
  (:class:`CtDenoisePodOperator`).

``dssvd`` renders the SparkApplication (:mod:`ctdenoise.orchestration.sparkapp`) per series for
SparkKubernetesOperator; the Spark image runs the same ``spark/dssvd.py``.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowException
from airflow.providers.cncf.kubernetes.operators.spark_kubernetes import SparkKubernetesOperator
from airflow.providers.cncf.kubernetes.utils.container import get_container_status
from kubernetes.client import models as k8s

from ctdenoise.errors import InputError
from ctdenoise.orchestration.config import Settings

RUN_AS = 10001  # the worker image's user (images/Dockerfile.worker)
LABEL_ANNOTATION = "ctdenoise/label"
PODRUN = ["python", "-m", "ctdenoise.orchestration.podrun"]
TMP_SIZE = "20Gi"  # a 512x512x600 series: 600 MB matrix + DICOM output, with room to spare


def pod_security_context() -> k8s.V1PodSecurityContext:
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=RUN_AS,
        run_as_group=RUN_AS,
        fs_group=RUN_AS,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def container_security_context() -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        run_as_user=RUN_AS,
        run_as_group=RUN_AS,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
    )


INPUT_ERROR_EXIT = 2
"""Exit status of ``ctdenoise`` and of the pod entry point for expected errors (bad input or
parameters, a missing store, a command line it cannot parse): retrying cannot fix them."""


def exit_code(remote_pod: Any, container: str) -> int | None:
    """The terminated exit code of ``container`` in ``remote_pod`` (None if it did not terminate)."""
    status = get_container_status(remote_pod, container)
    terminated = status.state.terminated if status is not None and status.state is not None else None
    return None if terminated is None else terminated.exit_code


class CtDenoisePodOperator(KubernetesPodOperator):
    """``KubernetesPodOperator`` whose pod failing with :data:`INPUT_ERROR_EXIT` raises
    :class:`~ctdenoise.errors.InputError`, which the DAG's retry policy fails at once: a corrupt
    series is not retried twice with backoff before its failure shows (the operator itself
    raises one ``AirflowException`` for every failure, whatever the exit code)."""

    def cleanup(self, pod: k8s.V1Pod, remote_pod: k8s.V1Pod, xcom_result: dict | None = None, context: Any = None) -> None:
        try:
            super().cleanup(pod, remote_pod, xcom_result=xcom_result, context=context)
        except AirflowException as exc:
            if exit_code(remote_pod, self.base_container_name) != INPUT_ERROR_EXIT:
                raise
            label = (self.annotations or {}).get(LABEL_ANNOTATION, self.task_id)
            raise InputError(f"{label}: the {self.task_id} pod exited with {INPUT_ERROR_EXIT} (bad input or parameters: "
                             f"see the pod log above); not retried") from exc  # fmt: skip


def container_resources(settings: Settings) -> k8s.V1ResourceRequirements:
    return k8s.V1ResourceRequirements(
        requests={"cpu": settings.pod_cpu_request, "memory": settings.pod_memory_request},
        limits={"cpu": settings.pod_cpu_limit, "memory": settings.pod_memory_limit},
    )


def pod_partial_kwargs(settings: Settings, component: str, minutes: int) -> dict[str, Any]:
    """What convert and reconstruct pods share (``KubernetesPodOperator.partial`` kwargs)."""
    return {
        "namespace": settings.namespace,
        "kubernetes_conn_id": settings.kubernetes_conn_id,
        "image": settings.worker_image,
        "image_pull_policy": settings.image_pull_policy,
        "name": f"ct-denoise-{component}",
        "cmds": list(PODRUN),
        "labels": {"app.kubernetes.io/name": "ctdenoise", "app.kubernetes.io/component": component},
        "env_vars": [
            k8s.V1EnvVar(name="HOME", value="/tmp"),
            k8s.V1EnvVar(name="TMPDIR", value="/tmp"),
            k8s.V1EnvVar(name="MPLCONFIGDIR", value="/tmp/matplotlib"),
            k8s.V1EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1"),
        ],
        "env_from": [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=settings.s3_secret))],
        "volumes": [k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=TMP_SIZE))],
        "volume_mounts": [k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],
        "container_resources": container_resources(settings),
        "security_context": pod_security_context(),
        "container_security_context": container_security_context(),
        "xcom_sidecar_container_security_context": container_security_context(),
        "service_account_name": settings.service_account,
        "automount_service_account_token": False,
        "do_xcom_push": True,
        "get_logs": True,
        "on_finish_action": "delete_pod",
        "startup_timeout_seconds": 600,
        "active_deadline_seconds": minutes * 60,
        "execution_timeout": timedelta(minutes=minutes + 10),
        "pool": settings.pod_pool,
        "map_index_template": "{{ task.annotations['" + LABEL_ANNOTATION + "'] }}",
    }


def convert_pod_kwargs(series: dict[str, Any]) -> dict[str, Any]:
    """Per-series kwargs of the convert pod (an ``XComArg.map`` function)."""
    from ctdenoise.records import Series

    one = Series.from_xcom(series)
    command = ["ctdenoise", "convert", one.source_url, one.matrix_dir, *one.params.convert_arguments()]
    return {
        "arguments": ["convert", "--task", json.dumps(one.to_xcom(), sort_keys=True), "--", *command],
        "annotations": {LABEL_ANNOTATION: one.label, "ctdenoise/series-instance-uid": one.series_instance_uid},
    }


def reconstruct_pod_kwargs(item: dict[str, Any]) -> dict[str, Any]:
    """Per-output kwargs of the reconstruct pod (an ``XComArg.map`` function)."""
    from ctdenoise.records import Output

    output = Output.from_xcom(item)
    return {
        "arguments": ["reconstruct", "--task", json.dumps(output.to_xcom(), sort_keys=True), "--", "ctdenoise",
                      *output.reconstruct_arguments()],  # fmt: skip
        "annotations": {
            LABEL_ANNOTATION: output.label,
            "ctdenoise/series-instance-uid": output.series.series_instance_uid,
            "ctdenoise/mode": output.mode.value,
            "ctdenoise/rank": "" if output.rank is None else str(output.rank),
            "ctdenoise/multiplier": "" if output.multiplier is None else f"{output.multiplier:g}",
        },
    }


def spark_application(converted: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The rendered SparkApplication (a dict) of one converted series."""
    from ctdenoise.job import DssvdJob
    from ctdenoise.orchestration.sparkapp import application_name, spark_application as render
    from ctdenoise.records import Converted

    one = Converted.from_xcom(converted)
    return render(DssvdJob.for_series(one), settings, application_name(one.series.label))


def convert(settings: Settings, series: Any) -> Any:
    """``convert`` pods mapped over the discovered series; returns the XComArg of their results."""
    return (
        CtDenoisePodOperator.partial(task_id="convert", **pod_partial_kwargs(settings, "convert", 60))
        .expand_kwargs(series.map(convert_pod_kwargs))
        .output
    )


def dssvd(settings: Settings, converted: Any, trigger_rule: str) -> Any:
    """``dssvd`` SparkApplications mapped over the successfully converted series."""

    def dssvd_kwargs(one: dict[str, Any]) -> dict[str, Any]:
        return {
            "template_spec": spark_application(one, settings),
            "annotations": {LABEL_ANNOTATION: one["series"]["folder"]},
        }

    return SparkKubernetesOperator.partial(
        task_id="dssvd",
        namespace=settings.namespace,
        kubernetes_conn_id=settings.kubernetes_conn_id,
        get_logs=True,
        delete_on_termination=True,
        startup_timeout_seconds=900,
        execution_timeout=timedelta(hours=2),
        pool=settings.spark_pool,
        trigger_rule=trigger_rule,
        map_index_template="{{ task.annotations['" + LABEL_ANNOTATION + "'] }}",
    ).expand_kwargs(converted.map(dssvd_kwargs)).output


def reconstruct(settings: Settings, plan: Any) -> Any:
    """``reconstruct`` pods mapped over the flat (series, rank) plan, labelled "<series> rank=<r>"."""
    return (
        CtDenoisePodOperator.partial(task_id="reconstruct", **pod_partial_kwargs(settings, "reconstruct", 60))
        .expand_kwargs(plan.map(reconstruct_pod_kwargs))
        .output
    )
