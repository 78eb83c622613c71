"""Which outputs a converted series gets: one reconstruct task per global rank and local multiplier.

The global mode's ranks come from the series' spectrum (the SVD group) and the rank rules
(:func:`ctdenoise.ranks.select_ranks`); the local mode gives one output per threshold multiplier
of its group. A series whose decomposition is missing or stale (computed from another matrix)
is left out with the reason, so the others go on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ctdenoise import storage
from ctdenoise.errors import InputError
from ctdenoise.params import Mode, multiplier_label
from ctdenoise.records import Converted, Output, TileSummary

log = logging.getLogger(__name__)


def plan_series(converted: Converted, storage_options: Mapping[str, Any] | None = None) -> list[Output]:
    """The outputs of one converted series: its global ranks, then its local multipliers.

    Raises :class:`InputError` if the series has no usable SVD or local group (dssvd failed or
    left a stale one).
    """
    series = converted.series
    items: list[Output] = []
    if series.svd_url:
        items += _plan_global(converted, storage_options)
    if series.local_url:
        items += _plan_local(converted, storage_options)
    return items


def _published_attrs(url: str, converted: Converted, what: str, read: Any, storage_options: Mapping[str, Any] | None) -> Any:
    """What ``read(url)`` gives for a published store computed from this series' matrix."""
    series = converted.series
    if not storage.is_published(url, storage_options):
        raise InputError(f"series folder {series.folder}: no {what} at {url} (dssvd failed?)")
    found = read(url, storage_options)
    attrs = found[-1]
    if attrs.get("matrix_url") not in (None, series.matrix_url):
        raise InputError(f"{url}: computed from {attrs.get('matrix_url')}, not {series.matrix_url} (stale)")
    return found


def _plan_local(converted: Converted, storage_options: Mapping[str, Any] | None) -> list[Output]:
    from ctdenoise.matrix_store import open_local

    _, attrs = _published_attrs(converted.series.local_url, converted, "local low-rank group", open_local, storage_options)
    summary = (attrs.get("summary") or {}).get("multipliers") or {}
    outputs = []
    for m in attrs.get("multipliers") or []:
        tiles = summary.get(multiplier_label(m))
        outputs.append(Output(series=converted.series, mode=Mode.LOCAL, multiplier=float(m),
                              tiles=TileSummary.model_validate(tiles) if tiles else None))  # fmt: skip
    return outputs


def _plan_global(converted: Converted, storage_options: Mapping[str, Any] | None) -> list[Output]:
    from ctdenoise.matrix_store import read_svd
    from ctdenoise.ranks import select_ranks

    series = converted.series
    s, _, attrs = _published_attrs(series.svd_url, converted, "SVD", read_svd, storage_options)
    shape = tuple(int(x) for x in attrs.get("matrix_shape") or ())
    if len(shape) != 2:
        raise InputError(f"{series.svd_url}: attribute matrix_shape missing or not [m, n]")
    rules, k = series.params, int(len(s))
    explicit = [r for r in rules.ranks if r <= k]
    if len(explicit) < len(rules.ranks):
        log.warning("series %s: ranks %s exceed the %d singular values computed; dropped",
                    series.folder, [r for r in rules.ranks if r > k], k)  # fmt: skip
    if not explicit and not rules.drop_percents and not rules.auto_rank:
        raise InputError(f"series folder {series.folder}: every explicit rank exceeds its {k} singular values")
    choices = select_ranks(s, shape, explicit, rules.drop_percents, rules.auto_rank, attrs.get("frobenius_norm"))
    return [Output(series=series, mode=Mode.GLOBAL, rank=c.rank, choice=c) for c in choices]


def plan(converted: Iterable[Converted], storage_options: Mapping[str, Any] | None = None) -> tuple[list[Output], list[dict[str, str]]]:
    """``(every series' outputs, series left out with the reason)``."""
    items: list[Output] = []
    left_out: list[dict[str, str]] = []
    for one in converted:
        try:
            items.extend(plan_series(one, storage_options))
        except (InputError, FileNotFoundError) as exc:
            log.error("%s", exc)
            left_out.append({"folder": one.series.folder, "reason": str(exc)})
    return items, left_out
