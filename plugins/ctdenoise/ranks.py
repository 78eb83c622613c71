"""Which ranks to reconstruct, from an SVD's spectrum and the matrix shape.

Three rules, combined by :func:`select_ranks`:

``explicit``
    Ranks given by the user (``--ranks 5,10,20``), each must be within ``1..len(s)``.
``drop_percent``
    The seed pipeline's rule: drop the smallest ``p`` percent of the singular values of the *full*
    spectrum, whose length is ``N = min(m, n)`` (301 for a 301-slice series). The number dropped
    is ``floor(N p / 100)`` (computed exactly from the decimal ``p``), so the rank kept is
    ``N - floor(N p / 100) = ceil(N (1 - p / 100))``: for ``N = 301`` the seed's percents
    0.1, 1, 5, 10, 30 give 301, 298, 286, 271, 211. The count needs only the shape; the rank is
    usable only if that many singular vectors are stored (an ``exact`` SVD stores all ``N``; a
    ``stochastic`` one only its top ``k``), otherwise the choice is skipped with a warning.
``gavish_donoho``
    The optimal hard threshold for an unknown noise level (Gavish and Donoho, 2014):
    ``tau = omega(beta) * median(s)`` with ``beta = min(m, n) / max(m, n)`` and the approximation
    ``omega(beta) = 0.56 beta^3 - 0.95 beta^2 + 1.82 beta + 1.43``; the rank is the number of
    singular values above ``tau``, at least 1. The median is that of the *full* spectrum. When only
    the top ``k`` values are known (a stochastic SVD) but ``||A||_F`` is, the noise level is
    estimated from the energy of the tail instead: the tail ``||A||_F^2 - sum s_i^2`` is taken as
    the smallest ``min(m, n) - k`` values of a pure-noise (Marchenko-Pastur) spectrum, whose
    expected energy is ``max(m, n) min(m, n) sigma^2 e`` with ``e`` the energy fraction of the
    bottom ``1 - k / min(m, n)`` of the Marchenko-Pastur law; the known-noise threshold
    ``tau = lambda*(beta) sqrt(max(m, n)) sigma`` is then used. Signal left in the tail inflates
    sigma (a lower rank); the detail records which estimate was used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from ctdenoise.errors import ParameterError
from ctdenoise.records import RankChoice, RankRule, RuleDetail

log = logging.getLogger(__name__)



def omega(beta: float) -> float:
    """Gavish-Donoho's ``omega(beta)`` (unknown noise), their cubic approximation."""
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43


def lambda_star(beta: float) -> float:
    """Gavish-Donoho's optimal threshold coefficient for a known noise level (``tau = lambda* sqrt(n) sigma``)."""
    return math.sqrt(2.0 * (beta + 1.0) + 8.0 * beta / (beta + 1.0 + math.sqrt(beta * beta + 14.0 * beta + 1.0)))


def mp_cdf(beta: float, points: int = 4097) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lam, F(lam), energy share below lam)`` of the Marchenko-Pastur law on a grid.

    Eigenvalues ``lam = s^2 / (max(m, n) sigma^2)`` of pure noise follow the Marchenko-Pastur
    law with ratio ``beta`` on ``[(1 - sqrt(beta))^2, (1 + sqrt(beta))^2]`` (mean 1). The grid
    is ``lam(theta)`` with ``theta`` uniform in ``[0, pi]`` (dense near the edges, where the
    density has its square-root behaviour); both curves are trapezoid integrals normalized to 1.
    """
    a, b = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    theta = np.linspace(0.0, math.pi, points)
    lam = a + (b - a) * (1 - np.cos(theta)) / 2
    # density dF = sqrt((b - lam)(lam - a)) / (2 pi beta lam) dlam, with lam(theta) as above
    with np.errstate(divide="ignore", invalid="ignore"):
        dens = np.where(lam > 0, ((b - a) / 2) ** 2 * np.sin(theta) ** 2 / (2 * math.pi * beta * lam), 0.0)
    if beta == 1.0:
        dens[0] = 2.0 / (2 * math.pi)  # limit of sin^2(theta) / lam = 1/4 * 4 at theta -> 0
    step = theta[1] - theta[0]
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * step)])
    energy = np.concatenate([[0.0], np.cumsum((dens[1:] * lam[1:] + dens[:-1] * lam[:-1]) / 2 * step)])
    return lam, cdf / cdf[-1], energy / energy[-1]


def mp_bottom_energy(beta: float, fraction: float, points: int = 4097) -> float:
    """Expected energy share of the smallest ``fraction`` of a Marchenko-Pastur spectrum.

    Returns ``E[lam; lam <= q]`` with ``F(q) = fraction`` (:func:`mp_cdf`): the bottom values'
    share of ``min(m, n)`` (so 1.0 for ``fraction = 1``).
    """
    if fraction <= 0.0:
        return 0.0
    if fraction >= 1.0:
        return 1.0
    _, cdf, energy = mp_cdf(beta, points)
    return float(np.interp(fraction, cdf, energy))


def mp_median(beta: float, points: int = 8193) -> float:
    """Median of the Marchenko-Pastur law with ratio ``beta`` (Gavish and Donoho's ``mu_beta``)."""
    lam, cdf, _ = mp_cdf(beta, points)
    return float(np.interp(0.5, cdf, lam))


def _shape(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) != 2 or min(int(shape[0]), int(shape[1])) < 1:
        raise ParameterError(f"matrix shape must be two positive sizes, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def drop_percent_rank(n_full: int, percent: float) -> int:
    """Rank kept when the smallest ``percent`` % of ``n_full`` singular values are dropped (at least 1)."""
    if not 0 <= float(percent) < 100:
        raise ParameterError(f"drop percent must be in [0, 100), got {percent}")
    dropped = math.floor(Fraction(str(percent)) * n_full / 100)
    return max(1, n_full - dropped)


def gavish_donoho_rank(
    s: np.ndarray, shape: Sequence[int], frobenius_norm: float | None = None
) -> tuple[int, dict[str, Any]]:
    """``(rank, detail)`` by the Gavish-Donoho hard threshold (see the module docstring)."""
    m, n = _shape(shape)
    s = np.sort(np.asarray(s, dtype=np.float64))[::-1]
    n_full = min(m, n)
    beta = n_full / max(m, n)
    if len(s) >= n_full:
        median = float(np.median(s[:n_full]))
        tau = omega(beta) * median
        detail = {"threshold": tau, "omega": omega(beta), "beta": beta, "median": median, "noise": "unknown (median of the full spectrum)"}
    elif frobenius_norm is not None and len(s) > 0:
        k = len(s)
        tail = max(float(frobenius_norm) ** 2 - float(np.sum(s**2)), 0.0)
        sigma = math.sqrt(tail / (max(m, n) * n_full * mp_bottom_energy(beta, (n_full - k) / n_full)))
        tau = lambda_star(beta) * math.sqrt(max(m, n)) * sigma
        detail = {
            "threshold": tau,
            "lambda_star": lambda_star(beta),
            "beta": beta,
            "sigma": sigma,
            "noise": f"estimated from the tail energy (only the top {k} of {n_full} singular values known)",
        }
    else:
        raise ParameterError(
            f"Gavish-Donoho needs the full spectrum ({n_full} singular values, an 'exact' SVD) or the "
            f"Frobenius norm of the matrix; got {len(s)} values and no norm"
        )
    above = int(np.count_nonzero(s > tau))
    if above == len(s) < n_full:
        detail["note"] = f"all {len(s)} stored singular values exceed the threshold: the rank may be higher"
    return max(1, above), detail


def select_ranks(
    s: Iterable[float],
    shape: Sequence[int],
    ranks: Sequence[int] | None = None,
    drop_percents: Sequence[float] | None = None,
    auto: bool = True,
    frobenius_norm: float | None = None,
) -> list[RankChoice]:
    """The ranks to reconstruct, ascending and unique, each ``1 <= r <= len(s)``.

    ``s`` are the stored singular values (descending), ``shape`` is ``(m, n)`` of the matrix.
    Explicit ranks outside ``1..len(s)`` raise :class:`ParameterError`; drop-percent ranks above
    ``len(s)`` (a truncated spectrum) are skipped with a warning. A rank reached by several rules
    appears once, with all of them in ``rules``.
    """
    s = np.asarray(list(s), dtype=np.float64)
    if s.ndim != 1 or len(s) == 0:
        raise ParameterError("the SVD has no singular values")
    m, n = _shape(shape)
    n_full = min(m, n)
    found: dict[int, list[RuleDetail]] = {}

    for r in ranks or ():
        if isinstance(r, bool) or int(r) != r or not 1 <= int(r) <= len(s):
            raise ParameterError(f"rank {r} is outside 1..{len(s)} (the singular values stored in the SVD)")
        found.setdefault(int(r), []).append(RuleDetail(rule=RankRule.EXPLICIT))

    for p in drop_percents or ():
        r = drop_percent_rank(n_full, p)
        if r > len(s):
            log.warning(
                "drop %s%% of %d singular values keeps rank %d, but the SVD stores only %d: skipped "
                "(use the exact method for the full spectrum)",
                p, n_full, r, len(s),
            )
            continue
        found.setdefault(r, []).append(RuleDetail(rule=RankRule.DROP_PERCENT, percent=float(p), dropped=n_full - r))

    if auto:
        r, detail = gavish_donoho_rank(s, (m, n), frobenius_norm)
        found.setdefault(r, []).append(RuleDetail(rule=RankRule.GAVISH_DONOHO, **detail))

    order = list(RankRule)
    return [RankChoice(rank=r, rules=tuple(sorted(found[r], key=lambda d: order.index(d.rule)))) for r in sorted(found)]
