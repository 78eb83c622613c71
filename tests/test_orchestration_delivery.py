"""plan_deliveries and deliver: which outputs go where, records beside the report, against a real Orthanc."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pacs_fixtures import phantom, start

from ctdenoise import layout, storage
from ctdenoise.delivery.outcome import DeliveryRecord
from ctdenoise.errors import TransientError
from ctdenoise.orchestration import delivery
from ctdenoise.params import RunParams
from ctdenoise.records import DeliveryItem
from ctdenoise.report.deliveries import START, load_records, rebuild, splice

SOURCE_UID = "1.2.826.0.1.3680043.8.498.77"


def publish_output(series_url: Path, name: str, src: Path) -> str:
    out = series_url / name
    shutil.copytree(src, out / "dicom")
    (out / "_SUCCESS").write_text("")
    return str(out)


@pytest.fixture()
def completed(tmp_path: Path) -> dict:
    """A completed series: report.json listing global ranks 3 (Gavish-Donoho) and 5, local x0.5 (automatic) and x1."""
    series_url = tmp_path / "denoised" / SOURCE_UID
    series_url.mkdir(parents=True)
    record = phantom(tmp_path / "derived", seed=7)
    urls = {name: publish_output(series_url, name, tmp_path / "derived") for name in ("rank-3", "rank-5", "local-x0.5", "local-x1")}
    metrics = {"series_instance_uid": record["series_instance_uid"]}
    summary = {
        "series_instance_uid": SOURCE_UID,
        "source": {"source_url": "s3://b/incoming/2026-11-20/scan-a"},
        "ranks": [{"rank": 3, "rules": [{"rule": "gavish_donoho"}], "status": "ok", "output_url": urls["rank-3"], "metrics": metrics},
                  {"rank": 5, "rules": [{"rule": "explicit"}], "status": "ok", "output_url": urls["rank-5"], "metrics": metrics}],
        "local": {"automatic_multiplier": 0.5, "outputs": [
            {"multiplier": 0.5, "status": "ok", "output_url": urls["local-x0.5"], "metrics": metrics},
            {"multiplier": 1.0, "status": "failed", "output_url": urls["local-x1"], "metrics": None}]},
    }  # fmt: skip
    (series_url / "report.json").write_text(json.dumps(summary))
    (series_url / "report.html").write_text(f"<html><body><h1>report</h1>{START}\n<p>none</p><!-- /deliveries -->\n</body></html>")
    return {"series_url": str(series_url), "uid": record["series_instance_uid"], "urls": urls}


def names(items: list[DeliveryItem]) -> list[str]:
    return [i.output for i in items]


def test_plan_takes_the_outputs_the_run_names(completed: dict) -> None:
    url = completed["series_url"]
    plan = delivery.plan([url, url], RunParams(), ["pacs"])
    assert names(plan) == ["rank-3", "local-x0.5"] and plan[0].label == "scan-a rank-3" and plan[0].automatic
    assert names(delivery.plan([url], RunParams(deliver=("all",)), ["pacs"])) == ["rank-3", "rank-5", "local-x0.5"]  # x1 failed
    assert names(delivery.plan([url], RunParams(deliver=("rank-5",)), ["pacs"])) == ["rank-5"]
    assert delivery.plan([str(Path(url).parent / "incomplete")], RunParams(), ["pacs"]) == []


def test_plan_leaves_out_what_was_delivered_unless_force(completed: dict, orthanc_conn) -> None:
    url = completed["series_url"]
    item = delivery.plan([url], RunParams(deliver=("rank-5",)), ["pacs_web"])[0]
    delivery.deliver_item(item, {"run_id": "r1", "try_number": 1}, 5.0)
    assert delivery.plan([url], RunParams(deliver=("rank-5",)), ["pacs_web"]) == []
    assert names(delivery.plan([url], RunParams(deliver=("rank-5",), force=True), ["pacs_web"])) == ["rank-5"]
    assert [i.destinations for i in delivery.plan([url], RunParams(deliver=("rank-5",)), ["pacs_web", "pacs_dimse"])] == [("pacs_dimse",)]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    yield from start(tmp_path_factory.mktemp("orthanc"))


@pytest.fixture()
def orthanc_conn(orthanc, monkeypatch: pytest.MonkeyPatch):
    """Airflow connections to the Orthanc (DICOMweb and DIMSE) and to a port where nothing listens."""
    import pacs

    monkeypatch.setenv("AIRFLOW_CONN_PACS_WEB", json.dumps({"conn_type": "http", "host": orthanc.dicomweb_url}))
    monkeypatch.setenv("AIRFLOW_CONN_PACS_DIMSE", json.dumps({"conn_type": "dimse", "host": "127.0.0.1", "port": orthanc.dicom_port,
                                                              "extra": {"called_ae": orthanc.aet}}))  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_PACS_DOWN", json.dumps({"conn_type": "dimse", "host": "127.0.0.1", "port": pacs.free_port(),
                                                             "extra": {"called_ae": "NOBODY", "timeout_seconds": 5}}))  # fmt: skip
    return orthanc


@pytest.mark.slow
def test_deliver_records_each_answer_beside_the_report(completed: dict, orthanc_conn) -> None:
    url = completed["series_url"]
    item = delivery.plan([url], RunParams(deliver=("local-x0.5",)), ["pacs_web", "pacs_dimse", "pacs_down"])[0]
    with pytest.raises(TransientError, match="NOBODY@127.0.0.1"):
        delivery.deliver_item(item, {"dag_id": "ct_denoise", "run_id": "r1", "try_number": 1}, 5.0)
    records = load_records(url)
    assert [(r.output, r.destination_name, r.outcome.status.value) for r in records] == [
        ("local-x0.5", "pacs_dimse", "delivered"), ("local-x0.5", "pacs_web", "delivered")]  # fmt: skip
    assert orthanc_conn.series()[completed["uid"]]["instances"] == 6
    summary = json.loads(Path(layout.deliveries_json(url)).read_text())
    assert [d["destination_name"] for d in summary["deliveries"]] == ["pacs_dimse", "pacs_web"]
    page = Path(layout.report_html(url)).read_text()
    assert page.count("Delivered to PACS") == 1 and "DIMSE ORTHANC@127.0.0.1" in page and "<p>none</p>" not in page
    assert json.loads(Path(layout.report_json(url)).read_text()).get("deliveries_json") is None  # report.json untouched
    # the retry (destination still down) sends nothing again to those that have it, and fails transient again
    with pytest.raises(TransientError):
        delivery.deliver_item(item, {"run_id": "r1", "try_number": 2}, 5.0)
    assert [r.run_id for r in load_records(url)] == ["r1", "r1"]
    # a retry in another run (a forced re-run) sends again: an earlier run's records do not count
    with pytest.raises(TransientError):
        delivery.deliver_item(item, {"run_id": "r2", "try_number": 2}, 5.0)
    assert [r.run_id for r in load_records(url)] == ["r2", "r2"]  # each (output, destination) keeps its latest record


def test_rebuild_converges_on_every_record(completed: dict) -> None:
    """Records written by other tasks between a rebuild's listing and its write end up in the summary."""
    from test_delivery import outcome  # the same sample outcome

    url = completed["series_url"]
    for name in ("a", "b", "c"):
        record = DeliveryRecord(output="rank-3", output_url="x", destination_name=name, outcome=outcome())
        storage.write_bytes(layout.delivery_record(url, "rank-3", name), json.dumps(record.as_json()).encode())
    assert len(rebuild(url)) == 3
    assert len(json.loads(Path(layout.deliveries_json(url)).read_text())["deliveries"]) == 3
    assert splice("<body>x</body>", f"{START}s<!-- /deliveries -->") == f"<body>x{START}s<!-- /deliveries -->\n</body>"
