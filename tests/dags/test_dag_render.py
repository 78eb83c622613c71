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
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    manifest, _ = pods[task_id]
    assert kubernetes_validate.validate(manifest, latest_version(), strict=True)


@pytest.mark.parametrize("task_id", ["convert", "reconstruct"])
def test_pod_is_locked_down(pods: dict, task_id: str) -> None:
    manifest, _ = pods[task_id]
    spec = manifest["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    assert spec["activeDeadlineSeconds"] > 0
    for container in spec["containers"]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], container["name"]
    base = next(c for c in spec["containers"] if c["name"] == "base")
    assert set(base["resources"]["requests"]) == set(base["resources"]["limits"]) == {"cpu", "memory"}
    assert {m["mountPath"] for m in base["volumeMounts"]} >= {"/tmp", "/airflow/xcom"}
    tmp = next(v for v in spec["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp


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
        f"{series['series_url']}/rank-20", "--rank", "20",
    ]  # fmt: skip
    assert label_of(op) == "scan-a rank=20"
    assert manifest["metadata"]["namespace"] == "ct-denoise"
    assert manifest["metadata"]["labels"]["app.kubernetes.io/component"] == "reconstruct"


@pytest.fixture(scope="module")
def spark_application(kube_dag: Any) -> tuple[dict[str, Any], Any]:
    from airflow.providers.cncf.kubernetes.operators.custom_object_launcher import CustomObjectLauncher

    op, _ = unmapped(kube_dag, "dssvd", sample_converted(sample_series(), slices=64))
    body = CustomObjectLauncher(
        name=op.create_job_name(), namespace=op.namespace, kube_client=None, custom_obj_api=None, template_body=op.template_body
    ).body
    return json.loads(json.dumps(body, default=str)), op


def crd_schema(shared_schemas: Path) -> dict[str, Any]:
    import yaml

    crd = yaml.safe_load((shared_schemas / "sparkoperator.k8s.io_sparkapplications.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta2")
    return version["schema"]["openAPIV3Schema"]


def test_spark_application_matches_the_operator_crd(spark_application: tuple, shared_schemas: Path) -> None:
    import jsonschema

    body, _ = spark_application
    schema = crd_schema(shared_schemas)
    jsonschema.validate(body, schema)
    # The check is real: a wrong type in the spec is refused.
    broken = json.loads(json.dumps(body))
    broken["spec"]["executor"]["instances"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


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
    assert spec["image"] == "ctdenoise-spark:0.1.0"
    assert body["metadata"]["namespace"] == "ct-denoise"
    for role in ("driver", "executor"):
        assert spec[role]["envFrom"] == [{"secretRef": {"name": "ct-denoise-s3"}}]
        assert spec[role]["podSecurityContext"]["runAsNonRoot"] is True
    assert label_of(op) == "scan-a"


def test_spark_rank_is_capped_by_the_slices(kube_dag: Any) -> None:
    op, _ = unmapped(kube_dag, "dssvd", sample_converted(sample_series(), slices=12))
    args = op.template_body["spark"]["spec"]["arguments"]
    assert args[args.index("--rank") + 1] == "12"


def test_local_dssvd_submits_the_same_job(local_dag: Any) -> None:
    series = sample_series()
    op, _ = unmapped(local_dag, "dssvd", sample_converted(series, slices=64))
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

    op, _ = unmapped(local_dag, "dssvd", sample_converted(sample_series()))
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


@pytest.mark.parametrize(("code", "retried"), [(2, False), (1, True), (137, True)])
def test_a_pod_failing_on_bad_input_is_not_retried(kube_dag: Any, monkeypatch: pytest.MonkeyPatch, code: int, retried: bool) -> None:
    """Exit 2 (ctdenoise's bad input or parameters) fails the task at once, as CtDenoiseError
    does in the local runtime; a crash or an OOM kill (137) goes through the retries."""
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
    policy = kube_dag.default_args["retry_policy"]
    rule = policy.rules[0]
    assert rule.action.value == "fail" and rule.exception == "ctdenoise.errors.CtDenoiseError"
