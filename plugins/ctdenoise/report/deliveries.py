"""What was delivered where and when, kept beside the series' report without touching ``report.json``.

``report.json`` is the completion marker of a series, written once by the ``report`` step; a
delivery happens after it (and again later: a retry, a later run, a new destination). So each
delivery attempt that got an answer writes its own record, one object per output and destination
(the latest answer wins), and the series' view of them is rebuilt from those records::

    <denoised>/<uid>/deliveries/<output>/<destination>.json   one DeliveryRecord (one PUT, one writer)
    <denoised>/<uid>/deliveries.json                          every record, rebuilt by each deliver task
    <denoised>/<uid>/report.html                              its "Delivered to PACS" section, the same

Several deliver tasks of one series run at once, so the rebuild converges instead of locking:
a task writes its records (one per destination), rebuilds once from the listing, and lists
again; if the listing changed meanwhile it rebuilds again. The last task to write therefore wrote from a listing that holds
every record written before its own (S3 lists what was written, read after write). The report
step renders the same section from the records present when it writes the page, so a forced
re-run's page keeps earlier deliveries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ctdenoise import layout, storage
from ctdenoise.delivery.outcome import DeliveryRecord

log = logging.getLogger(__name__)
START, END = "<!-- deliveries -->", "<!-- /deliveries -->"
REBUILDS = 5

SECTION = """<h2>Delivered to PACS</h2>
{% if records %}<table class="data">
<tr><th>output</th><th>destination</th><th>status</th><th>sent</th><th>confirmed</th><th>refused</th><th>when (UTC)</th><th>derived series</th></tr>
{% for r in records %}<tr class="{{ 'failed' if not r.outcome.ok else '' }}"><td>{{ r.output }}{{ ' (automatic)' if r.automatic else '' }}</td>
<td>{{ r.destination_name }}: {{ r.outcome.destination }}</td><td>{{ r.outcome.status.value }}{% if r.outcome.rejection %}: {{ r.outcome.rejection }}{% endif %}</td>
<td>{{ r.outcome.sent }} of {{ r.outcome.expected }}</td><td>{{ '—' if r.outcome.confirmed is none else r.outcome.confirmed }}{% if r.outcome.verified_by %} ({{ r.outcome.verified_by }}){% endif %}</td>
<td>{% for x in r.outcome.refused %}{{ x.file }}: {{ x.status }} {{ x.meaning }}<br>{% endfor %}{{ '—' if not r.outcome.refused else '' }}</td>
<td>{{ r.outcome.finished_at }}</td><td><code>{{ r.outcome.series_instance_uid }}</code></td></tr>
{% endfor %}</table>{% else %}<p>Not delivered (yet): no destination has answered for this series' outputs. See <code>deliveries.json</code>.</p>{% endif %}
"""


def delivered(records: Sequence[DeliveryRecord]) -> set[tuple[str, str, str]]:
    """``(output, destination, derived SeriesInstanceUID)`` of each confirmed delivery in ``records``."""
    return {(r.output, r.destination_name, r.outcome.series_instance_uid) for r in records if r.outcome.ok}


def record_key(record: DeliveryRecord) -> tuple[str, str]:
    return record.output, record.destination_name


def load_records(series_url: str, storage_options: Mapping[str, Any] | None = None) -> list[DeliveryRecord]:
    """Every delivery record of a series (sorted by output, then destination); unreadable ones are logged and left out."""
    fs, root = storage.get_fs(layout.deliveries_dir(series_url), storage_options)
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    if not fs.exists(root):
        return []
    records = []
    for path in sorted(p for p in fs.find(root) if p.endswith(".json")):
        try:
            records.append(DeliveryRecord.from_json(json.loads(fs.cat_file(path))))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable delivery record (%s); left out", path, exc)
    return sorted(records, key=record_key)


def section_html(records: Sequence[DeliveryRecord]) -> str:
    """The page's "Delivered to PACS" section, between its markers (autoescaped)."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return f"{START}\n{env.from_string(SECTION).render(records=records)}{END}"


def splice(page: str, section: str) -> str:
    """``page`` with its section between the markers replaced (appended before ``</body>`` if it has none)."""
    if START in page and END in page:
        head, _, rest = page.partition(START)
        return head + section + rest.partition(END)[2]
    return page.replace("</body>", section + "\n</body>", 1)


def write_record(series_url: str, record: DeliveryRecord, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write one record; :func:`rebuild` after a task's records gathers them (module docstring)."""
    url = layout.delivery_record(series_url, record.output, record.destination_name)
    storage.write_bytes(url, (json.dumps(record.as_json(), sort_keys=True, indent=2) + "\n").encode(), storage_options)


def rebuild(series_url: str, storage_options: Mapping[str, Any] | None = None) -> list[DeliveryRecord]:
    """Rewrite ``deliveries.json`` and the page's section from the records, until the listing is stable."""
    records = load_records(series_url, storage_options)
    for _ in range(REBUILDS):
        summary = {"series_url": series_url, "report_json": layout.report_json(series_url),
                   "deliveries": [r.as_json() for r in records]}  # fmt: skip
        storage.write_bytes(layout.deliveries_json(series_url), (json.dumps(summary, sort_keys=True, indent=2) + "\n").encode(),
                            storage_options)  # fmt: skip
        page_url = layout.report_html(series_url)
        if storage.exists(page_url, storage_options):
            page = storage.read_bytes(page_url, storage_options).decode("utf-8")
            storage.write_bytes(page_url, splice(page, section_html(records)).encode("utf-8"), storage_options)
        again = load_records(series_url, storage_options)
        if [r.as_json() for r in again] == [r.as_json() for r in records]:
            return records
        records = again
    log.warning("%s: delivery records kept changing; deliveries.json may lag the latest one", series_url)
    return records
