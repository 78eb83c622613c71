"""The supported transfer syntaxes, declared once: each one converts here, and a missing decoder is the image's fault."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from syntax_fixtures import LOSSY_TOLERANCE_HU, write_series

from ctdenoise import transfer_syntaxes
from ctdenoise.convert import convert
from ctdenoise.matrix_store import open_matrix
from ctdenoise.records import Written

SYNTAXES = transfer_syntaxes.SUPPORTED


def expected_matrix(slices) -> np.ndarray:
    """The series matrix convert must write: one column per slice in ascending position (HU)."""
    ordered = sorted(slices, key=lambda s: s.position)
    return np.stack([s.hu.reshape(-1) for s in ordered], axis=1)


def assert_converted(matrix: np.ndarray, slices, syntax_uid: str) -> None:
    expected = expected_matrix(slices)
    if transfer_syntaxes.by_uid()[syntax_uid].lossless:
        np.testing.assert_array_equal(matrix, expected)
    else:
        assert np.abs(matrix - expected).max() <= LOSSY_TOLERANCE_HU[syntax_uid]


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: s.name)
def test_every_supported_syntax_converts(tmp_path: Path, syntax: transfer_syntaxes.SupportedSyntax) -> None:
    slices = write_series(tmp_path / "in", syntax.uid)
    assert {pydicom.dcmread(p).file_meta.TransferSyntaxUID for p in (tmp_path / "in").glob("*.dcm")} == {syntax.uid}
    (written,) = [o for o in convert(str(tmp_path / "in"), str(tmp_path / "out")) if isinstance(o, Written)]
    assert_converted(open_matrix(written.url)[:], slices, syntax.uid)


def test_the_declaration_names_the_decoders_and_their_packages() -> None:
    assert transfer_syntaxes.by_uid()[pydicom.uid.JPEGLosslessSV1].plugin == "gdcm"
    assert transfer_syntaxes.distributions() == {"python-gdcm", "pyjpegls", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle"}
    assert all(s.distributions for s in SYNTAXES if s.plugin) and not any(s.distributions for s in SYNTAXES if not s.plugin)


def test_ctdenoise_decoders_reports_every_syntax_decodable_here() -> None:
    done = subprocess.run([sys.executable, "-m", "ctdenoise.cli", "decoders"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["uid"] for r in records] == [s.uid for s in SYNTAXES] and all(r["available"] for r in records)


def test_a_missing_decoder_is_a_broken_image_not_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without GDCM a JPEG Lossless series must not be refused as bad input (exit 2, not retried):
    the image is broken (MissingDecoderError: exit 1, its traceback logged)."""
    from pydicom.pixels.decoders.base import Decoder

    from ctdenoise.dicom_series import read_hu, scan_series
    from ctdenoise.errors import Failure, classify

    write_series(tmp_path / "in", pydicom.uid.JPEGLosslessSV1, n=1)
    real = Decoder.available_plugins
    monkeypatch.setattr(Decoder, "available_plugins", property(lambda self: tuple(p for p in real.fget(self) if p != "gdcm")))
    monkeypatch.setattr(Decoder, "_validate_plugins", lambda self, plugin="": {})
    (header,) = next(iter(scan_series(str(tmp_path / "in")).series.values()))
    with pytest.raises(transfer_syntaxes.MissingDecoderError, match="python-gdcm") as raised:
        read_hu(header)
    assert classify(raised.value) == Failure.BUG
    assert transfer_syntaxes.check() == 1
