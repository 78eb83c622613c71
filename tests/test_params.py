"""Run parameters: one declaration, its canonical form, cross-field rules, the hash, what derives from it."""

from __future__ import annotations

import argparse

import pytest

from ctdenoise.errors import ParameterError
from ctdenoise.params import (
    BENCH_SETTINGS,
    LocalParams,
    RankRules,
    RunParams,
    SvdParams,
    add_arguments,
    from_arguments,
    param_schemas,
    to_arguments,
)


def test_canonical_form_sorts_and_raises_the_svd_rank() -> None:
    params = RunParams.from_conf({"ranks": [20, 5, 10], "drop_percents": [10, 1], "k": 8})
    assert params.ranks == (5, 10, 20) and params.drop_percents == (1.0, 10.0)
    assert params.k == 8 and params.svd_rank == 20
    assert RunParams.from_conf({}).svd_rank == RankRules().k == 50
    assert RunParams.from_conf({"modes": ["local", "global"], "multipliers": [1.5, 1]}).multipliers == (1.0, 1.5)
    assert RunParams.from_conf({"unknown": 1}) == RunParams()  # a run's other params are not ours


def test_at_least_one_rank_rule_with_the_global_mode() -> None:
    with pytest.raises(ParameterError, match="no rank rule selected"):
        RunParams.from_conf({"ranks": [], "drop_percents": [], "auto_rank": False})
    assert RunParams.from_conf({"ranks": [], "drop_percents": [], "auto_rank": True}).auto_rank is True
    local_only = RunParams.from_conf({"modes": ["local"], "ranks": [], "drop_percents": [], "auto_rank": False})
    assert local_only.modes == ("local",) and local_only.svd is None and local_only.local == LocalParams()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"ranks": [0]}, "ranks: Input should be greater than or equal to 1"),
        ({"ranks": ["x"]}, "ranks: Input should be a valid integer"),
        ({"drop_percents": [100]}, "drop_percents: Input should be less than 100"),
        ({"k": 0}, "k: Input should be greater than or equal to 1"),
        ({"oversample": -1}, "oversample"),
        ({"seed": -1}, "seed"),
        ({"tile": 8, "stride": 12}, "stride must be between 1 and the tile size 8, got 12"),
        ({"inplane": "tv"}, "inplane: Input should be 'nlm' or 'none' (got 'tv')"),
        ({"modes": ["tiles"]}, "modes: Input should be 'global' or 'local'"),
        ({"method": "lanczos"}, "method: Input should be 'auto', 'exact' or 'stochastic'"),
    ],
)
def test_values_that_escaped_the_schema_are_refused_in_one_line(bad: dict, message: str) -> None:
    with pytest.raises(ParameterError) as info:
        RunParams.from_conf(bad)
    assert message in str(info.value) and str(info.value).startswith("ct_denoise params: ")
    assert "\n" not in str(info.value)


def test_hash_ignores_force_and_order_but_not_results() -> None:
    base = RunParams.from_conf({"ranks": [5, 10]}).params_hash()
    assert RunParams.from_conf({"ranks": [10, 5], "force": True}).params_hash() == base
    assert RunParams.from_conf({"ranks": [5, 10], "seed": 1}).params_hash() != base
    assert RunParams.from_conf({"ranks": [5, 11]}).params_hash() != base
    assert RunParams.from_conf({"ranks": [5, 10], "inplane_strength": 1.0}).params_hash() != base
    assert len(base) == 16


def test_keys_name_the_parameters_of_a_store() -> None:
    params = RunParams.from_conf({"k": 30, "oversample": 5, "power_iters": 1, "seed": 3})
    assert params.svd_key() == "k30-o5-q1-s3"
    assert RunParams.from_conf({"method": "stochastic"}).svd_key() == "k50-o15-q2-s0-stochastic"
    assert LocalParams().key() == "t12-s6-frobenius-m0.5_0.75_1-nlm"
    assert LocalParams(inplane="none").key() == "t12-s6-frobenius-m0.5_0.75_1"
    assert LocalParams(inplane_strength=1.0, weights="uniform").key() == "t12-s6-frobenius-m0.5_0.75_1-nlm-wuniform-h1"
    defaults = RunParams()
    assert defaults.params_hash() != RunParams(multipliers=(1.0,)).params_hash()
    assert defaults.params_hash() != RunParams(inplane="none").params_hash()


def test_a_new_local_algorithm_changes_the_hash_of_runs_that_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-run must not skip a series published by an older local algorithm (same parameters,
    different pixels); global-only runs keep their hash."""
    from ctdenoise import params as module

    both, global_only = RunParams(), RunParams(modes=("global",))
    before = both.params_hash(), global_only.params_hash()
    monkeypatch.setattr(module, "ALGORITHM", "another/3")
    assert both.params_hash() != before[0]
    assert global_only.params_hash() == before[1]


def test_every_param_has_a_self_contained_schema_with_title_and_description() -> None:
    schemas = param_schemas()
    assert list(schemas) == list(RunParams.model_fields)
    for name, schema in schemas.items():
        assert schema.get("type") and schema.get("title") and schema.get("description"), name
        assert "$ref" not in str(schema) and "default" in schema, name
    assert schemas["shrinkage"]["enum"] == ["frobenius", "hard"]
    assert schemas["modes"]["items"]["enum"] == ["global", "local"] and schemas["modes"]["uniqueItems"] is True


@pytest.mark.parametrize("model", [RankRules, SvdParams, LocalParams])
def test_command_line_flags_round_trip_every_field(model: type) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, model)
    assert from_arguments(model, parser.parse_args([]), "x") == model()  # unset flags: the defaults
    changed = {RankRules: RankRules(ranks=(3,), auto_rank=False), SvdParams: SvdParams(method="exact", seed=4),
               LocalParams: LocalParams(tile=8, stride=8, multipliers=(1.0,), inplane="none")}[model]  # fmt: skip
    assert from_arguments(model, parser.parse_args(to_arguments(changed)), "x") == changed
    with pytest.raises(SystemExit):
        parser.parse_args([f"--{next(iter(model.model_fields)).replace('_', '-')}", "not-a-value"])


@pytest.mark.parametrize("name", sorted(BENCH_SETTINGS))
def test_the_benchmarked_local_settings_are_run_parameters(name: str) -> None:
    """What bench/svd.py and bench/quality.py measure (e.g. the fast setting) a site can run as
    it stands: the DAG's run parameters take it, and its automatic output is one of its outputs."""
    setting = BENCH_SETTINGS[name]
    params = RunParams.from_conf({"modes": ["local"], **setting.as_json()})
    assert params.local == setting
    assert setting.automatic_multiplier in setting.multipliers
