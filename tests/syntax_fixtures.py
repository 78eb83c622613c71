"""A small CT series in every supported transfer syntax (``ctdenoise.transfer_syntaxes.SUPPORTED``).

The slices are ``convert_fixtures.ct_series`` (a real GE CT header from pydicom's CT_small.dcm,
distinct 12-bit pixels); each syntax is written by the encoder that makes it: pydicom itself for
the native, deflated and RLE syntaxes, pyjpegls for JPEG-LS, pylibjpeg-openjpeg for JPEG 2000,
GDCM for JPEG Lossless (pydicom has no JPEG Lossless encoder). Lossy syntaxes keep the error
small (JPEG-LS near-lossless within 2 stored values, JPEG 2000 at 2:1).
"""

from __future__ import annotations

from pathlib import Path

from convert_fixtures import Slice, ct_series, uid_for, write_slices
from pydicom import uid as uids

from ctdenoise.transfer_syntaxes import SUPPORTED

NEAR_LOSSLESS_ERROR = 2  # stored values (= HU with slope 1)
LOSSY_TOLERANCE_HU = {uids.JPEGLSNearLossless: NEAR_LOSSLESS_ERROR, uids.JPEG2000: 150.0}


def folder_name(syntax_uid: str) -> str:
    return "ts-" + syntax_uid.replace(".", "-")


def write_series(folder: Path, syntax_uid: str, n: int = 3, size: int = 32) -> list[Slice]:
    """``n`` slices of one series (its own SeriesInstanceUID) in ``syntax_uid``, saved under ``folder``."""
    slices = ct_series(n, series_uid=uid_for("syntax-fixture", syntax_uid), rows=size, columns=size)
    if syntax_uid in (uids.JPEGLossless, uids.JPEGLosslessSV1):
        plain = write_slices(folder.parent / f"{folder.name}-plain", slices)
        folder.mkdir(parents=True, exist_ok=True)
        for path in plain:
            _gdcm_transcode(path, folder / path.name, syntax_uid)
        return slices
    for s in slices:
        ds = s.dataset
        if syntax_uid == uids.ImplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax_uid
        elif syntax_uid == uids.DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax_uid
        elif syntax_uid == uids.JPEGLSNearLossless:
            ds.compress(syntax_uid, jls_error=NEAR_LOSSLESS_ERROR)
        elif syntax_uid == uids.JPEG2000:
            ds.compress(syntax_uid, j2k_cr=[2])  # random pixels compress poorly: 2:1 keeps the error near 16 HU
        elif syntax_uid != uids.ExplicitVRLittleEndian:
            ds.compress(syntax_uid)
    write_slices(folder, slices)
    return slices


def _gdcm_transcode(source: Path, target: Path, syntax_uid: str) -> None:
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read(), source
    change = gdcm.ImageChangeTransferSyntax()
    kind = gdcm.TransferSyntax.JPEGLosslessProcess14 if syntax_uid == uids.JPEGLossless else gdcm.TransferSyntax.JPEGLosslessProcess14_1
    change.SetTransferSyntax(gdcm.TransferSyntax(kind))
    change.SetInput(reader.GetImage())
    assert change.Change(), syntax_uid
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), target


def write_every_syntax(root: Path, n: int = 3) -> dict[str, tuple[Path, list[Slice]]]:
    """``{syntax uid: (folder, slices)}``: one series per supported syntax, each in its own folder."""
    return {s.uid: (root / folder_name(s.uid), write_series(root / folder_name(s.uid), s.uid, n)) for s in SUPPORTED}
