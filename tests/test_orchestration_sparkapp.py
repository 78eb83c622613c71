"""The SparkApplication manifest of the kubernetes runtime, validated against the operator's CRD schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from k8s_schemas import restricted_violations, sparkapplication_schema

from ctdenoise.errors import ParameterError
from ctdenoise.job import DssvdJob
from ctdenoise.orchestration.config import load_settings
from ctdenoise.orchestration.sparkapp import application_name, spark_application

REPO = Path(__file__).resolve().parent.parent

SETTINGS = load_settings({"CT_DENOISE_NAMESPACE": "ctdenoise", "CT_DENOISE_SPARK_IMAGE": "registry.example/ctdenoise:0.1.0",
                          "CT_DENOISE_S3_SECRET": "ctdenoise-minio"})  # fmt: skip
JOB = DssvdJob(matrix="s3://ctdenoise/matrices/1.2.840.10008.zarr", out="s3://ctdenoise/svd/1.2.840.10008.zarr", rank=50)
NAME = "dssvd-1-2-840-10008"


@pytest.fixture(scope="module")
def crd_schema() -> dict:
    return sparkapplication_schema()


def test_rendered_manifest_is_valid_against_the_crd(crd_schema):
    import jsonschema

    job = JOB.model_copy(update={"with_u": True})
    manifest = spark_application(job, SETTINGS, NAME, labels={"series": "abc"})
    jsonschema.validate(manifest, crd_schema)
    assert manifest["apiVersion"] == "sparkoperator.k8s.io/v1beta2" and manifest["kind"] == "SparkApplication"
    assert manifest["metadata"] == {
        "name": NAME,
        "namespace": "ctdenoise",
        "labels": {"app.kubernetes.io/name": "ctdenoise", "app.kubernetes.io/component": "dssvd", "series": "abc"},
    }
    assert spec_of(manifest)["imagePullPolicy"] == "IfNotPresent"  # a version tag: never re-pulled
    spec = manifest["spec"]
    assert spec["type"] == "Python" and spec["mode"] == "cluster" and spec["pythonVersion"] == "3"
    assert spec["mainApplicationFile"] == "local:///opt/ctdenoise/spark/dssvd.py"
    assert spec["image"] == "registry.example/ctdenoise:0.1.0"
    assert spec["arguments"] == job.arguments()  # one rendered list: the template spells no flag
    assert spec["arguments"][:6] == ["--matrix", job.matrix, "--out", job.out, "--rank", "50"]
    assert spec["arguments"][-1] == "--with-u"
    for role in ("driver", "executor"):
        pod = spec[role]
        assert pod["envFrom"] == [{"secretRef": {"name": "ctdenoise-minio"}}]
        assert pod["podSecurityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["executor"]["instances"] == SETTINGS.spark_executor_instances
    assert spec["executor"]["cores"] == SETTINGS.spark_executor_cores
    assert spec["driver"]["memory"] == SETTINGS.spark_driver_memory and spec["driver"]["serviceAccount"] == SETTINGS.spark_service_account
    assert spec["executor"]["serviceAccount"] == SETTINGS.spark_executor_service_account != SETTINGS.spark_service_account


def spec_of(manifest: dict) -> dict:
    return manifest["spec"]


def test_the_application_never_restarts_itself(crd_schema):
    """Airflow owns the retries: a SparkApplication retrying on its own would fight the provider,
    which fails the task and deletes the application on the first driver failure."""
    spec = spark_application(JOB, SETTINGS, NAME)["spec"]
    assert spec["restartPolicy"] == {"type": "Never"}
    assert spec["timeToLiveSeconds"] == SETTINGS.spark_ttl_seconds


@pytest.mark.parametrize("role", ["driver", "executor"])
def test_spark_pods_pass_the_restricted_pod_security_level(role):
    """The driver and executor pods as the operator's webhook builds them from the spec."""
    part = spark_application(JOB, SETTINGS, NAME)["spec"][role]
    pod = {
        "serviceAccountName": part["serviceAccount"],
        "securityContext": part["podSecurityContext"],
        "containers": [{"name": f"spark-kubernetes-{role}", "securityContext": part["securityContext"]}],
        "volumes": [{"name": "spark-local-dir-1", "emptyDir": {}}, {"name": "spark-conf-volume-driver", "configMap": {"name": "c"}}],
    }
    assert restricted_violations(pod) == []


def test_the_restricted_check_is_real():
    part = spark_application(JOB, SETTINGS, NAME)["spec"]["driver"]
    part["podSecurityContext"].pop("seccompProfile")
    part["securityContext"].pop("seccompProfile")
    pod = {"securityContext": part["podSecurityContext"], "containers": [{"name": "d", "securityContext": part["securityContext"]}]}
    assert restricted_violations(pod) == ["d: seccompProfile must be RuntimeDefault or Localhost"]


def test_cluster_settings_reach_the_application(crd_schema):
    """Pull secrets, placement, limits, overheads, labels and Spark properties, each from its setting."""
    import jsonschema

    settings = load_settings({
        "CT_DENOISE_IMAGE_PULL_SECRETS": "registry-a,registry-b",
        "CT_DENOISE_SPARK_NODE_SELECTOR": '{"pool": "spark"}',
        "CT_DENOISE_SPARK_TOLERATIONS": '[{"key": "spark", "operator": "Exists", "effect": "NoSchedule"}]',
        "CT_DENOISE_SPARK_AFFINITY": '{"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": '
                                     '[{"matchExpressions": [{"key": "arch", "operator": "In", "values": ["amd64"]}]}]}}}',
        "CT_DENOISE_SPARK_PRIORITY_CLASS": "batch-low",
        "CT_DENOISE_SPARK_EXECUTOR_CORE_LIMIT": "1200m",
        "CT_DENOISE_SPARK_DRIVER_MEMORY_OVERHEAD": "512m",
        "CT_DENOISE_SPARK_LABELS": '{"team": "imaging"}',
        "CT_DENOISE_SPARK_CONF": '{"spark.kubernetes.executor.deleteOnTermination": "false"}',
        "CT_DENOISE_SPARK_TTL_SECONDS": "600",
    })  # fmt: skip
    manifest = spark_application(JOB, settings, NAME)
    jsonschema.validate(manifest, crd_schema)
    spec = manifest["spec"]
    assert spec["imagePullSecrets"] == ["registry-a", "registry-b"]  # the CRD's form: names
    assert spec["timeToLiveSeconds"] == 600 and manifest["metadata"]["labels"]["team"] == "imaging"
    assert spec["sparkConf"]["spark.kubernetes.executor.deleteOnTermination"] == "false"
    assert spec["sparkConf"]["spark.executorEnv.OMP_NUM_THREADS"] == "1"  # the base properties stay
    for role in ("driver", "executor"):
        assert spec[role]["nodeSelector"] == {"pool": "spark"} and spec[role]["priorityClassName"] == "batch-low"
        assert spec[role]["tolerations"][0]["key"] == "spark" and "nodeAffinity" in spec[role]["affinity"]
        assert spec[role]["labels"]["team"] == "imaging"
    assert spec["executor"]["coreLimit"] == "1200m" and "coreLimit" not in spec["driver"]
    assert spec["driver"]["memoryOverhead"] == "512m" and "memoryOverhead" not in spec["executor"]


def test_without_an_s3_secret_the_pods_use_their_service_accounts(crd_schema):
    """IRSA / workload identity: no secret, no envFrom; the executors' own service account carries the role."""
    import jsonschema

    manifest = spark_application(JOB, load_settings({"CT_DENOISE_S3_SECRET": "none"}), NAME)
    jsonschema.validate(manifest, crd_schema)
    for role in ("driver", "executor"):
        assert "envFrom" not in manifest["spec"][role]
    assert manifest["spec"]["executor"]["serviceAccount"] == "ct-denoise-spark-executor"


def test_a_moving_tag_is_always_pulled():
    manifest = spark_application(JOB, load_settings({"CT_DENOISE_SPARK_IMAGE": "registry.example/ctdenoise-spark:main"}), NAME)
    assert manifest["spec"]["imagePullPolicy"] == "Always"


@pytest.mark.parametrize(("path", "field"), [(("spec", "driver"), "coress"), (("spec",), "timeToLiveSecond"),
                                             (("spec", "executor", "podSecurityContext"), "seccompProfil")])  # fmt: skip
def test_the_strict_schema_rejects_a_misspelt_field(crd_schema, path, field):
    import jsonschema

    manifest = spark_application(JOB, SETTINGS, NAME)
    node = manifest
    for key in path:
        node = node[key]
    node[field] = 1
    with pytest.raises(jsonschema.ValidationError, match=field):
        jsonschema.validate(manifest, crd_schema)


def test_values_that_need_quoting_survive_rendering(crd_schema):
    import jsonschema

    tricky = JOB.model_copy(update={"matrix": "s3://b/a: b #c/{{ ti.xcom_pull('m') }}.zarr", "rank": 7})
    manifest = spark_application(tricky, SETTINGS, NAME)
    jsonschema.validate(manifest, crd_schema)
    assert manifest["spec"]["arguments"][1] == tricky.matrix
    assert "--with-u" not in manifest["spec"]["arguments"]


def test_names_must_be_dns_labels():
    with pytest.raises(ParameterError, match="lowercase letters"):
        spark_application(JOB, SETTINGS, "DSSVD_1")
    name = application_name("Scan A/with spaces and a very long folder name indeed")
    assert len(name) <= 40 and spark_application(JOB, SETTINGS, name)["metadata"]["name"] == name


def test_the_template_ships_inside_the_package():
    """A pip-installed package finds its template (no path into the source tree)."""
    from importlib import resources

    assert resources.files("ctdenoise.orchestration").joinpath("sparkapplication.yaml").is_file()


def test_the_local_mode_manifest_passes_every_local_parameter_to_the_job(crd_schema):
    """The local mode's arguments, as the job's own parser reads them (the in-plane stage too)."""
    import importlib.util

    import jsonschema

    from ctdenoise.params import LocalParams

    job = JOB.model_copy(update={"local_out": "s3://ctdenoise/work/local.zarr", "local": LocalParams(tile=8, stride=4, multipliers=(0.5, 1.0))})
    manifest = spark_application(job, SETTINGS, NAME)
    jsonschema.validate(manifest, crd_schema)
    spec = importlib.util.spec_from_file_location("dssvd_for_args", REPO / "spark" / "dssvd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DssvdJob.from_arguments(module.build_parser().parse_args(manifest["spec"]["arguments"])) == job
    none = job.model_copy(update={"local": LocalParams(tile=8, stride=4, multipliers=(0.5, 1.0), inplane="none")})
    parsed = DssvdJob.from_arguments(module.build_parser().parse_args(spark_application(none, SETTINGS, NAME)["spec"]["arguments"]))
    assert parsed.local.inplane == "none"
