"""What one delivery did, and the two ways it fails: typed, so the CLI, the DAG and the report agree.

A delivery sends the instances of one published output (a derived series) to one destination,
then asks the destination which of them it holds. Its :class:`DeliveryOutcome` says how many
were sent, which the destination refused (with the status and its meaning) and how many it
confirmed by query. :meth:`DeliveryOutcome.check` turns it into the failure kinds of
:mod:`ctdenoise.errors`:

- :class:`DeliveryRejected` (an input error: exit 2, the task fails at once): the destination
  refused the association, a presentation context, the credentials or instances. Sending the
  same files again gives the same answer; a PACS administrator must act.
- :class:`DestinationUnavailable` and :class:`DeliveryUnconfirmed` (transient: exit 75, the task
  retries with backoff): the destination is down, timed out, or acknowledged instances that a
  query does not show yet. Re-sending the same SOP Instance UIDs is harmless (a PACS stores an
  instance once), so a retry never duplicates anything, and the outputs stay published.

Standard library and pydantic only: the DAG reads these records at parse time.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import BaseModel, ConfigDict, Field

from ctdenoise.errors import CtDenoiseError, TransientError


class DeliveryRejected(CtDenoiseError):
    """The destination refused the delivery, or some of its instances: sending again gives the
    same answer, so the task fails at once (the DAG's retry policy) and the CLI exits 2; a PACS
    administrator acts (AE title, accepted SOP classes or syntaxes, credentials), then the task
    is cleared."""


class DestinationUnavailable(TransientError):
    """No answer: connection refused or reset, a timeout, HTTP 5xx. Retried with backoff."""


class DeliveryUnconfirmed(TransientError):
    """Acknowledged, but the destination's query does not show every instance after the wait (a
    PACS still indexing, or one that dropped them): retried, since re-sending is harmless; a
    drop shows as this error, naming the missing instances, once the retries are spent."""


class Protocol(StrEnum):
    """How instances travel: DICOMweb STOW-RS (verified by QIDO-RS) or DIMSE C-STORE (verified by C-FIND)."""

    DICOMWEB = "dicomweb"
    DIMSE = "dimse"


class DeliveryStatus(StrEnum):
    """The state of a delivery, as recorded."""

    DELIVERED = "delivered"  # every instance accepted and confirmed by query
    DELIVERED_UNVERIFIED = "delivered_unverified"  # every instance accepted; the destination answers no query
    PARTIAL = "partial"  # some instances refused (named)
    REJECTED = "rejected"  # nothing accepted
    UNCONFIRMED = "unconfirmed"  # accepted, but the query does not show them all


class Refused(BaseModel):
    """One instance (or a group of instances sharing one reason) the destination refused."""

    model_config = ConfigDict(frozen=True)

    sop_instance_uid: str
    file: str
    status: str  # "0xA700", "HTTP 409", "context rejected"
    meaning: str


class DeliveryOutcome(BaseModel):
    """One output sent to one destination (credentials never appear here)."""

    model_config = ConfigDict(frozen=True)

    protocol: Protocol
    destination: str  # where, without credentials: "DICOMweb http://pacs/dicom-web", "DIMSE PACS@host:104"
    source: str  # the output folder or URL sent
    study_instance_uid: str
    series_instance_uid: str
    expected: int  # instances in the output
    sent: int  # instances the destination acknowledged
    refused: tuple[Refused, ...] = ()
    confirmed: int | None = None  # of the acknowledged instances, those the query found (None: no query answered)
    missing: tuple[str, ...] = ()  # acknowledged SOP Instance UIDs the query did not find
    verified_by: str | None = None  # "QIDO-RS", "C-FIND", or None
    rejection: str | None = None  # the association- or request-level refusal, if any
    finished_at: str  # UTC, ISO 8601
    seconds: float

    @property
    def status(self) -> DeliveryStatus:
        if self.rejection or (self.refused and self.sent == 0):
            return DeliveryStatus.REJECTED
        if self.refused:
            return DeliveryStatus.PARTIAL
        if self.confirmed is None:
            return DeliveryStatus.DELIVERED_UNVERIFIED
        return DeliveryStatus.UNCONFIRMED if self.missing else DeliveryStatus.DELIVERED

    @property
    def ok(self) -> bool:
        return self.status in (DeliveryStatus.DELIVERED, DeliveryStatus.DELIVERED_UNVERIFIED)

    def as_json(self) -> dict:
        return {**self.model_dump(mode="json"), "status": self.status.value}

    @classmethod
    def from_json(cls, value: dict) -> Self:
        return cls.model_validate({k: v for k, v in value.items() if k != "status"})

    def check(self) -> Self:
        """``self`` if delivered; else the error of its kind (module docstring), one line naming the series."""
        where = f"series {self.series_instance_uid} ({self.source}) to {self.destination}"
        if self.rejection:
            raise DeliveryRejected(f"{where}: rejected: {self.rejection}")
        if self.refused:
            shown = "; ".join(f"{r.file} ({r.sop_instance_uid}): {r.status} {r.meaning}" for r in self.refused[:5])
            more = f" and {len(self.refused) - 5} more" if len(self.refused) > 5 else ""
            raise DeliveryRejected(f"{where}: {len(self.refused)} of {self.expected} instances refused: {shown}{more}")
        if self.missing:
            raise DeliveryUnconfirmed(
                f"{where}: {self.sent} acknowledged but {self.verified_by} finds {self.confirmed}; missing "
                f"{', '.join(self.missing[:5])}{' ...' if len(self.missing) > 5 else ''} (re-sending is harmless)"
            )
        return self


class DeliveryRecord(BaseModel):
    """What the series' report keeps of one output delivered (or refused) at one destination."""

    model_config = ConfigDict(frozen=True)

    output: str  # the output's folder name: "rank-9", "local-x0.5"
    output_url: str
    destination_name: str  # the Airflow connection id (or "cli")
    outcome: DeliveryOutcome
    dag_id: str | None = None
    run_id: str | None = None
    try_number: int | None = None
    automatic: bool = Field(False, description="the output is an automatic one (Gavish-Donoho rank, local automatic multiplier)")

    def as_json(self) -> dict:
        return {**self.model_dump(mode="json", exclude={"outcome"}), "outcome": self.outcome.as_json()}

    @classmethod
    def from_json(cls, value: dict) -> Self:
        return cls.model_validate({**value, "outcome": DeliveryOutcome.from_json(value["outcome"])})
