"""The instances of one published output, as files on this machine, with what the protocols need.

``SRC`` of a delivery is one published output (``denoised/<uid>/rank-9/``: its ``dicom/``
folder and its ``_SUCCESS`` marker) or a plain folder of DICOM files. On object storage the
files are copied to a private staging folder first (one series: a few hundred MB at most), so
that both protocols read local files and a retry starts from the same bytes.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctdenoise import storage
from ctdenoise.errors import InputError

DICOM_DIR = "dicom"


@dataclass(frozen=True)
class Instance:
    """One file to send: its path and the header fields the protocols and the report need."""

    path: Path
    name: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    size: int


@dataclass(frozen=True)
class SeriesInstances:
    """Every instance of one derived series (all of one study and one series, checked)."""

    source: str
    study_instance_uid: str
    series_instance_uid: str
    instances: tuple[Instance, ...]


def dicom_folder(src: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """The folder of DICOM files of ``src``: ``<src>/dicom`` of a published output (which must
    carry its commit marker), else ``src`` itself."""
    inner = storage.join(src, DICOM_DIR)
    if storage.exists(inner, storage_options):
        if not storage.is_published(src, storage_options):
            raise InputError(f"{src}: output not published (no {storage.SUCCESS_MARKER}): nothing delivered")
        return inner
    if not storage.exists(src, storage_options):
        raise InputError(f"{src}: no such output folder")
    return src


@contextmanager
def local_instances(src: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[SeriesInstances]:
    """The instances of ``src`` as local files (copied to a staging folder from object storage)."""
    folder = dicom_folder(src, storage_options)
    if storage.is_local(folder):
        yield read_instances(src, sorted(p for p in storage.local_path(folder).iterdir() if p.is_file()))
        return
    fs, root = storage.get_fs(folder, storage_options)
    names = sorted(p for p in fs.ls(root, detail=False) if posixpath.basename(p) != storage.SUCCESS_MARKER)
    with storage.staging_dir("ctdenoise-deliver-") as staged:
        targets = [staged / posixpath.basename(p) for p in names]
        if names:
            fs.get(names, [str(t) for t in targets])
        yield read_instances(src, targets)


def read_instances(src: str, paths: list[Path]) -> SeriesInstances:
    """Headers of ``paths`` (no pixel data); :class:`InputError` unless they form one series."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    found: list[Instance] = []
    studies: set[str] = set()
    series: set[str] = set()
    for path in paths:
        if path.name == storage.SUCCESS_MARKER:
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            meta = ds.file_meta
            found.append(Instance(path=path, name=path.name, sop_class_uid=str(ds.SOPClassUID),
                                  sop_instance_uid=str(ds.SOPInstanceUID),
                                  transfer_syntax_uid=str(meta.TransferSyntaxUID), size=path.stat().st_size))  # fmt: skip
            studies.add(str(ds.StudyInstanceUID))
            series.add(str(ds.SeriesInstanceUID))
        except (InvalidDicomError, AttributeError, KeyError) as exc:
            raise InputError(f"{src}: {path.name} is not a DICOM instance with file meta ({exc.__class__.__name__}: {exc})") from None
    if not found:
        raise InputError(f"{src}: no DICOM files to deliver")
    if len(series) != 1 or len(studies) != 1:
        raise InputError(f"{src}: one output holds one series, found {len(series)} series in {len(studies)} studies")
    return SeriesInstances(source=src, study_instance_uid=studies.pop(), series_instance_uid=series.pop(), instances=tuple(found))
