"""Planning outputs from a series' decompositions, and publishing the series' report when complete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from convert_fixtures import ct_series, uid_for
from record_fixtures import series_for

from ctdenoise import storage
from ctdenoise.errors import InputError
from ctdenoise.plan import plan, plan_series
from ctdenoise.records import Converted, Output, Reconstructed, Written
from ctdenoise.report import RunInfo, publish_report


def write_series(folder: Path, uid: str, n: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, sl in enumerate(ct_series(n, series_uid=uid, rows=16, columns=16)):
        sl.dataset.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)


def converted_for(tmp_path: Path, conf: dict[str, Any], folder: str = "scan-a", tag: str = "report") -> Converted:
    """A real series: DICOM -> matrix (convert) -> its decompositions (numpy engine), as dssvd leaves them."""
    from ctdenoise.convert import convert
    from ctdenoise.decomposition import svd_numpy
    from ctdenoise.local_group import local_numpy

    uid = uid_for(tag)
    series = series_for(tmp_path, conf, uid=uid, folder=folder, files=6)
    write_series(Path(series.source_url), uid, n=6)
    outcomes = list(convert(series.source_url, series.matrix_dir))
    if series.svd_url:
        svd_numpy(series.matrix_url, series.svd_url, rank=6)
    if series.local_url:
        local_numpy(series.matrix_url, series.local_url, series.params.local)
    return Converted.from_outcomes(series, outcomes)


@pytest.fixture()
def converted_series(tmp_path: Path) -> Converted:
    return converted_for(tmp_path, {"modes": ["global"], "ranks": [2, 4], "drop_percents": [], "auto_rank": False})


def test_plan_leaves_out_series_without_svd(tmp_path: Path, converted_series: Converted) -> None:
    other = series_for(tmp_path, {"modes": ["global"]}, uid="4.5.6", folder="scan-z")
    missing = Converted(series=other, matrix=Written(series_instance_uid="4.5.6", url=other.matrix_url, rows=16,
                                                     columns=16, slices=6, ordering="normal", seconds=0))  # fmt: skip
    planned = plan([converted_series, missing])
    assert [(i.series.folder, i.rank) for i in planned.items] == [("scan-a", 2), ("scan-a", 4)]
    assert [i.choice.labels for i in planned.items] == [["explicit"], ["explicit"]]
    assert planned.left_out[0]["folder"] == "scan-z" and "no SVD" in planned.left_out[0]["reason"]
    assert planned.omitted == []


def test_a_rank_that_reproduces_the_input_is_omitted_with_the_reason(tmp_path: Path) -> None:
    """The seed's rule at 0.1 % of 6 slices keeps all 6: that output would equal the input."""
    converted = converted_for(tmp_path, {"modes": ["global"], "ranks": [2], "drop_percents": [0.1, 50], "auto_rank": False})
    planned = plan([converted])
    assert [i.rank for i in planned.items] == [2, 3]
    (omitted,) = planned.omitted
    assert omitted.label == "scan-a rank=6" and omitted.reason == "rank 6 of 6 keeps every component: it reproduces the input"
    assert [r.rule for r in omitted.choice.rules] == ["drop_percent"]
    done = publish_report(converted.series, planned.items, results_for(planned.items), RUN, omitted=planned.omitted)
    report = json.loads(storage.read_bytes(done.report_json))
    assert report["omitted"] == [{"output": "scan-a rank=6", "reason": omitted.reason}]
    assert "rank 6 of 6 keeps every component" in storage.read_bytes(done.report_html).decode()


def test_plan_refuses_an_svd_of_another_matrix(tmp_path: Path, converted_series: Converted) -> None:
    moved = converted_series.series.model_copy(update={"work_url": str(tmp_path / "work" / "scan-old")})
    storage.get_fs(moved.svd_url)[0].copy(converted_series.series.svd_url, moved.svd_url, recursive=True)
    with pytest.raises(InputError, match="stale"):
        plan_series(converted_series.model_copy(update={"series": moved}))


def results_for(items: list[Output]) -> list[Reconstructed]:
    """What reconstruct would return for each output, with a (stand-in) published folder."""
    for i in items:
        with storage.staging_dir() as staged:
            (staged / "metrics.json").write_text("{}")
            storage.publish_dir(staged, i.output_url)
    return [Reconstructed(output=i, metrics={"rank": i.rank, "retained_energy": 0.9, "seconds": 0.1}) for i in items]


RUN = RunInfo(dag_id="ct_denoise", run_id="manual__x", logical_date="2026-11-20T00:00:00+00:00")


def test_incomplete_series_publishes_no_report(converted_series: Converted) -> None:
    items = plan_series(converted_series)
    series = converted_series.series
    with pytest.raises(InputError, match="scan-a rank=4 not reconstructed"):
        publish_report(series, items, results_for(items[:1]), RUN)
    with pytest.raises(InputError, match="no outputs planned"):
        publish_report(series, [], [], RUN)
    assert not storage.exists(storage.join(series.series_url, "report.json"))


def test_complete_series_publishes_report_json_with_params_hash(converted_series: Converted) -> None:
    from ctdenoise.orchestration.discovery import published_hash

    items = plan_series(converted_series)
    series = converted_series.series
    done = publish_report(series, items, results_for(items), RUN)
    report = json.loads(storage.read_bytes(done.report_json))
    assert report["params_hash"] == series.params_hash
    assert [r["rank"] for r in report["ranks"]] == [2, 4]
    assert [r["rules"] for r in report["ranks"]] == [[{"rule": "explicit"}]] * 2
    assert storage.exists(storage.join(series.series_url, "report.html"))
    assert published_hash(done.report_json) == series.params_hash
    assert done.outputs == [items[0].output_url, items[1].output_url]


def test_report_needs_a_converted_matrix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not converted"):
        publish_report(series_for(tmp_path), [], [], RUN)


def test_local_mode_plans_one_output_per_multiplier_and_reports_both_modes(tmp_path: Path) -> None:
    from ctdenoise.writer import reconstruct

    conf = {"ranks": [2], "drop_percents": [], "auto_rank": False, "tile": 8, "stride": 4, "multipliers": [1.5, 0.5]}
    converted = converted_for(tmp_path, conf, folder="scan-b", tag="both-modes")
    series = converted.series
    assert series.local_url.endswith("/work/scan-b/local-t8-s4-frobenius-m0.5_1.5-nlm.zarr")
    items = plan_series(converted)
    assert [(i.mode, i.rank, i.multiplier) for i in items] == [("global", 2, None), ("local", None, 0.5), ("local", None, 1.5)]
    assert [i.label for i in items] == ["scan-b rank=2", "scan-b local x0.5", "scan-b local x1.5"]
    assert items[1].tiles is not None and items[1].tiles.mean_rank >= items[2].tiles.mean_rank
    results = [Reconstructed.from_metrics(i, [reconstruct(**i.reconstruct_kwargs())]) for i in items]  # the local runtime's task
    with pytest.raises(InputError, match="scan-b local x1.5 not reconstructed"):
        publish_report(series, items, results[:2], RUN)
    done = publish_report(series, items, results, RUN)
    report = json.loads(storage.read_bytes(done.report_json))
    assert [o["multiplier"] for o in report["local"]["outputs"]] == [0.5, 1.5]
    assert {o["status"] for o in report["local"]["outputs"]} == {"ok"} and report["local"]["tile"] == 8
    assert report["local"]["inplane"] == "nlm" and report["local"]["automatic_multiplier"] == 0.5
    assert [r["rank"] for r in report["ranks"]] == [2]
    html = storage.read_bytes(done.report_html).decode()
    assert "Local low-rank tiles (local mode)" in html and "local x1.5" in html
    assert "the automatic output, x0.5, is highlighted" in html
    assert "then non-local means per slice" in html and "(automatic x0.5), in-plane stage: non-local means" in html
