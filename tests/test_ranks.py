"""ctdenoise.ranks: explicit ranks, the seed's drop-percent rule, Gavish-Donoho on known-rank matrices."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from ctdenoise.errors import ParameterError
from ctdenoise.ranks import (
    RankChoice,
    drop_percent_rank,
    gavish_donoho_rank,
    lambda_star,
    mp_bottom_energy,
    omega,
    select_ranks,
)


def low_rank_plus_noise(m: int, n: int, signal: list[float], sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = len(signal)
    U, _ = np.linalg.qr(rng.standard_normal((m, r)))
    V, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return (U * np.asarray(signal)) @ V.T + sigma * rng.standard_normal((m, n))


def test_drop_percent_counts_follow_the_seed_rule_on_the_full_spectrum():
    # N = 301 slices: dropping floor(N p / 100) values
    assert [drop_percent_rank(301, p) for p in (0.1, 1, 5, 10, 30)] == [301, 298, 286, 271, 211]
    assert [drop_percent_rank(100, p) for p in (0.1, 1, 5, 10, 30)] == [100, 99, 95, 90, 70]
    assert drop_percent_rank(3, 50) == 2
    with pytest.raises(ParameterError, match=r"drop percent must be in \[0, 100\)"):
        drop_percent_rank(100, 100)


def test_omega_and_lambda_star_match_the_paper():
    assert omega(1.0) == pytest.approx(2.86, abs=1e-12)  # Gavish-Donoho: omega(1) ~ 2.858
    assert lambda_star(1.0) == pytest.approx(4 / math.sqrt(3))
    assert omega(0.05) < omega(0.5) < omega(1.0)


@pytest.mark.parametrize("seed,sigma", [(0, 1.0), (1, 0.5), (2, 3.0)])
def test_gavish_donoho_finds_the_rank_of_a_noisy_rank_5_matrix(seed, sigma):
    m, n = 2000, 100
    noise_edge = sigma * (math.sqrt(m) + math.sqrt(n))  # largest pure-noise singular value
    X = low_rank_plus_noise(m, n, [8 * noise_edge, 6 * noise_edge, 4 * noise_edge, 3 * noise_edge, 2 * noise_edge], sigma, seed)
    s = np.linalg.svd(X, compute_uv=False)
    rank, detail = gavish_donoho_rank(s, (m, n))
    assert rank == 5
    assert s[5] < detail["threshold"] < s[4]
    assert detail["omega"] == pytest.approx(omega(n / m))
    # the same from the top 20 values and ||X||_F (a stochastic SVD): noise estimated from the tail
    rank_top, detail_top = gavish_donoho_rank(s[:20], (m, n), frobenius_norm=float(np.linalg.norm(X)))
    assert rank_top == 5
    assert detail_top["sigma"] == pytest.approx(sigma, rel=0.05)
    assert "tail energy" in detail_top["noise"]


def test_gavish_donoho_on_pure_noise_keeps_at_least_one():
    s = np.linalg.svd(np.random.default_rng(5).standard_normal((1500, 80)), compute_uv=False)
    rank, _ = gavish_donoho_rank(s, (1500, 80))
    assert rank == 1  # nothing above the threshold, the rule still returns 1


def test_gavish_donoho_without_full_spectrum_or_norm_is_an_error():
    with pytest.raises(ParameterError, match="full spectrum"):
        gavish_donoho_rank(np.ones(10), (1000, 100))


def test_marchenko_pastur_bottom_energy_matches_simulation():
    rng = np.random.default_rng(6)
    for m, n in ((2000, 100), (1000, 500)):
        s2 = np.sort(np.linalg.svd(rng.standard_normal((m, n)), compute_uv=False) ** 2)
        for fraction in (0.5, 0.8):
            k = int(n * fraction)
            assert mp_bottom_energy(n / m, fraction) == pytest.approx(s2[:k].sum() / s2.sum(), abs=0.01)
    assert mp_bottom_energy(0.3, 1.0) == 1.0 and mp_bottom_energy(0.3, 0.0) == 0.0


def test_select_ranks_sorts_deduplicates_and_keeps_every_rule():
    m, n = 2000, 100
    X = low_rank_plus_noise(m, n, [2000, 1500, 1000, 800, 600], 1.0, seed=7)
    s = np.linalg.svd(X, compute_uv=False)
    choices = select_ranks(s, (m, n), ranks=[90, 5, 20], drop_percents=[0.1, 1, 5, 10, 30], auto=True)
    assert [c.rank for c in choices] == [5, 20, 70, 90, 95, 99, 100]
    by_rank = {c.rank: c for c in choices}
    assert [r.rule for r in by_rank[5].rules] == ["explicit", "gavish_donoho"] and by_rank[5].is_auto
    assert [r.rule for r in by_rank[90].rules] == ["explicit", "drop_percent"]
    assert by_rank[70].rules[0].model_dump(exclude_none=True) == {"rule": "drop_percent", "percent": 30.0, "dropped": 30}
    assert by_rank[5].auto_rule.threshold > 0 and by_rank[5].labels == ["explicit", "Gavish–Donoho"]
    assert RankChoice.from_xcom(by_rank[5].to_xcom()) == by_rank[5]


def test_select_ranks_with_a_truncated_spectrum_skips_unusable_drop_percent_ranks(caplog):
    s = np.geomspace(100, 1, 50)  # top 50 of a 301-column matrix
    with caplog.at_level(logging.WARNING, logger="ctdenoise.ranks"):
        choices = select_ranks(s, (262_144, 301), drop_percents=[1, 30], auto=False)
    assert choices == []
    assert "keeps rank 298, but the SVD stores only 50" in caplog.text


def test_explicit_ranks_out_of_range_are_errors():
    s = np.geomspace(100, 1, 40)
    with pytest.raises(ParameterError, match=r"rank 41 is outside 1\.\.40"):
        select_ranks(s, (1000, 40), ranks=[41], auto=False)
    with pytest.raises(ParameterError, match=r"rank 0 is outside"):
        select_ranks(s, (1000, 40), ranks=[0], auto=False)
    assert [c.rank for c in select_ranks(s, (1000, 40), ranks=[40, 40, 1], auto=False)] == [1, 40]
