"""docker-compose.yaml: the services of the local deployment and their wiring, checked offline."""

from __future__ import annotations

import json
import os
import re
import subprocess
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
    assert {"postgres", "minio", "minio-init", "spark-master", "spark-worker", "airflow-secrets", "airflow-init",
            *AIRFLOW_SERVICES} <= set(services)  # fmt: skip
    commands = {name: services[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands == {
        "airflow-apiserver": ["api-server"],
        "airflow-scheduler": ["scheduler"],
        "airflow-dag-processor": ["dag-processor"],
        "airflow-triggerer": ["triggerer"],
    }
    # the pools come from the settings, by the same command the Helm values run
    assert " ".join(services["airflow-init"]["command"]).endswith("airflow db migrate && ctdenoise pools")


LONG_RUNNING = ("postgres", "minio", "spark-master", "spark-worker", *AIRFLOW_SERVICES)


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in LONG_RUNNING:
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
    scheduler = env_of(services["airflow-scheduler"])
    assert scheduler["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "True"  # the scheduler's /health on 8974
    assert "8974/health" in " ".join(services["airflow-scheduler"]["healthcheck"]["test"])
    # what waits for Spark waits for it to be healthy, not merely started
    assert services["airflow-scheduler"]["depends_on"]["spark-master"]["condition"] == "service_healthy"
    assert services["spark-worker"]["depends_on"]["spark-master"]["condition"] == "service_healthy"


def test_third_party_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = interpolate(service["image"])
        if service.get("build") or image.startswith("ctdenoise-"):
            continue
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest", f"{name}: {image} is not pinned"
    for name in ("minio", "minio-init"):
        image = compose["services"][name]["image"]
        assert image.startswith("quay.io/minio/") and ":RELEASE." in image, image  # Docker Hub no longer serves them


def test_one_ctdenoise_version_and_nothing_mounted_over_it(compose: dict[str, Any]) -> None:
    """The Airflow and Spark images are built from this checkout under one tag; no bind mount of the
    checkout shadows the package, the DAG or dssvd.py baked into them."""
    from ctdenoise import __version__

    services = compose["services"]
    tags = {interpolate(services[name]["image"]).split(":")[-1] for name in ("spark-master", "spark-worker", *AIRFLOW_SERVICES)}
    assert tags == {__version__}
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (REPO / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            assert not str(volume).startswith((".", "/")), f"{name}: bind mount {volume}"
    env = env_of(services["airflow-scheduler"])
    assert env["CT_DENOISE_SPARK_APPLICATION"] == "/opt/airflow/spark/dssvd.py"  # where Dockerfile.airflow puts it


def test_airflow_runs_the_local_runtime_against_minio_and_spark(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    for name in AIRFLOW_SERVICES:
        env = env_of(compose["services"][name])
        assert env["CT_DENOISE_RUNTIME"] == "local", name
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
    env = env_of(compose["services"]["airflow-scheduler"])
    aws = json.loads(interpolate(env["AIRFLOW_CONN_AWS_DEFAULT"]))
    assert aws["extra"]["endpoint_url"] == "http://minio:9000"
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


def test_the_application_has_its_own_least_privilege_s3_user(compose: dict[str, Any], tmp_path: Path) -> None:
    """Not the MinIO root: a user whose policy (rendered here by the init script's own printf)
    reaches the bucket and its objects only."""
    services = compose["services"]
    aws = json.loads(interpolate(env_of(services["airflow-scheduler"])["AIRFLOW_CONN_AWS_DEFAULT"]))
    init = env_of(services["minio-init"])
    assert aws["login"] == interpolate(init["CT_DENOISE_S3_ACCESS_KEY"]) != interpolate(env_of(services["minio"])["MINIO_ROOT_USER"])
    assert aws["password"] == interpolate(init["CT_DENOISE_S3_SECRET_KEY"])
    script = services["minio-init"]["entrypoint"][-1].replace("$$", "$")
    printf = next(line for line in script.splitlines() if line.startswith("printf "))
    rendered = subprocess.run(["sh", "-c", printf.split(" > ")[0]], env={"CT_DENOISE_BUCKET": "scans"}, capture_output=True,
                              text=True, check=True).stdout  # fmt: skip
    statements = json.loads(rendered)["Statement"]
    assert {r for s in statements for r in s["Resource"]} == {"arn:aws:s3:::scans", "arn:aws:s3:::scans/*"}
    assert all(s["Effect"] == "Allow" and not any(a in ("s3:*", "admin:*") for a in s["Action"]) for s in statements)
    assert "mc admin policy attach local ctdenoise-app --user" in script


def test_airflow_image_matches_the_tested_airflow(compose: dict[str, Any]) -> None:
    text = (REPO / compose["services"]["airflow-scheduler"]["build"]["dockerfile"]).read_text()
    assert re.search(r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}-python3\.11", text, re.M)
    assert re.search(r"^ARG AIRFLOW_VERSION=3\.3\.2", text, re.M)


def test_secrets_are_generated_or_overridable_dev_defaults(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in env_of(service).items():
            if key.endswith("_CMD"):
                assert str(value).startswith("cat /opt/airflow/secrets/"), f"{name}: {key}"
            elif any(word in key for word in SECRET_WORDS):
                assert str(value).startswith("${") and ":-" in str(value), f"{name}: {key} is hard-coded"
    env = env_of(compose["services"]["airflow-scheduler"])
    assert "AIRFLOW__CORE__FERNET_KEY" not in env and "AIRFLOW__API_AUTH__JWT_SECRET" not in env
    aws = env["AIRFLOW_CONN_AWS_DEFAULT"]
    overridden = json.loads(interpolate(aws, {"CT_DENOISE_S3_ACCESS_KEY": "alice", "CT_DENOISE_S3_SECRET_KEY": "pw"}))
    assert (overridden["login"], overridden["password"]) == ("alice", "pw")
    database = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert database.startswith("postgresql+psycopg2://${POSTGRES_USER:-airflow}:${POSTGRES_PASSWORD:-airflow}@")
    generator = compose["services"]["airflow-secrets"]
    assert generator["entrypoint"][-2:] == ["ctdenoise.orchestration.airflow_secrets", "/opt/airflow/secrets"]
    assert "airflow-secrets:/opt/airflow/secrets" in generator["volumes"]


def test_the_fernet_key_is_generated_once_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from cryptography.fernet import Fernet

    from ctdenoise.orchestration import airflow_secrets

    monkeypatch.delenv("AIRFLOW_FERNET_KEY", raising=False)
    assert airflow_secrets.main([str(tmp_path)]) == 0
    key = (tmp_path / "fernet_key").read_text()
    Fernet(key.encode())  # a valid key
    assert (tmp_path / "fernet_key").stat().st_mode & 0o077 == 0 and len((tmp_path / "jwt_secret").read_text()) >= 48
    monkeypatch.setenv("AIRFLOW_FERNET_KEY", Fernet.generate_key().decode())
    assert airflow_secrets.main([str(tmp_path)]) == 0
    assert (tmp_path / "fernet_key").read_text() == key  # kept: what it encrypted stays readable
    assert key not in capsys.readouterr().out
    monkeypatch.setenv("AIRFLOW_FERNET_KEY", "not-a-key")
    with pytest.raises(SystemExit, match="not a Fernet key"):
        airflow_secrets.main([str(tmp_path / "other")])


def test_ports_bind_to_localhost_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is exposed beyond this machine"
