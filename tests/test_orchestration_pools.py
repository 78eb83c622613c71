"""The DAG's pools: declared by the settings, recorded by `ctdenoise pools`, checked when a run starts.

Creating them on a real Airflow database (twice, idempotent) runs in the Airflow image's
environment: tests/test_image_envs.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from ctdenoise.errors import ParameterError
from ctdenoise.orchestration import pools
from ctdenoise.orchestration.config import load_settings

KUBE = load_settings({"CT_DENOISE_RUNTIME": "kubernetes"})


def test_declared_pools_come_from_the_settings() -> None:
    settings = load_settings({"CT_DENOISE_SPARK_POOL": "spark_small", "CT_DENOISE_SPARK_POOL_SLOTS": "3"})
    assert [(p.name, p.slots) for p in pools.declared(settings)] == [("spark_small", 3), ("ct_denoise_pods", 4), ("ct_denoise_delivery", 2)]


def test_missing_pools_are_those_not_recorded() -> None:
    assert pools.missing(KUBE, None) == ["ct_denoise_spark", "ct_denoise_pods", "ct_denoise_delivery"]
    assert pools.missing(KUBE, {"ct_denoise_spark": 1, "ct_denoise_delivery": 2}) == ["ct_denoise_pods"]
    assert pools.missing(KUBE, {"ct_denoise_spark": 1, "ct_denoise_pods": 4, "ct_denoise_delivery": 2}) == []


def fake_variable(monkeypatch: pytest.MonkeyPatch, value: Any) -> None:
    import airflow.sdk

    monkeypatch.setattr(airflow.sdk.Variable, "get", classmethod(lambda cls, key, default=None, deserialize_json=False:
                                                                 value if key == pools.RECEIPT else default))  # fmt: skip


def test_a_run_fails_at_its_start_naming_a_missing_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_variable(monkeypatch, {"ct_denoise_pods": 4, "ct_denoise_delivery": 2})
    with pytest.raises(ParameterError, match="pool 'ct_denoise_spark' was not created by `ctdenoise pools`") as raised:
        pools.check(KUBE)
    assert "\n" not in str(raised.value)
    fake_variable(monkeypatch, {"ct_denoise_pods": 4, "ct_denoise_spark": 1, "ct_denoise_delivery": 2})
    pools.check(KUBE)


def test_the_check_is_on_in_the_kubernetes_runtime_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_variable(monkeypatch, None)
    pools.check(load_settings({}))  # local runtime: `airflow dags test` and the demo ignore pools
    with pytest.raises(ParameterError):
        pools.check(load_settings({"CT_DENOISE_CHECK_POOLS": "true"}))
    pools.check(load_settings({"CT_DENOISE_RUNTIME": "kubernetes", "CT_DENOISE_CHECK_POOLS": "false"}))


def test_wait_for_scans_checks_the_pools_before_it_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    from dags.dag_fixtures import load_dag

    dag = load_dag("kubernetes", monkeypatch)
    fake_variable(monkeypatch, None)
    with pytest.raises(ParameterError, match="ct_denoise_spark"):
        dag.task_dict["wait_for_scans"]._pre_execute_hook({"params": {}})  # what the task runner calls first
