"""Delivery of derived series to a PACS: DICOMweb STOW-RS or DIMSE C-STORE, verified by query.

:func:`deliver` sends one published output (``denoised/<uid>/rank-9/`` or any folder of one
series' DICOM files) to one destination and asks the destination which instances it holds;
it returns a :class:`~ctdenoise.delivery.outcome.DeliveryOutcome` whose
:meth:`~ctdenoise.delivery.outcome.DeliveryOutcome.check` raises the failure of its kind
(a rejection fails at once, a destination down or not yet showing everything is retried).
The ``ctdenoise deliver`` command and the DAG's ``deliver`` task both call it.

Modules: :mod:`.destinations` (where, and credentials), :mod:`.instances` (what is sent),
:mod:`.dicomweb` and :mod:`.dimse` (the two protocols), :mod:`.statuses` (what answers mean),
:mod:`.outcome` (what happened, and the errors), :mod:`.choice` (which outputs of a series go).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ctdenoise.delivery.destinations import Destination, DicomWebDestination
from ctdenoise.delivery.instances import SeriesInstances, local_instances
from ctdenoise.delivery.outcome import DeliveryOutcome, Protocol
from ctdenoise.delivery.sent import SendResult

log = logging.getLogger(__name__)

VERIFY_SECONDS = 30.0
"""How long a destination may take to show acknowledged instances in its query answers (a PACS
that indexes asynchronously); polled, so a synchronous one answers at the first query."""


def deliver(
    src: str,
    destination: Destination,
    storage_options: Mapping[str, Any] | None = None,
    verify_seconds: float = VERIFY_SECONDS,
) -> DeliveryOutcome:
    """Send the instances of ``src`` to ``destination``, then verify by query (module docstring)."""
    started = time.perf_counter()
    with local_instances(src, storage_options) as series:
        protocol = _protocol(destination)
        log.info("%s: sending %d instances of series %s to %s", src, len(series.instances), series.series_instance_uid,
                 destination.where)  # fmt: skip
        sent = protocol.send(destination, series)
        held = _verify(protocol, destination, series, sent, verify_seconds) if sent.accepted else None
    return _outcome(src, destination, series, sent, held, time.perf_counter() - started)


def _protocol(destination: Destination) -> Any:
    from ctdenoise.delivery import dicomweb, dimse

    return dicomweb if isinstance(destination, DicomWebDestination) else dimse


def _verify(protocol: Any, destination: Destination, series: SeriesInstances, sent: SendResult,
            verify_seconds: float) -> set[str] | None:  # fmt: skip
    """The instances the destination holds, polled until every acknowledged one shows or
    ``verify_seconds`` pass; None when it answers no query."""
    deadline = time.monotonic() + verify_seconds
    pause = 0.5
    while True:
        held = protocol.held_instances(destination, series)
        if held is None or set(sent.accepted) <= held or time.monotonic() >= deadline:
            return held
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 5.0)


def _outcome(src: str, destination: Destination, series: SeriesInstances, sent: SendResult,
             held: set[str] | None, seconds: float) -> DeliveryOutcome:  # fmt: skip
    missing = () if held is None else tuple(u for u in sent.accepted if u not in held)
    return DeliveryOutcome(
        protocol=Protocol(destination.protocol),
        destination=destination.where,
        source=src,
        study_instance_uid=series.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        expected=len(series.instances),
        sent=len(sent.accepted),
        refused=tuple(sent.refused),
        confirmed=None if held is None else len(sent.accepted) - len(missing),
        missing=missing,
        verified_by=None if held is None else ("QIDO-RS" if destination.protocol == Protocol.DICOMWEB else "C-FIND"),
        rejection=sent.rejection,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seconds=round(seconds, 3),
    )
