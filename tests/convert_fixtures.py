"""Small real CT series for the input-side tests, built from pydicom's CT_small.dcm.

Each slice is a copy of CT_small.dcm (a real GE CT header) with its own SOPInstanceUID,
InstanceNumber, ImagePositionPatient, SliceLocation and distinct pixel data, so that a test can
tell which file landed in which matrix column.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@lru_cache(maxsize=1)
def _template() -> Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def ct_small_path() -> str:
    return get_testdata_file("CT_small.dcm")


def uid_for(*parts: object) -> str:
    """Deterministic UID (2.25 form) from the given parts."""
    return generate_uid(prefix=None, entropy_srcs=[str(p) for p in parts])


def stored_pixels(seed: int, rows: int, columns: int) -> np.ndarray:
    """Distinct int16 stored values per slice (0..2999, i.e. -1024..1975 HU with the default LUT)."""
    return np.random.default_rng(seed).integers(0, 3000, size=(rows, columns), dtype=np.int16)


def normal_of(orientation: Sequence[float]) -> np.ndarray:
    iop = np.asarray(orientation, dtype=np.float64)
    n = np.cross(iop[:3], iop[3:])
    return n / np.linalg.norm(n)


@dataclass
class Slice:
    """One synthetic slice: its dataset, its position along the normal (mm) and expected HU."""

    dataset: Dataset
    position: float
    hu: np.ndarray  # float32 (rows, columns)

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)


def ct_slice(
    index: int,
    *,
    series_uid: str,
    position: Sequence[float],
    orientation: Sequence[float] = AXIAL,
    rows: int = 32,
    columns: int = 32,
    slope: float = 1.0,
    intercept: float = -1024.0,
    seed: int | None = None,
) -> tuple[Dataset, np.ndarray]:
    """A CT slice dataset (uncompressed, explicit VR LE) and its stored pixel values."""
    ds = copy.deepcopy(_template())
    stored = stored_pixels(index if seed is None else seed, rows, columns)
    sop = uid_for(series_uid, index, seed)
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.SliceLocation = float(np.dot(normal_of(orientation), position))
    ds.Rows, ds.Columns = rows, columns
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = stored.astype("<i2").tobytes()
    return ds, stored


def ct_series(
    n: int,
    *,
    series_uid: str | None = None,
    spacing: float = 2.5,
    orientation: Sequence[float] = AXIAL,
    origin: Sequence[float] = (-10.0, -20.0, 30.0),
    in_plane_shift: float = 0.0,
    rows: int = 32,
    columns: int = 32,
    slope: float = 1.0,
    intercept: float = -1024.0,
) -> list[Slice]:
    """``n`` slices, slice k at ``origin + k*spacing*normal + k*in_plane_shift*column_direction``
    (the in-plane shift is what a gantry tilt does), returned in ascending position along the normal."""
    series_uid = series_uid or uid_for("series", n, spacing, tuple(orientation))
    normal = normal_of(orientation)
    col_dir = np.asarray(orientation[3:], dtype=np.float64)
    out = []
    for k in range(n):
        ipp = np.asarray(origin, dtype=np.float64) + k * spacing * normal + k * in_plane_shift * col_dir
        ds, stored = ct_slice(
            k, series_uid=series_uid, position=ipp, orientation=orientation, rows=rows, columns=columns,
            slope=slope, intercept=intercept, seed=zlib.crc32(f"{series_uid}/{k}".encode()),
        )
        hu = (stored.astype(np.float64) * slope + intercept).astype(np.float32)
        out.append(Slice(ds, float(np.dot(normal, ipp)), hu))
    return out


def write_slices(folder: Path, slices: Sequence[Slice], names: Sequence[str] | None = None) -> list[Path]:
    """Save the slices as DICOM files (names default to IM0000.dcm, ... in the given order)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"IM{i:04d}.dcm" for i in range(len(slices))]
    paths = []
    for s, name in zip(slices, names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        s.dataset.save_as(path)
        paths.append(path)
    return paths


def truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def pixel_data_offset(path: Path) -> int:
    """Byte offset of the (7FE0,0010) PixelData tag in an explicit VR little endian file."""
    return path.read_bytes().rindex(b"\xe0\x7f\x10\x00")
