"""Patient data in the work area: removed once the series no longer needs it.

A series' work area, ``<work>/<ds>/<folder>/`` (:mod:`ctdenoise.layout`), holds its matrix, whose
attributes keep the source's DICOM header (patient name, id, birth date...), and its
decompositions. Nothing reads them once the series is published and delivered: a later run
converts again. ``clean_work`` (the DAG's last step for a series) calls
:func:`clean_series_work`, which removes the area when the setting
``CT_DENOISE_WORK_RETENTION`` is ``remove`` (the default) and the series' ``report.json`` still
vouches for complete outputs with this run's parameters (:mod:`ctdenoise.completion`): the
work data of a series that failed stays for the next run and for diagnosis. Where patient data
lives and for how long: docs/data-retention.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ctdenoise import storage
from ctdenoise.completion import trusted_hash
from ctdenoise.records import Series

log = logging.getLogger(__name__)


def steps_pending(folder: str, reports: Iterable[Mapping[str, Any]], planned: Iterable[Mapping[str, Any]],
                  delivered: Iterable[Mapping[str, Any]]) -> list[str]:  # fmt: skip
    """The steps a series still needs before its work data may go: its ``report``, and a
    ``deliver`` of every output planned for it (``planned``: the ``plan_deliveries`` items,
    ``delivered``: the ``deliver`` results of this run). A series with no delivery planned (none
    configured, or ``deliver`` off) needs its report only."""
    pending = [] if any(r.get("folder") == folder for r in reports) else ["report"]
    due = {i["output"] for i in planned if i.get("folder") == folder}
    done = {d["item"]["output"] for d in delivered if d.get("item", {}).get("folder") == folder}
    return pending + (["deliver"] if due - done else [])


def clean_series_work(series: Series, remove: bool, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Remove the series' work area if ``remove`` and the series is published; what was done."""
    outcome = {"folder": series.folder, "work_url": series.work_url, "removed": False}
    if not remove:
        return {**outcome, "reason": "kept: work retention is 'keep'"}
    published = trusted_hash(series.series_url, storage_options)
    if published != series.params_hash:
        reason = "kept: the series is not published completely with this run's parameters"
        log.warning("%s: %s", series.where, reason)
        return {**outcome, "reason": reason}
    found = storage.remove_tree(series.work_url, storage_options)
    log.info("%s: work data %s (%s)", series.where, "removed" if found else "already gone", series.work_url)
    return {**outcome, "removed": found, "reason": "published" if found else "nothing left to remove"}
