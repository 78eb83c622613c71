"""How a derived series says what it is and what made it, as IHE AI Results and DICOM expect.

A PACS and its viewer must show a denoised series as a processing result beside the original,
never in its place: a new SeriesInstanceUID in the same study (the writer's), ``ImageType``
``DERIVED\\SECONDARY``, the derivation in words, and here:

- a **Contributing Equipment** item (SOP Common module) whose purpose is *Processing Algorithm*
  (DCM 109103, CID 7005), naming manufacturer, model (``ctdenoise``) and software version: what
  IHE AI Results asks of an algorithm's output, so a reader can tell which release made it;
- a **SeriesDescription** that starts with the deployment's prefix (``DENOISED`` by default:
  the first thing a radiologist reads in a series list), then the output and the source's own
  description, cut to the 64 characters of an LO;
- a **SeriesNumber** that depends only on the source's and the output's identity (see
  :func:`series_number`), so that the same SeriesInstanceUID always carries the same number,
  whichever other outputs a run wrote.

Nothing here reads a clock: the files of a re-run are identical, and the derived UIDs, which
come from the source UIDs and the parameters, do not depend on the prefix (it is a label).
"""

from __future__ import annotations

from typing import Any

from ctdenoise import __version__

DEFAULT_PREFIX = "DENOISED"
MANUFACTURER = "ctdenoise project"
MODEL = "ctdenoise"
PROCESSING_ALGORITHM = ("109103", "DCM", "Processing Algorithm")  # CID 7005 Contributing Equipment Purposes of Reference
LO_MAX = 64


def series_description(prefix: str, what: str, source_description: str | None) -> str:
    """``"DENOISED local x0.5: Abdomen 1.0 B30f"``: the output before the source's description,
    so that cutting to 64 characters shortens the source's part, never ours."""
    head = f"{prefix.strip()} {what}".strip()
    source = (source_description or "").strip()
    return (f"{head}: {source}" if source else head)[:LO_MAX]


def series_number(base: int, offset: int) -> int:
    """``base * 1000 + offset`` (the source's SeriesNumber, then the output's own number), within
    the IS range; ``offset`` alone when the source's number would overflow it."""
    number = base * 1000 + offset
    return number if 0 < number < 2**31 else offset


def local_offset(multiplier: float) -> int:
    """A local-mode output's number after the source's: 900 + ten times its multiplier (x0.5:
    905, x1: 910), a function of the multiplier alone, not of its place in a run's list."""
    return 900 + min(99, max(1, round(float(multiplier) * 10)))


def contributing_equipment(description: str) -> Any:
    """The Contributing Equipment item of a derived instance (a pydicom Dataset)."""
    from pydicom.dataset import Dataset

    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = PROCESSING_ALGORITHM
    item = Dataset()
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = MODEL
    item.SoftwareVersions = __version__
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.ContributionDescription = description[:1024]
    return item
