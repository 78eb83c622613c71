"""``ctdenoise convert SRC DST``: every CT series under SRC becomes ``DST/<SeriesInstanceUID>.zarr``.

The matrix and its attributes follow docs/architecture.md ("Series matrix"): shape
``(rows*columns, slices)``, float32 HU, column j = slice j in ascending position along the slice
normal (:mod:`ctdenoise.geometry`), pixel (r, c) at row ``r*columns + c``.

:func:`convert` yields one typed record per outcome, as it happens:

- :class:`~ctdenoise.records.Skipped` for each file that is not a CT slice we convert;
- :class:`~ctdenoise.records.Failed` for a series that cannot be converted (inconsistent
  geometry, duplicate slices, unreadable pixels...). A failed series never blocks the others,
  and leaves nothing at its destination (publication is atomic);
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
from ctdenoise.dicom_series import SliceHeader, header_json, read_hu, scan_series
from ctdenoise.errors import InputError
from ctdenoise.metrics import slice_noise_level
from ctdenoise.records import Failed, Skipped, Written
from ctdenoise.geometry import SeriesInputError, SliceOrder, check_consistency, order_slices

log = logging.getLogger(__name__)


def convert(src: str, dst: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[Skipped | Failed | Written]:
    """Convert every CT series under ``src`` (folder or URL prefix) into a matrix under ``dst``."""
    series, skipped = scan_series(src, storage_options)
    yield from skipped
    if not series:
        reasons = Counter(r.reason for r in skipped)
        summary = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common(3))
        detail = f"{len(skipped)} files skipped" + (f": {summary}" if summary else "")
        raise InputError(f"{src}: no CT image series found ({detail})")
    for uid, headers in series.items():
        try:
            yield convert_series(headers, storage.join(dst, f"{uid}.zarr"), storage_options)
        except SeriesInputError as exc:
            log.error("series %s failed: %s", uid, exc)
            yield Failed(series_instance_uid=uid, file=exc.file, reason=str(exc))


def convert_series(headers: Sequence[SliceHeader], dest_url: str, storage_options: Mapping[str, Any] | None = None) -> Written:
    """Check, order, read (one slice at a time) and publish one series; returns its record."""
    started = time.perf_counter()
    uid = headers[0].series_instance_uid
    geometries = [h.geometry for h in headers]
    check_consistency(geometries, uid)
    order = order_slices(geometries, uid)
    ordered = [headers[i] for i in order.indices]
    rows, columns = ordered[0].geometry.rows, ordered[0].geometry.columns
    # Fortran order: each slice fills one contiguous column; only one decoded slice is alive at a time.
    matrix = np.empty((rows * columns, len(ordered)), dtype=np.float32, order="F")
    noise: list[float | None] = []
    for j, header in enumerate(ordered):
        image = read_hu(header, storage_options)
        matrix[:, j] = image.reshape(-1)  # C order: pixel (r, c) -> r*columns + c
        noise.append(slice_noise_level(image))
    attrs = {**series_attributes(ordered, order), "slice_noise_hu": noise}
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
