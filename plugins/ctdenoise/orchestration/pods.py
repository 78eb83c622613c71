"""The ``kubernetes`` runtime: convert and reconstruct as pods, dssvd as a SparkApplication.

Pods run the worker image (``images/Dockerfile.worker``) through the entry point
:mod:`ctdenoise.orchestration.podrun`, which runs ``ctdenoise convert`` / ``ctdenoise
reconstruct`` and writes the task's XCom document to ``/airflow/xcom/return.json`` (the
operator's sidecar hands it back to Airflow). Every pod:

- passes the ``restricted`` Pod Security level: a non-root user (uid/gid 10001), a read-only root
  file system, no privilege escalation, all capabilities dropped, the runtime's default seccomp
  profile, no service-account token; ``/tmp`` is an ``emptyDir`` of ``CT_DENOISE_POD_TMP_SIZE``
  (staging of Zarr stores and DICOM files before publication), requested as ephemeral storage;
- has the requests and limits of its step (``CT_DENOISE_CONVERT_RESOURCES``,
  ``CT_DENOISE_RECONSTRUCT_RESOURCES``), an active deadline, the placement settings
  (``CT_DENOISE_POD_NODE_SELECTOR``, ...) and the registry's pull secrets;
- gets S3 access from the Kubernetes secret ``CT_DENOISE_S3_SECRET`` (``envFrom``) or, without
  one, from its service account's cloud identity; never from the DAG file or Airflow's metadata;
- that exits with 2 (``ctdenoise``'s bad input or parameters) fails its task at once, as the
  local runtime's ``CtDenoiseError`` does; other failures (S3, eviction, OOM) retry
  (:class:`CtDenoisePodOperator`); a failed pod's events are logged and, by default, the pod is
  kept for inspection (``CT_DENOISE_POD_ON_FINISH_ACTION``);
- waits in the triggerer, not in a worker slot (``CT_DENOISE_KUBERNETES_DEFERRABLE``).

``dssvd`` renders the SparkApplication (:mod:`ctdenoise.orchestration.sparkapp`) per series for
:class:`~ctdenoise.orchestration.spark_operator.CtDenoiseSparkOperator`; the Spark image runs
the same ``spark/dssvd.py``.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults
from airflow.sdk.exceptions import AirflowException
from kubernetes.client import models as k8s

from ctdenoise.orchestration.config import OnFinish, Settings
from ctdenoise.orchestration.failures import exit_code, raise_classified
from ctdenoise.orchestration.spark_operator import CtDenoiseSparkOperator

RUN_AS = 10001  # the worker image's user (images/Dockerfile.worker)
LABEL_ANNOTATION = "ctdenoise/label"
PODRUN = ["python", "-m", "ctdenoise.orchestration.podrun"]
XCOM_SIDECAR_RESOURCES = k8s.V1ResourceRequirements(
    requests={"cpu": "10m", "memory": "16Mi"}, limits={"cpu": "100m", "memory": "64Mi"}
)
"""The XCom sidecar only sleeps, then serves one ``cat``; limits let it into quota-enforced namespaces."""


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
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


class CtDenoisePodOperator(KubernetesPodOperator):
    """``KubernetesPodOperator`` whose failed pod is classified by its exit status
    (:mod:`~ctdenoise.orchestration.failures`: 2, bad input, fails at once; 1, 75 and kills retry),
    and whose XCom sidecar runs the worker image (already on the node: no other registry, no
    ``latest`` tag) with requests and limits."""

    def cleanup(self, pod: k8s.V1Pod, remote_pod: k8s.V1Pod, xcom_result: dict | None = None, context: Any = None) -> None:
        try:
            super().cleanup(pod, remote_pod, xcom_result=xcom_result, context=context)
        except AirflowException as exc:
            label = (self.annotations or {}).get(LABEL_ANNOTATION, self.task_id)
            raise_classified(exc, exit_code(remote_pod, self.base_container_name), label, f"the {self.task_id} pod")

    def build_pod_request_obj(self, context: Any = None, *, dry_run: bool = False) -> k8s.V1Pod:
        pod = super().build_pod_request_obj(context, dry_run=dry_run)
        for container in pod.spec.containers:
            if container.name == PodDefaults.SIDECAR_CONTAINER_NAME:
                container.image, container.image_pull_policy = self.image, self.image_pull_policy
                container.resources = XCOM_SIDECAR_RESOURCES
        return pod


def container_resources(settings: Settings, component: str) -> k8s.V1ResourceRequirements:
    """The step's resources (``CT_DENOISE_<STEP>_RESOURCES``), with the /tmp emptyDir's size
    requested as ephemeral storage so that the pod lands on a node with room to stage."""
    chosen = getattr(settings, f"{component}_resources")
    return k8s.V1ResourceRequirements(
        requests={**chosen.requests, "ephemeral-storage": settings.pod_tmp_size}, limits=dict(chosen.limits) or None
    )


def placement(settings: Settings) -> dict[str, Any]:
    """Where convert/reconstruct pods may run (``CT_DENOISE_POD_*`` placement settings)."""
    return {
        "node_selector": dict(settings.pod_node_selector),
        "tolerations": list(settings.pod_tolerations),
        "affinity": dict(settings.pod_affinity) or None,
        "priority_class_name": settings.pod_priority_class,
        "image_pull_secrets": [k8s.V1LocalObjectReference(name=n) for n in settings.image_pull_secrets],
    }


def pod_partial_kwargs(settings: Settings, component: str) -> dict[str, Any]:
    """What convert and reconstruct pods share (``KubernetesPodOperator.partial`` kwargs)."""
    image = settings.image("worker")
    secret = [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=settings.s3_secret))] if settings.s3_secret else []
    return {
        "namespace": settings.namespace,
        "kubernetes_conn_id": settings.kubernetes_conn_id,
        "image": image,
        "image_pull_policy": settings.pull_policy(image),
        "name": f"ct-denoise-{component}",
        "cmds": list(PODRUN),
        "labels": {"app.kubernetes.io/name": "ctdenoise", "app.kubernetes.io/component": component},
        "env_vars": [
            k8s.V1EnvVar(name="HOME", value="/tmp"),
            k8s.V1EnvVar(name="TMPDIR", value="/tmp"),
            k8s.V1EnvVar(name="MPLCONFIGDIR", value="/tmp/matplotlib"),
            k8s.V1EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1"),
        ],
        "env_from": secret,
        "volumes": [k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=settings.pod_tmp_size))],
        "volume_mounts": [k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],
        "container_resources": container_resources(settings, component),
        "security_context": pod_security_context(),
        "container_security_context": container_security_context(),
        "xcom_sidecar_container_security_context": container_security_context(),
        "service_account_name": settings.service_account,
        "automount_service_account_token": False,
        **placement(settings),
        "do_xcom_push": True,
        "get_logs": True,
        "log_events_on_failure": True,
        "on_finish_action": settings.pod_on_finish_action.value,
        "deferrable": settings.kubernetes_deferrable,
        "startup_timeout_seconds": settings.pod_startup_timeout_seconds,
        "active_deadline_seconds": settings.pod_timeout_minutes * 60,
        "execution_timeout": timedelta(minutes=settings.pod_timeout_minutes + 10),
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


def reconstruct_pod_kwargs(item: dict[str, Any], series_description_prefix: str = "DENOISED") -> dict[str, Any]:
    """Per-output kwargs of the reconstruct pod (an ``XComArg.map`` function, bound to the
    deployment's SeriesDescription prefix by :func:`reconstruct`)."""
    from ctdenoise.records import Output

    output = Output.from_xcom(item)
    return {
        "arguments": ["reconstruct", "--task", json.dumps(output.to_xcom(), sort_keys=True), "--", "ctdenoise",
                      *output.reconstruct_arguments(), "--series-description-prefix", series_description_prefix],  # fmt: skip
        "annotations": {
            LABEL_ANNOTATION: output.label,
            "ctdenoise/series-instance-uid": output.series.series_instance_uid,
            "ctdenoise/mode": output.mode.value,
            "ctdenoise/rank": "" if output.rank is None else str(output.rank),
            "ctdenoise/multiplier": "" if output.multiplier is None else f"{output.multiplier:g}",
        },
    }


def spark_application(batch: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The rendered SparkApplication (a dict) of one batch of converted series."""
    from ctdenoise.job import DssvdBatch
    from ctdenoise.orchestration.sparkapp import application_name, spark_application as render
    from ctdenoise.records import SeriesBatch

    one = SeriesBatch.from_xcom(batch)
    return render(DssvdBatch.for_series(one.converted), settings, application_name(one.label))


def convert(settings: Settings, series: Any) -> Any:
    """``convert`` pods mapped over the discovered series; returns the XComArg of their results."""
    return (
        CtDenoisePodOperator.partial(task_id="convert", **pod_partial_kwargs(settings, "convert"))
        .expand_kwargs(series.map(convert_pod_kwargs))
        .output
    )


def dssvd(settings: Settings, batches: Any) -> Any:
    """``dssvd`` SparkApplications mapped over the batches of converted series (``batch_series``)."""

    def dssvd_kwargs(batch: dict[str, Any]) -> dict[str, Any]:
        from ctdenoise.records import SeriesBatch

        return {
            "template_spec": spark_application(batch, settings),
            "annotations": {LABEL_ANNOTATION: SeriesBatch.from_xcom(batch).label},
        }

    return CtDenoiseSparkOperator.partial(
        task_id="dssvd",
        namespace=settings.namespace,
        kubernetes_conn_id=settings.kubernetes_conn_id,
        get_logs=True,
        log_events_on_failure=True,
        on_finish_action=settings.pod_on_finish_action.value,
        delete_on_termination=settings.pod_on_finish_action != OnFinish.KEEP,
        deferrable=settings.kubernetes_deferrable,
        startup_timeout_seconds=settings.spark_startup_timeout_seconds,
        execution_timeout=timedelta(minutes=settings.spark_timeout_minutes),
        pool=settings.spark_pool,
        map_index_template="{{ task.annotations['" + LABEL_ANNOTATION + "'] }}",
    ).expand_kwargs(batches.map(dssvd_kwargs)).output


def reconstruct(settings: Settings, plan: Any) -> Any:
    """``reconstruct`` pods mapped over the flat (series, rank) plan, labelled "<series> rank=<r>"."""
    prefix = settings.series_description_prefix

    def kwargs(item: dict[str, Any]) -> dict[str, Any]:
        return reconstruct_pod_kwargs(item, prefix)

    return (
        CtDenoisePodOperator.partial(task_id="reconstruct", **pod_partial_kwargs(settings, "reconstruct"))
        .expand_kwargs(plan.map(kwargs))
        .output
    )
