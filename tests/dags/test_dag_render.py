"""Every pod and SparkApplication of the kubernetes runtime, rendered offline and validated.

The mapped operators of the parsed DAG are unmapped with the kwargs their own ``XComArg.map``
functions produce for a sample series, rendered like the task runner does, and turned into the
manifests the cluster would receive: ``build_pod_request_obj(..., dry_run=True)`` for pods (checked
with kubernetes-validate, strict), the provider's CustomObjectLauncher body for the
SparkApplication (checked against the spark-operator CRD schema in ../shared/schemas).
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest
from dag_fixtures import load_dag, sample_converted, sample_item, sample_series
from k8s_schemas import restricted_violations, sparkapplication_schema, validate_object

K8S_SECRET_VALUES = ("testing", "minioadmin")


def map_callable(mapped: Any) -> Any:
    """The ``.map()`` function the DAG gave a mapped operator's expand_kwargs input."""
    value = mapped._get_specified_expand_input().value
    assert len(value.callables) == 1
    return value.callables[0]


def context_for(dag: Any, op: Any, map_index: int = 0) -> dict[str, Any]:
    ti = types.SimpleNamespace(dag_id=dag.dag_id, task_id=op.task_id, map_index=map_index, try_number=1)
    return {"ds": "2026-11-20", "ti": ti, "run_id": "scheduled__2026-11-20T00:00:00+00:00", "dag": dag, "task": op, "params": {}}


def unmapped(dag: Any, task_id: str, value: Any) -> tuple[Any, dict[str, Any]]:
    mapped = dag.task_dict[task_id]
    kwargs = map_callable(mapped)(value)
    if type(mapped).__name__ == "DecoratedMappedOperator":  # TaskFlow: mapped kwargs are op_kwargs
        kwargs = {"op_kwargs": kwargs}
    op = mapped.unmap(kwargs)
    context = context_for(dag, op)
    op.render_template_fields(context)
    return op, context


def batch_of(*converted: dict[str, Any]) -> dict[str, Any]:
    """The XCom of one ``batch_series`` item."""
    return {"converted": list(converted)}


def label_of(op: Any) -> str:
    import jinja2

    return jinja2.Template(op.map_index_template).render(task=op)


@pytest.fixture(scope="module")
def kube_dag() -> Any:
    mp = pytest.MonkeyPatch()
    try:
        yield load_dag("kubernetes", mp)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def local_dag() -> Any:
    mp = pytest.MonkeyPatch()
    try:
        yield load_dag("local", mp)
    finally:
        mp.undo()


def render_pod(dag: Any, task_id: str, value: Any) -> tuple[dict[str, Any], Any]:
    from kubernetes.client import ApiClient

    op, context = unmapped(dag, task_id, value)
    pod = op.build_pod_request_obj(context, dry_run=True)
    return ApiClient().sanitize_for_serialization(pod), op


@pytest.fixture(scope="module")
def pods(kube_dag: Any) -> dict[str, tuple[dict[str, Any], Any]]:
    series = sample_series()
    return {
        "convert": render_pod(kube_dag, "convert", series),
        "reconstruct": render_pod(kube_dag, "reconstruct", sample_item(series, rank=20)),
    }


@pytest.mark.parametrize("task_id", ["convert", "reconstruct"])
def test_pod_is_a_valid_kubernetes_manifest(pods: dict, task_id: str) -> None:
    manifest, _ = pods[task_id]
    validate_object(manifest)


@pytest.mark.parametrize("task_id", ["convert", "reconstruct"])
def test_pod_is_locked_down(pods: dict, task_id: str) -> None:
    manifest, _ = pods[task_id]
    spec = manifest["spec"]
    assert restricted_violations(spec) == []
    assert spec["automountServiceAccountToken"] is False and spec["serviceAccountName"] == "ct-denoise-pods"
    assert spec["activeDeadlineSeconds"] == 60 * 60
    for container in spec["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, container["name"]
    base = next(c for c in spec["containers"] if c["name"] == "base")
    assert {m["mountPath"] for m in base["volumeMounts"]} >= {"/tmp", "/airflow/xcom"}
    tmp = next(v for v in spec["volumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"]["sizeLimit"] == base["resources"]["requests"]["ephemeral-storage"] == "20Gi"


@pytest.mark.parametrize("task_id", ["convert", "reconstruct"])
def test_every_container_has_requests_and_limits(pods: dict, task_id: str) -> None:
    """A namespace quota that requires limits admits the pod, XCom sidecar included; the sidecar
    runs the worker image (on the node already: no second registry, no moving tag)."""
    manifest, _ = pods[task_id]
    containers = {c["name"]: c for c in manifest["spec"]["containers"]}
    for container in containers.values():
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), container["name"]
    assert containers["airflow-xcom-sidecar"]["image"] == containers["base"]["image"]
    assert containers["base"]["image"] == "registry.example.com/ctdenoise/ctdenoise-worker:0.1.0"
    assert containers["base"]["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize("task_id", ["convert", "reconstruct"])
def test_pods_are_operated_like_a_cluster_expects(pods: dict, task_id: str) -> None:
    """Failure events logged, failed pods kept for inspection, and the wait in the triggerer."""
    _, op = pods[task_id]
    assert op.log_events_on_failure is True
    assert op.on_finish_action.value == "delete_succeeded_pod"
    assert op.deferrable is True
    assert op.startup_timeout_seconds == 600 and op.execution_timeout.total_seconds() == 70 * 60


CLUSTER_ENV = {
    "CT_DENOISE_IMAGE_PULL_SECRETS": "registry",
    "CT_DENOISE_POD_NODE_SELECTOR": '{"pool": "cpu"}',
    "CT_DENOISE_POD_TOLERATIONS": '[{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}]',
    "CT_DENOISE_POD_AFFINITY": '{"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, '
                               '"podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}}',
    "CT_DENOISE_POD_PRIORITY_CLASS": "batch-low",
    "CT_DENOISE_CONVERT_RESOURCES": '{"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}',
    "CT_DENOISE_RECONSTRUCT_RESOURCES": '{"requests": {"cpu": "2", "memory": "6Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}}',
    "CT_DENOISE_POD_TMP_SIZE": "50Gi",
    "CT_DENOISE_S3_SECRET": "none",
    "CT_DENOISE_POD_TIMEOUT_MINUTES": "30",
    "CT_DENOISE_KUBERNETES_DEFERRABLE": "false",
    "CT_DENOISE_POD_ON_FINISH_ACTION": "delete_pod",
    "CT_DENOISE_WORKER_IMAGE": "registry.example/ctdenoise-worker@sha256:" + "ab" * 32,
}


@pytest.fixture(scope="module")
def cluster_pods() -> dict[str, tuple[dict[str, Any], Any]]:
    mp = pytest.MonkeyPatch()
    try:
        dag = load_dag("kubernetes", mp, CLUSTER_ENV)
        series = sample_series()
        return {"convert": render_pod(dag, "convert", series), "reconstruct": render_pod(dag, "reconstruct", sample_item(series))}
    finally:
        mp.undo()


@pytest.mark.parametrize("task_id", ["convert", "reconstruct"])
def test_cluster_settings_reach_the_pods(cluster_pods: dict, task_id: str) -> None:
    """Placement, pull secrets, the step's own resources, IRSA (no secret), timeouts and policies."""
    manifest, op = cluster_pods[task_id]
    validate_object(manifest)
    spec = manifest["spec"]
    assert restricted_violations(spec) == []
    assert spec["nodeSelector"] == {"pool": "cpu"} and spec["priorityClassName"] == "batch-low"
    assert spec["tolerations"] == [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}]
    assert "podAntiAffinity" in spec["affinity"] and spec["imagePullSecrets"] == [{"name": "registry"}]
    base = next(c for c in spec["containers"] if c["name"] == "base")
    expected = {"convert": ("500m", "2Gi"), "reconstruct": ("2", "8Gi")}[task_id]
    assert (base["resources"]["requests"]["cpu"], base["resources"]["limits"]["memory"]) == expected
    assert base["resources"]["requests"]["ephemeral-storage"] == "50Gi" and not base.get("envFrom")
    assert base["imagePullPolicy"] == "IfNotPresent" and "@sha256:" in base["image"]
    assert spec["activeDeadlineSeconds"] == 30 * 60
    assert op.deferrable is False and op.on_finish_action.value == "delete_pod"


@pytest.mark.parametrize("task_id", ["convert", "reconstruct"])
def test_pod_gets_s3_from_the_secret_only(pods: dict, task_id: str) -> None:
    manifest, _ = pods[task_id]
    base = next(c for c in manifest["spec"]["containers"] if c["name"] == "base")
    assert base["envFrom"] == [{"secretRef": {"name": "ct-denoise-s3"}}]
    names = {e["name"] for e in base.get("env", [])}
    assert not {n for n in names if n.startswith("AWS_")}, names
    text = json.dumps(manifest)
    assert not any(secret in text for secret in K8S_SECRET_VALUES)


def test_convert_pod_runs_ctdenoise_convert_and_returns_xcom(pods: dict) -> None:
    manifest, op = pods["convert"]
    series = sample_series()
    base = next(c for c in manifest["spec"]["containers"] if c["name"] == "base")
    assert base["command"] == ["python", "-m", "ctdenoise.orchestration.podrun"]
    args = base["args"]
    assert args[0] == "convert"
    assert json.loads(args[args.index("--task") + 1]) == series
    command = args[args.index("--") + 1 :]
    assert command[:4] == ["ctdenoise", "convert", series["source_url"], series["matrix_dir"]]
    # the run's modes and input rules, as flags the CLI parses back to the same values
    from ctdenoise.cli import build_parser
    from ctdenoise.params import InputRules, RunParams, from_arguments

    parsed = build_parser().parse_args(command[1:])
    assert from_arguments(InputRules, parsed, "x") == RunParams.from_conf(series["params"]).input_rules
    assert tuple(parsed.modes) == RunParams.from_conf(series["params"]).modes
    assert any(c["name"] == "airflow-xcom-sidecar" for c in manifest["spec"]["containers"])
    assert label_of(op) == "scan-a"


def test_reconstruct_pod_runs_ctdenoise_reconstruct(pods: dict) -> None:
    manifest, op = pods["reconstruct"]
    series = sample_series()
    base = next(c for c in manifest["spec"]["containers"] if c["name"] == "base")
    command = base["args"][base["args"].index("--") + 1 :]
    assert command == [
        "ctdenoise", "reconstruct", series["matrix_url"], series["svd_url"],
        f"{series['series_url']}/rank-20", "--rank", "20", "--series-description-prefix", "DENOISED",
    ]  # fmt: skip
    assert label_of(op) == "scan-a rank=20"
    assert manifest["metadata"]["namespace"] == "ct-denoise"
    assert manifest["metadata"]["labels"]["app.kubernetes.io/component"] == "reconstruct"


def submitted_body(op: Any, context: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The SparkApplication the operator would create: its own set-up (task labels, name, env)
    run offline, the launcher's body captured instead of sent."""
    seen: dict[str, Any] = {}

    def capture(self: Any, launcher: Any, context: Any) -> Any:
        seen["body"] = launcher.body
        return types.SimpleNamespace(metadata=types.SimpleNamespace(name=launcher.body["metadata"]["name"] + "-driver"))

    monkeypatch.setattr(type(op), "find_spark_job", lambda self, context, exclude_checked=True: None)
    monkeypatch.setattr(type(op), "get_or_create_spark_crd", capture)
    op.__dict__.update(client=None, custom_obj_api=None)  # cached properties: no cluster here
    op.name = op.create_job_name()
    op._setup_spark_configuration(context)
    return json.loads(json.dumps(seen["body"], default=str))


PROVIDER_ADDED = "labels"
"""The provider adds the task's labels as ``spec.labels``, a field the CRD does not have (the API
server prunes it; it copies them to driver and executor labels too, which the CRD has)."""


@pytest.fixture(scope="module")
def spark_application(kube_dag: Any) -> tuple[dict[str, Any], Any]:
    mp = pytest.MonkeyPatch()
    try:
        op, context = unmapped(kube_dag, "dssvd", batch_of(sample_converted(sample_series(), slices=64)))
        context["task_instance"] = context["ti"]
        return submitted_body(op, context, mp), op
    finally:
        mp.undo()


def test_spark_application_matches_the_operator_crd(spark_application: tuple) -> None:
    import jsonschema

    body, _ = spark_application
    schema = sparkapplication_schema()
    spec = dict(body["spec"])
    assert set(spec.pop(PROVIDER_ADDED)) >= {"dag_id", "task_id", "run_id"}
    jsonschema.validate({**body, "spec": spec}, schema)
    # The check is real: a wrong type and a misspelt field are refused.
    for broken_part in ({"executor": {**spec["executor"], "instances": "two"}}, {"timeToLiveSecond": 60}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**body, "spec": {**spec, **broken_part}}, schema)


def test_dssvd_is_operated_like_a_cluster_expects(spark_application: tuple) -> None:
    from ctdenoise.orchestration.spark_operator import CtDenoiseSparkOperator

    body, op = spark_application
    assert isinstance(op, CtDenoiseSparkOperator)
    assert op.log_events_on_failure is True and op.deferrable is True
    assert op.on_finish_action.value == "delete_succeeded_pod" and op.delete_on_termination is True
    assert op.startup_timeout_seconds == 900 and op.execution_timeout.total_seconds() == 2 * 3600
    assert body["spec"]["restartPolicy"] == {"type": "Never"}


def test_spark_application_runs_dssvd_on_the_series(spark_application: tuple) -> None:
    body, op = spark_application
    series = sample_series()
    spec = body["spec"]
    args = spec["arguments"]
    assert body["kind"] == "SparkApplication" and body["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    assert args[args.index("--matrix") + 1] == series["matrix_url"]
    assert args[args.index("--out") + 1] == series["svd_url"]
    assert args[args.index("--rank") + 1] == "50"  # k=50 <= 64 slices
    assert spec["mainApplicationFile"] == "local:///opt/ctdenoise/spark/dssvd.py"
    assert spec["image"] == "registry.example.com/ctdenoise/ctdenoise-spark:0.1.0"
    assert body["metadata"]["namespace"] == "ct-denoise"
    for role in ("driver", "executor"):
        assert spec[role]["envFrom"] == [{"secretRef": {"name": "ct-denoise-s3"}}]
        assert spec[role]["podSecurityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec[role]["labels"]["task_id"] == "dssvd"  # the provider finds the driver by these
    assert label_of(op) == "scan-a"


def test_spark_rank_is_capped_by_the_slices(kube_dag: Any) -> None:
    op, _ = unmapped(kube_dag, "dssvd", batch_of(sample_converted(sample_series(), slices=12)))
    args = op.template_body["spark"]["spec"]["arguments"]
    assert args[args.index("--rank") + 1] == "12"


def test_a_batch_is_one_application_of_its_series_jobs(kube_dag: Any, local_dag: Any) -> None:
    """CT_DENOISE_SPARK_BATCH_SERIES > 1: one dssvd task and one Spark application for several
    series, their jobs separated by --and (spark/dssvd.py), labelled by the first series."""
    a = sample_series()
    b = sample_series(uid="1.2.826.0.1.3680043.8.498.2", folder="scan-b")
    batch = batch_of(sample_converted(a), sample_converted(b, slices=12))
    kube, _ = unmapped(kube_dag, "dssvd", batch)
    local, _ = unmapped(local_dag, "dssvd", batch)
    kube_args = kube.template_body["spark"]["spec"]["arguments"]
    assert kube_args == local.application_args
    assert kube_args.count("--and") == 1
    first, second = kube_args[: kube_args.index("--and")], kube_args[kube_args.index("--and") + 1 :]
    assert first[first.index("--matrix") + 1] == a["matrix_url"] and second[second.index("--matrix") + 1] == b["matrix_url"]
    assert second[second.index("--rank") + 1] == "12"
    assert label_of(kube) == label_of(local) == "scan-a +1"


def test_local_dssvd_submits_the_same_job(local_dag: Any) -> None:
    series = sample_series()
    op, _ = unmapped(local_dag, "dssvd", batch_of(sample_converted(series, slices=64)))
    assert Path(op.application).is_file() and Path(op.application).name == "dssvd.py"
    args = op.application_args
    assert args[args.index("--matrix") + 1] == series["matrix_url"]
    assert args[args.index("--rank") + 1] == "50"
    assert label_of(op) == "scan-a"
    assert not any(k.startswith("AWS_") for k in (op.env_vars or {})), "credentials must not be in rendered fields"


def test_local_reconstruct_label(local_dag: Any) -> None:
    op, _ = unmapped(local_dag, "reconstruct", sample_item(sample_series(), rank=7))
    assert label_of(op) == "scan-a rank=7"


def test_local_spark_submit_gets_aws_env_at_execute(local_dag: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    from ctdenoise.orchestration import aws

    op, _ = unmapped(local_dag, "dssvd", batch_of(sample_converted(sample_series())))
    seen: dict[str, Any] = {}
    monkeypatch.setattr(aws, "environment", lambda conn_id: {"AWS_ACCESS_KEY_ID": f"key-of-{conn_id}"})
    monkeypatch.setattr(SparkSubmitOperator, "execute", lambda self, context: seen.update(self.env_vars))
    op.execute({})
    assert seen["AWS_ACCESS_KEY_ID"] == "key-of-aws_default"


@pytest.mark.parametrize("task_id", ["convert", "reconstruct"])
def test_pod_arguments_drive_the_pod_entry_point(
    pods: dict, task_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """podrun, given the rendered container command line, runs the CLI command and writes the XCom."""
    from ctdenoise.orchestration import podrun

    manifest, _ = pods[task_id]
    base = next(c for c in manifest["spec"]["containers"] if c["name"] == "base")
    series = sample_series()
    written = sample_converted(series)["matrix"]
    record = written if task_id == "convert" else {"rank": 20, "retained_energy": 0.99}
    ran: list[list[str]] = []
    monkeypatch.setattr(podrun, "run_command", lambda command: (ran.append(list(command)) or (0, [record])))
    xcom = tmp_path / "return.json"
    assert base["command"][-1] == "ctdenoise.orchestration.podrun"
    split = base["args"].index("--")
    assert podrun.main([*base["args"][:split], "--xcom", str(xcom), *base["args"][split:]]) == 0
    assert ran == [base["args"][split + 1 :]]
    result = json.loads(xcom.read_text())
    if task_id == "convert":
        assert result["series"] == series and result["matrix"] == written
    else:
        assert result["output"]["rank"] == 20 and result["output"]["series"]["folder"] == "scan-a" and result["metrics"] == record


def _finished_pod(exit_code: int) -> Any:
    """A remote pod whose base container terminated with ``exit_code``."""
    from kubernetes.client import models as k8s

    terminated = k8s.V1ContainerStateTerminated(exit_code=exit_code, reason="Error")
    status = k8s.V1ContainerStatus(name="base", state=k8s.V1ContainerState(terminated=terminated), image="i", image_id="i",
                                   ready=False, restart_count=0)  # fmt: skip
    return k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="ct-denoise-convert-abc", namespace="ct-denoise", annotations={}),
                     status=k8s.V1PodStatus(phase="Failed", container_statuses=[status]))  # fmt: skip


@pytest.mark.parametrize(("code", "retried"), [(2, False), (1, True), (75, True), (137, True)])
def test_a_pod_failing_on_bad_input_is_not_retried(kube_dag: Any, monkeypatch: pytest.MonkeyPatch, code: int, retried: bool) -> None:
    """Exit 2 (ctdenoise's bad input or parameters) fails the task at once, as CtDenoiseError
    does in the local runtime; a bug (1), a transient failure (75) or an OOM kill (137) goes
    through the retries. (The pod never exits 3: podrun turns a partial conversion into 0 or 2.)"""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk.exceptions import AirflowException

    from ctdenoise.errors import InputError

    op, _ = unmapped(kube_dag, "convert", sample_series())
    assert isinstance(op, KubernetesPodOperator)
    # the provider's own cleanup, without a cluster: deleting and patching the pod are no-ops here
    monkeypatch.setattr(KubernetesPodOperator, "process_pod_deletion", lambda self, pod, reraise=True: None)
    monkeypatch.setattr(KubernetesPodOperator, "patch_already_checked", lambda self, pod, reraise=True: None)
    monkeypatch.setattr(KubernetesPodOperator, "is_istio_enabled", lambda self, pod: False)
    monkeypatch.setattr(op, "log_events_on_failure", False)
    remote = _finished_pod(code)
    with pytest.raises(AirflowException if retried else InputError) as raised:
        op.cleanup(remote, remote)
    if not retried:
        assert "exited with 2" in str(raised.value) and "scan-a" in str(raised.value)
    else:
        assert not isinstance(raised.value, InputError)
    policy = kube_dag.default_args["retry_policy"]
    rule = policy.rules[0]
    assert rule.action.value == "fail" and rule.exception == "ctdenoise.errors.CtDenoiseError"
