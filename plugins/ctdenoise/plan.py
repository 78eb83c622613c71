"""Which outputs a converted series gets: one reconstruct task per global rank and local multiplier.

The global mode's ranks come from the series' spectrum (the SVD group) and the rank rules
(:func:`ctdenoise.ranks.select_ranks`); the local mode gives one output per threshold multiplier
of its group. A series whose decomposition is missing or stale (computed from another matrix)
is left out with the reason, so the others go on.

A rank that keeps every component (rank n of a series of n slices, which the seed's drop-percent
rule chooses for small percents) gives back the input exactly: it is not worth a task, a DICOM
series in the PACS and a preview, so it is omitted with that reason (:class:`Omitted`), which the
plan's log and the series' report state. The rule stays available for the ranks it chooses below.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ctdenoise import storage
from ctdenoise.errors import InputError
from ctdenoise.params import Mode, multiplier_label
from ctdenoise.records import Converted, Omitted, Output, TileSummary

log = logging.getLogger(__name__)


def plan_series(converted: Converted, storage_options: Mapping[str, Any] | None = None) -> list[Output]:
    """The outputs of one converted series: its global ranks, then its local multipliers.

    Raises :class:`InputError` if the series has no usable SVD or local group (dssvd failed or
    left a stale one).
    """
    return [o for o in planned_outputs(converted, storage_options) if isinstance(o, Output)]


def planned_outputs(converted: Converted, storage_options: Mapping[str, Any] | None = None) -> list[Output | Omitted]:
    """:func:`plan_series` with the outputs it leaves out, and why."""
    series = converted.series
    items: list[Output | Omitted] = []
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


def _plan_global(converted: Converted, storage_options: Mapping[str, Any] | None) -> list[Output | Omitted]:
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
    full = min(shape)
    return [
        Omitted(series=series, label=f"{series.folder} rank={c.rank}", choice=c,
                reason=f"rank {c.rank} of {full} keeps every component: it reproduces the input")  # fmt: skip
        if c.rank >= full
        else Output(series=series, mode=Mode.GLOBAL, rank=c.rank, choice=c)
        for c in choices
    ]


def plan(converted: Iterable[Converted], storage_options: Mapping[str, Any] | None = None) -> Plan:
    """Every series' outputs, the outputs omitted and the series left out, each with the reason."""
    result = Plan()
    for one in converted:
        try:
            planned = planned_outputs(one, storage_options)
        except (InputError, FileNotFoundError) as exc:
            log.error("%s", exc)
            result.left_out.append({"folder": one.series.folder, "reason": str(exc)})
            continue
        result.items += [o for o in planned if isinstance(o, Output)]
        for omitted in (o for o in planned if isinstance(o, Omitted)):
            log.info("%s: not reconstructed: %s", omitted.label, omitted.reason)
            result.omitted.append(omitted)
    return result


@dataclass
class Plan:
    """What ``plan_ranks`` decided for a run."""

    items: list[Output] = field(default_factory=list)
    omitted: list[Omitted] = field(default_factory=list)
    left_out: list[dict[str, str]] = field(default_factory=list)
