"""Reading DICOM input: headers, which files are CT slices (and why others are not), series, HU.

Ingestion is two passes so that the DAG can list series cheaply and a bad file never costs
more than its own series:

1. :func:`scan_series` reads only the headers (``stop_before_pixels``) of every file under a
   folder or fsspec URL prefix, classifies each file (:func:`skip_reason`) and groups the CT
   slices by SeriesInstanceUID. A file that is not usable gives
   a :class:`~ctdenoise.records.Skipped` record.
2. :func:`read_hu` reads one file's pixel data when its series is converted and applies the
   modality LUT (RescaleSlope/RescaleIntercept) to get Hounsfield units as float32.

Compressed pixel data is decoded by pydicom's pixel plugins, whichever are installed. The
syntaxes ctdenoise promises, with the decoder each relies on (JPEG Lossless: GDCM), are declared
in :mod:`ctdenoise.transfer_syntaxes`; others decode if a plugin happens to be installed, else
fail with a one-line reason.
"""

from __future__ import annotations

import copy
import json
import logging
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from ctdenoise import storage
from ctdenoise.errors import InputError
from ctdenoise.geometry import SeriesInputError, SliceGeometry
from ctdenoise.instance_keywords import PER_INSTANCE_KEYWORDS
from ctdenoise.records import Skipped

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MULTIFRAME_CT_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR
IGNORED_NAMES = {storage.SUCCESS_MARKER}  # our own commit markers: not input, not worth a record

# A data set without preamble starts with a group 0x0002 or 0x0008 tag (little or big endian).
RAW_DATASET_STARTS = {b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"}
HEADER_BLOCK_SIZE = 2**18  # bytes fetched per remote read while parsing headers
BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}  # binary values: never copied into JSON attributes


@dataclass
class SliceHeader:
    """One CT slice found by :func:`scan_series` (header only, no pixel data).

    ``url`` is what records and messages show (a local path, or a URL with its protocol);
    ``name`` is the path relative to the scanned source (the matrix's ``source_files``).
    """

    url: str
    name: str
    series_instance_uid: str
    sop_instance_uid: str
    geometry: SliceGeometry
    dataset: Dataset  # header without pixel data


def skip_record(file: str, reason: str) -> Skipped:
    log.info("skipped %s: %s", file, reason)
    return Skipped(file=file, reason=reason)


def list_files(src: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str, list[str]]:
    """``(fs, root, paths)``: every file under ``src`` (recursive), sorted; ``src`` may be one file."""
    fs, root = storage.get_fs(src, storage_options)
    root = root.rstrip("/") or root
    if fs.isfile(root):
        return fs, posixpath.dirname(root), [root]
    if not fs.exists(root):
        raise InputError(f"{src}: no such folder or URL prefix")
    return fs, root, sorted(fs.find(root))


def read_header(fs: Any, path: str, url: str) -> Dataset:
    """The header (no pixel data) of one file; raises :class:`InvalidDicomError` if not DICOM.

    Files without the 128-byte preamble and 'DICM' prefix (old exports) are accepted when a
    forced read finds a SOP class and a series UID; anything else is "not DICOM".
    """
    with fs.open(path, "rb", block_size=HEADER_BLOCK_SIZE) as fh:
        try:
            return pydicom.dcmread(fh, stop_before_pixels=True)
        except InvalidDicomError:
            fh.seek(0)
            if fh.read(2) not in RAW_DATASET_STARTS:  # never force-parse arbitrary (possibly huge) files
                raise InvalidDicomError("not a DICOM file (no DICM prefix, no DICOM header found)") from None
            fh.seek(0)
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
            except Exception as exc:  # a forced read of arbitrary bytes fails in many ways
                raise InvalidDicomError(f"not a DICOM file ({_one_line(exc)})") from exc
            if "SOPClassUID" not in ds or "SeriesInstanceUID" not in ds:
                raise InvalidDicomError("not a DICOM file (no DICM prefix, no DICOM header found)") from None
            log.warning("%s: no DICOM preamble/file meta; read as raw DICOM data set", url)
            return ds


def skip_reason(ds: Dataset, name: str) -> str | None:
    """Why a file with this header is not a CT slice we convert, or None if it is one."""
    media_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "")) if hasattr(ds, "file_meta") else ""
    if posixpath.basename(name).upper() == "DICOMDIR" or media_class == MEDIA_STORAGE_DIRECTORY:
        return "DICOMDIR (media directory, not an image)"
    sop_class = str(ds.get("SOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "").strip()
    if sop_class in MULTIFRAME_CT_STORAGE:
        return f"multi-frame Enhanced CT not supported ({MULTIFRAME_CT_STORAGE[sop_class]})"
    if sop_class and not _is_image_class(sop_class):
        return f"SOP class {_class_name(sop_class)} is not an image"
    if modality and modality != "CT":
        return f"modality {modality}, not CT"
    if sop_class and sop_class != CT_IMAGE_STORAGE:
        return f"SOP class {_class_name(sop_class)}, not CT Image Storage"
    if not sop_class and modality != "CT":
        return "no SOPClassUID and no CT Modality"
    image_type = [str(v).upper() for v in _as_list(ds.get("ImageType"))]
    if "LOCALIZER" in image_type:
        return "localizer (scout) image, ImageType " + "\\".join(image_type)
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        return f"multi-frame CT ({frames} frames) not supported"
    if not str(ds.get("SeriesInstanceUID", "") or "").strip():
        return "no SeriesInstanceUID (incomplete or truncated header?)"
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return f"SamplesPerPixel {ds.SamplesPerPixel}: not a grayscale CT image"
    return None


def scan_series(
    src: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[dict[str, list[SliceHeader]], list[Skipped]]:
    """Headers of every CT slice under ``src`` grouped by SeriesInstanceUID, and skip records.

    Series appear in order of their first file (files are listed sorted); no pixel data is read.
    """
    fs, root, paths = list_files(src, storage_options)
    show_protocol = "://" in src
    series: dict[str, list[SliceHeader]] = {}
    skipped: list[Skipped] = []
    for path in paths:
        url = fs.unstrip_protocol(path) if show_protocol else path
        name = posixpath.relpath(path, root) if root else path
        if posixpath.basename(path) in IGNORED_NAMES:
            log.debug("ignored %s", url)
            continue
        try:
            ds = read_header(fs, path, url)
        except InvalidDicomError as exc:
            skipped.append(skip_record(url, str(exc) if str(exc).startswith("not a DICOM") else "not a DICOM file"))
            continue
        except Exception as exc:  # truncated or corrupt headers raise many kinds of errors
            log.debug("header of %s", url, exc_info=True)
            skipped.append(skip_record(url, f"unreadable DICOM header: {_one_line(exc)}"))
            continue
        reason = skip_reason(ds, name)
        if reason is not None:
            skipped.append(skip_record(url, reason))
            continue
        uid = str(ds.SeriesInstanceUID).strip()
        series.setdefault(uid, []).append(
            SliceHeader(
                url=url,
                name=name,
                series_instance_uid=uid,
                sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
                geometry=SliceGeometry.from_dataset(ds, url),
                dataset=ds,
            )
        )
    return series, skipped


def read_hu(header: SliceHeader, storage_options: Mapping[str, Any] | None = None) -> np.ndarray:
    """Pixel data of one slice in Hounsfield units, float32, shape (Rows, Columns).

    HU = stored value * RescaleSlope + RescaleIntercept (pydicom's modality LUT, computed in
    float64 and rounded once to float32). Any read or decode failure becomes a
    :class:`SeriesInputError` naming the file and the reason.
    """
    url, uid = header.url, header.series_instance_uid

    def fail(reason: str) -> SeriesInputError:
        return SeriesInputError(f"series {uid}: {url}: {reason}", series_uid=uid, file=url)

    fs, path = storage.get_fs(url, storage_options)
    try:
        with fs.open(path, "rb") as fh:
            try:
                ds = pydicom.dcmread(fh)
            except InvalidDicomError:
                fh.seek(0)
                ds = pydicom.dcmread(fh, force=True)
    except Exception as exc:
        log.debug("reading %s", url, exc_info=True)
        raise fail(f"unreadable DICOM file: {_one_line(exc)}") from None
    if "PixelData" not in ds:
        raise fail("no pixel data (PixelData element missing; file truncated?)")
    _ensure_transfer_syntax(ds)
    syntax = _class_name(str(ds.file_meta.get("TransferSyntaxUID", "")))
    try:
        stored = ds.pixel_array
    except Exception as exc:  # decoders raise RuntimeError, ValueError, NotImplementedError...
        log.debug("decoding %s", url, exc_info=True)
        from ctdenoise.transfer_syntaxes import require_decoder

        require_decoder(ds.file_meta.get("TransferSyntaxUID", ""))  # a supported syntax: the image lacks a decoder
        raise fail(f"cannot decode pixel data ({syntax}): {_one_line(exc)}") from None
    rows, columns = int(ds.Rows), int(ds.Columns)
    if stored.shape != (rows, columns):
        raise fail(f"pixel array shape {stored.shape} is not Rows x Columns ({rows}, {columns})")
    from pydicom.pixels import apply_modality_lut

    hu = apply_modality_lut(stored, ds)
    return np.asarray(hu, dtype=np.float64).astype(np.float32)


def header_json(ds: Dataset) -> dict[str, Any]:
    """DICOM JSON of a slice header as a series template: no pixel data, per-instance values,
    private tags or binary (bulk) values, so that it stays small and JSON serializable.

    The source's encoding and geometry stay: this is the record of the source series (see
    :mod:`ctdenoise.instance_keywords` for what a derived instance leaves out in addition)."""
    out = _filtered(ds).to_json_dict(suppress_invalid_tags=True)
    json.dumps(out)  # fail here, loudly, rather than in the Zarr writer
    return out


def _filtered(ds: Dataset) -> Dataset:
    """A copy of ``ds`` without the elements :func:`header_json` leaves out (recursively)."""
    from pydicom.sequence import Sequence

    drop = {pydicom.datadict.tag_for_keyword(k) for k in PER_INSTANCE_KEYWORDS}
    out = Dataset()
    for elem in ds:
        tag = elem.tag
        if tag.is_private or tag in drop or elem.VR in BULK_VRS:
            continue
        if tag.group in (0x7FE0, 0xFFFA) or tag.group & 0xFF00 == 0x6000:  # pixel data, overlays
            continue
        if elem.VR == "SQ":
            out.add_new(tag, "SQ", Sequence([_filtered(item) for item in elem.value]))
        else:
            out.add(copy.copy(elem))
    return out


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Files read without file meta (no preamble): declare the encoding they were read with."""
    meta = ds.file_meta if hasattr(ds, "file_meta") else None
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        return
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def _is_image_class(sop_class: str) -> bool:
    """SOP classes whose instances carry pixel data as images (by their registered name)."""
    name = UID(sop_class).name
    if name == sop_class:  # unknown (private or newer) class: let the modality decide
        return True
    return "Image Storage" in name


def _class_name(uid: str) -> str:
    name = UID(uid).name if uid else ""
    return f"'{name}'" if name and name != uid else (uid or "(none)")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
