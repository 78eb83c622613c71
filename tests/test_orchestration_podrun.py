"""The pod entry point: runs the CLI command, echoes it, writes the same XCom as the local tasks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ctdenoise.orchestration import podrun
from ctdenoise.params import RunParams
from ctdenoise.records import Converted, Output, Reconstructed, Series, Written

ONE = Series(folder="scan-a", ds="2026-11-20", source_url="s3://b/incoming/scan-a", files=3, series_instance_uid="1.2.3",
             work_url="s3://b/work/scan-a", denoised_url="s3://b/denoised", params=RunParams())  # fmt: skip
SERIES = ONE.to_xcom()


def written_record(uid: str, url: str, slices: int) -> dict:
    return Written(series_instance_uid=uid, url=url, rows=8, columns=8, slices=slices, ordering="normal", seconds=0.1).to_xcom()


def fake_cli(*records: dict, code: int = 0) -> list[str]:
    """A command printing JSON lines (and a log line) then exiting with ``code``."""
    lines = [json.dumps(r) for r in records] + ["not json, a log line"]
    script = f"import sys\nfor line in {lines!r}: print(line)\nsys.exit({code})"
    return [sys.executable, "-c", script]


def test_convert_result_is_written_to_the_xcom_file(tmp_path: Path, capsys) -> None:
    xcom = tmp_path / "return.json"
    written = written_record("1.2.3", ONE.matrix_url, 9)
    code = podrun.main(["convert", "--task", json.dumps(SERIES), "--xcom", str(xcom), "--", *fake_cli(written)])
    assert code == 0
    assert Converted.from_xcom(json.loads(xcom.read_text())) == Converted(series=ONE, matrix=Written(**written),
                                                                          outcomes=(Written(**written),))  # fmt: skip
    assert "not json, a log line" in capsys.readouterr().out  # the pod log shows the command's output


def test_failed_series_fails_the_pod_without_xcom(tmp_path: Path, capsys) -> None:
    xcom = tmp_path / "return.json"
    other = written_record("9.9", "elsewhere", 3)
    failed = {"status": "failed", "series_instance_uid": "1.2.3", "file": "x.dcm", "reason": "inconsistent rows"}
    code = podrun.main(["convert", "--task", json.dumps(SERIES), "--xcom", str(xcom), "--", *fake_cli(other, failed)])
    assert code == 2 and not xcom.exists()
    assert "inconsistent rows" in capsys.readouterr().err


def test_command_exit_status_is_passed_on(tmp_path: Path) -> None:
    xcom = tmp_path / "return.json"
    assert podrun.main(["convert", "--task", json.dumps(SERIES), "--xcom", str(xcom), "--", *fake_cli(code=2)]) == 2
    assert not xcom.exists()


def test_reconstruct_result(tmp_path: Path) -> None:
    xcom = tmp_path / "return.json"
    item = Output(series=ONE, mode="global", rank=7)
    metrics = {"rank": 7, "retained_energy": 0.98}
    task = json.dumps(item.to_xcom())
    assert podrun.main(["reconstruct", "--task", task, "--xcom", str(xcom), "--", *fake_cli(metrics)]) == 0
    result = json.loads(xcom.read_text())
    assert Reconstructed.from_xcom(result) == Reconstructed(output=item, metrics=metrics)
    assert result["output"]["label"] == "scan-a rank=7" and result["output"]["output_url"] == "s3://b/denoised/1.2.3/rank-7"


def test_runs_the_real_cli(tmp_path: Path) -> None:
    """``ctdenoise`` resolves in this environment (as in the worker image) and its failures pass through."""
    import shutil

    cli = shutil.which("ctdenoise") or str(Path(sys.executable).parent / "ctdenoise")
    xcom = tmp_path / "return.json"
    command = [cli, "convert", str(tmp_path / "nothing"), str(tmp_path / "out")]
    code = podrun.main(["convert", "--task", json.dumps(SERIES), "--xcom", str(xcom), "--", *command])
    assert code == 2 and not xcom.exists()


def test_every_exit_status_of_the_command_reaches_the_pod(tmp_path: Path) -> None:
    """One classification (ctdenoise.errors): 2 input and 75 transient and 1 a bug pass through;
    3 (a partial conversion) becomes 0 when this series was written, 2 when it was refused."""
    from ctdenoise.errors import EXIT_BUG, EXIT_INPUT, EXIT_PARTIAL, EXIT_TRANSIENT

    ours, other = written_record("1.2.3", ONE.matrix_url, 9), written_record("9.9", "elsewhere", 3)
    failed = {"status": "failed", "series_instance_uid": "1.2.3", "file": "x.dcm", "reason": "inconsistent rows"}
    cases = [(fake_cli(code=EXIT_BUG), EXIT_BUG), (fake_cli(code=EXIT_INPUT), EXIT_INPUT),
             (fake_cli(code=EXIT_TRANSIENT), EXIT_TRANSIENT), (fake_cli(ours, failed | {"series_instance_uid": "7.7"},
             code=EXIT_PARTIAL), 0), (fake_cli(other, failed, code=EXIT_PARTIAL), EXIT_INPUT)]  # fmt: skip
    for i, (command, expected) in enumerate(cases):
        xcom = tmp_path / f"{i}.json"
        assert podrun.main(["convert", "--task", json.dumps(SERIES), "--xcom", str(xcom), "--", *command]) == expected, command
        assert xcom.exists() == (expected == 0)


def test_the_pod_is_decided_by_its_own_series(tmp_path: Path) -> None:
    """As the local runtime decides (Converted.from_outcomes): another series' failure does not
    fail this pod, this series' failure fails it with its kind (75 transient: retried)."""
    xcom = tmp_path / "return.json"
    mine = written_record("1.2.3", ONE.matrix_url, 9)
    other = {"status": "failed", "series_instance_uid": "9.9", "file": "", "reason": "S3 503", "kind": "transient"}
    run = ["convert", "--task", json.dumps(SERIES), "--xcom", str(xcom), "--"]
    assert podrun.main([*run, *fake_cli(mine, other, code=75)]) == 0 and xcom.exists()
    xcom.unlink()
    ours = {"status": "failed", "series_instance_uid": "1.2.3", "file": "x.dcm", "reason": "storage error after 3 attempts"}
    assert podrun.main([*run, *fake_cli({**ours, "kind": "transient"}, code=75)]) == 75 and not xcom.exists()
    assert podrun.main([*run, *fake_cli({**ours, "kind": "bug"}, code=1)]) == 1
    assert podrun.main([*run, *fake_cli(ours, other, code=3)]) == 2
