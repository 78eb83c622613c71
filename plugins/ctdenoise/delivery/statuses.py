"""What a destination's answer means, in words: DIMSE statuses, STOW-RS failure reasons, refusals.

Rejection messages name the code and its meaning from the standard (PS3.4 Annex B for the
Storage Service Class, PS3.7 Annex C for general statuses, PS3.8 for association and
presentation context results, PS3.18 for STOW-RS), so a PACS administrator reads the reason
without looking it up. pynetdicom holds the DIMSE tables; this module does not copy them.
"""

from __future__ import annotations

# PS3.8 Table 9-18: results of a presentation context in an A-ASSOCIATE-AC.
CONTEXT_RESULTS = {
    0x01: "user rejection",
    0x02: "no reason (provider rejection)",
    0x03: "abstract syntax (SOP class) not supported",
    0x04: "transfer syntaxes not supported",
}

# PS3.18 Table 10.5.3-1 (after PS3.4): FailureReason values in a STOW-RS response; the DIMSE
# storage statuses cover the rest.
STOW_REASONS = {
    0x0110: "Processing failure",
    0x0122: "Referenced SOP Class not supported",
    0x0124: "Not authorized",
    0xA700: "Out of resources",
    0xA900: "Data set does not match SOP Class",
    0xC000: "Cannot understand",
    0xC122: "Referenced Transfer Syntax not supported",
    0xA770: "Refused: out of resources (storage full)",
    0xC123: "Failed: media application profile not supported",
}


def hex_code(code: int) -> str:
    return f"0x{int(code):04X}"


def storage_status(code: int) -> tuple[str, str]:
    """``(category, meaning)`` of a C-STORE response status (``Success``, ``Warning``, ``Failure``...)."""
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

    category = code_to_category(int(code))
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(int(code), (category, "unknown status"))[1]
    return category, meaning or category


def stow_reason(code: int) -> str:
    """The meaning of a STOW-RS ``FailureReason``."""
    if int(code) in STOW_REASONS:
        return STOW_REASONS[int(code)]
    return storage_status(code)[1]


def context_result(result: int | None) -> str:
    return CONTEXT_RESULTS.get(int(result or 0), f"result {result}")
