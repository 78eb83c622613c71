"""Slice geometry, held once: what locates a slice, the rule that orders a series, the checks.

:class:`SliceGeometry` is the one record of a slice's geometry, whether read from a source
header or written into a new instance (:mod:`ctdenoise.dicom_out`), so both sides share names.

Every caller that turns a set of CT slices into a volume (``convert``, tests, the writer's
checks) orders them with :func:`order_slices`:

1. ``normal``: position of each slice along the slice normal, i.e. the cross product of the row
   and column direction cosines of ImageOrientationPatient (0020,0037) dotted with
   ImagePositionPatient (0020,0032), in mm, ascending. This is the only rule that is right for
   tilted or reversed orientations.
2. ``slice_location``: SliceLocation (0020,1041), mm, ascending, when some slice lacks a usable
   position or orientation (logged warning).
3. ``instance_number``: InstanceNumber (0020,0013), ascending, when slice locations are missing
   too (logged warning). The "positions" are then instance numbers, not mm.

:func:`check_consistency` refuses a series whose slices cannot be stacked into one matrix:
different Rows/Columns, orientation or pixel spacing. Duplicate positions are refused by
:func:`order_slices`; :func:`spacing_problem` names a gap or uneven spacing (a slice missing
from the middle of a series looks exactly like that). Errors are :class:`SeriesInputError`, which carry the series UID and the
first offending file so that the caller can report them per series.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctdenoise.errors import InputError

log = logging.getLogger(__name__)

ORIENTATION_TOLERANCE = 1e-4  # direction cosines, absolute
SPACING_TOLERANCE_MM = 1e-4  # PixelSpacing, absolute (mm)
POSITION_TOLERANCE_MM = 1e-3  # two slices closer than this along the ordering axis are duplicates

RULES = ("normal", "slice_location", "instance_number")


class SeriesInputError(InputError):
    """A series cannot be used; names the series and the first file that shows the problem."""

    def __init__(self, message: str, *, series_uid: str, file: str) -> None:
        super().__init__(message)
        self.series_uid = series_uid
        self.file = file


@dataclass(frozen=True)
class SliceGeometry:
    """Where one slice lies in the patient coordinate system, its size and its number.

    One record, with one set of names, for both directions: :meth:`from_dataset` parses it from
    a source header for :func:`check_consistency` and :func:`order_slices`, and
    :func:`ctdenoise.dicom_out.build_ct_dataset` writes it into a new instance (phantom or
    derived slice). Read from a header, any attribute may be absent or malformed (None) and
    ordering falls back; writing needs position, orientation, spacing and instance number.

    Parameters
    ----------
    image_position
        ImagePositionPatient (0020,0032): centre of the first pixel, mm.
    image_orientation
        ImageOrientationPatient (0020,0037): row, then column direction cosines.
    pixel_spacing
        PixelSpacing (0028,0030): row spacing, column spacing, mm.
    slice_location
        SliceLocation (0020,1041), mm.
    instance_number
        InstanceNumber (0020,0013).
    slice_thickness
        SliceThickness (0018,0050), mm.
    rows, columns
        Rows (0028,0010) and Columns (0028,0011): the slice's size in pixels.
    file
        Where the slice was read from; only used in messages.
    """

    image_position: tuple[float, float, float] | None
    image_orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_location: float | None = None
    instance_number: int | None = None
    slice_thickness: float | None = None
    rows: int | None = None
    columns: int | None = None
    file: str = ""

    @classmethod
    def from_dataset(cls, ds: Any, file: str) -> SliceGeometry:
        """Parse a pydicom Dataset; malformed values count as absent (and fall back later)."""
        return cls(
            image_position=_floats(ds.get("ImagePositionPatient"), 3),
            image_orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            pixel_spacing=_floats(ds.get("PixelSpacing"), 2),
            slice_location=_float(ds.get("SliceLocation")),
            instance_number=_int(ds.get("InstanceNumber")),
            slice_thickness=_float(ds.get("SliceThickness")),
            rows=_int(ds.get("Rows")),
            columns=_int(ds.get("Columns")),
            file=file,
        )


@dataclass(frozen=True)
class SliceOrder:
    """Result of :func:`order_slices`.

    ``indices[j]`` is the index (into the input sequence) of the slice that becomes column j;
    ``positions[j]`` its ordering coordinate (mm for ``normal`` and ``slice_location``, the
    instance number for ``instance_number``); ``rule`` the rule used.
    """

    indices: list[int]
    positions: list[float]
    rule: str

    @property
    def spacing_mm(self) -> float | None:
        """Median distance between consecutive slices (mm); None for one slice or instance numbers."""
        if self.rule == "instance_number" or len(self.positions) < 2:
            return None
        return float(np.median(np.diff(np.asarray(self.positions, dtype=np.float64))))


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of the slice plane: row direction cosines x column direction cosines."""
    iop = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    norm = float(np.linalg.norm(normal))
    if not norm > 1e-6:
        raise ValueError(f"ImageOrientationPatient {list(orientation)} has parallel or null direction cosines")
    return normal / norm


def check_consistency(slices: Sequence[SliceGeometry], series_uid: str) -> None:
    """Refuse slices that cannot form one matrix: size, orientation or pixel spacing differ.

    The reference value of each attribute is the one most slices share (ties: the first seen),
    so the error names the first slice that is the odd one out, not an innocent first file.
    Missing orientation or spacing is not an error here (ordering falls back instead).
    """
    if not slices:
        raise SeriesInputError(f"series {series_uid}: no slices", series_uid=series_uid, file="")
    for s in slices:
        if s.rows is None or s.columns is None or s.rows <= 0 or s.columns <= 0:
            raise SeriesInputError(
                f"series {series_uid}: {s.file}: missing or invalid Rows/Columns", series_uid=series_uid, file=s.file
            )
    checks = (
        ("Rows x Columns", lambda s: (float(s.rows), float(s.columns)), 0.0, ""),
        ("ImageOrientationPatient", lambda s: s.image_orientation, ORIENTATION_TOLERANCE, ""),
        ("PixelSpacing", lambda s: s.pixel_spacing, SPACING_TOLERANCE_MM, " mm"),
    )
    for name, get, tolerance, unit in checks:
        values = [(s, get(s)) for s in slices if get(s) is not None]
        if not values:
            continue
        ref_slice, ref = _most_common(values, tolerance)
        for s, value in values:
            if not _close(value, ref, tolerance):
                raise SeriesInputError(
                    f"series {series_uid}: {s.file}: {name} {_fmt(value)}{unit} differs from "
                    f"{_fmt(ref)}{unit} ({ref_slice.file} and most other slices)",
                    series_uid=series_uid,
                    file=s.file,
                )


def _close(a: Sequence[float], b: Sequence[float], tolerance: float) -> bool:
    return max(abs(x - y) for x, y in zip(a, b)) <= tolerance


def _most_common(values: list[tuple[SliceGeometry, tuple[float, ...]]], tolerance: float):
    """The (slice, value) whose value is shared (within tolerance) by most slices; first on ties."""
    best, best_count = values[0], -1
    for candidate in values:
        count = sum(_close(v, candidate[1], tolerance) for _, v in values)
        if count > best_count:
            best, best_count = candidate, count
        if best_count > len(values) // 2:
            break
    return best


def _fmt(value: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in value) + "]"


def order_slices(slices: Sequence[SliceGeometry], series_uid: str) -> SliceOrder:
    """Order slices by the rule in the module docstring; refuse duplicate positions.

    Ties are impossible after the duplicate check, so the order does not depend on the order of
    the input (e.g. file names).
    """
    if not slices:
        raise SeriesInputError(f"series {series_uid}: no slices", series_uid=series_uid, file="")
    keys, rule = _ordering_keys(slices, series_uid)
    indices = sorted(range(len(slices)), key=lambda i: keys[i])
    positions = [keys[i] for i in indices]
    tolerance = POSITION_TOLERANCE_MM if rule != "instance_number" else 0.5
    for a, b in zip(indices, indices[1:]):
        if abs(keys[b] - keys[a]) < tolerance:
            first, second = sorted((slices[a].file, slices[b].file))
            what = {"normal": "position along the slice normal", "slice_location": "SliceLocation",
                    "instance_number": "InstanceNumber"}[rule]
            raise SeriesInputError(
                f"series {series_uid}: {second}: duplicate slice, same {what} ({keys[b]:g}) as {first}",
                series_uid=series_uid,
                file=second,
            )
    return SliceOrder(indices=indices, positions=positions, rule=rule)


def spacing_problem(slices: Sequence[SliceGeometry], order: SliceOrder, tolerance: float) -> tuple[str, str] | None:
    """``(why, file)`` if the ordered slices are not evenly spaced, else None: every distance
    between neighbours must be within ``tolerance`` (a fraction) of their median. Without
    positions in mm (ordered by InstanceNumber) the spacing cannot be known, a problem too."""
    if order.rule == "instance_number":
        return "no slice positions (ImagePositionPatient, SliceLocation): the slice spacing cannot be checked", slices[0].file
    if len(order.positions) < 3:
        return None
    gaps = np.diff(np.asarray(order.positions, dtype=np.float64))
    median = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - median)))
    if abs(gaps[worst] - median) <= tolerance * median:
        return None
    first, second = (slices[order.indices[j]].file for j in (worst, worst + 1))
    why = f"uneven slice spacing: {gaps[worst]:g} mm from {first}, median {median:g} mm (tolerance {tolerance:.0%}; a missing slice?)"
    return why, second


def _ordering_keys(slices: Sequence[SliceGeometry], series_uid: str) -> tuple[list[float], str]:
    """Per-slice ordering coordinate and the rule that produced it."""
    missing = [s.file for s in slices if s.image_position is None or s.image_orientation is None]
    if not missing:
        try:
            normal = slice_normal(slices[0].image_orientation)  # consistency check: all agree
        except ValueError as exc:
            raise SeriesInputError(
                f"series {series_uid}: {slices[0].file}: {exc}", series_uid=series_uid, file=slices[0].file
            ) from exc
        return [float(np.dot(normal, s.image_position)) for s in slices], "normal"
    reason = (
        f"{len(missing)} of {len(slices)} slices (first: {missing[0]}) "
        "lack ImagePositionPatient/ImageOrientationPatient"
    )
    if all(s.slice_location is not None for s in slices):
        log.warning("series %s: %s; ordering by SliceLocation", series_uid, reason)
        return [float(s.slice_location) for s in slices], "slice_location"
    if all(s.instance_number is not None for s in slices):
        log.warning("series %s: %s, and SliceLocation is missing too; ordering by InstanceNumber", series_uid, reason)
        return [float(s.instance_number) for s in slices], "instance_number"
    if len(slices) == 1:
        log.warning("series %s: single slice without position, location or instance number", series_uid)
        return [0.0], "instance_number"
    # Neither fallback covers every slice: name a slice that lacks an InstanceNumber.
    bad = next((s.file for s in slices if s.instance_number is None), slices[0].file)
    raise SeriesInputError(
        f"series {series_uid}: {bad}: cannot order slices: no ImagePositionPatient/ImageOrientationPatient, "
        "SliceLocation or InstanceNumber",
        series_uid=series_uid,
        file=bad,
    )


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    """``n`` finite floats from a multi-valued DICOM element, or None."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(out) != n or not all(math.isfinite(v) for v in out):
        return None
    return out
