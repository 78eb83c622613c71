"""The per-series report: ``report.html`` (for people) and ``report.json`` (the completion marker).

:func:`publish_report` is the DAG's ``report`` step: it publishes a series' report only when every
planned output of the series was written in this run, so that ``report.json`` keeps meaning
"complete" and the next run retries an incomplete series. :func:`write_report` writes the two
files: the page first, then the JSON, each in one PUT (:func:`ctdenoise.storage.write_bytes`);
``publish_dir`` is not used, it would replace the series folder and with it the outputs. The
JSON records the publication id of each output (:mod:`ctdenoise.completion`, which says when it
may be trusted).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ctdenoise import layout, storage
from ctdenoise.completion import stamp
from ctdenoise.errors import InputError, ParameterError
from ctdenoise.params import Mode
from ctdenoise.records import Omitted, Output, Reconstructed, Series, SeriesReport
from ctdenoise.report.entries import ReportEntry, RunInfo
from ctdenoise.report.values import installed_versions, middle_slice_reconstructions, retained_energy

__all__ = ["ReportEntry", "RunInfo", "installed_versions", "middle_slice_reconstructions", "publish_report",
           "retained_energy", "write_report"]  # fmt: skip


def write_report(
    series: Series,
    entries: Sequence[ReportEntry],
    run: RunInfo,
    *,
    reference_url: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    omitted: Sequence[Omitted] = (),
) -> dict[str, Any]:
    """Write ``report.html`` then ``report.json`` in the series' folder; return the summary.

    ``entries`` are the series' outputs (global ranks, local multipliers), each with its metrics
    or None when its writer failed; ``omitted`` the outputs the plan left out, with why.
    ``reference_url``: an optional reference matrix (e.g. the noise-free series) whose middle
    slice is shown beside the original. Raises
    :class:`ParameterError` for no or duplicate outputs and :class:`InputError` when the stores
    do not fit together.
    """
    from ctdenoise.report.load import load
    from ctdenoise.report.page import render_page
    from ctdenoise.report.summary import build_summary

    ranks, local = split_entries(series, entries)
    data = load(series, [e.rank for e in ranks], reference_url, storage_options)
    versions = dict(run.versions or installed_versions())
    summary = build_summary(series, data, ranks, local, run, versions, reference_url)
    summary["omitted"] = [{"output": o.label, "reason": o.reason} for o in omitted if o.series.folder == series.folder]
    from ctdenoise.report.deliveries import load_records, section_html

    deliveries = section_html(load_records(series.series_url, storage_options))  # earlier deliveries stay on the page
    page = render_page(series, data, summary, ranks, local, run, reference_url, deliveries)
    storage.write_bytes(layout.report_html(series.series_url), page.encode("utf-8"), storage_options)
    stamp(summary, storage_options)  # which version of each output this report vouches for
    payload = json.dumps(summary, sort_keys=True, indent=2, allow_nan=False) + "\n"
    storage.write_bytes(layout.report_json(series.series_url), payload.encode("utf-8"), storage_options)
    return summary


def split_entries(series: Series, entries: Sequence[ReportEntry]) -> tuple[list[ReportEntry], list[ReportEntry]]:
    """``(global entries by rank, local entries by multiplier)``; every output once, of this series."""
    if not entries:
        raise ParameterError(f"{series.where}: a report needs at least one output")
    urls = [e.output.output_url for e in entries]
    if len(set(urls)) != len(urls):
        raise ParameterError(f"{series.where}: an output is listed twice: {sorted(u for u in urls if urls.count(u) > 1)}")
    ranks = sorted((e for e in entries if e.output.mode == Mode.GLOBAL), key=lambda e: e.rank)
    local = sorted((e for e in entries if e.output.mode == Mode.LOCAL), key=lambda e: e.output.multiplier)
    if ranks and not series.svd_url or local and not series.local_url:
        raise ParameterError(f"{series.where}: outputs of a mode the series' parameters do not run")
    return ranks, local


def publish_report(
    series: Series,
    planned: Iterable[Output],
    results: Iterable[Reconstructed],
    run: RunInfo,
    storage_options: Mapping[str, Any] | None = None,
    omitted: Sequence[Omitted] = (),
) -> SeriesReport:
    """Publish the report of one series if all its planned outputs were written; else
    :class:`InputError` naming what is missing (nothing is published then)."""
    if not storage.is_published(series.matrix_url, storage_options):
        raise InputError(f"{series.where}: not converted (see the convert task); no report published")
    mine = [o for o in planned if o.series.folder == series.folder]
    if not mine:
        raise InputError(f"{series.where}: no outputs planned (no decomposition: see the dssvd and plan_ranks tasks); no report published")
    done = {r.output.output_url: r.metrics for r in results if r.output.series.folder == series.folder}
    missing = [o.label for o in mine if o.output_url not in done]
    if missing:
        raise InputError(f"{series.where}: {', '.join(missing)} not reconstructed (see reconstruct); no report published")
    gone = [o.label for o in mine if not storage.is_published(o.output_url, storage_options)]
    if gone:
        raise InputError(f"{series.where}: {', '.join(gone)} reconstructed but not published any more; no report published")
    entries = [ReportEntry(o, done[o.output_url]) for o in mine]
    summary = write_report(series, entries, run, storage_options=storage_options, omitted=omitted)
    return SeriesReport(
        folder=series.folder, series_instance_uid=series.series_instance_uid, source_url=series.source_url,
        report_json=layout.report_json(series.series_url), report_html=summary["report_html"],
        outputs=[o.output_url for o in mine], auto_rank=summary.get("auto_rank"), params_hash=series.params_hash,
    )  # fmt: skip
