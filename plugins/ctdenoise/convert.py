"""``ctdenoise convert SRC DST``: every CT series under SRC becomes ``DST/<SeriesInstanceUID>.zarr``.

The matrix and its attributes follow docs/architecture.md ("Series matrix"): shape
``(rows*columns, slices)``, float32 HU, column j = slice j in ascending position along the slice
normal (:mod:`ctdenoise.geometry`), pixel (r, c) at row ``r*columns + c``.

:func:`convert` yields one typed record per outcome, as it happens:

- :class:`~ctdenoise.records.Skipped` for each file that is not a CT slice we convert;
- :class:`~ctdenoise.records.Failed` for a series that cannot be converted, with the kind of
  failure (:mod:`ctdenoise.errors`): refused by :mod:`ctdenoise.acceptance` from its headers
  (a broken slice, bad UIDs, inconsistent geometry, sizes, spacing...) or by its pixels, a
  storage error (transient), or a bug. Whatever happens to one series is reported on one line
  and never stops the others; it leaves nothing at its destination (publication is atomic);
- :class:`~ctdenoise.records.Written` for each published matrix.

If SRC holds no CT series at all, :class:`ctdenoise.errors.InputError` is raised after the skip
records (the CLI prints it on one line and exits with status 2).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ctdenoise import matrix_store, storage
from ctdenoise.acceptance import Accepted, accept
from ctdenoise.dicom_series import SliceHeader, header_json, read_hu, scan_series
from ctdenoise.errors import Failure, InputError, classify, one_line
from ctdenoise.metrics import slice_noise_level
from ctdenoise.params import RunParams
from ctdenoise.records import Failed, Skipped, Written
from ctdenoise.geometry import SliceOrder
from ctdenoise.uids import shown, uid_problem

log = logging.getLogger(__name__)


def convert(
    src: str, dst: str, storage_options: Mapping[str, Any] | None = None, params: RunParams | None = None
) -> Iterator[Skipped | Failed | Written]:
    """Convert every CT series under ``src`` (folder or URL prefix) into a matrix under ``dst``;
    ``params`` gives the modes and the :class:`~ctdenoise.params.InputRules` (default: the
    defaults of a run)."""
    params = params or RunParams()
    scan = scan_series(src, storage_options)
    yield from scan.skipped
    if not scan.series:
        reasons = Counter(r.reason for r in scan.skipped)
        summary = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common(3))
        detail = f"{len(scan.skipped)} files skipped" + (f": {summary}" if summary else "")
        raise InputError(f"{src}: no CT image series found ({detail})")
    for uid, headers in scan.series.items():
        yield convert_one(headers, dst, params, scan.broken.get(uid, []), storage_options)


def convert_one(
    headers: Sequence[SliceHeader], dst: str, params: RunParams, broken: Sequence[Skipped],
    storage_options: Mapping[str, Any] | None = None,
) -> Written | Failed:  # fmt: skip
    """One series, isolated from the others: accepted from its headers, then converted; any
    failure becomes its :class:`Failed` record (one line, with its kind), never an exception."""
    uid = headers[0].series_instance_uid
    try:
        accepted = accept(headers, params.input_rules, params.modes, broken)
        return convert_series(headers, storage.join(dst, f"{uid}.zarr"), storage_options, accepted)
    except Exception as exc:  # noqa: BLE001 (every failure is this series' own: reported, classified)
        kind = classify(exc)
        reason = one_line(exc)
        if not reason.startswith("series "):
            reason = f"series {uid if uid_problem(uid) is None else shown(uid)}: {reason}"
        log.error("series %s failed (%s): %s", uid, kind.value, reason, exc_info=kind == Failure.BUG)
        return Failed(series_instance_uid=uid, file=getattr(exc, "file", ""), reason=reason, kind=kind)


def convert_series(
    headers: Sequence[SliceHeader], dest_url: str, storage_options: Mapping[str, Any] | None, accepted: Accepted
) -> Written:
    """Read (one slice at a time, in the accepted order: ``accepted`` is what
    :func:`ctdenoise.acceptance.accept` said of ``headers``) and publish one series; its record."""
    started = time.perf_counter()
    uid, order = headers[0].series_instance_uid, accepted.order
    ordered = [headers[i] for i in order.indices]
    rows, columns = ordered[0].geometry.rows, ordered[0].geometry.columns
    # Fortran order: each slice fills one contiguous column; only one decoded slice is alive at a time.
    matrix = np.empty((rows * columns, len(ordered)), dtype=np.float32, order="F")
    noise: list[float | None] = []
    for j, header in enumerate(ordered):
        image = read_hu(header, storage_options)
        matrix[:, j] = image.reshape(-1)  # C order: pixel (r, c) -> r*columns + c
        noise.append(slice_noise_level(image))
    attrs = {**series_attributes(ordered, order), "slice_noise_hu": noise, "warnings": list(accepted.warnings)}
    matrix_store.write_matrix(matrix, attrs, dest_url, storage_options)
    del matrix
    seconds = round(time.perf_counter() - started, 3)
    log.info("series %s: %d slices of %dx%d -> %s (%.1f s)", uid, len(ordered), rows, columns, dest_url, seconds)
    return Written(series_instance_uid=uid, url=dest_url, rows=rows, columns=columns, slices=len(ordered),
                   ordering=order.rule, seconds=seconds)  # fmt: skip


def series_attributes(ordered: Sequence[SliceHeader], order: SliceOrder) -> dict[str, Any]:
    """The matrix attributes of docs/architecture.md, from the headers in column order."""
    first = ordered[0].dataset
    geometry = ordered[0].geometry
    orientation = next((h.geometry.image_orientation for h in ordered if h.geometry.image_orientation), None)
    spacing = next((h.geometry.pixel_spacing for h in ordered if h.geometry.pixel_spacing), None)
    return {
        "rows": geometry.rows,
        "columns": geometry.columns,
        "slices": len(ordered),
        "sop_instance_uids": [h.sop_instance_uid for h in ordered],
        "source_files": [h.name for h in ordered],
        "slice_positions": [float(p) for p in order.positions],
        "image_positions_patient": [
            list(h.geometry.image_position) if h.geometry.image_position else None for h in ordered
        ],
        "image_orientation_patient": list(orientation) if orientation else None,
        "pixel_spacing": list(spacing) if spacing else None,
        "slice_thickness": _optional_float(first.get("SliceThickness")),
        "slice_spacing": order.spacing_mm,
        "ordering": order.rule,
        "series_instance_uid": ordered[0].series_instance_uid,
        "study_instance_uid": str(first.get("StudyInstanceUID", "") or ""),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "") or ""),
        "sop_class_uid": str(first.get("SOPClassUID", "") or ""),
        "rescale_slope": _optional_float(first.get("RescaleSlope"), default=1.0),
        "rescale_intercept": _optional_float(first.get("RescaleIntercept"), default=0.0),
        "bits_allocated": int(first.get("BitsAllocated", 16)),
        "bits_stored": int(first.get("BitsStored", first.get("BitsAllocated", 16))),
        "pixel_representation": int(first.get("PixelRepresentation", 0)),
        "header": header_json(first),
    }


def _optional_float(value: Any, default: float | None = None) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if np.isfinite(out) else default
