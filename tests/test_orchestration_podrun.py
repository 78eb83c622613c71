"""The pod entry point: runs the CLI command, echoes it, writes the same XCom as the local tasks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ctdenoise.orchestration import batch, podrun

SERIES = {"folder": "scan-a", "series_instance_uid": "1.2.3", "matrix_url": "s3://b/work/scan-a/matrix/1.2.3.zarr"}


def fake_cli(*records: dict, code: int = 0) -> list[str]:
    """A command printing JSON lines (and a log line) then exiting with ``code``."""
    lines = [json.dumps(r) for r in records] + ["not json, a log line"]
    script = f"import sys\nfor line in {lines!r}: print(line)\nsys.exit({code})"
    return [sys.executable, "-c", script]


def test_convert_result_is_written_to_the_xcom_file(tmp_path: Path, capsys) -> None:
    xcom = tmp_path / "return.json"
    written = {"status": "written", "series_instance_uid": "1.2.3", "url": SERIES["matrix_url"], "slices": 9}
    code = podrun.main(["convert", "--task", json.dumps(SERIES), "--xcom", str(xcom), "--", *fake_cli(written)])
    assert code == 0
    assert json.loads(xcom.read_text()) == batch.convert_result(SERIES, [written])
    assert "not json, a log line" in capsys.readouterr().out  # the pod log shows the command's output


def test_failed_series_fails_the_pod_without_xcom(tmp_path: Path, capsys) -> None:
    xcom = tmp_path / "return.json"
    other = {"status": "written", "series_instance_uid": "9.9", "url": "elsewhere", "slices": 3}
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
    item = {"series": SERIES, "rank": 7, "label": "scan-a rank=7", "output_url": "s3://b/denoised/1.2.3/rank-7"}
    metrics = {"rank": 7, "retained_energy": 0.98}
    assert podrun.main(["reconstruct", "--task", json.dumps(item), "--xcom", str(xcom), "--", *fake_cli(metrics)]) == 0
    result = json.loads(xcom.read_text())
    assert result == {"folder": "scan-a", "series_instance_uid": "1.2.3", "mode": "global", "rank": 7, "multiplier": None,
                      "label": "scan-a rank=7", "output_url": item["output_url"], "metrics": metrics}  # fmt: skip


def test_runs_the_real_cli(tmp_path: Path) -> None:
    """``ctdenoise`` resolves in this environment (as in the worker image) and its failures pass through."""
    import shutil

    cli = shutil.which("ctdenoise") or str(Path(sys.executable).parent / "ctdenoise")
    xcom = tmp_path / "return.json"
    command = [cli, "convert", str(tmp_path / "nothing"), str(tmp_path / "out")]
    code = podrun.main(["convert", "--task", json.dumps(SERIES), "--xcom", str(xcom), "--", *command])
    assert code == 2 and not xcom.exists()
