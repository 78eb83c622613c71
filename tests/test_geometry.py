"""The slice-ordering rule and the consistency checks (ctdenoise.geometry)."""

from __future__ import annotations

import logging
import math
import random

import numpy as np
import pytest

from ctdenoise.geometry import (
    SeriesInputError,
    SliceGeometry,
    check_consistency,
    order_slices,
    slice_normal,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
UID = "1.2.3.4"


def geo(name: str, *, ipp=None, iop=AXIAL, rows=4, columns=4, spacing=(0.5, 0.5), loc=None, inst=None) -> SliceGeometry:
    return SliceGeometry(
        file=name,
        rows=rows,
        columns=columns,
        image_position=tuple(ipp) if ipp is not None else None,
        image_orientation=tuple(iop) if iop is not None else None,
        pixel_spacing=tuple(spacing) if spacing is not None else None,
        slice_location=loc,
        instance_number=inst,
    )


def stack(orientation, n=6, spacing=2.0, shift=0.0, origin=(5.0, -3.0, 10.0)):
    """Slices k = 0..n-1 at origin + k*spacing*normal (+ k*shift along the columns), named by k."""
    normal = slice_normal(orientation)
    col = np.asarray(orientation[3:])
    return [
        geo(f"k{k}", ipp=np.asarray(origin) + k * spacing * normal + k * shift * col, iop=orientation)
        for k in range(n)
    ]


def names(slices, order):
    return [slices[i].file for i in order.indices]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normal_rule_orders_shuffled_slices(seed: int) -> None:
    slices = stack(AXIAL)
    shuffled = slices[:]
    random.Random(seed).shuffle(shuffled)
    order = order_slices(shuffled, UID)
    assert order.rule == "normal"
    assert names(shuffled, order) == [f"k{k}" for k in range(6)]
    assert order.positions == pytest.approx([10.0 + 2.0 * k for k in range(6)])
    assert order.spacing_mm == pytest.approx(2.0)


def test_reversed_file_order_gives_same_columns() -> None:
    slices = stack(AXIAL)
    assert names(slices[::-1], order_slices(slices[::-1], UID)) == [f"k{k}" for k in range(6)]


def test_reversed_normal_orders_along_normal_not_z() -> None:
    # row = -x, column = +y: normal is -z, so ascending position means descending z.
    iop = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert slice_normal(iop) == pytest.approx([0.0, 0.0, -1.0])
    slices = [geo(f"z{z}", ipp=(0.0, 0.0, float(z)), iop=iop) for z in (0, 5, -5, 10)]
    order = order_slices(slices, UID)
    assert names(slices, order) == ["z10", "z5", "z0", "z-5"]
    assert order.positions == pytest.approx([-10.0, -5.0, 0.0, 5.0])


def test_tilted_orientation_with_in_plane_shift() -> None:
    t = math.radians(20)
    iop = (1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t))
    slices = stack(iop, n=5, spacing=1.25, shift=5.0)
    # The in-plane shift along the (tilted) column direction makes z *decrease* from k0 to k4:
    # ordering by z would reverse the stack; ordering along the normal must not.
    z = [s.image_position[2] for s in slices]
    assert all(b < a for a, b in zip(z, z[1:]))
    shuffled = [slices[i] for i in (3, 0, 4, 1, 2)]
    order = order_slices(shuffled, UID)
    assert names(shuffled, order) == ["k0", "k1", "k2", "k3", "k4"]
    assert np.diff(order.positions) == pytest.approx([1.25] * 4)


def test_falls_back_to_slice_location_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    slices = [geo("a", loc=3.0, inst=1), geo("b", loc=-1.0, inst=2, ipp=(0, 0, 99)), geo("c", loc=1.0, inst=3)]
    with caplog.at_level(logging.WARNING, logger="ctdenoise.geometry"):
        order = order_slices(slices, UID)
    assert order.rule == "slice_location"
    assert names(slices, order) == ["b", "c", "a"]
    assert order.spacing_mm == pytest.approx(2.0)
    assert any("SliceLocation" in r.getMessage() and UID in r.getMessage() for r in caplog.records)


def test_falls_back_to_instance_number_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    slices = [geo("a", iop=None, inst=7), geo("b", iop=None, inst=2), geo("c", iop=None, inst=5)]
    with caplog.at_level(logging.WARNING, logger="ctdenoise.geometry"):
        order = order_slices(slices, UID)
    assert order.rule == "instance_number"
    assert names(slices, order) == ["b", "c", "a"]
    assert order.spacing_mm is None  # instance numbers are not millimetres
    assert any("InstanceNumber" in r.getMessage() for r in caplog.records)


def test_no_ordering_information_is_refused() -> None:
    slices = [geo("a", iop=None, inst=1), geo("b", iop=None)]
    with pytest.raises(SeriesInputError, match="cannot order") as info:
        order_slices(slices, UID)
    assert info.value.file == "b" and info.value.series_uid == UID


def test_mixed_partial_fallbacks_are_refused_without_crashing() -> None:
    slices = [geo("a", iop=None, loc=1.0), geo("b", iop=None, inst=2)]
    with pytest.raises(SeriesInputError, match="cannot order") as info:
        order_slices(slices, UID)
    assert info.value.file == "a"


def test_single_slice_is_fine() -> None:
    order = order_slices([geo("only", ipp=(1.0, 2.0, 3.0))], UID)
    assert order.indices == [0] and order.rule == "normal" and order.spacing_mm is None
    check_consistency([geo("only", ipp=(1.0, 2.0, 3.0))], UID)


@pytest.mark.parametrize(
    "rule_kwargs",
    [
        {"ipp": "dup"},
        {"loc": "dup"},
        {"inst": "dup"},
    ],
)
def test_duplicate_positions_are_refused(rule_kwargs: dict) -> None:
    def make(name: str, value: float) -> SliceGeometry:
        if "ipp" in rule_kwargs:
            return geo(name, ipp=(0.0, 0.0, value))
        if "loc" in rule_kwargs:
            return geo(name, iop=None, loc=value)
        return geo(name, iop=None, inst=int(value))

    slices = [make("f1", 1), make("f3", 2), make("f2", 2 + 1e-5 if "ipp" in rule_kwargs else 2)]
    with pytest.raises(SeriesInputError, match="duplicate") as info:
        order_slices(slices, UID)
    assert UID in str(info.value)
    assert info.value.file == "f3"  # the later name of the duplicate pair


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"rows": 8}, "Rows x Columns"),
        ({"columns": 2}, "Rows x Columns"),
        ({"iop": (1.0, 0.0, 0.0, 0.0, 0.9998, 0.02)}, "ImageOrientationPatient"),
        ({"spacing": (0.5, 0.6)}, "PixelSpacing"),
    ],
)
@pytest.mark.parametrize("where", [0, 2])
def test_inconsistent_slices_name_the_odd_file(bad: dict, match: str, where: int) -> None:
    slices = [geo(f"s{i}", ipp=(0.0, 0.0, float(i))) for i in range(4)]
    slices[where] = geo(f"s{where}", ipp=(0.0, 0.0, float(where)), **bad)
    with pytest.raises(SeriesInputError, match=match) as info:
        check_consistency(slices, UID)
    assert info.value.file == f"s{where}"  # even when the odd slice comes first
    assert UID in str(info.value) and f"s{where}" in str(info.value)


def test_orientation_within_tolerance_is_accepted() -> None:
    slices = [geo("a", ipp=(0, 0, 0)), geo("b", ipp=(0, 0, 1), iop=(1.0, 0.0, 0.0, 0.0, 1.0, 5e-5))]
    check_consistency(slices, UID)


def test_missing_rows_is_refused() -> None:
    with pytest.raises(SeriesInputError, match="Rows/Columns"):
        check_consistency([geo("a", rows=None)], UID)


def test_parallel_direction_cosines() -> None:
    with pytest.raises(ValueError, match="parallel"):
        slice_normal((1.0, 0.0, 0.0, 1.0, 0.0, 0.0))


def test_from_dataset_treats_malformed_values_as_missing() -> None:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Rows, ds.Columns = 4, 4
    ds.ImagePositionPatient = [1.0, 2.0]  # two values: unusable
    ds.ImageOrientationPatient = list(AXIAL)
    ds.SliceLocation = "12.5"
    g = SliceGeometry.from_dataset(ds, "x.dcm")
    assert g.image_position is None
    assert g.image_orientation == AXIAL
    assert g.slice_location == 12.5 and g.instance_number is None and g.pixel_spacing is None
    assert g.slice_thickness is None and (g.rows, g.columns, g.file) == (4, 4, "x.dcm")


def test_spacing_problem_names_the_gap_and_its_files() -> None:
    from ctdenoise.geometry import SliceGeometry, order_slices, spacing_problem

    def at(z: float, name: str) -> SliceGeometry:
        return SliceGeometry((0.0, 0.0, z), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (1.0, 1.0), file=name)

    even = [at(z, f"{z:g}.dcm") for z in (0.0, 1.25, 2.5, 3.75)]
    assert spacing_problem(even, order_slices(even, "1.2"), 0.05) is None
    gapped = [at(z, f"{z:g}.dcm") for z in (0.0, 202.5, 203.75, 205.0, 206.25)]
    why, file = spacing_problem(gapped, order_slices(gapped, "1.2"), 0.05)
    assert "202.5 mm from 0.dcm, median 1.25 mm" in why and file == "202.5.dcm"
    missing = [at(z, f"{z:g}.dcm") for z in (0.0, 1.25, 3.75, 5.0)]  # 2.5 lost
    assert spacing_problem(missing, order_slices(missing, "1.2"), 0.05)[1] == "3.75.dcm"
    jitter = [at(z, "x") for z in (0.0, 1.25, 2.51, 3.75)]  # within 5 %
    assert spacing_problem(jitter, order_slices(jitter, "1.2"), 0.05) is None
