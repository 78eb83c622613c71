"""Run parameters: canonical form, cross-field rules, the hash that marks a published series."""

from __future__ import annotations

import pytest

from ctdenoise.errors import ParameterError
from ctdenoise.local_params import BENCH_SETTINGS, LocalParams
from ctdenoise.orchestration import params as run_params


def test_normalize_sorts_and_raises_the_svd_rank() -> None:
    out = run_params.normalize({"ranks": [20, 5, 10], "drop_percents": [10, 1], "k": 8})
    assert out["ranks"] == [5, 10, 20] and out["drop_percents"] == [1.0, 10.0]
    assert out["k"] == 8 and out["svd_rank"] == 20
    assert run_params.normalize({})["svd_rank"] == run_params.PARAM_SPECS["k"][0]


def test_at_least_one_rank_rule() -> None:
    with pytest.raises(ParameterError, match="no rank rule selected"):
        run_params.normalize({"ranks": [], "drop_percents": [], "auto_rank": False})
    assert run_params.normalize({"ranks": [], "drop_percents": [], "auto_rank": True})["auto_rank"] is True


@pytest.mark.parametrize(
    "bad", [{"ranks": [0]}, {"ranks": ["x"]}, {"drop_percents": [100]}, {"k": 0}, {"oversample": -1}, {"seed": -1}]
)
def test_values_that_escaped_the_schema_are_refused(bad: dict) -> None:
    with pytest.raises(ParameterError):
        run_params.normalize(bad)


def test_hash_ignores_force_and_order_but_not_results() -> None:
    base = run_params.params_hash(run_params.normalize({"ranks": [5, 10]}))
    assert run_params.params_hash(run_params.normalize({"ranks": [10, 5], "force": True})) == base
    assert run_params.params_hash(run_params.normalize({"ranks": [5, 10], "seed": 1})) != base
    assert run_params.params_hash(run_params.normalize({"ranks": [5, 11]})) != base
    assert len(base) == 16


def test_svd_key_names_the_svd_parameters() -> None:
    assert run_params.svd_key(run_params.normalize({"k": 30, "oversample": 5, "power_iters": 1, "seed": 3})) == "k30-o5-q1-s3"


def test_every_param_has_a_schema_title_and_description() -> None:
    for name, (default, schema, title, description) in run_params.PARAM_SPECS.items():
        assert schema.get("type") and title and description, name
    assert set(run_params.RESULT_PARAMS) == set(run_params.PARAM_SPECS) - {"force"}


def test_modes_and_local_parameters() -> None:
    defaults = run_params.normalize({})
    assert defaults["modes"] == ["global", "local"] and defaults["multipliers"] == [0.5, 0.75, 1.0]
    assert defaults["inplane"] == "nlm"
    local_only = run_params.normalize({"modes": ["local"], "ranks": [], "drop_percents": [], "auto_rank": False})
    assert local_only["modes"] == ["local"]  # no rank rule needed without the global mode
    with pytest.raises(ParameterError, match="no rank rule selected"):
        run_params.normalize({"modes": ["global"], "drop_percents": [], "auto_rank": False})
    with pytest.raises(ParameterError, match="stride must be between 1 and the tile size 8, got 12"):
        run_params.normalize({"tile": 8, "stride": 12})
    with pytest.raises(ParameterError, match="give one or both of global, local"):
        run_params.normalize({"modes": ["tiles"]})
    assert run_params.normalize({"modes": ["local", "global"], "multipliers": [1.5, 1]})["multipliers"] == [1.0, 1.5]
    assert run_params.local_key(defaults) == f"t{defaults['tile']}-s{defaults['stride']}-frobenius-m0.5_0.75_1-nlm"
    tiles_alone = run_params.normalize({"inplane": "none"})
    assert run_params.local_key(tiles_alone) == f"t{defaults['tile']}-s{defaults['stride']}-frobenius-m0.5_0.75_1"
    assert run_params.params_hash(defaults) != run_params.params_hash({**defaults, "multipliers": [1.0]})
    assert run_params.params_hash(defaults) != run_params.params_hash(tiles_alone)
    with pytest.raises(ParameterError, match="inplane must be one of nlm, none, got 'tv'"):
        run_params.normalize({"inplane": "tv"})


def test_a_new_local_algorithm_changes_the_hash_of_runs_that_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-run must not skip a series published by an older local algorithm (same parameters,
    different pixels); global-only runs keep their hash."""
    both = run_params.normalize({})
    global_only = run_params.normalize({"modes": ["global"]})
    before = run_params.params_hash(both), run_params.params_hash(global_only)
    monkeypatch.setattr(run_params, "LOCAL_ALGORITHM", "another/3")
    assert run_params.params_hash(both) != before[0]
    assert run_params.params_hash(global_only) == before[1]


@pytest.mark.parametrize("name", sorted(BENCH_SETTINGS))
def test_the_benchmarked_local_settings_are_run_parameters(name: str) -> None:
    """What bench/svd.py and bench/quality.py measure (e.g. the fast setting) a site can run as
    it stands: the DAG's run parameters take it, and its automatic output is one of its outputs."""
    setting = BENCH_SETTINGS[name]
    conf = {k: v for k, v in setting.as_dict().items() if k in run_params.PARAM_SPECS}
    normalized = run_params.normalize({"modes": ["local"], **conf})
    assert LocalParams.from_dict(normalized) == setting.validate()
    assert setting.automatic_multiplier in setting.multipliers
