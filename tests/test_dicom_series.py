"""Reading DICOM headers, classifying files, grouping series and decoding HU (ctdenoise.dicom_series)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless, RLELossless

from convert_fixtures import ct_series, ct_small_path, pixel_data_offset, truncate, write_slices
from ctdenoise.dicom_series import header_json, read_hu, scan_series, skip_reason
from ctdenoise.geometry import SeriesInputError


def _headers(tmp_path: Path, slices, names=None):
    write_slices(tmp_path, slices, names)
    scan = scan_series(str(tmp_path))
    assert scan.skipped == [] and scan.broken == {}
    (headers,) = scan.series.values()
    return headers


def _copy(name: str, dest: Path, new_name: str | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(get_testdata_file(name), dest / (new_name or name)))


def test_scan_classifies_every_kind_of_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _copy("CT_small.dcm", src)
    _copy("MR_small.dcm", src / "mr")
    _copy("test-SR.dcm", src)
    _copy("rtplan.dcm", src)
    _copy("rtstruct.dcm", src)  # no preamble: read as raw data set, then skipped by SOP class
    _copy("waveform_ecg.dcm", src)
    _copy("DICOMDIR", src / "media", "DICOMDIR")
    (src / "notes.txt").write_text("not dicom\n")
    (src / "empty.dcm").write_bytes(b"")
    (src / "garbage.dcm").write_bytes(b"\x08\x00" + bytes(range(256)) * 8)  # looks like a raw data set start
    (src / "_SUCCESS").write_text("")
    scout = pydicom.dcmread(ct_small_path())
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.SeriesInstanceUID = "1.2.3.999"
    scout.save_as(src / "scout.dcm")
    enhanced = pydicom.dcmread(ct_small_path())
    enhanced.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    enhanced.save_as(src / "enhanced.dcm")

    scan = scan_series(str(src))
    series, skipped = scan.series, scan.skipped
    reasons = {Path(r.file).name: r.reason for r in skipped}
    assert all(r.status == "skipped" for r in skipped)
    assert reasons["MR_small.dcm"] == "modality MR, not CT"
    assert "'Comprehensive SR Storage' is not an image" in reasons["test-SR.dcm"]
    assert "'RT Plan Storage' is not an image" in reasons["rtplan.dcm"]
    assert "'RT Structure Set Storage' is not an image" in reasons["rtstruct.dcm"]
    assert "Waveform" in reasons["waveform_ecg.dcm"]
    assert reasons["notes.txt"].startswith("not a DICOM file")
    assert reasons["empty.dcm"].startswith("not a DICOM file")
    assert reasons["garbage.dcm"].startswith("not a DICOM file")
    assert reasons["scout.dcm"].startswith("localizer")
    assert reasons["enhanced.dcm"].startswith("multi-frame Enhanced CT not supported")
    assert reasons["DICOMDIR"].startswith("DICOMDIR")
    assert "_SUCCESS" not in reasons  # our own marker: ignored silently
    assert list(series) == [str(pydicom.dcmread(ct_small_path()).SeriesInstanceUID)]
    (header,) = next(iter(series.values()))
    assert header.name == "CT_small.dcm" and header.url == str(src / "CT_small.dcm")
    assert "PixelData" not in header.dataset


def test_dicomdir_is_recognised_by_media_storage_class_too(tmp_path: Path) -> None:
    src = tmp_path / "src"
    path = _copy("DICOMDIR", src / "media", "index.dat")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert skip_reason(ds, "index.dat").startswith("DICOMDIR")


def test_scan_groups_slices_by_series(tmp_path: Path) -> None:
    a = ct_series(3, series_uid="1.2.3.1")
    b = ct_series(2, series_uid="1.2.3.2")
    write_slices(tmp_path / "a", a)
    write_slices(tmp_path / "b", b)
    scan = scan_series(str(tmp_path))
    series = scan.series
    assert scan.skipped == []
    assert {uid: len(h) for uid, h in series.items()} == {"1.2.3.1": 3, "1.2.3.2": 2}
    assert [h.name for h in series["1.2.3.2"]] == ["b/IM0000.dcm", "b/IM0001.dcm"]
    assert [h.sop_instance_uid for h in series["1.2.3.1"]] == [s.sop_instance_uid for s in a]


def test_scan_of_missing_source_is_an_input_error(tmp_path: Path) -> None:
    from ctdenoise.errors import InputError

    with pytest.raises(InputError, match="no such folder"):
        scan_series(str(tmp_path / "nowhere"))


def test_hu_is_stored_times_slope_plus_intercept_exactly(tmp_path: Path) -> None:
    slices = ct_series(2, slope=0.37, intercept=-1000.3)
    headers = _headers(tmp_path, slices)
    for header, s in zip(headers, slices):
        hu = read_hu(header)
        stored = s.dataset.pixel_array
        assert hu.dtype == np.float32 and hu.shape == (32, 32)
        np.testing.assert_array_equal(hu, (stored.astype(np.float64) * 0.37 - 1000.3).astype(np.float32))


def test_hu_of_the_real_ct_small(tmp_path: Path) -> None:
    shutil.copy(ct_small_path(), tmp_path / "ct.dcm")
    (header,) = next(iter(scan_series(str(tmp_path)).series.values()))
    ds = pydicom.dcmread(ct_small_path())
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    np.testing.assert_array_equal(read_hu(header), ds.pixel_array.astype(np.float32) - 1024.0)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda u: u.name)
def test_compressed_ct_decodes_to_the_same_hu(tmp_path: Path, syntax) -> None:
    slices = ct_series(2)
    for s in slices:
        s.dataset.compress(syntax)
    headers = _headers(tmp_path, slices)
    assert pydicom.dcmread(tmp_path / "IM0000.dcm").file_meta.TransferSyntaxUID == syntax
    for header, s in zip(headers, slices):
        np.testing.assert_array_equal(read_hu(header), s.hu)


def test_real_jpeg2000_ct_from_pydicom_decodes(tmp_path: Path) -> None:
    shutil.copy(get_testdata_file("693_J2KI.dcm"), tmp_path / "j2k.dcm")
    (header,) = next(iter(scan_series(str(tmp_path)).series.values()))
    hu = read_hu(header)
    assert hu.shape == (512, 512) and hu.dtype == np.float32
    assert np.isfinite(hu).all() and hu.std() > 10  # a real image, not a constant


def test_file_without_preamble_still_decodes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Old exports: the data set alone, no 128-byte preamble, no 'DICM', no file meta."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    slices = ct_series(1)
    body = pydicom.Dataset()
    body.update(slices[0].dataset)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, body)
    (tmp_path / "raw.dcm").write_bytes(fp.getvalue())
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(tmp_path / "raw.dcm")
    (header,) = next(iter(scan_series(str(tmp_path)).series.values()))
    np.testing.assert_array_equal(read_hu(header), slices[0].hu)
    assert any("no DICOM preamble" in r.getMessage() for r in caplog.records)


def test_truncated_pixel_data_fails_naming_the_file(tmp_path: Path) -> None:
    headers = _headers(tmp_path, ct_series(1))
    path = Path(headers[0].url)
    truncate(path, pixel_data_offset(path) + 12 + 1000)  # 1000 of 2048 pixel bytes left
    with pytest.raises(SeriesInputError, match="IM0000.dcm") as info:
        read_hu(headers[0])
    assert "pixel data" in str(info.value) and "\n" not in str(info.value)
    assert info.value.file == headers[0].url


def test_missing_pixel_data_fails_naming_the_file(tmp_path: Path) -> None:
    """Cut before its pixel data, a file is broken: it fails the series of its folder (a slice
    would be missing), and alone in its folder it is reported."""
    paths = write_slices(tmp_path, ct_series(3))
    truncate(paths[1], pixel_data_offset(paths[1]))
    scan = scan_series(str(tmp_path))
    ((uid, (broken,)),) = scan.broken.items()
    assert broken.file == str(paths[1]) and "no pixel data" in broken.reason
    assert [h.url for h in scan.series[uid]] == [str(paths[0]), str(paths[2])]
    alone = write_slices(tmp_path / "alone", ct_series(1))[0]
    truncate(alone, pixel_data_offset(alone))
    (skipped,) = scan_series(str(tmp_path / "alone")).skipped
    assert skipped.file == str(alone) and "no pixel data" in skipped.reason


def _with_encapsulated(s, syntax, frame: bytes):
    ds = s.dataset
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return s


def test_jpeg_lossless_process14_decodes_through_gdcm(tmp_path: Path) -> None:
    """The most common lossless CT syntax; GDCM (BSD) decodes it, pylibjpeg-libjpeg (GPL) is not used."""
    import gdcm  # python-gdcm, pinned in requirements.txt

    plain = write_slices(tmp_path / "plain", ct_series(1))[0]
    reader = gdcm.ImageReader()
    reader.SetFileName(str(plain))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    (tmp_path / "jpeg").mkdir()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(tmp_path / "jpeg" / "IM0000.dcm"))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    assert pydicom.dcmread(tmp_path / "jpeg" / "IM0000.dcm").file_meta.TransferSyntaxUID == JPEGLosslessSV1
    (header,) = next(iter(scan_series(str(tmp_path / "jpeg")).series.values()))
    (expected,) = next(iter(scan_series(str(tmp_path / "plain")).series.values()))
    np.testing.assert_array_equal(read_hu(header), read_hu(expected))


def test_missing_decoder_is_a_clear_reason(tmp_path: Path) -> None:
    # 12-bit JPEG Extended: neither Pillow nor GDCM decodes it, and the GPL libjpeg plugin is not used.
    s = _with_encapsulated(ct_series(1)[0], JPEGExtended12Bit, b"\xff\xd8\xff\xd9")
    (header,) = _headers(tmp_path, [s])
    with pytest.raises(SeriesInputError, match="cannot decode pixel data") as info:
        read_hu(header)
    message = str(info.value)
    assert "JPEG Extended" in message and "IM0000.dcm" in message and "\n" not in message


def test_corrupt_compressed_data_is_a_clear_reason(tmp_path: Path) -> None:
    s = _with_encapsulated(ct_series(1)[0], JPEG2000Lossless, bytes(range(256)) * 4)
    (header,) = _headers(tmp_path, [s])
    with pytest.raises(SeriesInputError, match="cannot decode pixel data"):
        read_hu(header)


def test_header_json_is_a_small_series_template() -> None:
    ds = pydicom.dcmread(ct_small_path(), stop_before_pixels=True)
    out = header_json(ds)
    json.dumps(out)
    assert "PixelData" not in ds  # the input is not modified below
    keywords = {pydicom.datadict.keyword_for_tag(int(tag, 16)) for tag in out}
    for dropped in ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation", "PixelData"):
        assert dropped not in keywords
    for kept in ("PatientName", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "KVP", "RescaleIntercept"):
        assert kept in keywords
    assert not [tag for tag in out if int(tag[:4], 16) % 2 == 1], "private tags removed"
    assert all("InlineBinary" not in v and "BulkDataURI" not in v for v in out.values())
    # the original dataset still holds what the template dropped
    assert "SOPInstanceUID" in ds and ds.private_block(0x0009, "GEMS_IDEN_01") is not None


def test_header_json_drops_binary_values_inside_sequences() -> None:
    ds = pydicom.dcmread(ct_small_path(), stop_before_pixels=True)
    icon = pydicom.Dataset()
    icon.Rows = icon.Columns = 2
    icon.PixelData = b"\x00" * 8
    item = pydicom.Dataset()
    item.add_new(0x00420011, "OB", b"\x01\x02")  # Encapsulated Document (binary)
    item.CodeValue = "X"
    ds.IconImageSequence = [icon]
    ds.ContentSequence = [item]
    out = header_json(ds)
    assert "00880200" not in out
    content = out["0040A730"]["Value"][0]
    assert "00420011" not in content and content["00080100"]["Value"] == ["X"]
