"""``report.json``: the machine-readable record of a published series (the completion marker)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ctdenoise import layout
from ctdenoise.records import Series
from ctdenoise.report.entries import ReportEntry, RunInfo
from ctdenoise.report.load import SeriesData
from ctdenoise.report.values import json_safe, retained_energy

SVD_KEYS = ("method", "method_reason", "oversample", "power_iters", "seed", "matrix_shape", "frobenius_norm", "error_estimate")
LOCAL_KEYS = ("tile", "stride", "shrinkage", "weights", "multipliers", "inplane")


def build_summary(
    series: Series, data: SeriesData, ranks: Sequence[ReportEntry], local: Sequence[ReportEntry],
    run: RunInfo, versions: dict[str, str], reference_url: str | None,
) -> dict[str, Any]:  # fmt: skip
    """The JSON summary: source, run, parameters, versions, SVD, each output and its metrics."""
    auto = next((e for e in ranks if e.is_auto), None)
    return json_safe({
        "series_instance_uid": series.series_instance_uid,
        "study_instance_uid": data.attrs.get("study_instance_uid"),
        "series_description": description(data),
        "source": {
            "source_url": series.source_url, "matrix_url": series.matrix_url, "svd_url": series.svd_url,
            "reference_url": reference_url, "rows": data.rows, "columns": data.columns, "slices": data.shape[1],
            "pixel_spacing_mm": data.attrs.get("pixel_spacing"), "slice_spacing_mm": data.attrs.get("slice_spacing"),
            "ordering": data.attrs.get("ordering"),
        },
        "warnings": list(data.attrs.get("warnings") or []),
        "run": {"dag_id": run.dag_id, "run_id": run.run_id, "logical_date": run.logical_date},
        "params": series.params.as_json(),
        "params_hash": series.params_hash,
        "versions": versions,
        "svd": {"rank": int(data.s.size), **{k: data.svd_attrs.get(k) for k in SVD_KEYS},
                "timings": dict(data.svd_attrs.get("timings") or {}), "singular_values": data.s.tolist()},
        "auto_rank": None if auto is None else auto.rank,
        "gavish_donoho": None if auto is None else auto.auto_rule.model_dump(mode="json", exclude_none=True),
        "middle_slice": {"column": data.column, "position_mm": data.position},
        "ranks": [rank_summary(e, data) for e in ranks],
        "failed_ranks": [e.rank for e in ranks if not e.ok],
        "local": local_summary(data, local),
        "report_html": layout.report_html(series.series_url),
        "deliveries_json": layout.deliveries_json(series.series_url),  # written by deliver: what went to which PACS, when
    })  # fmt: skip


def description(data: SeriesData) -> str:
    """The source's SeriesDescription, from the DICOM JSON header the matrix keeps."""
    element = (data.attrs.get("header") or {}).get("0008103E") or {}
    values = element.get("Value") or [""] if isinstance(element, dict) else [""]
    return str(values[0] or "")


def rank_summary(entry: ReportEntry, data: SeriesData) -> dict[str, Any]:
    frobenius = data.svd_attrs.get("frobenius_norm")
    return {
        "rank": entry.rank,
        "rules": [r.model_dump(mode="json", exclude_none=True) for r in entry.rules],
        "status": "ok" if entry.ok else "failed",
        "output_url": entry.output.output_url,
        "retained_energy": retained_energy(data.s, entry.rank, frobenius) if entry.rank <= data.s.size else None,
        "metrics": entry.metrics,
    }


def local_summary(data: SeriesData, local: Sequence[ReportEntry]) -> dict[str, Any] | None:
    if data.local is None or not local:
        return None
    attrs = data.local.attrs
    outputs = [{"multiplier": e.output.multiplier, "status": "ok" if e.ok else "failed", "output_url": e.output.output_url,
                "tiles": None if e.output.tiles is None else e.output.tiles.model_dump(), "metrics": e.metrics}
               for e in local]  # fmt: skip
    return {"local_url": data.local.url, **{k: attrs.get(k) for k in LOCAL_KEYS}, "automatic_multiplier": data.local.automatic,
            "summary": attrs.get("summary"), "timings": attrs.get("timings"), "outputs": outputs}  # fmt: skip
