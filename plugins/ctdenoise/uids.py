"""Deterministic DICOM UIDs: the same inputs always give the same UID.

Outputs of ctdenoise (the phantom series, derived denoised series) must be reproducible: a rerun
of a task overwrites its output with byte-identical DICOM files instead of creating a second,
different series for the same data. UIDs are therefore *derived*, never random: each is the
pydicom root followed by the SHA-512 hash of the parts that determine the object (source UIDs,
parameters such as the rank and the SVD seed), as :func:`pydicom.uid.generate_uid` does with
``entropy_srcs``.
"""

from __future__ import annotations

from pydicom.uid import PYDICOM_ROOT_UID, UID, generate_uid

UID_PREFIX = PYDICOM_ROOT_UID
"""Root of every derived UID (pydicom's registered root, which pydicom offers for this use)."""

_SEPARATOR = "\x1f"  # ASCII unit separator: ("ab", "c") and ("a", "bc") must not collide


def derive_uid(*parts: object) -> UID:
    """A valid DICOM UID (<= 64 characters) determined only by ``parts``.

    Parts are converted with ``str`` and joined with a separator before hashing, so the order
    and the boundaries between parts matter. At least one part is required: a UID derived from
    nothing would be the same for every object.
    """
    if not parts:
        raise ValueError("derive_uid needs at least one part")
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[_SEPARATOR.join(str(p) for p in parts)])
