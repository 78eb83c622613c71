"""Stored values through the modality LUT and the CT dataset builder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from ctdenoise import dicom_out
from ctdenoise.errors import ParameterError
from ctdenoise.geometry import SliceGeometry
from ctdenoise.uids import derive_uid
from writer_fixtures import DCIODVFY, DCIODVFY_MISSING, dciodvfy_errors


def test_stored_values_round_and_clip() -> None:
    fmt = dicom_out.PixelFormat(rescale_slope=1.0, rescale_intercept=-1024.0, bits_stored=12, pixel_representation=0)
    assert fmt.stored_range == (0, 4095) and fmt.hu_range == (-1024.0, 3071.0)
    stored = dicom_out.hu_to_stored(np.array([-5000.0, -1024.4, 0.6, 3071.0, 9999.0, np.nan]), fmt)
    assert stored.dtype == np.dtype("<u2")
    assert stored.tolist() == [0, 0, 1025, 4095, 4095, 0]
    signed = dicom_out.PixelFormat(rescale_slope=0.5, rescale_intercept=0.0, bits_stored=16, pixel_representation=1)
    assert signed.stored_range == (-32768, 32767)
    values = dicom_out.hu_to_stored(np.array([-1000.2, 12.25, 1e9]), signed)
    assert values.dtype == np.dtype("<i2") and values.tolist() == [-2000, 24, 32767]
    assert dicom_out.stored_to_hu(values, signed).tolist() == [-1000.0, 12.0, 16383.5]


@pytest.mark.parametrize(
    "kwargs",
    [{"bits_allocated": 8}, {"bits_stored": 10}, {"pixel_representation": 2}, {"rescale_slope": 0.0}],
)
def test_formats_the_ct_iod_forbids(kwargs: dict) -> None:
    with pytest.raises(ParameterError):
        dicom_out.PixelFormat(**kwargs)


def test_for_ct_widens_what_ct_cannot_store() -> None:
    fmt = dicom_out.PixelFormat.for_ct(None, None, 8, 8, 0)
    assert (fmt.bits_allocated, fmt.bits_stored, fmt.rescale_slope, fmt.rescale_intercept) == (16, 16, 1.0, 0.0)
    same = dicom_out.PixelFormat.for_ct(1.0, -1024.0, 16, 12, 1)
    assert same == dicom_out.PixelFormat(1.0, -1024.0, 16, 12, 1)


def test_header_template_drops_instance_and_private_attributes() -> None:
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert any(elem.tag.is_private for elem in source)
    template = dicom_out.header_template(source)
    for keyword in ("SOPInstanceUID", "ImagePositionPatient", "PixelData", "Rows", "RescaleIntercept", "InstanceNumber"):
        assert keyword not in template
    assert not any(elem.tag.is_private for elem in template)
    assert template.PatientName == source.PatientName and template.StudyInstanceUID == source.StudyInstanceUID
    assert "SOPInstanceUID" in source  # the source is not changed
    from_json = dicom_out.header_template(Dataset.to_json_dict(source, suppress_invalid_tags=True))
    assert from_json.PatientID == source.PatientID and "PixelData" not in from_json


GEOMETRY = SliceGeometry(
    image_position=(-10.0, -10.0, 2.5),
    image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    pixel_spacing=(0.5, 0.5),
    slice_location=2.5,
    instance_number=7,
    slice_thickness=1.25,
    rows=40,
    columns=30,
)


def _dataset(tmp_path: Path) -> Path:
    template = Dataset()
    for keyword, value in {
        "PatientName": "A^B", "PatientID": "1", "PatientBirthDate": "", "PatientSex": "O",
        "StudyInstanceUID": derive_uid("study"), "StudyDate": "20240101", "StudyTime": "1200",
        "ReferringPhysicianName": "", "StudyID": "1", "AccessionNumber": "", "SeriesInstanceUID": derive_uid("series"),
        "SeriesNumber": 1, "PatientPosition": "HFS", "FrameOfReferenceUID": derive_uid("for"),
        "PositionReferenceIndicator": "", "Manufacturer": "x", "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "KVP": "120", "AcquisitionNumber": 1, "BodyPartExamined": "CHEST",
    }.items():
        setattr(template, keyword, value)
    geometry = GEOMETRY
    fmt = dicom_out.PixelFormat()
    hu = np.arange(-1100, -1100 + 40 * 30, dtype=np.float64).reshape(40, 30)
    ds = dicom_out.build_ct_dataset(template, dicom_out.hu_to_stored(hu, fmt), geometry, derive_uid("sop"), fmt)
    assert "SOPInstanceUID" not in template  # the template is copied
    return dicom_out.save(ds, tmp_path / dicom_out.instance_file_name(6))


def test_build_ct_dataset_round_trip(tmp_path: Path) -> None:
    path = _dataset(tmp_path)
    assert path.name == "IM0007.dcm"
    ds = pydicom.dcmread(path)
    assert ds.preamble == b"\0" * 128
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == derive_uid("sop")
    assert (ds.Rows, ds.Columns, ds.InstanceNumber, ds.HighBit) == (40, 30, 7, 11)
    assert [float(v) for v in ds.ImagePositionPatient] == [-10.0, -10.0, 2.5]
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = np.clip(np.arange(-1100, -1100 + 1200).reshape(40, 30), -1024, 3071)
    assert np.array_equal(hu, expected)


def test_written_geometry_reads_back_the_same(tmp_path: Path) -> None:
    """The writer and the reader share one SliceGeometry: what is written is what is read."""
    path = _dataset(tmp_path)
    assert SliceGeometry.from_dataset(pydicom.dcmread(path), str(path)) == dataclasses.replace(GEOMETRY, file=str(path))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"image_position": None}, "without ImagePositionPatient"),
        ({"pixel_spacing": None, "instance_number": None}, "without PixelSpacing, InstanceNumber"),
        ({"rows": 41}, "Rows 41 .* 40"),
    ],
)
def test_geometry_a_ct_slice_cannot_be_written_with(change: dict, match: str) -> None:
    fmt = dicom_out.PixelFormat()
    with pytest.raises(ParameterError, match=match):
        dicom_out.build_ct_dataset(
            Dataset(), np.zeros((40, 30), fmt.dtype), dataclasses.replace(GEOMETRY, **change), derive_uid("sop"), fmt
        )


@pytest.mark.skipif(DCIODVFY is None, reason=DCIODVFY_MISSING)
def test_built_dataset_passes_dciodvfy(tmp_path: Path) -> None:
    code, errors = dciodvfy_errors(_dataset(tmp_path))
    assert errors == [] and code == 0, errors


def test_dciodvfy_check_can_fail(tmp_path: Path) -> None:
    """The validation helper does report errors (so the checks above mean something)."""
    if DCIODVFY is None:
        pytest.skip(DCIODVFY_MISSING)
    path = _dataset(tmp_path)
    ds = pydicom.dcmread(path)
    del ds.Rows
    ds.save_as(path)
    code, errors = dciodvfy_errors(path)
    assert code != 0 and any("Rows" in line for line in errors)

