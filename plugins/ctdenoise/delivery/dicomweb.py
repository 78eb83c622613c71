"""DICOMweb: STOW-RS of a series' files in batches, QIDO-RS to list them back (``dicomweb-client``).

The files are posted as they are (``application/dicom``, their own transfer syntax), a batch of
at most :data:`BATCH_BYTES` per request, so that one request is neither huge nor a waste when
it times out. The client's own retries are off: one policy of retries holds for the whole
pipeline (Airflow's, with backoff), and a CLI caller gets exit status 75 at once.

Answers:

- 2xx with a ``FailedSOPSequence`` (or 409/400 with one): those instances are refused, named
  with their ``FailureReason`` and its meaning; the rest are acknowledged;
- 401/403 (credentials), 404/405 (no STOW-RS service at that URL), other 4xx: a rejection;
- 5xx, 408, 429, connection refused or timed out: :class:`DestinationUnavailable`.

Verification lists the series' instances by QIDO-RS (``SOPInstanceUID`` of each, following the
service's paging). A service without QIDO-RS (4xx) leaves the delivery unverified.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from ctdenoise.delivery.destinations import DicomWebDestination
from ctdenoise.delivery.instances import Instance, SeriesInstances
from ctdenoise.delivery.outcome import DestinationUnavailable, Refused
from ctdenoise.delivery.sent import SendResult
from ctdenoise.delivery.statuses import hex_code, stow_reason

log = logging.getLogger(__name__)
BATCH_BYTES = 32 * 2**20
TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}
REQUEST_REFUSALS = {401: "not authorised (check the connection's credentials)", 403: "forbidden for these credentials",
                    404: "no STOW-RS service at this URL", 405: "STOW-RS not allowed at this URL",
                    413: "request too large", 415: "media type application/dicom not supported"}  # fmt: skip


def client(dest: DicomWebDestination) -> Any:
    """A ``DICOMwebClient`` with the destination's credentials, no retries of its own, no chunked uploads."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if dest.token is not None:
        session.headers["Authorization"] = f"Bearer {dest.token.get_secret_value()}"
    elif dest.username:
        session.auth = (dest.username, dest.password.get_secret_value() if dest.password else "")
    web = DICOMwebClient(dest.url, session=session, timeout=dest.timeout_seconds, chunk_size=2 * BATCH_BYTES)
    web.set_http_retry_params(retry=False)
    return web


def batches(instances: tuple[Instance, ...]) -> Iterator[list[Instance]]:
    batch: list[Instance] = []
    size = 0
    for instance in instances:
        if batch and size + instance.size > BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(instance)
        size += instance.size
    if batch:
        yield batch


def send(dest: DicomWebDestination, series: SeriesInstances) -> SendResult:
    """STOW-RS every instance of ``series`` (module docstring)."""
    import pydicom

    web = client(dest)
    result = SendResult()
    for batch in batches(series.instances):
        datasets = [pydicom.dcmread(i.path) for i in batch]
        answer = _post(web, dest, datasets, series)
        if isinstance(answer, str):
            result.rejection = answer
            return result
        failed = {str(item.ReferencedSOPInstanceUID): item for item in answer.get("FailedSOPSequence", [])}
        for instance in batch:
            item = failed.get(instance.sop_instance_uid)
            if item is None:
                result.accepted.append(instance.sop_instance_uid)
                continue
            code = int(item.get("FailureReason", 0x0110))
            result.refused.append(Refused(sop_instance_uid=instance.sop_instance_uid, file=instance.name,
                                          status=hex_code(code), meaning=stow_reason(code)))  # fmt: skip
    return result


def _post(web: Any, dest: DicomWebDestination, datasets: list[Any], series: SeriesInstances) -> Any:
    """The STOW-RS response dataset, or a refusal of the request as text."""
    import requests

    try:
        return web.store_instances(datasets, study_instance_uid=series.study_instance_uid)
    except requests.HTTPError as exc:
        response = exc.response
        code = response.status_code if response is not None else 0
        if code in TRANSIENT_HTTP:
            raise DestinationUnavailable(f"{dest.where}: STOW-RS answered HTTP {code}") from None
        failed = _failed_sop_response(response)
        if failed is not None:
            return failed
        return f"HTTP {code}: {REQUEST_REFUSALS.get(code, response.reason if response is not None else 'refused')}"
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise DestinationUnavailable(f"{dest.where}: {exc.__class__.__name__} (destination down or not answering)") from None


def _failed_sop_response(response: Any) -> Any:
    """The response body as a dataset when it is a DICOM JSON STOW-RS answer (409 lists the
    failed instances), else None."""
    import pydicom

    if response is None or "json" not in (response.headers.get("Content-Type") or ""):
        return None
    try:
        body = response.json()
        ds = pydicom.Dataset.from_json(body[0] if isinstance(body, list) else body)
    except (ValueError, TypeError, KeyError):
        return None
    return ds if "FailedSOPSequence" in ds or "ReferencedSOPSequence" in ds else None


def held_instances(dest: DicomWebDestination, series: SeriesInstances) -> set[str] | None:
    """SOP Instance UIDs the service holds in the series (QIDO-RS), or None without QIDO-RS."""
    import requests

    try:
        found = client(dest).search_for_instances(
            study_instance_uid=series.study_instance_uid, series_instance_uid=series.series_instance_uid,
            fields=["SOPInstanceUID"], get_remaining=True,
        )  # fmt: skip
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        if code in TRANSIENT_HTTP:
            raise DestinationUnavailable(f"{dest.where}: QIDO-RS answered HTTP {code}") from None
        log.warning("%s: QIDO-RS answered HTTP %s: delivery left unverified", dest.where, code)
        return None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise DestinationUnavailable(f"{dest.where}: QIDO-RS {exc.__class__.__name__}") from None
    return {str(item["00080018"]["Value"][0]) for item in found if item.get("00080018", {}).get("Value")}
