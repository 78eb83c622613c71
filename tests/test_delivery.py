"""Delivery without Orthanc: destinations and their credentials, answers and their meaning, a partial refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pacs_fixtures import phantom

from ctdenoise.delivery import deliver
from ctdenoise.delivery.destinations import dicomweb_from_cli, dimse_from_cli, from_connection_fields
from ctdenoise.delivery.outcome import DeliveryRejected, DeliveryUnconfirmed, DeliveryOutcome, DeliveryRecord, Protocol
from ctdenoise.errors import ParameterError


def test_connection_fields_make_each_kind_of_destination() -> None:
    web = from_connection_fields("pacs_web", "http", "http://pacs:8042/dicom-web", None, None, "u", "pw", {})
    assert (web.protocol, web.url, web.username) == (Protocol.DICOMWEB, "http://pacs:8042/dicom-web", "u")
    web = from_connection_fields("pacs_web", "https", "pacs.example", 443, "https", None, None, {"path": "/wado/rs", "token": "t0k"})
    assert web.url == "https://pacs.example:443/wado/rs" and web.token.get_secret_value() == "t0k"
    dimse = from_connection_fields("pacs_dimse", "dimse", "pacs", None, None, None, None, {"called_ae": "PACS"})
    assert (dimse.protocol, dimse.port, dimse.called_ae, dimse.calling_ae) == (Protocol.DIMSE, 104, "PACS", "CTDENOISE")
    with pytest.raises(ParameterError, match="Airflow connection 'bad': called_ae: an AE title"):
        from_connection_fields("bad", "dimse", "pacs", 104, None, None, None, {"called_ae": "A" * 17})


def test_credentials_never_show() -> None:
    web = dicomweb_from_cli("http://pacs/dicom-web", env={"DICOMWEB_USERNAME": "u", "DICOMWEB_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(web) + json.dumps(web.model_dump(mode="json")) + web.where
    with pytest.raises(ParameterError, match="credentials in the URL"):
        dicomweb_from_cli("http://u:hunter2@pacs/dicom-web", env={})
    with pytest.raises(ParameterError, match="expected HOST:PORT"):
        dimse_from_cli("pacs", "PACS", None)


def outcome(**changes) -> DeliveryOutcome:
    base = {"protocol": "dimse", "destination": "DIMSE PACS@h:104", "source": "out/rank-9", "study_instance_uid": "1.2",
            "series_instance_uid": "1.2.3", "expected": 3, "sent": 3, "confirmed": 3, "verified_by": "C-FIND",
            "finished_at": "2026-12-03T00:00:00+00:00", "seconds": 1.0}  # fmt: skip
    return DeliveryOutcome.model_validate({**base, **changes})


def test_outcomes_check_by_kind() -> None:
    assert outcome().check().status == "delivered"
    assert outcome(confirmed=None, verified_by=None).status == "delivered_unverified"
    refused = [{"sop_instance_uid": "1.2.3.2", "file": "IM0002.dcm", "status": "0xA700", "meaning": "Refused: Out of Resources"}]
    with pytest.raises(DeliveryRejected, match=r"series 1\.2\.3 .*1 of 3 instances refused: IM0002.dcm \(1\.2\.3\.2\): 0xA700 Refused"):
        outcome(sent=2, confirmed=2, refused=refused).check()
    with pytest.raises(DeliveryUnconfirmed, match="missing 1.2.3.1"):
        outcome(confirmed=2, missing=["1.2.3.1"]).check()
    record = DeliveryRecord(output="rank-9", output_url="s3://b/d/1/rank-9", destination_name="pacs", outcome=outcome(sent=2, refused=refused))
    assert DeliveryRecord.from_json(json.loads(json.dumps(record.as_json()))) == record
    assert record.as_json()["outcome"]["status"] == "partial"


def test_stow_failed_sop_sequence_names_the_refused_instances() -> None:
    """A 409 answer's FailedSOPSequence: those instances are refused with the reason's meaning."""
    from ctdenoise.delivery.dicomweb import _failed_sop_response

    class Answer:
        headers = {"Content-Type": "application/dicom+json"}

        def json(self) -> dict:
            return {"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3.2"]},
                                                         "00081197": {"vr": "US", "Value": [0xC122]}}]}}  # fmt: skip

    ds = _failed_sop_response(Answer())
    from ctdenoise.delivery.statuses import stow_reason

    item = ds.FailedSOPSequence[0]
    assert item.ReferencedSOPInstanceUID == "1.2.3.2" and stow_reason(item.FailureReason) == "Referenced Transfer Syntax not supported"


@pytest.fixture()
def refusing_scp():
    """A DIMSE storage SCP (pynetdicom) that refuses instance number 2 with 0xA700 and stores the rest."""
    import pacs
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    stored: dict[str, str] = {}

    def on_store(event) -> int:  # noqa: ANN001
        ds = event.dataset
        if int(ds.InstanceNumber) == 2:
            return 0xA700
        stored[str(ds.SOPInstanceUID)] = str(ds.SeriesInstanceUID)
        return 0x0000

    ae = AE(ae_title="FAKEPACS")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = pacs.free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield port, stored
    finally:
        server.shutdown()


def test_a_partial_acceptance_names_the_refused_instance(refusing_scp, tmp_path: Path) -> None:
    port, stored = refusing_scp
    phantom(tmp_path / "s", slices=3)
    result = deliver(str(tmp_path / "s"), dimse_from_cli(f"127.0.0.1:{port}", "FAKEPACS", None), verify_seconds=0)
    assert (result.status, result.sent, len(stored)) == ("partial", 2, 2)
    assert [(r.file, r.status, r.meaning) for r in result.refused] == [("IM0002.dcm", "0xA700", "Refused: Out of Resources")]
    assert result.confirmed is None  # this SCP answers no C-FIND: unverified, not failed
    with pytest.raises(DeliveryRejected, match="IM0002.dcm"):
        result.check()
