"""``dssvd``'s operator: SparkKubernetesOperator that reports how a SparkApplication ended, in its own words.

The provider's start-up loop (``CustomObjectLauncher.spark_job_not_running``) knows the states
SUBMITTED, RUNNING, FAILED and SUCCEEDED. The Spark operator also reports SUBMISSION_FAILED (a
spec the operator could not submit: a missing service account, an admission refusal...),
FAILING, PENDING_RERUN, INVALIDATING, UNKNOWN...; on any of those the provider stops waiting and
watches the driver pod, which may not exist, and the task fails with a 404 instead of the
application's error message. :class:`ReportingLauncher` fails on every terminal failure state
with the application's ``status.applicationState.errorMessage``, waits through the transitional
ones, and goes on only once the driver runs (or has run).

:class:`CtDenoiseSparkOperator` uses it, classifies a failed driver by its exit status like the
pods (:mod:`~ctdenoise.orchestration.failures`: ``dssvd.py`` exits 2 on bad input, which is not
retried), adds the application's error message to a failure, and keeps a failed application for
inspection when ``CT_DENOISE_POD_ON_FINISH_ACTION`` keeps failed pods (its
``timeToLiveSeconds`` removes it later). The SparkApplication itself never restarts
(``restartPolicy: Never``): Airflow owns the retries.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.cncf.kubernetes.operators.custom_object_launcher import CustomObjectLauncher
from airflow.providers.cncf.kubernetes.operators.spark_kubernetes import SparkKubernetesOperator
from airflow.sdk.exceptions import AirflowException

from ctdenoise.orchestration.failures import exit_code, raise_classified

FAILED_STATES = frozenset({"FAILED", "SUBMISSION_FAILED", "FAILING"})
STARTED_STATES = frozenset({"RUNNING", "SUCCEEDING", "COMPLETED"})
"""The driver pod exists: the provider can follow it. Anything else ("", SUBMITTED, PENDING_RERUN,
INVALIDATING, SUSPENDING, SUSPENDED, RESUMING, UNKNOWN) is waited through, up to the start-up timeout."""


class SparkApplicationFailed(AirflowException):
    """A SparkApplication reached a failure state; the message is the application's own."""


def application_state(status: dict[str, Any] | None) -> tuple[str, str]:
    """``(state, errorMessage)`` of a SparkApplication's status (``("", "")`` before the operator saw it)."""
    state = ((status or {}).get("status") or {}).get("applicationState") or {}
    return str(state.get("state") or ""), " ".join(str(state.get("errorMessage") or "").split())


class ReportingLauncher(CustomObjectLauncher):
    """The provider's launcher, with a start-up wait that knows every state of the Spark operator."""

    @classmethod
    def like(cls, launcher: CustomObjectLauncher) -> ReportingLauncher:
        return cls(name=launcher.name, namespace=launcher.namespace, kube_client=launcher._client,
                   custom_obj_api=launcher.custom_obj_api, template_body=launcher.template_body)  # fmt: skip

    def status(self, name: str) -> dict[str, Any]:
        return self.custom_obj_api.get_namespaced_custom_object_status(
            group=self.api_group, version=self.api_version, namespace=self.namespace, name=name, plural=self.plural
        )

    def spark_job_not_running(self, spark_obj_spec: dict[str, Any]) -> bool:
        name = spark_obj_spec["metadata"]["name"]
        state, message = application_state(self.status(name))
        if state in FAILED_STATES:
            raise SparkApplicationFailed(f"SparkApplication {name} {state}: {message or 'no error message'}")
        return state not in STARTED_STATES


class CtDenoiseSparkOperator(SparkKubernetesOperator):
    """SparkKubernetesOperator with :class:`ReportingLauncher`, classified driver failures and the
    pods' finish policy (``on_finish_action``: ``delete_succeeded_pod`` keeps failed applications)."""

    def get_or_create_spark_crd(self, launcher: CustomObjectLauncher, context: Any) -> Any:
        self.launcher = ReportingLauncher.like(launcher)
        return super().get_or_create_spark_crd(self.launcher, context)

    def cleanup(self, pod: Any, remote_pod: Any, xcom_result: dict | None = None, context: Any = None) -> None:
        try:
            super().cleanup(pod, remote_pod, xcom_result=xcom_result, context=context)
        except AirflowException as exc:
            name = _application_name(remote_pod)
            detail = self._failure_message(name)
            label = (self.annotations or {}).get("ctdenoise/label", self.task_id)
            explained = SparkApplicationFailed(f"SparkApplication {name}: {detail}" if detail else str(exc))
            explained.__cause__ = exc
            raise_classified(explained, exit_code(remote_pod, self.base_container_name), label, "the Spark driver", detail)

    def _failure_message(self, name: str) -> str:
        """The application's own state and error message ('' if it cannot be read)."""
        try:
            state, message = application_state(ReportingLauncher.like(self.launcher).status(name))
        except Exception:  # noqa: BLE001 (the explanation is a courtesy; the failure stands)
            self.log.warning("could not read the status of SparkApplication %s", name, exc_info=True)
            return ""
        return f"{state} {message}".strip()

    def process_pod_deletion(self, pod: Any, *, reraise: bool = True) -> None:
        failed = pod is not None and getattr(getattr(pod, "status", None), "phase", None) != "Succeeded"
        if failed and self.on_finish_action.value != "delete_pod":
            self.log.info("keeping failed SparkApplication %s for inspection (removed after its timeToLiveSeconds)",
                          _application_name(pod))  # fmt: skip
            return
        super().process_pod_deletion(pod, reraise=reraise)


def _application_name(driver_pod: Any) -> str:
    name = getattr(getattr(driver_pod, "metadata", None), "name", "") or ""
    return name.removesuffix("-driver")
