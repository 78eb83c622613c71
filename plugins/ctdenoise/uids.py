"""Deterministic DICOM UIDs: the same inputs always give the same UID.

Outputs of ctdenoise (the phantom series, derived denoised series) must be reproducible: a rerun
of a task overwrites its output with byte-identical DICOM files instead of creating a second,
different series for the same data. UIDs are therefore *derived*, never random: each is the
pydicom root followed by the SHA-512 hash of the parts that determine the object (source UIDs,
parameters such as the rank and the SVD seed), as :func:`pydicom.uid.generate_uid` does with
``entropy_srcs``.

:func:`uid_problem` says why a source value is not a UID; it needs no pydicom (records, which
the DAG imports at parse time, validate UIDs with it).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.uid import UID

UID_PREFIX = "1.2.826.0.1.3680043.8.498."
"""Root of every derived UID (pydicom's registered root, ``pydicom.uid.PYDICOM_ROOT_UID``, which
pydicom offers for this use)."""

VALID_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
MAX_UID_LENGTH = 64

_SEPARATOR = "\x1f"  # ASCII unit separator: ("ab", "c") and ("a", "bc") must not collide


def derive_uid(*parts: object) -> UID:
    """A valid DICOM UID (<= 64 characters) determined only by ``parts``.

    Parts are converted with ``str`` and joined with a separator before hashing, so the order
    and the boundaries between parts matter. At least one part is required: a UID derived from
    nothing would be the same for every object.
    """
    from pydicom.uid import generate_uid

    if not parts:
        raise ValueError("derive_uid needs at least one part")
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[_SEPARATOR.join(str(p) for p in parts)])


def uid_problem(value: object) -> str | None:
    """Why ``value`` is not a valid DICOM UID (PS3.5 9.1: digits and dots, components without
    leading zeros, at most 64 characters), or None if it is one.

    Source UIDs end up in paths (``<SeriesInstanceUID>.zarr``, ``denoised/<uid>/``) and in the
    derived series: one that is not a UID is refused where it is read, never used.
    """
    text = str(value)
    if len(text) > MAX_UID_LENGTH:
        return f"{len(text)} characters (at most {MAX_UID_LENGTH})"
    if not VALID_UID.fullmatch(text):
        return "not digits and dots (components without leading zeros)"
    return None


def shown(value: object, limit: int = 70) -> str:
    """A UID as messages show it: quoted, and cut when it is too long to be one."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")
