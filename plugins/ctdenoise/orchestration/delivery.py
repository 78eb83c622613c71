"""The DAG's delivery steps: ``plan_deliveries`` (which outputs, to which destinations) and ``deliver``.

Both run as Python tasks in the Airflow worker in both runtimes, unlike convert and
reconstruct: a delivery is network I/O of one series (no CPU or memory worth a pod), its
credentials are Airflow connections (a pod would need them copied into Kubernetes secrets, a
second place to rotate them), and the same worker already reads the bucket for ``report``.

Destinations are the deployment's (``CT_DENOISE_DESTINATIONS``: Airflow connection ids, read
when the task runs, so credentials never reach the DAG file, a rendered field or a log);
which outputs go is the run's ``deliver`` parameter (:mod:`ctdenoise.delivery.choice`).

``plan_deliveries`` takes the series this run completed and those ``discover_series`` found
already published (a later run delivers what an earlier one could not), and leaves out each
output already delivered to a destination with the same derived series UID (unless ``force``).
``deliver`` sends one output to each destination still due, writes a record per answer beside
the series' report (:mod:`ctdenoise.report.deliveries`), and fails as the worst answer says:
transient (retried with backoff; destinations already delivered on an earlier try are not sent
again) before a rejection (fails at once).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ctdenoise.params import RunParams
from ctdenoise.records import DeliveryItem, Delivered

log = logging.getLogger(__name__)


def destination(conn_id: str) -> Any:
    """The destination of an Airflow connection (:func:`ctdenoise.delivery.destinations.from_connection_fields`)."""
    from airflow.sdk import BaseHook

    from ctdenoise.delivery.destinations import from_connection_fields

    conn = BaseHook.get_connection(conn_id)
    return from_connection_fields(conn_id, conn.conn_type or "", conn.host, conn.port, conn.schema, conn.login,
                                  conn.password, conn.extra_dejson)  # fmt: skip


def plan(series_urls: Iterable[str], params: RunParams, destinations: list[str],
         storage_options: Mapping[str, Any] | None = None) -> list[DeliveryItem]:  # fmt: skip
    """One item per chosen output of each completed series with a destination still due."""
    from ctdenoise import storage
    from ctdenoise.completion import read_report
    from ctdenoise.delivery.choice import chosen, published_outputs
    from ctdenoise.report.deliveries import delivered, load_records

    items: list[DeliveryItem] = []
    for series_url in dict.fromkeys(series_urls):
        summary = read_report(series_url, storage_options)
        if summary is None:
            log.warning("%s: no report.json (series not complete): nothing delivered", series_url)
            continue
        done = delivered(load_records(series_url, storage_options))
        folder = storage.basename(str((summary.get("source") or {}).get("source_url") or series_url))
        for output in chosen(published_outputs(summary), params.deliver):
            due = tuple(d for d in destinations if params.force or (output.name, d, output.series_instance_uid) not in done)
            if not due:
                log.info("%s %s: already delivered to %s", folder, output.name, ", ".join(destinations))
                continue
            items.append(DeliveryItem(folder=folder, series_instance_uid=str(summary["series_instance_uid"]), series_url=series_url,
                                      output=output.name, output_url=output.url, output_series_uid=output.series_instance_uid,
                                      automatic=output.automatic, destinations=due))  # fmt: skip
    return items


def deliver_item(item: DeliveryItem, run: Mapping[str, Any], verify_seconds: float,
                 storage_options: Mapping[str, Any] | None = None) -> Delivered:  # fmt: skip
    """Send one output to its destinations (module docstring); raise the worst failure after recording every answer."""
    from ctdenoise.delivery import deliver
    from ctdenoise.delivery.outcome import DeliveryRecord
    from ctdenoise.errors import CtDenoiseError, TransientError
    from ctdenoise.report.deliveries import delivered, load_records, rebuild, write_record

    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # a line per PDU otherwise
    already: set[str] = set()
    if run.get("try_number", 1) > 1:  # an earlier try of this task, in this run, may have delivered some
        mine = [r for r in load_records(item.series_url, storage_options) if r.run_id == run.get("run_id")]
        already = {name for output, name, uid in delivered(mine) if (output, uid) == (item.output, item.output_series_uid)}
        for name in already & set(item.destinations):
            log.info("%s: delivered to %s on an earlier try", item.label, name)
    records: list[DeliveryRecord] = []
    failures: list[Exception] = []
    try:
        for name in (n for n in item.destinations if n not in already):
            try:
                outcome = deliver(item.output_url, destination(name), storage_options, verify_seconds=verify_seconds)
            except (CtDenoiseError, TransientError) as exc:  # no answer to record (down, unreadable output)
                failures.append(exc)
                continue
            record = DeliveryRecord(output=item.output, output_url=item.output_url, destination_name=name, outcome=outcome,
                                    automatic=item.automatic, **run)  # fmt: skip
            write_record(item.series_url, record, storage_options)
            records.append(record)
            log.info("%s -> %s: %s, %d sent, %s confirmed", item.label, name, outcome.status.value, outcome.sent, outcome.confirmed)
            try:
                outcome.check()
            except (CtDenoiseError, TransientError) as exc:
                failures.append(exc)
    finally:
        if records:  # once for the item's records, whatever ended the loop
            rebuild(item.series_url, storage_options)
    transient = [f for f in failures if isinstance(f, TransientError)]
    if transient or failures:
        raise (transient or failures)[0]
    return Delivered(item=item, deliveries=tuple(records))
