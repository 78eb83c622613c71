"""Building CT Image Storage datasets from Hounsfield-unit slices.

Shared by :mod:`ctdenoise.phantom` (a simulated series) and :mod:`ctdenoise.writer` (the
denoised, derived series), so that both write the same, valid CT objects:

- HU are turned into *stored values* through the modality LUT (``HU = stored * RescaleSlope +
  RescaleIntercept``), rounded to the nearest integer and clipped to the range that
  ``BitsStored``/``PixelRepresentation`` can hold (a denoised value below the source's lowest
  storable HU is clipped, not wrapped around);
- :func:`build_ct_dataset` makes a complete :class:`~pydicom.dataset.FileDataset` (file meta,
  Explicit VR Little Endian, CT Image Storage) from a *header template* (patient, study, series,
  equipment attributes) plus the per-instance geometry and pixels.

Nothing here reads the clock or a random source: the same inputs give byte-identical files.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
from pydicom.valuerep import format_number_as_ds

from ctdenoise import __version__
from ctdenoise.errors import ParameterError
from ctdenoise.geometry import SliceGeometry
from ctdenoise.instance_keywords import NOT_INHERITED_KEYWORDS, PER_INSTANCE_KEYWORDS

IMPLEMENTATION_VERSION_NAME = f"CTDENOISE_{__version__}"[:16]


@dataclass(frozen=True)
class PixelFormat:
    """How HU are stored: the modality LUT and the integer format of PixelData.

    The CT Image module requires 16 allocated bits and 12 to 16 stored bits.
    """

    rescale_slope: float = 1.0
    rescale_intercept: float = -1024.0
    bits_allocated: int = 16
    bits_stored: int = 12
    pixel_representation: int = 0  # 0 unsigned, 1 two's complement

    def __post_init__(self) -> None:
        if self.bits_allocated != 16:
            raise ParameterError(f"CT images need BitsAllocated 16, got {self.bits_allocated}")
        if not 12 <= self.bits_stored <= 16:
            raise ParameterError(f"CT images need BitsStored between 12 and 16, got {self.bits_stored}")
        if self.pixel_representation not in (0, 1):
            raise ParameterError(f"PixelRepresentation must be 0 or 1, got {self.pixel_representation}")
        if not np.isfinite(self.rescale_slope) or self.rescale_slope <= 0:
            raise ParameterError(f"RescaleSlope must be a positive number, got {self.rescale_slope}")
        if not np.isfinite(self.rescale_intercept):
            raise ParameterError(f"RescaleIntercept must be finite, got {self.rescale_intercept}")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype("<i2") if self.pixel_representation else np.dtype("<u2")

    @property
    def stored_range(self) -> tuple[int, int]:
        """Smallest and largest stored value that BitsStored/PixelRepresentation can hold."""
        if self.pixel_representation:
            return -(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1
        return 0, (1 << self.bits_stored) - 1

    @property
    def hu_range(self) -> tuple[float, float]:
        """The HU interval this format can represent (the clip limits of :func:`hu_to_stored`)."""
        lo, hi = self.stored_range
        return lo * self.rescale_slope + self.rescale_intercept, hi * self.rescale_slope + self.rescale_intercept

    @classmethod
    def for_ct(
        cls,
        rescale_slope: float | None,
        rescale_intercept: float | None,
        bits_allocated: int | None,
        bits_stored: int | None,
        pixel_representation: int | None,
    ) -> "PixelFormat":
        """The source's format, made valid for the CT Image IOD (16 allocated, >= 12 stored bits).

        A derived series keeps the source's modality LUT so stored values stay comparable; only
        formats the CT IOD forbids (8-bit allocation, fewer than 12 stored bits) are widened.
        """
        slope = float(rescale_slope) if rescale_slope not in (None, 0) else 1.0
        intercept = float(rescale_intercept) if rescale_intercept is not None else 0.0
        stored = int(bits_stored) if bits_stored else 16
        if bits_allocated != 16:
            stored = 16
        return cls(
            rescale_slope=slope,
            rescale_intercept=intercept,
            bits_allocated=16,
            bits_stored=min(16, max(12, stored)),
            pixel_representation=1 if pixel_representation else 0,
        )


def hu_to_stored(hu: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    """Stored values for HU: ``round((HU - intercept) / slope)``, clipped to the stored range.

    NaN (which no HU array should contain) is mapped to the lowest storable value rather than
    to an arbitrary integer.
    """
    lo, hi = fmt.stored_range
    values = (np.asarray(hu, dtype=np.float64) - fmt.rescale_intercept) / fmt.rescale_slope
    values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
    return np.clip(np.rint(values), lo, hi).astype(fmt.dtype)


def stored_to_hu(stored: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    """HU (float32) of stored values through the modality LUT."""
    return (np.asarray(stored, dtype=np.float64) * fmt.rescale_slope + fmt.rescale_intercept).astype(np.float32)


def ds_value(x: float) -> str:
    """A decimal string (VR DS, at most 16 characters) for a float; no negative zero."""
    return format_number_as_ds(float(x) + 0.0)


def header_template(header: Dataset | Mapping[str, Any]) -> Dataset:
    """A header template from a source header (Dataset or DICOM JSON, e.g. ``attrs['header']``).

    Per-instance attributes, the source's pixel encoding, geometry and references
    (:mod:`ctdenoise.instance_keywords`) and private elements are removed: a derived object must
    not repeat the source's pixel encoding or vendor-private descriptions of the source's
    pixels. What remains are the patient, study, series, equipment and acquisition attributes.
    """
    ds = Dataset.from_json(dict(header)) if isinstance(header, Mapping) else copy.deepcopy(header)
    ds.remove_private_tags()
    for keyword in (*PER_INSTANCE_KEYWORDS, *NOT_INHERITED_KEYWORDS):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def build_ct_dataset(
    template: Dataset,
    stored: np.ndarray,
    geometry: SliceGeometry,
    sop_instance_uid: str,
    fmt: PixelFormat,
) -> FileDataset:
    """A complete CT Image Storage instance (file meta, Explicit VR Little Endian).

    ``template`` holds the patient/study/series/equipment attributes (it is copied, not
    changed); ``stored`` is a 2-D array of stored values in ``fmt`` (see :func:`hu_to_stored`);
    ``geometry`` must hold what the CT Image IOD requires (:class:`ParameterError` otherwise).
    The caller adds attributes that are specific to its kind of object (e.g.
    SourceImageSequence) before saving.
    """
    stored = np.asarray(stored)
    if stored.ndim != 2:
        raise ParameterError(f"a CT slice must be 2-D, got shape {stored.shape}")
    _check_writable(geometry, stored.shape)
    lo, hi = fmt.stored_range
    if stored.dtype != fmt.dtype:
        if stored.size and (stored.min() < lo or stored.max() > hi):
            raise ParameterError(f"stored values outside {lo}..{hi} for BitsStored {fmt.bits_stored}")
        stored = stored.astype(fmt.dtype)

    ds = copy.deepcopy(template)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.Modality = "CT"

    ds.InstanceNumber = int(geometry.instance_number)
    ds.ImagePositionPatient = [ds_value(v) for v in geometry.image_position]
    ds.ImageOrientationPatient = [ds_value(v) for v in geometry.image_orientation]
    ds.PixelSpacing = [ds_value(v) for v in geometry.pixel_spacing]
    ds.SliceThickness = None if geometry.slice_thickness is None else ds_value(geometry.slice_thickness)
    if geometry.slice_location is not None:
        ds.SliceLocation = ds_value(geometry.slice_location)

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.BitsAllocated = fmt.bits_allocated
    ds.BitsStored = fmt.bits_stored
    ds.HighBit = fmt.bits_stored - 1
    ds.PixelRepresentation = fmt.pixel_representation
    ds.RescaleIntercept = ds_value(fmt.rescale_intercept)
    ds.RescaleSlope = ds_value(fmt.rescale_slope)
    ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(stored).tobytes()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    out = FileDataset("", ds, file_meta=meta, preamble=b"\0" * 128)
    return out


def _check_writable(geometry: SliceGeometry, shape: tuple[int, ...]) -> None:
    """Refuse geometry a CT instance cannot be written with, before anything is built.

    The CT Image IOD requires position, orientation, spacing and instance number (read-side
    geometry may lack them), and a size given with the geometry must be the pixels' size.
    """
    required = {
        "ImagePositionPatient": geometry.image_position,
        "ImageOrientationPatient": geometry.image_orientation,
        "PixelSpacing": geometry.pixel_spacing,
        "InstanceNumber": geometry.instance_number,
    }
    missing = [keyword for keyword, value in required.items() if value is None]
    if missing:
        where = f"{geometry.file}: " if geometry.file else ""
        raise ParameterError(f"{where}cannot write a CT slice without {', '.join(missing)}")
    for keyword, value, size in (("Rows", geometry.rows, shape[0]), ("Columns", geometry.columns, shape[1])):
        if value is not None and value != size:
            raise ParameterError(f"{keyword} {value} of the slice geometry differs from the pixel array's {size}")


def save(ds: FileDataset, path: str | Path) -> Path:
    """Write a dataset as a DICOM Part 10 file (preamble, file meta, Explicit VR LE)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def instance_file_name(index: int, width: int = 4) -> str:
    """``IM0001.dcm`` for index 0: one file per slice, sortable by name in column order."""
    return f"IM{index + 1:0{width}d}.dcm"
