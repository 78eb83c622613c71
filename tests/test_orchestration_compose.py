"""docker-compose.yaml: the services of the local deployment and their wiring, checked offline."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("AIRFLOW_HOME", str(Path(tempfile.gettempdir()) / f"ctdenoise-test-airflow-{os.getuid()}"))

REPO = Path(__file__).resolve().parents[1]
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
SECRET_WORDS = ("PASSWORD", "SECRET", "FERNET", "ROOT_USER")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` with the given environment (default: none set)."""
    env = env or {}

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(3) or ""
        return env.get(name) or default

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", sub, value).replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    return dict(env) if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def test_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "minio", "minio-init", "spark-master", "spark-worker", "airflow-init", *AIRFLOW_SERVICES} <= set(services)
    commands = {name: services[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands == {
        "airflow-apiserver": ["api-server"],
        "airflow-scheduler": ["scheduler"],
        "airflow-dag-processor": ["dag-processor"],
        "airflow-triggerer": ["triggerer"],
    }
    assert "airflow db migrate" in " ".join(services["airflow-init"]["command"])
    for pool in ("ct_denoise_spark", "ct_denoise_pods"):
        assert pool in " ".join(services["airflow-init"]["command"]), f"pool {pool} is not created"


def test_builds_and_mounts_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            assert (REPO / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (REPO / source).is_dir(), f"{name}: mount source {source} missing"
    scheduler = compose["services"]["airflow-scheduler"]
    assert {v.split(":")[1] for v in scheduler["volumes"] if v.startswith(".")} == {
        "/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/spark"
    }  # fmt: skip
    assert env_of(scheduler)["CT_DENOISE_SPARK_APPLICATION"] == "/opt/airflow/spark/dssvd.py"


def test_airflow_runs_the_local_runtime_against_minio_and_spark(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    for name in AIRFLOW_SERVICES:
        env = env_of(compose["services"][name])
        assert env["CT_DENOISE_RUNTIME"] == "local", name
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
    env = env_of(compose["services"]["airflow-scheduler"])
    aws = json.loads(interpolate(env["AIRFLOW_CONN_AWS_DEFAULT"]))
    assert aws["extra"]["endpoint_url"] == "http://minio:9000"
    assert aws["login"] == interpolate(compose["services"]["minio"]["environment"]["MINIO_ROOT_USER"])
    assert aws["password"] == interpolate(compose["services"]["minio"]["environment"]["MINIO_ROOT_PASSWORD"])
    # The Spark connection resolves to the standalone master, in client mode (driver in the task).
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", interpolate(env["AIRFLOW_CONN_SPARK_DEFAULT"]))
    connection = SparkSubmitHook(conn_id="spark_default")._resolve_connection()
    assert connection["master"] == "spark://spark-master:7077"
    assert connection["deploy_mode"] == "client"
    spark_conf = json.loads(env["CT_DENOISE_SPARK_CONF"])
    assert spark_conf["spark.driver.host"] == compose["services"]["airflow-scheduler"]["hostname"]
    master = compose["services"]["spark-master"]["command"]
    assert master[master.index("--port") + 1] == "7077"
    assert "spark://spark-master:7077" in compose["services"]["spark-worker"]["command"]


def test_airflow_image_is_airflow_3(compose: dict[str, Any]) -> None:
    text = (REPO / compose["services"]["airflow-scheduler"]["build"]["dockerfile"]).read_text()
    assert re.search(r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}-python3\.11", text, re.M)
    assert re.search(r"^ARG AIRFLOW_VERSION=3\.3\.2", text, re.M)


def test_secrets_are_overridable_dev_defaults(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in env_of(service).items():
            if any(word in key for word in SECRET_WORDS):
                assert str(value).startswith("${") and ":-" in str(value), f"{name}: {key} is hard-coded"
    env = env_of(compose["services"]["airflow-scheduler"])
    aws = env["AIRFLOW_CONN_AWS_DEFAULT"]
    assert '"login": "${MINIO_ROOT_USER:-' in aws and '"password": "${MINIO_ROOT_PASSWORD:-' in aws
    overridden = json.loads(interpolate(aws, {"MINIO_ROOT_USER": "alice", "MINIO_ROOT_PASSWORD": "pw"}))
    assert (overridden["login"], overridden["password"]) == ("alice", "pw")
    database = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert database.startswith("postgresql+psycopg2://${POSTGRES_USER:-airflow}:${POSTGRES_PASSWORD:-airflow}@")


def test_ports_bind_to_localhost_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is exposed beyond this machine"
