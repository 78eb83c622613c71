"""dssvd's operator reports how a SparkApplication ended, in the application's words, and classifies the driver's exit.

The Kubernetes API is a fake here: it answers the application's status (what the Spark operator
writes) and refuses any driver-pod read with a 404, as a cluster does when no driver exists.
"""

from __future__ import annotations

import types
from typing import Any

import pytest
from kubernetes.client import models as k8s
from kubernetes.client.rest import ApiException

from ctdenoise.job import DssvdJob
from ctdenoise.orchestration.config import load_settings
from ctdenoise.orchestration.sparkapp import spark_application
from ctdenoise.orchestration.spark_operator import (
    CtDenoiseSparkOperator,
    ReportingLauncher,
    SparkApplicationFailed,
    application_state,
)

NAME = "dssvd-scan-a-0123abcd"
MANIFEST = spark_application(DssvdJob(matrix="s3://b/m.zarr", out="s3://b/s.zarr", rank=5), load_settings({}), NAME)
SUBMISSION_FAILED = {"status": {"applicationState": {"state": "SUBMISSION_FAILED", "errorMessage":
                     'failed to run spark-submit: serviceaccounts "ct-denoise-spark-driver" not found'}}}  # fmt: skip


class FakeCluster:
    """Custom-objects API (status answers in order, the last one repeated) and a core API without driver pods."""

    def __init__(self, *statuses: dict[str, Any]) -> None:
        self.statuses = list(statuses)
        self.created: list[dict[str, Any]] = []
        self.pod_reads = 0

    def create_namespaced_custom_object(self, *, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.created.append(body)
        return body

    def get_namespaced_custom_object_status(self, **_: Any) -> dict[str, Any]:
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def patch_namespaced_pod(self, *_: Any, **__: Any) -> None:  # the provider labels a failed driver "already checked"
        pass

    def read_namespaced_pod(self, *_: Any, **__: Any) -> Any:
        self.pod_reads += 1
        raise ApiException(status=404, reason="Not Found")


def launcher(cluster: FakeCluster, cls: type = ReportingLauncher) -> Any:
    return cls(name=NAME, namespace="ct-denoise", kube_client=cluster, custom_obj_api=cluster, template_body={"spark": MANIFEST})


def state(name: str, message: str = "") -> dict[str, Any]:
    return {"status": {"applicationState": {"state": name, "errorMessage": message}}}


@pytest.mark.parametrize("failed", ["SUBMISSION_FAILED", "FAILED", "FAILING"])
def test_a_failure_state_fails_with_the_applications_message(failed: str) -> None:
    cluster = FakeCluster(state(failed, "driver container failed with ExitCode: 1,\n Reason: Error"))
    with pytest.raises(SparkApplicationFailed, match=f"SparkApplication {NAME} {failed}: driver container failed with ExitCode: 1, Reason: Error"):
        launcher(cluster).spark_job_not_running(MANIFEST)


@pytest.mark.parametrize(("name", "waiting"), [("", True), ("SUBMITTED", True), ("PENDING_RERUN", True), ("INVALIDATING", True),
                                               ("UNKNOWN", True), ("RUNNING", False), ("SUCCEEDING", False), ("COMPLETED", False)])  # fmt: skip
def test_transitional_states_are_waited_through(name: str, waiting: bool) -> None:
    assert launcher(FakeCluster(state(name))).spark_job_not_running(MANIFEST) is waiting


def test_the_providers_launcher_would_look_for_a_driver_that_does_not_exist() -> None:
    """Why the subclass exists: on SUBMISSION_FAILED the provider stops waiting (then reads the
    driver pod: a 404) instead of reporting the application's error."""
    from airflow.providers.cncf.kubernetes.operators.custom_object_launcher import CustomObjectLauncher

    assert launcher(FakeCluster(SUBMISSION_FAILED), CustomObjectLauncher).spark_job_not_running(MANIFEST) is False


def test_submission_failure_is_reported_before_any_driver_pod_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    cluster = FakeCluster(state("SUBMITTED"), state(""), SUBMISSION_FAILED)
    with pytest.raises(SparkApplicationFailed, match='serviceaccounts "ct-denoise-spark-driver" not found'):
        launcher(cluster).start_spark_job(startup_timeout=600)
    assert cluster.created and cluster.created[0]["spec"]["restartPolicy"] == {"type": "Never"}


def test_application_state_of_a_new_application() -> None:
    assert application_state({}) == ("", "") and application_state({"status": None}) == ("", "")


def driver_pod(exit_code: int, phase: str = "Failed") -> k8s.V1Pod:
    terminated = k8s.V1ContainerStateTerminated(exit_code=exit_code, reason="Error")
    status = k8s.V1ContainerStatus(name="spark-kubernetes-driver", state=k8s.V1ContainerState(terminated=terminated),
                                   image="i", image_id="i", ready=False, restart_count=0)  # fmt: skip
    return k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=f"{NAME}-driver", namespace="ct-denoise", labels={}),
                     status=k8s.V1PodStatus(phase=phase, container_statuses=[status]))  # fmt: skip


@pytest.fixture()
def operator(monkeypatch: pytest.MonkeyPatch) -> CtDenoiseSparkOperator:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    op = CtDenoiseSparkOperator(task_id="dssvd", namespace="ct-denoise", template_spec=MANIFEST, log_events_on_failure=False,
                                on_finish_action="delete_succeeded_pod", annotations={"ctdenoise/label": "scan-a"})  # fmt: skip
    cluster = FakeCluster(state("FAILED", "driver container failed with ExitCode: 2, Reason: Error"))
    op.__dict__.update(client=cluster, custom_obj_api=cluster)
    monkeypatch.setattr(KubernetesPodOperator, "patch_already_checked", lambda self, pod, reraise=True: None)
    monkeypatch.setattr(KubernetesPodOperator, "is_istio_enabled", lambda self, pod: False)
    deleted: list[str] = []
    monkeypatch.setattr(type(op.launcher), "delete_spark_job", lambda self, spark_job_name=None: deleted.append(spark_job_name))
    op.deleted = deleted  # type: ignore[attr-defined]
    return op


def test_a_driver_failing_on_bad_input_is_not_retried(operator: CtDenoiseSparkOperator) -> None:
    """dssvd.py exits 2 on bad input: InputError (the retry policy fails it at once), with the app's message."""
    from ctdenoise.errors import InputError

    pod = driver_pod(2)
    with pytest.raises(InputError, match="scan-a: the Spark driver exited with 2 .*FAILED driver container failed with ExitCode: 2"):
        operator.cleanup(pod, pod)
    assert operator.deleted == []  # kept for inspection; its timeToLiveSeconds removes it


@pytest.mark.parametrize("code", [1, 75, 137])
def test_other_driver_failures_are_retried_with_the_applications_message(operator: CtDenoiseSparkOperator, code: int) -> None:
    from ctdenoise.errors import InputError

    pod = driver_pod(code)
    with pytest.raises(SparkApplicationFailed, match=f"SparkApplication {NAME}: FAILED driver container failed") as raised:
        operator.cleanup(pod, pod)
    assert not isinstance(raised.value, InputError)


def test_a_succeeded_application_is_deleted(operator: CtDenoiseSparkOperator) -> None:
    pod = driver_pod(0, phase="Succeeded")
    operator.cleanup(pod, pod)
    assert operator.deleted == [NAME]


def test_deferrable_reentry_still_classifies(operator: CtDenoiseSparkOperator, monkeypatch: pytest.MonkeyPatch) -> None:
    """In deferrable mode the provider ends through the same cleanup after the trigger fires."""
    from ctdenoise.errors import InputError

    pod = driver_pod(2)
    monkeypatch.setattr(type(operator), "hook", types.SimpleNamespace(get_pod=lambda name, namespace: pod), raising=False)
    monkeypatch.setattr(operator, "pod_manager", types.SimpleNamespace(await_pod_completion=lambda *a, **k: pod), raising=False)
    monkeypatch.setattr(operator, "extract_xcom", lambda pod: None)
    operator.get_logs = False
    event = {"status": "failed", "name": pod.metadata.name, "namespace": "ct-denoise", "message": "Container failed"}
    with pytest.raises(InputError, match="exited with 2"):
        operator.trigger_reentry({"ti": types.SimpleNamespace(xcom_push=lambda **k: None)}, event)
