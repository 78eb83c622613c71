"""The trigger form: good values give the expected (series, rank) fan-out, bad values are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dag_fixtures import sample_series

from ctdenoise.errors import ParameterError
from ctdenoise.params import RunParams



@pytest.fixture(scope="module")
def trigger_params(dag: Any) -> Any:
    """The params as the API server holds them (serialized DAG), where triggers are validated."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag)).params


def trigger(trigger_params: Any, conf: dict[str, Any]) -> dict[str, Any]:
    """What ``create_dagrun`` does with a trigger's conf before any run exists."""
    return trigger_params.deep_merge(conf).validate()


def test_form_defaults_are_valid(trigger_params: Any) -> None:
    values = trigger(trigger_params, {})
    assert set(values) == set(RunParams.model_fields)
    assert RunParams.from_conf(values) == RunParams()


@pytest.mark.parametrize(
    "conf",
    [
        {"ranks": [5, 10, 20], "auto_rank": False, "drop_percents": []},
        {"drop_percents": [0.1, 1, 5, 10, 30], "k": 300, "oversample": 10, "power_iters": 1, "seed": 7},
        {"force": True},
    ],
)
def test_good_values_are_accepted(trigger_params: Any, conf: dict[str, Any]) -> None:
    values = trigger(trigger_params, conf)
    for key, value in conf.items():
        assert values[key] == value


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"ranks": [0]}, "less than the minimum of 1"),
        ({"ranks": [5, 5]}, "non-unique"),
        ({"ranks": "5,10"}, "is not of type 'array'"),
        ({"ranks": [2.5]}, "is not of type 'integer'"),
        ({"drop_percents": [100]}, "greater than or equal to the maximum of 100"),
        ({"drop_percents": [0]}, "less than or equal to the minimum of 0"),
        ({"k": 0}, "less than the minimum of 1"),
        ({"k": 5000}, "greater than the maximum of 4096"),
        ({"oversample": -1}, "less than the minimum of 0"),
        ({"power_iters": 11}, "greater than the maximum of 10"),
        ({"seed": -3}, "less than the minimum of 0"),
        ({"auto_rank": "yes"}, "is not of type 'boolean'"),
    ],
)
def test_bad_values_are_refused_at_trigger_time(trigger_params: Any, conf: dict[str, Any], message: str) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError) as info:
        trigger(trigger_params, conf)
    text = str(info.value)
    assert next(iter(conf)) in text
    assert message in text


def test_no_rank_rule_fails_before_waiting(dag: Any) -> None:
    """The cross-field rule runs in wait_for_scans' pre_execute, before the sensor waits."""
    hook = dag.task_dict["wait_for_scans"]._pre_execute_hook
    hook({"params": {"ranks": [5], "drop_percents": [], "auto_rank": False}})  # fine
    with pytest.raises(ParameterError, match="no rank rule selected"):
        hook({"params": {"ranks": [], "drop_percents": [], "auto_rank": False}})


# -- fan-out ----------------------------------------------------------------------------------


def write_spectrum(tmp_path: Path, series: dict[str, Any], shape: tuple[int, int]) -> None:
    """A full (exact) spectrum: three strong components over a flat noise floor near 1."""
    from ctdenoise.matrix_store import write_svd

    series = series.to_xcom()
    n = shape[1]
    s = np.concatenate([[100.0, 50.0, 20.0], np.linspace(1.05, 0.95, n - 3)])
    V = np.linalg.qr(np.random.default_rng(0).normal(size=(n, n)))[0]
    attrs = {"rank": n, "method": "exact", "matrix_url": series["matrix_url"], "matrix_shape": list(shape),
             "frobenius_norm": float(np.sqrt(np.sum(s**2)))}  # fmt: skip
    write_svd(series["svd_url"], s, V, attrs)


def local_series(tmp_path: Path, conf: dict[str, Any]) -> Any:
    from ctdenoise.records import Series

    return Series(folder="scan-a", ds="2026-11-20", source_url=str(tmp_path / "incoming" / "scan-a"), files=20,
                  series_instance_uid="1.2.3.4", work_url=str(tmp_path / "work" / "scan-a"),
                  denoised_url=str(tmp_path / "denoised"), params=RunParams.from_conf({"modes": ["global"], **conf}))  # fmt: skip


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        # explicit 3 and Gavish-Donoho (3 values above the noise floor) meet; 10% of 20 drops 2 -> 18
        (
            {"ranks": [3, 5], "drop_percents": [10], "auto_rank": True},
            {3: ["explicit", "gavish_donoho"], 5: ["explicit"], 18: ["drop_percent"]},
        ),
        ({"ranks": [], "drop_percents": [], "auto_rank": True}, {3: ["gavish_donoho"]}),
        ({"ranks": [2, 25], "drop_percents": [], "auto_rank": False}, {2: ["explicit"]}),  # 25 > 20 slices: dropped
    ],
)
def test_good_values_give_the_expected_fan_out(
    tmp_path: Path, dag: Any, conf: dict[str, Any], expected: dict[int, list[str]]
) -> None:
    from ctdenoise.plan import plan
    from ctdenoise.records import Converted, Written

    series = local_series(tmp_path, conf)
    write_spectrum(tmp_path, series, (4096, 20))
    matrix = Written(series_instance_uid=series.series_instance_uid, url=series.matrix_url, rows=64, columns=64, slices=20,
                     ordering="normal", seconds=0)  # fmt: skip
    planned = plan([Converted(series=series, matrix=matrix)], storage_options={})
    items = planned.items
    assert planned.left_out == [] and planned.omitted == []
    assert {i.rank: [r.rule for r in i.choice.rules] for i in items} == expected
    assert [i.label for i in items] == [f"scan-a rank={r}" for r in sorted(expected)]
    assert all(i.output_url == f"{series.series_url}/rank-{i.rank}" for i in items)
    # Each item becomes one reconstruct task instance: the DAG's own map function accepts its XCom.
    mapped = dag.task_dict["reconstruct"]
    to_kwargs = mapped._get_specified_expand_input().value.callables[0]
    assert [to_kwargs(i.to_xcom())["item"]["rank"] for i in items] == sorted(expected)


def test_sample_series_uses_default_params() -> None:
    series = sample_series()
    assert series["params"] == RunParams().as_json()
    assert series["svd_url"].endswith("/svd-k50-o15-q2-s0.zarr")


# -- selection rules and delivery -------------------------------------------------------------


def test_selection_and_deliver_in_the_form(trigger_params: Any) -> None:
    rules = {"selections": [{"name": "thin CT", "conditions": {"Modality": "CT", "SliceThickness": [0.5, 2]}}]}
    values = trigger(trigger_params, {"selection": rules, "deliver": ["rank-9", "local-x0.75"]})
    params = RunParams.from_conf(values)
    assert params.selection.selections[0].name == "thin CT" and params.deliver == ("rank-9", "local-x0.75")
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="deliver"):
        trigger(trigger_params, {"deliver": ["rank=9"]})


def test_a_malformed_rule_fails_the_run_before_waiting(dag: Any) -> None:
    """Keyword and regular expression checks need the run-start hook; they fail in one line naming the rule."""
    hook = dag.task_dict["wait_for_scans"]._pre_execute_hook
    bad = {"selections": [{"name": "mine", "conditions": {"SeriesDescriptoin": "B30"}}]}
    with pytest.raises(ParameterError, match="selection 'mine': SeriesDescriptoin: not a DICOM keyword"):
        hook({"params": {"selection": bad}})


def test_the_deployment_default_selection_is_the_form_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    rules = {"selections": [{"name": "site rule", "conditions": {"Modality": "CT", "slices": ">= 40"}}]}
    from airflow.dag_processing.dagbag import DagBag
    from dag_fixtures import DAG_FILE, DAG_ID

    monkeypatch.setenv("CT_DENOISE_RUNTIME", "local")
    monkeypatch.setenv("CT_DENOISE_SELECTION", json.dumps(rules))
    bag = DagBag(dag_folder=str(DAG_FILE), known_pools={"default_pool"})
    assert not bag.import_errors, bag.import_errors
    assert bag.dags[DAG_ID].params["selection"] == rules
