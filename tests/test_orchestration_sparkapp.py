"""The SparkApplication manifest of the kubernetes runtime, validated against the operator's CRD schema."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from ctdenoise.errors import ParameterError
from ctdenoise.job import DssvdJob
from ctdenoise.orchestration.config import load_settings
from ctdenoise.orchestration.sparkapp import application_name, spark_application

REPO = Path(__file__).resolve().parent.parent
CRD = REPO.parent / "shared" / "schemas" / "sparkoperator.k8s.io_sparkapplications.yaml"

SETTINGS = load_settings({"CT_DENOISE_NAMESPACE": "ctdenoise", "CT_DENOISE_SPARK_IMAGE": "registry.example/ctdenoise:0.1.0",
                          "CT_DENOISE_S3_SECRET": "ctdenoise-minio"})  # fmt: skip
JOB = DssvdJob(matrix="s3://ctdenoise/matrices/1.2.840.10008.zarr", out="s3://ctdenoise/svd/1.2.840.10008.zarr", rank=50)
NAME = "dssvd-1-2-840-10008"


def _strict(schema: dict) -> dict:
    """The CRD schema with unknown fields rejected: Kubernetes would silently prune them, so a
    misspelt field in the template would be lost without this."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@pytest.fixture(scope="module")
def crd_schema() -> dict:
    if not CRD.exists():
        pytest.skip(f"SparkApplication CRD not found at {CRD} (the shared/ folder beside the repo is absent)")
    import yaml

    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta2")
    return _strict(version["schema"]["openAPIV3Schema"])


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


def test_the_strict_schema_rejects_a_misspelt_field(crd_schema):
    import jsonschema

    manifest = spark_application(JOB, SETTINGS, NAME)
    manifest["spec"]["driver"]["coress"] = 1
    with pytest.raises(jsonschema.ValidationError, match="coress"):
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
