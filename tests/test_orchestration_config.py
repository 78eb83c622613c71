"""Settings of the DAG from CT_DENOISE_* variables: defaults, overrides, refusals."""

from __future__ import annotations

import pytest

from ctdenoise.errors import ParameterError
from ctdenoise.orchestration import config


def readme_variables() -> dict[str, tuple[str, str]]:
    """``CT_DENOISE_*`` rows of the README's configuration table: name -> (default, meaning)."""
    rows = {}
    for line in (config.REPO_ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `CT_DENOISE_") and len(cells) == 3:
            rows[cells[0].strip("`")] = (cells[1].strip("`"), cells[2])
    return rows


def test_defaults_are_the_documented_ones() -> None:
    """The README's table is the variables' own list (name, default, meaning), and the defaults
    are what the settings hold when nothing is set."""
    assert readme_variables() == {name: (default, meaning) for name, (default, meaning) in config.VARIABLES.items()}
    assert config.load_settings({}) == config.Settings()
    settings = config.load_settings({})
    assert settings.runtime == "local"
    assert settings.schedule == "@daily" and settings.catchup is False
    assert settings.partition_url("2026-11-20") == "s3://ct-denoise/incoming/2026-11-20"
    assert settings.partition_template() == "s3://ct-denoise/incoming/{{ ctdenoise_partition_date(logical_date) }}"
    assert settings.work_url("2026-11-20") == "s3://ct-denoise/work/2026-11-20"
    assert settings.denoised_url() == "s3://ct-denoise/denoised"
    assert settings.spark_application.endswith("spark/dssvd.py")
    assert (config.REPO_ROOT / "spark" / "dssvd.py").is_file()


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
        ({"CT_DENOISE_RUNTIME": "docker"}, "CT_DENOISE_RUNTIME='docker'"),
        ({"CT_DENOISE_BUCKET": "s3://b/prefix"}, "a bucket name only"),
        ({"CT_DENOISE_RETRIES": "two"}, "not an integer"),
        ({"CT_DENOISE_MAX_ACTIVE_RUNS": "0"}, "must be >= 1"),
        ({"CT_DENOISE_SETTLE_SECONDS": "-1"}, "must be >= 0"),
        ({"CT_DENOISE_CATCHUP": "maybe"}, "expected true or false"),
        ({"CT_DENOISE_SPARK_CONF": "[1]"}, "JSON object"),
        ({"CT_DENOISE_TIMEZONE": "Mars/Base"}, "CT_DENOISE_TIMEZONE='Mars/Base': not an IANA time zone"),
        ({"CT_DENOISE_START_DATE": "01/02/2026"}, "CT_DENOISE_START_DATE='01/02/2026': expected a date YYYY-MM-DD"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ParameterError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config.load_settings(env)
