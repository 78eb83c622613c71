"""deploy/: the plain manifests and the Helm values, validated offline and held to the settings they must agree with.

No Helm here: the charts are not rendered. What is checked is what the values contain: the
Kubernetes objects in them (env, envFrom) with kubernetes-validate at the current version, the
Airflow options against Airflow's own configuration reference, the connections by Airflow's
parser, the CT_DENOISE_* variables by the settings model, and the pods and SparkApplications the
DAG renders under exactly those settings (strict Kubernetes schema, strict CRD, restricted Pod
Security). The plain manifests are validated as they are applied.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_schemas import restricted_violations, sparkapplication_schema, validate_object

from ctdenoise.orchestration.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
MANIFESTS = sorted((DEPLOY / "manifests").glob("*.yaml"))


def objects() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind} {name}: {len(matches)} in deploy/manifests"
    return matches[0]


@pytest.fixture(scope="module")
def airflow_values() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "helm" / "airflow-values.yaml").read_text())


@pytest.fixture(scope="module")
def chart_settings(airflow_values: dict[str, Any]) -> Settings:
    """The settings every Airflow component of the chart deployment reads."""
    env = {e["name"]: e["value"] for e in airflow_values["env"]}
    return load_settings({k: v for k, v in env.items() if k.startswith("CT_DENOISE_")})


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_at_the_current_kubernetes_version(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        validate_object(doc)
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "ctdenoise"


def test_the_manifests_hold_what_the_settings_name(chart_settings: Settings) -> None:
    ns = chart_settings.namespace
    namespace = find("Namespace", ns)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, token in ((chart_settings.service_account, False), (chart_settings.spark_service_account, True),
                        (chart_settings.spark_executor_service_account, False)):  # fmt: skip
        account = find("ServiceAccount", name)
        assert account["metadata"]["namespace"] == ns and account["automountServiceAccountToken"] is token, name
    secret = find("Secret", chart_settings.s3_secret)
    assert secret["metadata"]["namespace"] == ns
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])
    assert all(v.startswith("<") for v in secret["stringData"].values()), "a template holds no credential"


# What the provider's operators call in the job namespace (kubernetes client method -> resource, verb).
AIRFLOW_NEEDS = {
    ("pods", "create"), ("pods", "get"), ("pods", "list"), ("pods", "watch"), ("pods", "delete"),  # create, read, find, follow, delete
    ("pods", "patch"),  # patch_already_checked
    ("pods/log", "get"),  # read_namespaced_pod_log
    ("pods/exec", "create"), ("pods/exec", "get"),  # the XCom sidecar, read through exec
    ("events", "list"),  # log_events_on_failure: list_namespaced_event
    ("sparkapplications", "create"), ("sparkapplications", "get"), ("sparkapplications", "delete"),
    ("sparkapplications/status", "get"),  # get_namespaced_custom_object_status
}  # fmt: skip
SPARK_DRIVER_NEEDS = {(r, v) for r in ("pods", "services", "configmaps") for v in ("create", "get", "list", "watch", "delete")}


def granted(role: dict[str, Any]) -> set[tuple[str, str]]:
    return {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}


def test_rbac_grants_what_the_operators_do(airflow_values: dict[str, Any], chart_settings: Settings) -> None:
    assert AIRFLOW_NEEDS <= granted(find("Role", "ct-denoise-airflow"))
    binding = find("RoleBinding", "ct-denoise-airflow")
    subjects = {(s["namespace"], s["name"]) for s in binding["subjects"]}
    assert subjects == {("airflow", airflow_values["workers"]["serviceAccount"]["name"]),
                        ("airflow", airflow_values["triggerer"]["serviceAccount"]["name"])}  # fmt: skip
    assert SPARK_DRIVER_NEEDS <= granted(find("Role", "ct-denoise-spark-driver"))
    driver = find("RoleBinding", "ct-denoise-spark-driver")
    assert driver["subjects"] == [{"kind": "ServiceAccount", "name": chart_settings.spark_service_account, "namespace": chart_settings.namespace}]
    for role in ("ct-denoise-airflow", "ct-denoise-spark-driver"):
        assert find("Role", role)["metadata"]["namespace"] == chart_settings.namespace
        assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in find("Role", role)["rules"])


def test_airflow_values_deploy_the_image_with_the_kubernetes_executor(airflow_values: dict[str, Any]) -> None:
    from ctdenoise import __version__

    pins = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().splitlines() if "==" in line)
    assert airflow_values["executor"] == "KubernetesExecutor"
    assert airflow_values["dags"]["gitSync"]["enabled"] is False and airflow_values["dags"]["persistence"]["enabled"] is False
    assert airflow_values["defaultAirflowTag"] == __version__ and airflow_values["airflowVersion"] == pins["apache-airflow"]
    assert airflow_values["defaultAirflowRepository"].endswith("/ctdenoise-airflow")
    assert airflow_values["migrateDatabaseJob"]["args"][-1] == "airflow db migrate && ctdenoise pools"
    assert airflow_values["images"]["useDefaultImageForMigration"] is False


def test_airflow_values_env_is_valid_kubernetes(airflow_values: dict[str, Any]) -> None:
    """env and extraEnvFrom as a container's: strict Kubernetes schema; the secret they name is a template here."""
    env_from = yaml.safe_load(airflow_values["extraEnvFrom"])
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "airflow-env"},
           "spec": {"containers": [{"name": "base", "image": "x", "env": airflow_values["env"], "envFrom": env_from}]}}  # fmt: skip
    validate_object(pod)
    assert [e["secretRef"]["name"] for e in env_from] == [find("Secret", "ct-denoise-airflow-connections")["metadata"]["name"]]
    validate_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w"},
                     "spec": {"containers": [{"name": "base", "image": "x", "resources": airflow_values["workers"]["resources"]}]}})  # fmt: skip


def test_airflow_values_options_exist_in_airflow(airflow_values: dict[str, Any]) -> None:
    import airflow.config_templates

    reference = yaml.safe_load((Path(airflow.config_templates.__file__).parent / "config.yml").read_text())
    for section, options in airflow_values["config"].items():
        for option in options:
            assert option in reference.get(section, {}).get("options", {}), f"[{section}] {option} is not an Airflow option"
    for entry in airflow_values["env"]:
        if entry["name"].startswith("AIRFLOW__"):
            section, option = entry["name"][len("AIRFLOW__"):].lower().split("__", 1)
            assert option in reference[section]["options"], entry["name"]


def test_airflow_values_connections_resolve(airflow_values: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    env = {e["name"]: e["value"] for e in airflow_values["env"]}
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", env["AIRFLOW_CONN_KUBERNETES_DEFAULT"])
    hook = KubernetesHook(conn_id=load_settings({k: v for k, v in env.items() if k.startswith("CT_DENOISE_")}).kubernetes_conn_id)
    assert hook._get_field("in_cluster") is True
    template = find("Secret", "ct-denoise-airflow-connections")["stringData"]["AIRFLOW_CONN_AWS_DEFAULT"]
    assert json.loads(template)["conn_type"] == "aws"


def test_the_chart_settings_render_valid_hardened_workloads(chart_settings: Settings) -> None:
    """Under exactly the chart's CT_DENOISE_* values: a convert pod (strict Kubernetes, restricted)
    and a SparkApplication (strict CRD), with the registry's images."""
    import jsonschema
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import ApiClient

    from ctdenoise.job import DssvdJob
    from ctdenoise.orchestration.pods import pod_partial_kwargs
    from ctdenoise.orchestration.sparkapp import spark_application

    kwargs = {k: v for k, v in pod_partial_kwargs(chart_settings, "convert").items() if k not in ("map_index_template", "pool")}
    op = KubernetesPodOperator(task_id="convert", arguments=["convert"], **kwargs)
    pod = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(dry_run=True))
    validate_object(pod)
    assert restricted_violations(pod["spec"]) == [] and pod["metadata"]["namespace"] == chart_settings.namespace
    assert pod["spec"]["containers"][0]["image"].startswith("registry.example.com/ctdenoise/ctdenoise-worker:")
    app = spark_application(DssvdJob(matrix="s3://ct-denoise/m.zarr", out="s3://ct-denoise/s.zarr", rank=5), chart_settings, "dssvd-x")
    jsonschema.validate(app, sparkapplication_schema())
    assert app["metadata"]["namespace"] == chart_settings.namespace


def test_spark_operator_values_turn_the_webhook_on_for_the_job_namespace(chart_settings: Settings) -> None:
    values = yaml.safe_load((DEPLOY / "helm" / "spark-operator-values.yaml").read_text())
    assert values["webhook"]["enable"] is True and values["webhook"]["failurePolicy"] == "Fail"
    assert values["spark"]["jobNamespaces"] == [chart_settings.namespace]
    # the chart creates no Spark identity: deploy/manifests holds them, driver and executor apart
    assert values["spark"]["serviceAccount"]["create"] is False and values["spark"]["rbac"]["create"] is False
    find("ServiceAccount", chart_settings.spark_service_account)
    find("ServiceAccount", chart_settings.spark_executor_service_account)
