"""When ``report.json`` may be trusted: the completion marker of a series and what it vouches for.

``report.json`` says "this series is published, complete, with these parameters". It may only
say so while every output it lists is the one it saw:

- it is written last, after every output of the series (:func:`ctdenoise.report.write_report`),
  and records each output's publication id (:func:`stamp`, from the ``_SUCCESS`` markers);
- it is removed before any output of the series is replaced (:mod:`ctdenoise.writer`);
- before a run skips a series as already published, :func:`trusted_hash` checks that each
  output is still published under the id recorded (a folder changed or removed since, by a
  failed re-run or by hand, no longer matches), and otherwise treats the series as not
  published, so it is processed again.

Light on purpose (standard library and :mod:`ctdenoise.storage`): ``discover_series`` and
``clean_work`` use it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from ctdenoise import layout, storage

log = logging.getLogger(__name__)


def outputs(summary: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The output entries of a report summary: global ranks, then local multipliers."""
    yield from summary.get("ranks") or []
    yield from (summary.get("local") or {}).get("outputs") or []


def stamp(summary: dict[str, Any], storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Record in each output entry the publication id of its ``_SUCCESS`` marker (None for an
    output that is not published, e.g. a failed one)."""
    for entry in outputs(summary):
        entry["publication"] = storage.publication_id(entry["output_url"], storage_options)
    return summary


def read_report(series_url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The series' ``report.json``, or None if there is none or it is not JSON (a warning).

    Storage errors propagate: an unreadable marker is not an absent one (the task retries)."""
    url = layout.report_json(series_url)
    try:
        data = json.loads(storage.read_bytes(url, storage_options))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("%s: not a report (%s); treated as not published", url, exc)
        return None
    return data if isinstance(data, dict) else None


def trusted_hash(series_url: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The ``params_hash`` of the series' ``report.json`` if every output it lists as written is
    still published under the id it recorded; None otherwise (with a warning naming the output)."""
    report = read_report(series_url, storage_options)
    if report is None:
        return None
    for entry in outputs(report):
        if entry.get("status", "ok") != "ok":
            continue
        found = storage.publication_id(entry["output_url"], storage_options)
        recorded = entry.get("publication", found if found is not None else "")
        if found is None or found != recorded:
            what = "missing" if found is None else f"replaced since the report (publication {found}, not {recorded})"
            log.warning("%s: %s is %s; the series is not complete", layout.report_json(series_url), entry["output_url"], what)
            return None
    value = report.get("params_hash")
    return str(value) if value else None
