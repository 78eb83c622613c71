"""What the stored series header and the derived template leave out (ctdenoise.instance_keywords)."""

from __future__ import annotations

import pydicom

from convert_fixtures import ct_small_path
from ctdenoise.dicom_out import header_template
from ctdenoise.dicom_series import BULK_VRS, header_json
from ctdenoise.instance_keywords import NOT_INHERITED_KEYWORDS, PER_INSTANCE_KEYWORDS


def test_every_keyword_is_a_dicom_keyword_and_declared_once() -> None:
    """A misspelt keyword would never match, and the attribute would silently stay."""
    keywords = PER_INSTANCE_KEYWORDS + NOT_INHERITED_KEYWORDS
    assert [k for k in keywords if pydicom.datadict.tag_for_keyword(k) is None] == []
    assert len(set(keywords)) == len(keywords)


def test_stored_header_keeps_the_source_record_and_the_template_drops_it() -> None:
    ds = pydicom.dcmread(ct_small_path())
    stored = pydicom.Dataset.from_json(header_json(ds))
    template = header_template(header_json(ds))
    for keyword in PER_INSTANCE_KEYWORDS:
        assert keyword not in stored and keyword not in template
    kept = [k for k in NOT_INHERITED_KEYWORDS if k in ds and ds[k].VR not in BULK_VRS]  # bulk data goes by VR
    assert {"SOPClassUID", "Rows", "RescaleSlope", "ImageOrientationPatient", "PixelSpacing"} <= set(kept)
    assert all(keyword in stored for keyword in kept)
    assert all(keyword not in template for keyword in NOT_INHERITED_KEYWORDS)
    assert template.PatientName == ds.PatientName and template.SeriesInstanceUID == ds.SeriesInstanceUID
