"""ctdenoise.spark_app: the SparkApplication manifest, validated against the operator's CRD schema."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from ctdenoise.errors import ParameterError
from ctdenoise.spark_app import DEFAULTS, TEMPLATE_PATH, render_spark_application

REPO = Path(__file__).resolve().parent.parent
CRD = REPO.parent / "shared" / "schemas" / "sparkoperator.k8s.io_sparkapplications.yaml"

VALUES = {
    "name": "dssvd-1-2-840-10008",
    "namespace": "ctdenoise",
    "matrix_url": "s3://ctdenoise/matrices/1.2.840.10008.zarr",
    "out_url": "s3://ctdenoise/svd/1.2.840.10008.zarr",
    "rank": 50,
    "image": "registry.example/ctdenoise:0.1.0",
    "s3_secret": "ctdenoise-minio",
}


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

    manifest = render_spark_application({**VALUES, "with_u": True, "labels": {"series": "abc"}, "spark_conf": {"spark.eventLog.enabled": "false"}})
    jsonschema.validate(manifest, crd_schema)
    assert manifest["apiVersion"] == "sparkoperator.k8s.io/v1beta2" and manifest["kind"] == "SparkApplication"
    assert manifest["metadata"] == {
        "name": VALUES["name"],
        "namespace": "ctdenoise",
        "labels": {"app.kubernetes.io/name": "ctdenoise", "app.kubernetes.io/component": "dssvd", "series": "abc"},
    }
    spec = manifest["spec"]
    assert spec["type"] == "Python" and spec["mode"] == "cluster" and spec["pythonVersion"] == "3"
    assert spec["mainApplicationFile"] == "local:///opt/ctdenoise/spark/dssvd.py"
    assert spec["image"] == VALUES["image"]
    assert spec["arguments"] == [
        "--matrix", VALUES["matrix_url"], "--out", VALUES["out_url"], "--rank", "50", "--oversample", "15",
        "--power-iters", "2", "--seed", "0", "--method", "auto", "--with-u",
    ]
    assert spec["restartPolicy"]["type"] == "OnFailure" and spec["restartPolicy"]["onFailureRetries"] == 2
    for role in ("driver", "executor"):
        pod = spec[role]
        assert pod["envFrom"] == [{"secretRef": {"name": "ctdenoise-minio"}}]
        assert pod["podSecurityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["executor"]["instances"] == DEFAULTS["executor_instances"] and spec["executor"]["cores"] == 2
    assert spec["sparkConf"]["spark.eventLog.enabled"] == "false"


def test_the_strict_schema_rejects_a_misspelt_field(crd_schema):
    import jsonschema

    manifest = render_spark_application(VALUES)
    manifest["spec"]["driver"]["coress"] = 1
    with pytest.raises(jsonschema.ValidationError, match="coress"):
        jsonschema.validate(manifest, crd_schema)


def test_values_that_need_quoting_survive_rendering(crd_schema):
    import jsonschema

    tricky = {**VALUES, "matrix_url": "s3://b/a: b #c/{{ ti.xcom_pull('m') }}.zarr", "rank": 7}
    manifest = render_spark_application(tricky)
    jsonschema.validate(manifest, crd_schema)
    assert manifest["spec"]["arguments"][1] == tricky["matrix_url"]
    assert "--with-u" not in manifest["spec"]["arguments"]


def test_missing_or_bad_values_are_parameter_errors():
    with pytest.raises(ParameterError, match="missing matrix_url, rank"):
        render_spark_application({"name": "x", "out_url": "s3://b/o.zarr"})
    with pytest.raises(ParameterError, match="lowercase letters"):
        render_spark_application({**VALUES, "name": "DSSVD_1"})
    with pytest.raises(ParameterError, match="unknown key"):
        render_spark_application({**VALUES, "executors": 3})
    with pytest.raises(ParameterError, match="method must be"):
        render_spark_application({**VALUES, "method": "lanczos"})


def test_template_lives_in_the_spark_folder():
    assert TEMPLATE_PATH == REPO / "spark" / "sparkapplication.yaml" and TEMPLATE_PATH.exists()


def test_the_local_mode_manifest_passes_every_local_parameter_to_the_job(crd_schema):
    """The local mode's arguments, as the job's own parser reads them (the in-plane stage too)."""
    import importlib.util

    import jsonschema

    values = {**VALUES, "local_out_url": "s3://ctdenoise/work/local.zarr", "tile": 8, "stride": 4, "multipliers": [0.5, 1.0]}
    manifest = render_spark_application(values)
    jsonschema.validate(manifest, crd_schema)
    spec = importlib.util.spec_from_file_location("dssvd_for_args", REPO / "spark" / "dssvd.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    args = job.build_parser().parse_args(manifest["spec"]["arguments"])
    assert (args.local_out, args.tile, args.stride, args.multipliers) == ("s3://ctdenoise/work/local.zarr", 8, 4, (0.5, 1.0))
    assert args.shrinkage == "frobenius" and args.inplane == DEFAULTS["inplane"] == "nlm"
    manifest = render_spark_application({**values, "inplane": "none"})
    assert job.build_parser().parse_args(manifest["spec"]["arguments"]).inplane == "none"
