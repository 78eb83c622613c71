"""Delivery against a real Orthanc: STOW-RS and C-STORE checked by querying Orthanc, rejections, a destination down."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pacs_fixtures import phantom, run_cli, start

from ctdenoise.errors import EXIT_INPUT, EXIT_TRANSIENT

pytestmark = pytest.mark.slow  # each test starts Orthanc and the CLI in fresh processes


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    yield from start(tmp_path_factory.mktemp("orthanc"), users={"radiology": "s3cret-pw"})


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("series") / "a"
    return folder, phantom(folder)


def digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.iterdir()))).hexdigest()


def outcome(done) -> dict:  # noqa: ANN001
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stdout + done.stderr
    return json.loads(lines[0])


AUTH = {"DICOMWEB_USERNAME": "radiology", "DICOMWEB_PASSWORD": "s3cret-pw"}


def test_stow_rs_delivers_and_orthanc_holds_the_series(orthanc, series) -> None:
    folder, record = series
    done = run_cli("deliver", str(folder), "--dicomweb", orthanc.dicomweb_url, env=AUTH)
    assert done.returncode == 0, done.stderr
    out = outcome(done)
    assert (out["status"], out["sent"], out["confirmed"], out["verified_by"]) == ("delivered", 6, 6, "QIDO-RS")
    held = orthanc.series(auth=("radiology", "s3cret-pw"))[record["series_instance_uid"]]
    assert held["instances"] == 6
    assert "s3cret-pw" not in done.stdout + done.stderr


def test_c_store_twice_delivers_once(orthanc, tmp_path: Path) -> None:
    """A re-delivery of the same SOP Instance UIDs (a retry) leaves one copy of each."""
    record = phantom(tmp_path / "b", seed=1)
    for _ in range(2):
        done = run_cli("deliver", str(tmp_path / "b"), "--dimse", f"127.0.0.1:{orthanc.dicom_port}", "--called-ae", orthanc.aet)
        assert done.returncode == 0, done.stderr
        out = outcome(done)
        assert (out["status"], out["sent"], out["confirmed"], out["verified_by"]) == ("delivered", 6, 6, "C-FIND")
    assert orthanc.series(auth=("radiology", "s3cret-pw"))[record["series_instance_uid"]]["instances"] == 6


def test_wrong_called_ae_is_a_rejection_with_nothing_stored(orthanc, tmp_path: Path) -> None:
    record = phantom(tmp_path / "c", seed=2)
    done = run_cli("deliver", str(tmp_path / "c"), "--dimse", f"127.0.0.1:{orthanc.dicom_port}", "--called-ae", "NOT_THE_PACS")
    assert done.returncode == EXIT_INPUT, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: series " + record["series_instance_uid"])
    assert "Called AE title not recognised" in error and "Rejected Permanent" in error
    assert outcome(done)["status"] == "rejected"
    assert record["series_instance_uid"] not in orthanc.series(auth=("radiology", "s3cret-pw"))


def test_wrong_password_is_a_rejection(orthanc, series) -> None:
    folder, _ = series
    done = run_cli("deliver", str(folder), "--dicomweb", orthanc.dicomweb_url,
                   env={"DICOMWEB_USERNAME": "radiology", "DICOMWEB_PASSWORD": "wrong"})  # fmt: skip
    assert done.returncode == EXIT_INPUT, done.stderr
    assert "HTTP 401: not authorised" in done.stderr and "wrong" not in done.stdout


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_destination_down_is_transient_and_nothing_is_lost(orthanc, tmp_path: Path, protocol: str) -> None:
    import pacs

    record = phantom(tmp_path / "d", seed=3)
    before = digest(tmp_path / "d")
    port = pacs.free_port()  # nothing listens there
    where = (["--dicomweb", f"http://127.0.0.1:{port}/dicom-web"] if protocol == "dicomweb"
             else ["--dimse", f"127.0.0.1:{port}", "--called-ae", orthanc.aet])  # fmt: skip
    done = run_cli("deliver", str(tmp_path / "d"), *where, "--timeout", "5", env=AUTH)
    assert done.returncode == EXIT_TRANSIENT, done.stderr
    assert "(transient: retry later)" in done.stderr and record["series_instance_uid"] not in done.stdout
    assert digest(tmp_path / "d") == before
    # the retry, once the destination is back, delivers everything once
    live = (["--dicomweb", orthanc.dicomweb_url] if protocol == "dicomweb"
            else ["--dimse", f"127.0.0.1:{orthanc.dicom_port}", "--called-ae", orthanc.aet])  # fmt: skip
    assert run_cli("deliver", str(tmp_path / "d"), *live, env=AUTH).returncode == 0
    assert orthanc.series(auth=("radiology", "s3cret-pw"))[record["series_instance_uid"]]["instances"] == 6


def test_a_refused_transfer_syntax_is_a_rejection(tmp_path: Path) -> None:
    """Orthanc taking Implicit VR Little Endian only refuses our Explicit VR files' presentation context."""
    phantom(tmp_path / "e", seed=4)
    for server in start(tmp_path / "orthanc", transfer_syntaxes=["1.2.840.10008.1.2"]):
        done = run_cli("deliver", str(tmp_path / "e"), "--dimse", f"127.0.0.1:{server.dicom_port}", "--called-ae", server.aet)
        assert done.returncode == EXIT_INPUT, done.stderr
        assert "every presentation context refused: CT Image Storage in Explicit VR Little Endian: " in done.stderr
        assert server.series() == {}


def test_instances_acknowledged_but_dropped_are_unconfirmed(tmp_path: Path) -> None:
    """Orthanc 1.10 answers success for an instance its filter drops: the query shows it missing."""
    record = phantom(tmp_path / "f", seed=5)
    lua = "function ReceivedInstanceFilter(dicom, origin, info)\n  return dicom.InstanceNumber ~= '2'\nend\n"
    for server in start(tmp_path / "orthanc", lua=lua):
        done = run_cli("deliver", str(tmp_path / "f"), "--dicomweb", server.dicomweb_url, "--verify-seconds", "1")
        assert done.returncode == EXIT_TRANSIENT, done.stderr
        out = outcome(done)
        assert (out["status"], out["sent"], out["confirmed"], len(out["missing"])) == ("unconfirmed", 6, 5, 1)
        assert out["missing"][0] in done.stderr
        assert server.series()[record["series_instance_uid"]]["instances"] == 5
