"""Deterministic UIDs: same parts, same UID; other parts, other UID."""

from __future__ import annotations

import pydicom
import pytest

from ctdenoise.uids import derive_uid


def test_derived_uids_are_stable_and_distinct() -> None:
    uid = derive_uid("1.2.3", "rank=20")
    assert uid == derive_uid("1.2.3", "rank=20") and uid.is_valid and len(uid) <= 64
    assert uid.startswith(pydicom.uid.PYDICOM_ROOT_UID)
    assert uid != derive_uid("1.2.3", "rank=21")
    assert derive_uid("ab", "c") != derive_uid("a", "bc")
    with pytest.raises(ValueError):
        derive_uid()
