"""The run parameters of ``ct_denoise``: the UI trigger form, its JSON schema, and their meaning.

Airflow validates a trigger's ``conf`` against these schemas before the run is created (the API
answers 400 with the schema message), so out-of-range values never reach a task. Two rules span
several fields and cannot be written as one param's schema; :func:`normalize` checks them when
the run starts (``wait_for_scans`` calls it before waiting) and fails the run with a message:

- with the global mode, at least one rank rule must be active (explicit ``ranks``,
  ``drop_percents`` or ``auto_rank``);
- the tile ``stride`` of the local mode is at most its ``tile`` size;
- ``k`` (singular triplets computed) is raised to the largest explicit rank, so that every
  explicit rank can be reconstructed: ``svd_rank = max(k, max(ranks))``.

The parameters that change results (everything but ``force``) are hashed
(:func:`params_hash`); ``report.json`` records the hash, and a series already published with
the same hash is not processed again unless ``force`` is set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ctdenoise.errors import ParameterError
from ctdenoise.local_params import ALGORITHM as LOCAL_ALGORITHM
from ctdenoise.local_params import INPLANE, SHRINKAGES, LocalParams

MODES = ("global", "local")
LOCAL_DEFAULTS = LocalParams()
MAX_RANK = 4096  # a CT series has at most a few thousand slices: rank <= slices
MAX_RULE_VALUES = 32

#: name -> (default, JSON schema keywords, title, description). One source for the Params and the docs.
PARAM_SPECS: dict[str, tuple[Any, dict[str, Any], str, str]] = {
    "ranks": (
        [],
        {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": MAX_RANK},
            "uniqueItems": True,
            "maxItems": MAX_RULE_VALUES,
        },
        "Explicit ranks",
        "Ranks r to reconstruct for every series, e.g. [5, 10, 20] (each 1..4096; ranks above a "
        "series' slice count are dropped for that series).",
    ),
    "drop_percents": (
        [0.1, 1.0, 5.0, 10.0, 30.0],
        {
            "type": "array",
            "items": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100},
            "uniqueItems": True,
            "maxItems": MAX_RULE_VALUES,
        },
        "Drop percents (seed rule)",
        "The seed's rule: for each p, drop the smallest p % of the singular values of the full "
        "spectrum (301 slices: 0.1, 1, 5, 10, 30 keep ranks 301, 298, 286, 271, 211). Each 0 < p < 100.",
    ),
    "auto_rank": (
        True,
        {"type": "boolean"},
        "Automatic rank (Gavish-Donoho)",
        "Also reconstruct at the Gavish-Donoho optimal hard threshold rank.",
    ),
    "k": (
        50,
        {"type": "integer", "minimum": 1, "maximum": MAX_RANK},
        "Singular triplets computed (k)",
        "Rank of the distributed SVD (raised to the largest explicit rank, capped at the slice count).",
    ),
    "oversample": (
        15,
        {"type": "integer", "minimum": 0, "maximum": 512},
        "Oversampling",
        "Extra random test vectors of the stochastic SVD (Halko et al.: 5-20 is typical).",
    ),
    "power_iters": (
        2,
        {"type": "integer", "minimum": 0, "maximum": 10},
        "Power iterations",
        "Subspace iterations of the stochastic SVD (sharpen slowly decaying spectra).",
    ),
    "seed": (
        0,
        {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "Random seed",
        "Seed of the random test matrix: the same seed gives the same SVD.",
    ),
    "modes": (
        ["global", "local"],
        {"type": "array", "items": {"type": "string", "enum": list(MODES)}, "uniqueItems": True, "minItems": 1},
        "Modes",
        "global: truncated SVD of the whole series at the chosen ranks (the seed's pipeline); local: "
        "local low-rank denoising (small tiles through all slices, each shrunk on its own) at each "
        "threshold multiplier. Both by default, so the report compares them.",
    ),
    "tile": (
        LOCAL_DEFAULTS.tile,
        {"type": "integer", "minimum": 2, "maximum": 64},
        "Local mode: tile size (pixels)",
        "Tiles of tile x tile pixels followed through all slices.",
    ),
    "stride": (
        LOCAL_DEFAULTS.stride,
        {"type": "integer", "minimum": 1, "maximum": 64},
        "Local mode: tile stride (pixels)",
        "Distance between tile starts (at most the tile size; smaller = more overlap, slower).",
    ),
    "multipliers": (
        list(LOCAL_DEFAULTS.multipliers),
        {
            "type": "array",
            "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
            "uniqueItems": True,
            "minItems": 1,
            "maxItems": MAX_RULE_VALUES,
        },
        "Local mode: threshold multipliers",
        "One output per multiplier of the tiles' optimal threshold (lower keeps more; with the in-plane stage 0.5 is the automatic one, without it 1).",
    ),
    "shrinkage": (
        LOCAL_DEFAULTS.shrinkage,
        {"type": "string", "enum": list(SHRINKAGES)},
        "Local mode: shrinkage",
        "frobenius: optimal singular value shrinkage for Frobenius loss; hard: the Gavish-Donoho hard threshold.",
    ),
    "inplane": (
        LOCAL_DEFAULTS.inplane,
        {"type": "string", "enum": list(INPLANE)},
        "Local mode: in-plane stage",
        "nlm: non-local means on each slice of the tile estimate (automatic strength); none: the tiles alone.",
    ),
    "force": (
        False,
        {"type": "boolean"},
        "Force",
        "Process series even if they were already published with the same parameters.",
    ),
}

#: The parameters that change results (hashed into report.json).
RESULT_PARAMS = (
    "ranks", "drop_percents", "auto_rank", "k", "oversample", "power_iters", "seed",
    "modes", "tile", "stride", "multipliers", "shrinkage", "inplane",
)  # fmt: skip


def dag_params() -> dict[str, Any]:
    """``{name: airflow.sdk.Param}`` for ``@dag(params=...)``: the trigger form."""
    from airflow.sdk import Param

    return {
        name: Param(default, title=title, description=description, **schema)
        for name, (default, schema, title, description) in PARAM_SPECS.items()
    }


def defaults() -> dict[str, Any]:
    return {name: spec[0] for name, spec in PARAM_SPECS.items()}


def normalize(params: Mapping[str, Any]) -> dict[str, Any]:
    """Checked, canonical parameters (sorted rule values, effective SVD rank), JSON-able.

    ``params`` are a run's params (already schema-validated by Airflow); missing keys take
    their defaults. Raises :class:`ParameterError` on the cross-field rules of the module
    docstring, and on values that escaped the schema (e.g. a DAG run created without validation).
    """
    merged = {**defaults(), **{k: v for k, v in dict(params).items() if k in PARAM_SPECS}}
    try:
        ranks = sorted({int(r) for r in (merged["ranks"] or [])})
        drops = sorted({float(p) for p in (merged["drop_percents"] or [])})
        k, oversample, power_iters, seed = (int(merged[n]) for n in ("k", "oversample", "power_iters", "seed"))
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"ct_denoise params: {exc}") from None
    auto = bool(merged["auto_rank"])
    modes = [m for m in MODES if m in set(merged["modes"] or [])]
    if not modes or set(merged["modes"] or []) - set(MODES):
        raise ParameterError(f"modes {merged['modes']}: give one or both of {', '.join(MODES)}")
    try:
        local = LocalParams(
            tile=int(merged["tile"]),
            stride=int(merged["stride"]),
            multipliers=tuple(sorted({float(m) for m in merged["multipliers"] or []})),
            shrinkage=str(merged["shrinkage"]),
            inplane=str(merged["inplane"]),
        )
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"ct_denoise params: {exc}") from None
    if "local" in modes:
        local.validate("ct_denoise params (local mode)")
    if any(r < 1 or r > MAX_RANK for r in ranks):
        raise ParameterError(f"ranks {ranks}: each rank must be between 1 and {MAX_RANK}")
    if any(not 0 < p < 100 for p in drops):
        raise ParameterError(f"drop_percents {drops}: each value must be strictly between 0 and 100")
    if not (1 <= k <= MAX_RANK) or oversample < 0 or power_iters < 0 or seed < 0:
        raise ParameterError(f"k={k}, oversample={oversample}, power_iters={power_iters}, seed={seed}: out of range")
    if "global" in modes and not ranks and not drops and not auto:
        raise ParameterError(
            "no rank rule selected: give explicit ranks, drop_percents, or set auto_rank (Gavish-Donoho)"
        )
    return {
        "ranks": ranks,
        "drop_percents": drops,
        "auto_rank": auto,
        "k": k,
        "svd_rank": max([k, *ranks]),
        "oversample": oversample,
        "power_iters": power_iters,
        "seed": seed,
        "modes": modes,
        "tile": local.tile,
        "stride": local.stride,
        "multipliers": list(local.multipliers),
        "shrinkage": local.shrinkage,
        "inplane": local.inplane,
        "force": bool(merged["force"]),
    }


def params_hash(normalized: Mapping[str, Any]) -> str:
    """A short stable hash of the result-changing parameters (not ``force``)."""
    values = {name: normalized[name] for name in RESULT_PARAMS}
    if "local" in normalized["modes"]:
        values["local_algorithm"] = LOCAL_ALGORITHM
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def svd_key(normalized: Mapping[str, Any], svd_rank: int | None = None) -> str:
    """Name of an SVD parameter set, used in the work layout: ``k<k>-o<o>-q<q>-s<seed>``."""
    k = normalized["svd_rank"] if svd_rank is None else svd_rank
    return f"k{k}-o{normalized['oversample']}-q{normalized['power_iters']}-s{normalized['seed']}"


def local_key(normalized: Mapping[str, Any]) -> str:
    """Name of a local-mode parameter set in the work layout:
    ``t<tile>-s<stride>-<shrinkage>-m<...>[-<inplane>]`` (the local mode is deterministic: no seed;
    no suffix for the tiles alone)."""
    mults = "_".join(f"{m:g}" for m in normalized["multipliers"])
    inplane = normalized.get("inplane", "none")
    suffix = "" if inplane == "none" else f"-{inplane}"
    return f"t{normalized['tile']}-s{normalized['stride']}-{normalized['shrinkage']}-m{mults}{suffix}"
