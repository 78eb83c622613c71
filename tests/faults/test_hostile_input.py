"""The hostile-input corpus (:mod:`corpus`) through ``convert`` and, where it converts, the rest of
the pipeline: each case gives its expected one-line outcome, never a traceback, never a path
outside the destination, and never costs the good series beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from corpus import CASES, GOOD_UID, Case, good

from ctdenoise import matrix_store
from ctdenoise.convert import convert
from ctdenoise.errors import InputError
from ctdenoise.params import RunParams

REPO = Path(__file__).resolve().parents[2]
# pydicom warns about the very values the corpus is made of (UIDs that are not UIDs...)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.valuerep")


def run_case(case: Case, root: Path) -> tuple[str | None, list, InputError | None]:
    """``(series UID under test, outcomes, the folder's input error if nothing converted)``."""
    src = root / "src"
    uid = case.build(src / "case")
    if case.with_good:
        good(src / "good")
    outcomes, error = [], None
    try:
        for outcome in convert(str(src), str(root / "dst"), params=RunParams.from_conf(case.params)):
            outcomes.append(outcome)
    except InputError as exc:
        error = exc
    return uid, outcomes, error


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_hostile_input_has_its_one_line_outcome(case: Case, tmp_path: Path) -> None:
    uid, outcomes, error = run_case(case, tmp_path)
    mine = [o for o in outcomes if o.status != "skipped" and o.series_instance_uid == uid]
    lines = [o.reason for o in outcomes if o.status != "written"] + ([str(error)] if error else [])
    assert all("\n" not in line for line in lines), lines
    written = {o.series_instance_uid for o in outcomes if o.status == "written"}
    if case.with_good:
        assert GOOD_UID in written, f"the good series beside {case.name} was lost: {outcomes}"
    if case.outcome == "failed":
        (failed,) = mine
        assert failed.status == "failed" and failed.kind == "input", failed
        assert case.fragment in failed.reason, failed.reason
        if case.file:
            assert failed.file.endswith(case.file) and case.file in failed.reason, failed
    elif case.outcome == "written":
        (done,) = mine
        assert done.status == "written", done
        warnings = matrix_store.open_matrix(done.url).attrs["warnings"]
        assert (case.fragment in " ".join(warnings)) if case.fragment else warnings == []
    else:  # skipped: every file of the case, one line each
        assert not mine and [o for o in outcomes if o.status == "skipped" and case.fragment in o.reason]
    dst = tmp_path / "dst"
    assert sorted(p.name for p in dst.iterdir()) == sorted(f"{u}.zarr" for u in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"], "nothing written outside the destination"
    assert not list(tmp_path.parent.glob("*.zarr")), "a SeriesInstanceUID of ../../x wrote beside the test's folder"


def test_what_converts_from_hostile_input_is_the_input(tmp_path: Path) -> None:
    """Bits Stored 12 and MONOCHROME1 change nothing about HU: the matrix is the stored values
    through the rescale, exactly."""
    from corpus import bits_stored_12, every_slice

    for name, build in (("bits", bits_stored_12), ("mono1", every_slice("PhotometricInterpretation", "MONOCHROME1"))):
        build(tmp_path / name)
        (done,) = convert(str(tmp_path / name), str(tmp_path / f"dst-{name}"))
        import pydicom

        first = pydicom.dcmread(sorted((tmp_path / name).glob("*.dcm"))[0])
        expected = first.pixel_array.astype(np.float64) * float(first.RescaleSlope) + float(first.RescaleIntercept)
        np.testing.assert_array_equal(matrix_store.open_matrix(done.url)[:, 0], expected.reshape(-1).astype(np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.pipeline], ids=[c.name for c in CASES if c.pipeline])
def test_what_converts_goes_through_the_whole_pipeline(case: Case, tmp_path: Path) -> None:
    """convert, both decompositions, plan, reconstruct and report, on the local file system;
    the report records what convert accepted with a warning."""
    from record_fixtures import series_for

    from ctdenoise.completion import trusted_hash
    from ctdenoise.decomposition import svd_numpy
    from ctdenoise.local_group import local_numpy
    from ctdenoise.plan import plan_series
    from ctdenoise.records import Converted, Reconstructed
    from ctdenoise.report import RunInfo, publish_report
    from ctdenoise.writer import reconstruct

    conf = {**case.params, "ranks": [2], "drop_percents": [], "auto_rank": False, "multipliers": [1.0], "tile": 8, "stride": 8,
            "inplane": "none"}  # fmt: skip
    uid = case.build(tmp_path / "incoming" / "scan-a")
    series = series_for(tmp_path, conf, uid=uid, folder="scan-a")
    outcomes = list(convert(series.source_url, series.matrix_dir, params=series.params))
    converted = Converted.from_outcomes(series, outcomes)
    svd_numpy(series.matrix_url, series.svd_url, rank=converted.svd_rank)
    local_numpy(series.matrix_url, series.local_url, series.params.local)
    items = plan_series(converted)
    results = [Reconstructed.from_metrics(i, [reconstruct(**i.reconstruct_kwargs())]) for i in items]
    done = publish_report(series, items, results, RunInfo(dag_id="ct_denoise", run_id="hostile"))
    report = json.loads(Path(done.report_json).read_text())
    assert trusted_hash(series.series_url) == series.params_hash
    assert (case.fragment in " ".join(report["warnings"])) if case.fragment else report["warnings"] == []
    assert {r["status"] for r in report["ranks"]} == {"ok"} and report["local"]["outputs"][0]["status"] == "ok"


def test_the_cli_says_each_case_on_one_line(tmp_path: Path) -> None:
    """The whole corpus in one folder through ``ctdenoise convert``: partial success (3), one
    JSON line per outcome, no traceback, every refusal named."""
    src = tmp_path / "src"
    for i, case in enumerate(c for c in CASES if not c.params):
        case.build(src / f"case-{i:02d}")
    good(src / "good")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "ctdenoise.cli", "convert", str(src), str(tmp_path / "dst")],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    failed = [r for r in records if r["status"] == "failed"]
    expected = [c for c in CASES if not c.params and c.outcome == "failed"]
    assert len(failed) == len(expected), [r["reason"] for r in failed]
    for case in expected:
        assert any(case.fragment in r["reason"] for r in failed), case.name
    assert GOOD_UID in {r["series_instance_uid"] for r in records if r["status"] == "written"}
