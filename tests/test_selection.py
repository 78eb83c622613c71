"""Selection rules: what each kind of condition means, and malformed rules refused in one line."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset

from ctdenoise.errors import ParameterError
from ctdenoise.params import RunParams
from ctdenoise.selection import DEFAULT_SELECTION, SelectionRules, holds


def header(**values) -> Dataset:
    ds = Dataset()
    ds.Modality, ds.ImageType, ds.SliceThickness, ds.SeriesDescription = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"], "1.25", "Abdomen 1.0 B30f"
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


@pytest.mark.parametrize(
    ("condition", "observed", "expected"),
    [
        ("(?i)^ct$", ["CT"], True),
        ("(?i)^ct$", ["MR"], False),
        ("B30", ["Abdomen 1.0 B30f"], True),
        ("!(?i)scout", ["Abdomen"], True),
        ("!(?i)scout", ["SCOUT 1"], False),
        ("!(?i)scout", [], True),
        ("(?i)ct", [], False),
        (["ORIGINAL", "axial"], ["ORIGINAL", "PRIMARY", "AXIAL"], True),
        (["ORIGINAL", "AXIAL"], ["DERIVED", "SECONDARY", "AXIAL"], False),
        (["AXIAL", "!LOCALIZER"], ["ORIGINAL", "PRIMARY", "LOCALIZER", "AXIAL"], False),
        ([0.5, 5], ["1.25"], True),
        ([0.5, 5], ["5"], True),
        ([0.5, 5], ["7"], False),
        ([0.5, 5], [], False),
        (">= 8", ["8"], True),
        (">=8", ["7"], False),
        ("< 2.5", ["1.25"], True),
        ("!= 3", ["3"], False),
        (1.25, ["1.25"], True),
        (2, ["1.25"], False),
    ],
)
def test_conditions(condition, observed, expected) -> None:  # noqa: ANN001
    assert holds(condition, observed) is expected


def test_default_accepts_axial_original_ct_with_enough_slices() -> None:
    rules = SelectionRules.model_validate(DEFAULT_SELECTION)
    assert RunParams().selection == rules  # the constructed default is the validated one
    assert rules.excluded_by(header(), 64) is None
    assert rules.excluded_by(header(), 3) == 'not selected: axial original CT: slices ">=8" (series has 3)'
    assert "ImageType" in rules.excluded_by(header(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]), 64)
    assert "Modality" in rules.excluded_by(header(Modality="MR"), 64)


def test_any_selection_takes_a_series_and_all_failures_are_named() -> None:
    rules = SelectionRules.model_validate({"selections": [
        {"name": "thin", "conditions": {"SliceThickness": [0.5, 1.0]}},
        {"name": "soft kernel", "conditions": {"SeriesDescription": "B20"}},
    ]})  # fmt: skip
    assert rules.excluded_by(header(SeriesDescription="Abdomen B20f"), 10) is None
    reason = rules.excluded_by(header(), 10)
    assert reason == 'not selected: thin: SliceThickness [0.5, 1.0] (series has 1.25); soft kernel: SeriesDescription "B20" (series has Abdomen 1.0 B30f)'


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ({"Modality": "(CT"}, "selection 'r': Modality: bad regular expression '(CT'"),
        ({"ImageTyp": ["AXIAL"]}, "selection 'r': ImageTyp: not a DICOM keyword"),
        ({"imageType": ["AXIAL"]}, "selection 'r': 'imageType' is not a DICOM keyword"),
        ({"SliceThickness": [5, 0.5]}, "selection 'r': SliceThickness: range [5, 0.5] has its bounds the wrong way round"),
        ({"SliceThickness": True}, "selection 'r': SliceThickness: true/false is not a condition"),
        ({"SliceThickness": [1, "a"]}, "selection 'r': SliceThickness: expected a string, a number, [low, high] or a list of strings"),
    ],
)
def test_malformed_rules_are_refused_in_one_line_naming_the_rule(conditions: dict, message: str) -> None:
    conf = {"selection": {"selections": [{"name": "r", "conditions": conditions}]}}
    with pytest.raises(ParameterError) as info:
        RunParams.from_conf(conf)
    text = str(info.value)
    assert "\n" not in text and message in text, text


def test_selection_and_deliver_leave_the_params_hash_alone() -> None:
    base = RunParams().params_hash()
    rules = {"selections": [{"name": "any CT", "conditions": {"Modality": "CT"}}]}
    assert RunParams.from_conf({"selection": rules, "deliver": ["all"]}).params_hash() == base
    assert RunParams.from_conf({"deliver": []}).deliver == ()
    with pytest.raises(ParameterError, match="deliver"):
        RunParams.from_conf({"deliver": ["rank-0"]})


def test_attribute_values_of_a_real_header() -> None:
    from pydicom.data import get_testdata_file

    from ctdenoise.selection import attribute_values

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    assert attribute_values(ds, "ImageType") == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert attribute_values(ds, "Modality") == ["CT"]
    assert attribute_values(ds, "ContrastBolusAgent") == ["ISOVUE300/100"]
    assert attribute_values(ds, "AcquisitionComments") == []
