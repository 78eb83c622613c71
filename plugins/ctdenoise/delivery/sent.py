"""What a protocol's send step returns: the acknowledged instances, the refused ones, a refusal."""

from __future__ import annotations

from dataclasses import dataclass, field

from ctdenoise.delivery.outcome import Refused


@dataclass
class SendResult:
    """``accepted``: SOP Instance UIDs the destination acknowledged; ``refused``: the others with
    their status; ``rejection``: a refusal of the whole request or association (nothing sent)."""

    accepted: list[str] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    rejection: str | None = None
