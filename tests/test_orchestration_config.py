"""Settings of the DAG from CT_DENOISE_* variables: defaults, overrides, refusals."""

from __future__ import annotations

import pytest

from ctdenoise.errors import ParameterError
from ctdenoise.orchestration import config


def test_defaults_are_the_settings_unset() -> None:
    assert config.load_settings({}) == config.Settings()
    assert config.load_settings({"CT_DENOISE_BUCKET": "  "}) == config.Settings()  # blank: the default
    settings = config.load_settings({})
    assert settings.runtime == "local"
    assert settings.schedule == "@daily" and settings.catchup is False
    assert settings.partition_url("2026-11-20") == "s3://ct-denoise/incoming/2026-11-20"
    assert settings.partition_template() == "s3://ct-denoise/incoming/{{ ctdenoise_partition_date(logical_date) }}"
    assert settings.work_url("2026-11-20") == "s3://ct-denoise/work/2026-11-20"
    assert settings.denoised_url() == "s3://ct-denoise/denoised"


def test_every_setting_is_one_documented_variable() -> None:
    names = [config.variable(name) for name in config.Settings.model_fields]
    assert all(name.startswith("CT_DENOISE_") for name in names) and len(set(names)) == len(names)
    assert all(info.description for info in config.Settings.model_fields.values())


def test_the_spark_application_defaults_to_the_checkout_beside_the_dags(tmp_path) -> None:
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    settings = config.load_settings({}).with_application(repo / "dags")
    assert settings.spark_application == str(repo / "spark" / "dssvd.py") and Path(settings.spark_application).is_file()
    chosen = config.load_settings({"CT_DENOISE_SPARK_APPLICATION": "/opt/job.py"}).with_application(repo / "dags")
    assert chosen.spark_application == "/opt/job.py"


def test_overrides() -> None:
    settings = config.load_settings(
        {
            "CT_DENOISE_RUNTIME": "Kubernetes",
            "CT_DENOISE_BUCKET": "scans",
            "CT_DENOISE_INCOMING_PREFIX": "/uploads/ct/",
            "CT_DENOISE_SCHEDULE": "none",
            "CT_DENOISE_CATCHUP": "true",
            "CT_DENOISE_RETRIES": "5",
            "CT_DENOISE_SPARK_CONF": '{"spark.executor.memoryOverhead": "1g"}',
        }
    )
    assert settings.runtime == "kubernetes"
    assert settings.partition_url("2026-01-01") == "s3://scans/uploads/ct/2026-01-01"
    assert settings.schedule is None and settings.catchup is True and settings.retries == 5
    assert settings.spark_conf == {"spark.executor.memoryOverhead": "1g"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CT_DENOISE_RUNTIME": "docker"}, "CT_DENOISE_RUNTIME='docker': Input should be 'local' or 'kubernetes'"),
        ({"CT_DENOISE_BUCKET": "s3://b/prefix"}, "a bucket name only"),
        ({"CT_DENOISE_RETRIES": "two"}, "CT_DENOISE_RETRIES='two': Input should be a valid integer"),
        ({"CT_DENOISE_MAX_ACTIVE_RUNS": "0"}, "greater than or equal to 1"),
        ({"CT_DENOISE_SETTLE_SECONDS": "-1"}, "greater than or equal to 0"),
        ({"CT_DENOISE_CATCHUP": "maybe"}, "CT_DENOISE_CATCHUP='maybe': Input should be a valid boolean"),
        ({"CT_DENOISE_SPARK_CONF": "[1]"}, "JSON object"),
        ({"CT_DENOISE_TIMEZONE": "Mars/Base"}, "CT_DENOISE_TIMEZONE='Mars/Base': not an IANA time zone"),
        ({"CT_DENOISE_START_DATE": "01/02/2026"}, "CT_DENOISE_START_DATE='01/02/2026': Input should be a valid date"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ParameterError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config.load_settings(env)
