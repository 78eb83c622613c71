"""DIMSE: C-STORE of a series' files in the transfer syntax they are in, C-FIND to count them back.

One association per delivery. Each (SOP class, transfer syntax) pair of the files is proposed
as its own presentation context, with exactly the file's transfer syntax: the file is streamed
as written (no re-encoding, so what arrives is byte for byte what was published), and a
destination that does not take that syntax refuses the context by name instead of receiving a
silently converted copy. The outcomes:

- association rejected (e.g. called AE title not recognised): a rejection naming result, source
  and reason; nothing was sent;
- connection refused, reset or timed out (also mid-way): :class:`DestinationUnavailable`;
  what was already stored is stored again on the retry, which a PACS treats as the same
  instance;
- a context refused, or a failure status: those instances are refused, named with the status.

Verification is a Study Root C-FIND at IMAGE level for the series: the SOP Instance UIDs the
destination holds. A destination that refuses the query (many PACS accept C-FIND only from
registered AEs) is not a failed delivery: the outcome says it is unverified.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ctdenoise.delivery.destinations import DimseDestination
from ctdenoise.delivery.instances import SeriesInstances
from ctdenoise.delivery.outcome import DestinationUnavailable, Refused
from ctdenoise.delivery.sent import SendResult
from ctdenoise.delivery.statuses import context_result, hex_code, storage_status

log = logging.getLogger(__name__)
MAX_CONTEXTS = 128  # PS3.8: presentation context ids are odd numbers 1..255


def _application_entity(dest: DimseDestination) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=dest.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = dest.timeout_seconds
    ae.connection_timeout = dest.timeout_seconds
    return ae


@contextmanager
def _association(dest: DimseDestination, contexts: list[Any], proposed: dict[str, set[str]] | None = None) -> Iterator[tuple[Any, str | None]]:
    """``(association, rejection)``: an established association, or None and why it was refused.

    :class:`DestinationUnavailable` when the peer cannot be reached (no answer is not a refusal).
    """
    from pynetdicom import evt

    answer: dict[str, Any] = {}

    def on_acse(event: Any) -> None:
        primitive = event.primitive
        if getattr(primitive, "result", None) in (0x01, 0x02):
            answer["result"] = primitive.result
            answer["rejected"] = f"{primitive.result_str}, {primitive.source_str}: {primitive.reason_str}"

    handlers = [(evt.EVT_ACSE_RECV, on_acse)]
    assoc = None
    for attempt in range(2):  # a peer closing right after its A-ASSOCIATE-RJ can look like an abort: ask twice
        assoc = _application_entity(dest).associate(dest.host, dest.port, contexts=contexts, ae_title=dest.called_ae,
                                                    evt_handlers=handlers)  # fmt: skip
        if assoc.is_established or assoc.is_rejected or assoc.rejected_contexts or attempt:
            break
        time.sleep(0.5)
    try:
        if assoc.is_established:
            yield assoc, None
        elif assoc.is_rejected and answer.get("result") == 0x02:
            raise DestinationUnavailable(f"{dest.where}: association rejected for now ({answer['rejected']})")
        elif assoc.is_rejected:
            yield None, f"association rejected ({answer.get('rejected', 'no reason given')})"
        elif assoc.rejected_contexts and not assoc.accepted_contexts:
            yield None, "every presentation context refused: " + _contexts_text(assoc.rejected_contexts, proposed or {})
        else:
            raise DestinationUnavailable(f"{dest.where}: no association (connection refused, reset or timed out)")
    finally:
        if assoc.is_established:
            assoc.release()


def _contexts_text(contexts: list[Any], proposed: dict[str, set[str]]) -> str:
    """The refused contexts in words, with the transfer syntaxes we proposed (``proposed``: SOP
    class -> syntaxes; the answer's own syntax field is not what was asked)."""
    from pydicom.uid import UID

    return "; ".join(
        f"{UID(c.abstract_syntax).name} in {', '.join(sorted(UID(t).name for t in proposed.get(c.abstract_syntax, ())))}: "
        f"{context_result(c.result)}"
        for c in contexts
    )


def _proposed(series: SeriesInstances) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for i in series.instances:
        out.setdefault(i.sop_class_uid, set()).add(i.transfer_syntax_uid)
    return out


def _requested_contexts(series: SeriesInstances) -> list[Any]:
    from pynetdicom import build_context

    pairs = sorted({(i.sop_class_uid, i.transfer_syntax_uid) for i in series.instances})
    if len(pairs) > MAX_CONTEXTS:
        raise ValueError(f"{series.source}: {len(pairs)} SOP class / transfer syntax pairs exceed {MAX_CONTEXTS} presentation contexts")
    return [build_context(sop_class, [syntax]) for sop_class, syntax in pairs]


def send(dest: DimseDestination, series: SeriesInstances) -> SendResult:
    """C-STORE every instance of ``series`` over one association (module docstring)."""
    result = SendResult()
    proposed = _proposed(series)
    with _association(dest, _requested_contexts(series), proposed) as (assoc, rejection):
        if assoc is None:
            result.rejection = rejection
            return result
        accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
        for instance in series.instances:
            if (instance.sop_class_uid, instance.transfer_syntax_uid) not in accepted:
                refused = [c for c in assoc.rejected_contexts if c.abstract_syntax == instance.sop_class_uid]
                result.refused.append(Refused(sop_instance_uid=instance.sop_instance_uid, file=instance.name,
                                              status="context refused", meaning=_contexts_text(refused, proposed) or "not accepted"))  # fmt: skip
                continue
            status = assoc.send_c_store(instance.path)
            if "Status" not in status:
                raise DestinationUnavailable(f"{dest.where}: no C-STORE response for {instance.name} (association lost)")
            category, meaning = storage_status(status.Status)
            if category in ("Success", "Warning"):
                result.accepted.append(instance.sop_instance_uid)
            else:
                result.refused.append(Refused(sop_instance_uid=instance.sop_instance_uid, file=instance.name,
                                              status=hex_code(status.Status), meaning=meaning))  # fmt: skip
    return result


def held_instances(dest: DimseDestination, series: SeriesInstances) -> set[str] | None:
    """SOP Instance UIDs the destination holds in the series (Study Root C-FIND, IMAGE level),
    or None when it does not answer C-FIND for us."""
    from pydicom.dataset import Dataset
    from pynetdicom import build_context
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = series.study_instance_uid
    query.SeriesInstanceUID = series.series_instance_uid
    query.SOPInstanceUID = ""
    held: set[str] = set()
    with _association(dest, [build_context(FIND)]) as (assoc, rejection):
        if assoc is None:
            log.warning("%s: C-FIND not possible (%s): delivery left unverified", dest.where, rejection)
            return None
        for status, identifier in assoc.send_c_find(query, FIND):
            if "Status" not in status:
                raise DestinationUnavailable(f"{dest.where}: no C-FIND response (association lost)")
            if status.Status in (0xFF00, 0xFF01) and identifier is not None and "SOPInstanceUID" in identifier:
                held.add(str(identifier.SOPInstanceUID))
            elif status.Status not in (0x0000, 0xFF00, 0xFF01):
                log.warning("%s: C-FIND failed with %s (%s): delivery left unverified", dest.where,
                            hex_code(status.Status), storage_status(status.Status)[1])  # fmt: skip
                return None
    return held
