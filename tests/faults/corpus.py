"""A hostile-input corpus, generated: each case is a folder of DICOM (and other) files that a
hospital's export could hold, with the one-line outcome ``convert`` must give it.

A case's folder holds its series and, where it says so, a good series beside it that must be
converted whatever happens to the bad one. :data:`CASES` is the table the closing note of
issue 19 asks for (``python tests/faults/corpus.py`` prints it).
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from convert_fixtures import Slice, ct_series, truncate, uid_for, write_slices
from pydicom.data import get_testdata_file

GOOD_UID = "1.2.826.0.1.3680043.10.1.1"


@dataclass(frozen=True)
class Case:
    """One hostile input and what must come of it.

    ``outcome``: ``written`` (converted; ``fragment`` then names a warning, if any), ``failed``
    (refused, one line with ``fragment``, naming ``file`` when given), ``no_series`` (nothing to
    convert: one input error for the folder), or ``skipped`` (the files are skipped, the good
    series beside them converted). ``params``: run parameters other than the defaults.
    """

    name: str
    build: Callable[[Path], str | None]  # writes the folder; the series UID under test (None: none)
    outcome: str
    fragment: str
    file: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    with_good: bool = True
    pipeline: bool = False  # run the rest of the pipeline on what converts

    def describe(self) -> str:
        return f"{self.name}: {self.outcome}" + (f" ({self.fragment})" if self.fragment else "")


def series(n: int = 5, uid: str | None = None, **kwargs: Any) -> list[Slice]:
    return ct_series(n, series_uid=uid or uid_for("hostile", n, kwargs.get("spacing", 2.5), uid), rows=32, columns=32, **kwargs)


def _write(folder: Path, slices: list[Slice]) -> str:
    write_slices(folder, slices)
    return str(slices[0].dataset.SeriesInstanceUID)


def one_slice(folder: Path) -> str:
    return _write(folder, series(1))


def slope(value: float | None) -> Callable[[Path], str]:
    def build(folder: Path) -> str:
        slices = series(5)
        if value is None:
            del slices[2].dataset.RescaleSlope
        else:
            slices[2].dataset.RescaleSlope = value
        return _write(folder, slices)

    return build


def every_slice(keyword: str, value: Any, n: int = 5) -> Callable[[Path], str]:
    """A series of ``n`` slices whose ``keyword`` is ``value`` in every slice."""

    def build(folder: Path) -> str:
        slices = series(n)
        for s in slices:
            setattr(s.dataset, keyword, value)
        return _write(folder, slices)

    return build


def huge(folder: Path) -> str:
    """Rows and Columns of 65535 declared, a few bytes of pixel data."""
    slices = series(3)
    for s in slices:
        s.dataset.Rows = s.dataset.Columns = 65535
    return _write(folder, slices)


def cut_header(folder: Path) -> str:
    """The middle slice of five cut inside its header."""
    slices = series(5)
    paths = write_slices(folder, slices)
    truncate(paths[2], 900)
    return str(slices[0].dataset.SeriesInstanceUID)


def gap(folder: Path) -> str:
    """A real one: 202.5 mm from the first slice to the second, then 1.25 mm."""
    slices = series(6, spacing=1.25)
    first = slices[0].dataset
    z = float(slices[1].dataset.ImagePositionPatient[2])
    first.ImagePositionPatient = [first.ImagePositionPatient[0], first.ImagePositionPatient[1], z - 202.5]
    first.SliceLocation = z - 202.5
    return _write(folder, slices)


def mixed(folder: Path) -> str:
    """A CT series with an MR image, a structured report, an RT structure set and notes."""
    uid = _write(folder, series(5))
    for name in ("MR_small.dcm", "test-SR.dcm", "rtstruct.dcm"):
        shutil.copy(get_testdata_file(name), folder / name)
    (folder / "notes.txt").write_text("not DICOM")
    return uid


def bits_stored_12(folder: Path) -> str:
    """12 bits stored in 16, unsigned, values in range (the classic CT encoding)."""
    slices = series(5)
    for s in slices:
        ds = s.dataset
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        stored = np.frombuffer(ds.PixelData, dtype="<i2").astype(np.uint16) % 4096
        ds.PixelData = stored.astype("<u2").tobytes()
    return _write(folder, slices)


def signed_as_unsigned(folder: Path) -> str:
    """Signed stored values (air at -1000, intercept 0) declared unsigned: 64536 HU."""
    slices = series(5, intercept=0.0)
    for s in slices:
        ds = s.dataset
        ds.PixelRepresentation = 0
        ds.PixelData = (np.full((32, 32), -1000, dtype="<i2")).tobytes()
    return _write(folder, slices)


def multiframe(folder: Path) -> str:
    slices = series(1)
    slices[0].dataset.NumberOfFrames = 3
    return _write(folder, slices)


def enhanced_ct(folder: Path) -> str:
    slices = series(1)
    slices[0].dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    return _write(folder, slices)


def no_position(also_location: bool) -> Callable[[Path], str]:
    def build(folder: Path) -> str:
        slices = series(5)
        for s in slices:
            del s.dataset.ImagePositionPatient
            if also_location:
                del s.dataset.SliceLocation
        return _write(folder, slices)

    return build


def same_slice_twice(folder: Path) -> str:
    slices = series(5)
    twin = copy.deepcopy(slices[1])
    write_slices(folder, slices)
    twin.dataset.ImagePositionPatient = [0.0, 0.0, 999.0]
    write_slices(folder, [twin], ["IM9999.dcm"])
    return str(slices[0].dataset.SeriesInstanceUID)


def good(folder: Path) -> str:
    return _write(folder, series(5, uid=GOOD_UID))


CASES: list[Case] = [
    Case("one slice", one_slice, "failed", "1 slice(s): the global mode needs at least 3 (min_slices_global)", "IM0000.dcm"),
    Case("RescaleSlope 0", slope(0.0), "failed", "RescaleSlope 0: stored values cannot become HU", "IM0002.dcm"),
    Case("RescaleSlope missing", slope(None), "failed", "RescaleSlope missing (required for CT images", "IM0002.dcm"),
    Case("SeriesInstanceUID ../../x", every_slice("SeriesInstanceUID", "../../x"), "failed",
         "SeriesInstanceUID '../../x' is not a valid DICOM UID"),  # fmt: skip
    Case("SeriesInstanceUID of 300 characters", every_slice("SeriesInstanceUID", "1." + "2" * 298), "failed",
         "300 characters (at most 64)"),  # fmt: skip
    Case("StudyInstanceUID with a leading zero", every_slice("StudyInstanceUID", "1.2.03.4"), "failed",
         "StudyInstanceUID '1.2.03.4' is not a valid DICOM UID"),  # fmt: skip
    Case("65535 x 65535 declared", huge, "failed", "65535 x 65535 pixels per slice, above max_pixels"),
    Case("header cut in the middle slice", cut_header, "failed", "unreadable DICOM header", "IM0002.dcm"),
    Case("202.5 mm gap, then 1.25 mm", gap, "failed", "uneven slice spacing: 202.5 mm", "IM0001.dcm"),
    Case("202.5 mm gap, uneven_spacing=warn", gap, "written", "uneven slice spacing: 202.5 mm",
         params={"uneven_spacing": "warn"}, pipeline=True),  # fmt: skip
    Case("mixed modalities in one folder", mixed, "written", "", pipeline=True, with_good=False),
    Case("Bits Stored 12 of 16", bits_stored_12, "written", "", pipeline=True),
    Case("signed values declared unsigned", signed_as_unsigned, "failed", "64536 HU, above 32767", "IM0000.dcm"),
    Case("PhotometricInterpretation RGB", every_slice("PhotometricInterpretation", "RGB"), "skipped", "PhotometricInterpretation RGB: not a grayscale CT image"),
    Case("PhotometricInterpretation MONOCHROME1", every_slice("PhotometricInterpretation", "MONOCHROME1"), "written", ""),
    Case("multi-frame CT Image", multiframe, "skipped", "multi-frame CT (3 frames) not supported"),
    Case("Enhanced CT", enhanced_ct, "skipped", "multi-frame Enhanced CT not supported"),
    Case("no ImagePositionPatient", no_position(False), "written", "", pipeline=True),
    Case("no ImagePositionPatient nor SliceLocation", no_position(True), "failed", "the slice spacing cannot be checked"),
    Case("the same slice twice", same_slice_twice, "failed", "also in", "IM9999.dcm"),
]


if __name__ == "__main__":
    for case in CASES:
        print(case.describe())
