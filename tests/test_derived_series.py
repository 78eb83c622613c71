"""Derived series labelled as processing results: description, deterministic number, and Orthanc's view of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pacs_fixtures import run_cli, start
from writer_fixtures import build_case

from ctdenoise.derived_series import local_offset, series_description, series_number


def test_description_keeps_our_label_and_cuts_the_source_description() -> None:
    assert series_description("DENOISED", "local x0.5", "Abdomen 1.0 B30f") == "DENOISED local x0.5: Abdomen 1.0 B30f"
    assert series_description("DENOISED", "SVD rank 9", None) == "DENOISED SVD rank 9"
    long = series_description("AI DENOISED", "local x0.75", "x" * 80)
    assert len(long) == 64 and long.startswith("AI DENOISED local x0.75: xxx")


def test_series_numbers_depend_on_the_output_alone() -> None:
    """The same multiplier keeps its number whichever other multipliers a run computes."""
    assert [local_offset(m) for m in (0.5, 0.75, 1.0)] == [905, 908, 910]
    assert series_number(3, 20) == 3020 and series_number(3, local_offset(0.5)) == 3905
    assert series_number(2**30, 20) == 20  # the source's number would overflow IS: the output's alone


def test_pods_pass_the_deployment_prefix() -> None:
    from dags.dag_fixtures import sample_item, sample_series

    from ctdenoise.orchestration.pods import reconstruct_pod_kwargs

    arguments = reconstruct_pod_kwargs(sample_item(sample_series()), "AI DENOISED")["arguments"]
    assert arguments[-2:] == ["--series-description-prefix", "AI DENOISED"]


@pytest.mark.slow
def test_orthanc_indexes_the_derived_series_beside_the_original(tmp_path: Path) -> None:
    """Original and derived series delivered to Orthanc: one study, two series, ours labelled DENOISED."""
    from ctdenoise.writer import reconstruct

    case = build_case(tmp_path / "case", size=32, slices=8)
    metrics = reconstruct(case.matrix_url, case.svd_url, str(tmp_path / "rank-3"), 3)
    for server in start(tmp_path / "orthanc"):
        for folder in (case.low_dir, tmp_path / "rank-3"):
            done = run_cli("deliver", str(folder), "--dicomweb", server.dicomweb_url)
            assert done.returncode == 0, done.stderr
        series = server.series()
        original, derived = series[case.record["series_instance_uid"]], series[metrics["series_instance_uid"]]
        assert original["study"] == derived["study"] and len(series) == 2
        assert derived["instances"] == original["instances"] == 8
        assert derived["description"].startswith("DENOISED SVD rank 3") and int(derived["number"]) % 1000 == 3
