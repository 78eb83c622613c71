"""Which series ``convert`` accepts: every check that needs only the headers, made before any
pixel is decoded, so that a series that must not be published costs no more than its headers.

:func:`accept` runs them in this order; the first that fails refuses the series with one
:class:`~ctdenoise.geometry.SeriesInputError` naming the series, the file and the reason:

1. a file of the series that cannot be read (:attr:`ctdenoise.dicom_series.Scan.broken`): the
   series would be published with a slice missing;
2. UIDs (SeriesInstanceUID, StudyInstanceUID, FrameOfReferenceUID, SOPInstanceUID) that are not
   valid DICOM UIDs: they become paths and are copied into the derived series;
3. slices that cannot form one matrix (:func:`ctdenoise.geometry.check_consistency`);
4. the modality LUT: RescaleSlope and RescaleIntercept are required for CT images, and a slope
   of 0 would turn every pixel into the intercept;
5. the size limits (:class:`~ctdenoise.params.InputRules` ``max_pixels``, ``max_series_mib``);
6. the minimum slices, rows and columns of each mode the run computes;
7. duplicate positions (:func:`ctdenoise.geometry.order_slices`) and the spacing
   (:func:`ctdenoise.geometry.spacing_problem`): refused, or with ``uneven_spacing=warn``
   accepted with a warning that the matrix and the report keep.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ctdenoise.geometry import SeriesInputError, SliceOrder, check_consistency, order_slices, spacing_problem
from ctdenoise.params import InputRules, Mode, UnevenSpacing
from ctdenoise.uids import shown, uid_problem

if TYPE_CHECKING:
    from ctdenoise.dicom_series import SliceHeader
    from ctdenoise.records import Skipped

log = logging.getLogger(__name__)

UID_KEYWORDS = ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID")
REQUIRED_UIDS = ("SeriesInstanceUID", "SOPInstanceUID")  # Type 1, and the derived UIDs depend on them
MATRIX_BYTES_PER_VOXEL = 4  # float32


@dataclass(frozen=True)
class Accepted:
    """A series that passed: its slice order and the warnings to keep with its matrix."""

    order: SliceOrder
    warnings: tuple[str, ...] = ()


def accept(
    headers: Sequence[SliceHeader], rules: InputRules, modes: Iterable[Mode], broken: Sequence[Skipped] = ()
) -> Accepted:
    """Check one series (see the module docstring); :class:`SeriesInputError` if it is refused."""
    uid = headers[0].series_instance_uid
    label = uid if uid_problem(uid) is None else shown(uid)

    def refuse(file: str, reason: str) -> SeriesInputError:
        return SeriesInputError(f"series {label}: {file}: {reason}", series_uid=uid, file=file)

    if broken:
        raise refuse(broken[0].file, broken[0].reason + (f" (and {len(broken) - 1} more files)" if len(broken) > 1 else ""))
    _check_uids(headers, refuse)
    geometries = [h.geometry for h in headers]
    check_consistency(geometries, uid)
    _check_rescale(headers, refuse)
    _check_size(headers, rules, list(modes), refuse)
    order = order_slices(geometries, uid)
    problem = spacing_problem(geometries, order, rules.spacing_tolerance)
    if problem is None:
        return Accepted(order)
    why, file = problem
    if rules.uneven_spacing == UnevenSpacing.FAIL:
        raise refuse(file, f"{why}; uneven_spacing=warn converts it anyway")
    log.warning("series %s: %s (converted: uneven_spacing=warn)", uid, why)
    return Accepted(order, (why,))


def _check_uids(headers: Sequence[SliceHeader], refuse) -> None:  # noqa: ANN001 (the caller's closure)
    seen: dict[str, str] = {}
    for h in headers:
        for keyword in UID_KEYWORDS:
            value = str(h.dataset.get(keyword, "") or "").strip()
            if not value:
                if keyword in REQUIRED_UIDS:
                    raise refuse(h.url, f"{keyword} missing (required)")
                continue
            problem = uid_problem(value)
            if problem:
                raise refuse(h.url, f"{keyword} {shown(value)} is not a valid DICOM UID: {problem}")
        if h.sop_instance_uid in seen:
            raise refuse(h.url, f"SOPInstanceUID {h.sop_instance_uid} also in {seen[h.sop_instance_uid]} (the same slice twice?)")
        seen[h.sop_instance_uid] = h.url


def _check_rescale(headers: Sequence[SliceHeader], refuse) -> None:  # noqa: ANN001
    """RescaleSlope and RescaleIntercept are Type 1 in the CT Image module; the writer and HU
    depend on them. A slope of 0 (or not a finite number) maps every pixel to the intercept."""
    for h in headers:
        for keyword in ("RescaleSlope", "RescaleIntercept"):
            raw = h.dataset.get(keyword)
            if raw is None or str(raw).strip() == "":
                raise refuse(h.url, f"{keyword} missing (required for CT images: stored values cannot become HU)")
            try:
                value = float(raw)
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value) or (keyword == "RescaleSlope" and value == 0):
                shown_value = f"{value:g}" if math.isfinite(value) else repr(str(raw))
                raise refuse(h.url, f"{keyword} {shown_value}: stored values cannot become HU" + (
                    " (every pixel would be the intercept)" if value == 0 else ""))  # fmt: skip


def _check_size(headers: Sequence[SliceHeader], rules: InputRules, modes: list[Mode], refuse) -> None:  # noqa: ANN001
    """The limits, then each mode's minimums, from Rows, Columns and the number of slices."""
    first = headers[0]
    rows, columns, slices = int(first.geometry.rows or 0), int(first.geometry.columns or 0), len(headers)
    if rows * columns > rules.max_pixels:
        raise refuse(first.url, f"{rows} x {columns} pixels per slice, above max_pixels {rules.max_pixels}")
    mib = rows * columns * slices * MATRIX_BYTES_PER_VOXEL / 2**20
    if mib > rules.max_series_mib:
        raise refuse(first.url, f"{slices} slices of {rows} x {columns}: a {mib:,.0f} MiB matrix, above max_series_mib {rules.max_series_mib}")
    for mode in modes:
        if slices < rules.min_slices(mode):
            raise refuse(first.url, f"{slices} slice(s): the {mode.value} mode needs at least {rules.min_slices(mode)} "
                                    f"(min_slices_{mode.value})")  # fmt: skip
        if min(rows, columns) < rules.min_size(mode):
            size = rules.min_size(mode)
            raise refuse(first.url, f"{rows} x {columns} pixels: the {mode.value} mode needs at least {size} x {size} "
                                    f"(min_size_{mode.value})")  # fmt: skip
