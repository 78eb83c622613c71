"""Reading DICOM input: headers, which files are CT slices (and why others are not), series, HU.

Ingestion is two passes so that the DAG can list series cheaply and a bad file never costs
more than its own series:

1. :func:`scan_series` reads only the headers (``stop_before_pixels``) of every file under a
   folder or fsspec URL prefix, classifies each file (:func:`skip_reason`) and groups the CT
   slices by SeriesInstanceUID. A file that is not a CT slice gives a
   :class:`~ctdenoise.records.Skipped` record. A file that looks like DICOM but whose header
   cannot be read completely (cut short, corrupt) may be a slice of a series: it is *broken*,
   and fails the series it belongs to (:class:`Scan`), so that no series is published with a
   slice missing.
2. :func:`read_hu` reads one file's pixel data when its series is converted and applies the
   modality LUT (RescaleSlope/RescaleIntercept) to get Hounsfield units as float32.

Bytes are read with :func:`ctdenoise.storage.fetch`, which retries storage errors and then fails
as *transient*; only what the bytes say (not DICOM, cut short, undecodable) is the file's fault.

Compressed pixel data is decoded by pydicom's pixel plugins, whichever are installed. The
syntaxes ctdenoise promises, with the decoder each relies on (JPEG Lossless: GDCM), are declared
in :mod:`ctdenoise.transfer_syntaxes`; others decode if a plugin happens to be installed, else
fail with a one-line reason.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from ctdenoise import storage
from ctdenoise.errors import InputError, about_the_data, one_line
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
HEADER_BLOCK_SIZE = 2**18  # bytes fetched first for a header (the whole file if the header is longer)
NOT_IDENTIFIED = "no SOPClassUID and no CT Modality"
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")  # the CT Image module's photometric interpretations
MAX_HU = 32767
"""Above this a value is not CT: a signed image declared unsigned (PixelRepresentation 0), or a
wrong rescale. The extended CT scale of metal implants stays below it."""
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


@dataclass
class Scan:
    """What :func:`scan_series` found: CT slices by series, skipped files, and per series the
    broken files that may be its slices (each one fails the series)."""

    series: dict[str, list[SliceHeader]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    broken: dict[str, list[Skipped]] = field(default_factory=dict)


class UnreadableHeader(InputError):
    """A file that looks like DICOM but whose header cannot be parsed (corrupt or cut short)."""


def skip_record(file: str, reason: str) -> Skipped:
    log.info("skipped %s: %s", file, reason)
    return Skipped(file=file, reason=reason)


def list_files(src: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str, dict[str, int | None]]:
    """``(fs, root, {path: size})``: every file under ``src`` (recursive), sorted; ``src`` may be one file."""
    fs, root = storage.get_fs(src, storage_options)
    root = root.rstrip("/") or root
    if fs.isfile(root):
        return fs, posixpath.dirname(root), {root: _size(fs.info(root))}
    if not fs.exists(root):
        raise InputError(f"{src}: no such folder or URL prefix")
    found = fs.find(root, detail=True)
    return fs, root, {path: _size(info) for path, info in sorted(found.items()) if info.get("type") != "directory"}


def _size(info: Mapping[str, Any]) -> int | None:
    size = info.get("size", info.get("Size"))
    return None if size is None else int(size)


def read_header(fs: Any, path: str, url: str, size: int | None = None) -> tuple[Dataset, bool]:
    """``(header without pixel data, True if pixel data follows it)`` of one file.

    Raises :class:`InvalidDicomError` if the file is not DICOM and :class:`UnreadableHeader` if
    it is but its header is corrupt. Files without the 128-byte preamble and 'DICM' prefix (old
    exports) are accepted when a forced read finds a SOP class and a series UID. A header cut
    short parses as far as it goes: the second value is then False. Storage errors are retried
    and then raised as :class:`~ctdenoise.errors.TransientError`, never "unreadable".
    """
    if size == 0:
        raise InvalidDicomError("not a DICOM file (no DICM prefix, no DICOM header found)")
    small = size is not None and size <= HEADER_BLOCK_SIZE
    data = storage.fetch(fs, path, url, end=None if small else HEADER_BLOCK_SIZE)
    if len(data) >= HEADER_BLOCK_SIZE and size != len(data):  # the header may go on beyond the first block
        try:
            ds, at_pixels = _parse_header(data, url)
        except UnreadableHeader:
            at_pixels = False
        if at_pixels:
            return ds, True
        data = storage.fetch(fs, path, url)
    return _parse_header(data, url)


def _parse_header(data: bytes, url: str) -> tuple[Dataset, bool]:
    """``(header, True if parsing stopped at the pixel data)`` of a file's first bytes."""
    fh = io.BytesIO(data)
    try:
        try:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
        except InvalidDicomError:
            fh.seek(0)
            if fh.read(2) not in RAW_DATASET_STARTS:  # never force-parse arbitrary (possibly huge) files
                raise InvalidDicomError("not a DICOM file (no DICM prefix, no DICOM header found)") from None
            fh.seek(0)
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
            except Exception as exc:  # a forced read of arbitrary bytes fails in many ways
                raise InvalidDicomError(f"not a DICOM file ({one_line(exc)})") from exc
            if "SOPClassUID" not in ds or "SeriesInstanceUID" not in ds:
                raise InvalidDicomError("not a DICOM file (no DICM prefix, no DICOM header found)") from None
            log.warning("%s: no DICOM preamble/file meta; read as raw DICOM data set", url)
    except InvalidDicomError:
        raise
    except Exception as exc:  # truncated or corrupt headers raise many kinds of errors
        log.debug("header of %s", url, exc_info=True)
        raise UnreadableHeader(f"unreadable DICOM header: {one_line(exc)}") from None
    syntax = ds.file_meta.get("TransferSyntaxUID") if "file_meta" in dir(ds) else None
    if syntax is not None and UID(syntax).is_deflated:  # the compressed stream's position says nothing
        return ds, _has_pixel_data(data)
    return ds, fh.tell() < len(data)


def _has_pixel_data(data: bytes) -> bool:
    """Whether a deflated data set holds pixel data (read whole: a part of it does not inflate)."""
    try:
        return "PixelData" in pydicom.dcmread(io.BytesIO(data))
    except Exception:  # noqa: BLE001 (cut short: the caller reads the whole file, or reports it cut)
        return False


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
        return NOT_IDENTIFIED
    image_type = [str(v).upper() for v in _as_list(ds.get("ImageType"))]
    if "LOCALIZER" in image_type:
        return "localizer (scout) image, ImageType " + "\\".join(image_type)
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        return f"multi-frame CT ({frames} frames) not supported"
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return f"SamplesPerPixel {ds.SamplesPerPixel}: not a grayscale CT image"
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    if photometric and photometric not in GRAYSCALE:
        return f"PhotometricInterpretation {photometric}: not a grayscale CT image"
    return None


def scan_series(src: str, storage_options: Mapping[str, Any] | None = None) -> Scan:
    """Headers of every CT slice under ``src`` grouped by SeriesInstanceUID, skip records, and
    the broken files of each series (see :class:`Scan` and :func:`place_broken`).

    Series appear in order of their first file (files are listed sorted); no pixel data is read.
    """
    fs, root, files = list_files(src, storage_options)
    show_protocol = "://" in src
    scan = Scan()
    broken: list[tuple[str, Skipped, str | None]] = []  # (folder, record, its series UID if readable)
    for path, size in files.items():
        url = fs.unstrip_protocol(path) if show_protocol else path
        name = posixpath.relpath(path, root) if root else path
        if posixpath.basename(path) in IGNORED_NAMES:
            log.debug("ignored %s", url)
            continue
        try:
            ds, at_pixels = read_header(fs, path, url, size)
        except InvalidDicomError as exc:
            scan.skipped.append(skip_record(url, str(exc) if str(exc).startswith("not a DICOM") else "not a DICOM file"))
            continue
        except UnreadableHeader as exc:
            broken.append((posixpath.dirname(name), Skipped(file=url, reason=str(exc)), None))
            continue
        reason = skip_reason(ds, name)
        if reason == NOT_IDENTIFIED and not at_pixels:  # cut before it could say what it is: maybe a slice
            reason = None
        if reason is not None:
            scan.skipped.append(skip_record(url, reason))
            continue
        uid = _whole_series_uid(ds, at_pixels)
        if not at_pixels or uid is None:
            why = "no pixel data: the file ends before any (cut short?)" if not at_pixels else "no SeriesInstanceUID"
            broken.append((posixpath.dirname(name), Skipped(file=url, reason=f"unreadable DICOM header: {why}"), uid))
            continue
        header = SliceHeader(url=url, name=name, series_instance_uid=uid, geometry=SliceGeometry.from_dataset(ds, url),
                             sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""), dataset=ds)  # fmt: skip
        scan.series.setdefault(uid, []).append(header)
    place_broken(scan, broken)
    return scan


def _whole_series_uid(ds: Dataset, at_pixels: bool) -> str | None:
    """The SeriesInstanceUID, unless absent or possibly cut: the last element of a header that
    ends before its pixel data may have lost the end of its value."""
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    if not uid or (not at_pixels and max(ds.keys()) == pydicom.tag.Tag("SeriesInstanceUID")):
        return None
    return uid


def place_broken(scan: Scan, broken: list[tuple[str, Skipped, str | None]]) -> None:
    """Give each broken file to the series it may belong to, which then fails (nothing is
    published with a slice missing): its own series when its header names one found here; else
    every series with slices in the same folder (which one it was cannot be told). A broken file
    of a series not found here, or alone in its folder, is reported as skipped."""
    folders: dict[str, list[str]] = {}
    for uid, headers in scan.series.items():
        for folder in dict.fromkeys(posixpath.dirname(h.name) for h in headers):
            folders.setdefault(folder, []).append(uid)
    for folder, record, uid in broken:
        owners = ([uid] if uid in scan.series else []) if uid else folders.get(folder, [])
        if not owners:
            scan.skipped.append(skip_record(record.file, record.reason))
        for owner in owners:
            log.warning("series %s: %s: %s", owner, record.file, record.reason)
            scan.broken.setdefault(owner, []).append(record)


def read_hu(header: SliceHeader, storage_options: Mapping[str, Any] | None = None) -> np.ndarray:
    """Pixel data of one slice in Hounsfield units, float32, shape (Rows, Columns).

    HU = stored value * RescaleSlope + RescaleIntercept (pydicom's modality LUT, computed in
    float64 and rounded once to float32). What the bytes say (truncated, undecodable, no pixel
    data, values beyond :data:`MAX_HU`) is a :class:`SeriesInputError` naming the file and the
    reason; a storage error is retried, then raised as transient (:func:`ctdenoise.storage.fetch`).
    """
    url, uid = header.url, header.series_instance_uid

    def fail(reason: str) -> SeriesInputError:
        return SeriesInputError(f"series {uid}: {url}: {reason}", series_uid=uid, file=url)

    fs, path = storage.get_fs(url, storage_options)
    with about_the_data(lambda exc: fail(f"cannot be read: {one_line(exc)}"), storage=True):
        data = storage.fetch(fs, path, url)
    with about_the_data(lambda exc: fail(f"unreadable DICOM file: {one_line(exc)}")):
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if "PixelData" not in ds:
        raise fail("no pixel data (PixelData element missing; file truncated?)")
    _ensure_transfer_syntax(ds)
    syntax = _class_name(str(ds.file_meta.get("TransferSyntaxUID", "")))

    def undecodable(exc: BaseException) -> SeriesInputError:
        from ctdenoise.transfer_syntaxes import require_decoder

        log.debug("decoding %s", url, exc_info=exc)
        require_decoder(ds.file_meta.get("TransferSyntaxUID", ""))  # a supported syntax: the image lacks a decoder
        return fail(f"cannot decode pixel data ({syntax}): {one_line(exc)}")

    with about_the_data(undecodable):
        stored = ds.pixel_array
    rows, columns = int(ds.Rows), int(ds.Columns)
    if stored.shape != (rows, columns):
        raise fail(f"pixel array shape {stored.shape} is not Rows x Columns ({rows}, {columns})")
    from pydicom.pixels import apply_modality_lut

    hu = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64).astype(np.float32)
    if hu.size and float(hu.max()) > MAX_HU:
        raise fail(f"values up to {float(hu.max()):g} HU, above {MAX_HU}: not CT values (PixelRepresentation "
                   f"{ds.get('PixelRepresentation')} does not match the data, or a wrong rescale)")  # fmt: skip
    return hu


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
