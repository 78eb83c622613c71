"""Deterministic UIDs: same parts, same UID; other parts, other UID."""

from __future__ import annotations

import pydicom
import pytest

from ctdenoise.uids import UID_PREFIX, derive_uid, uid_problem


def test_derived_uids_are_stable_and_distinct() -> None:
    uid = derive_uid("1.2.3", "rank=20")
    assert uid == derive_uid("1.2.3", "rank=20") and uid.is_valid and len(uid) <= 64
    assert uid.startswith(pydicom.uid.PYDICOM_ROOT_UID)
    assert uid != derive_uid("1.2.3", "rank=21")
    assert derive_uid("ab", "c") != derive_uid("a", "bc")
    with pytest.raises(ValueError):
        derive_uid()


def test_the_prefix_is_pydicoms_root() -> None:
    assert UID_PREFIX == pydicom.uid.PYDICOM_ROOT_UID


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", None),
        ("0.1", None),
        ("../../x", "not digits and dots"),
        ("1.02.3", "leading zeros"),
        ("1.2.3.", "not digits and dots"),
        ("", "not digits and dots"),
        ("1." + "2" * 300, "302 characters (at most 64)"),
    ],
)
def test_source_uids_follow_dicom_rules(value: str, problem: str | None) -> None:
    found = uid_problem(value)
    assert found is None if problem is None else problem in found
