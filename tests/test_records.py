"""Records between tasks: the layout they name, the XCom round trip, the folder's own series."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from record_fixtures import series_for

from ctdenoise.errors import InputError
from ctdenoise.job import DssvdBatch, DssvdJob, batch_exit_code
from ctdenoise.records import Converted, Failed, Output, Reconstructed, Series, SeriesBatch, Skipped, Written, parse_outcome


def written(uid: str, url: str, slices: int) -> Written:
    return Written(series_instance_uid=uid, url=url, rows=16, columns=16, slices=slices, ordering="normal", seconds=0.1)


def test_series_names_its_layout_and_round_trips_through_xcom(tmp_path: Path) -> None:
    series = series_for(tmp_path)
    work = tmp_path / "work" / "scan-a"
    assert series.matrix_dir == f"{work}/matrix" and series.matrix_url == f"{work}/matrix/1.2.3.zarr"
    assert series.svd_url == f"{work}/svd-k50-o15-q2-s0.zarr"
    assert series.local_url == f"{work}/local-t12-s6-frobenius-m0.5_0.75_1-nlm.zarr"
    assert series.series_url == f"{tmp_path}/denoised/1.2.3" and series.label == "scan-a"
    document = json.loads(json.dumps(series.to_xcom()))  # what XCom and pod arguments carry
    assert document["matrix_url"] == series.matrix_url and document["params_hash"] == series.params.params_hash()
    assert Series.from_xcom(document) == series
    document["matrix_url"] = "s3://elsewhere"  # derived names are recomputed, not trusted
    assert Series.from_xcom(document).matrix_url == series.matrix_url


def test_converted_keeps_the_folders_series(tmp_path: Path) -> None:
    series = series_for(tmp_path)
    outcomes = [Skipped(file="x", reason="not DICOM"), written("9.9", "other", 4), written("1.2.3", series.matrix_url, 12)]
    converted = Converted.from_outcomes(series, outcomes)
    assert converted.series == series and converted.matrix.slices == 12 and len(converted.outcomes) == 3
    assert converted.others == ["9.9"]
    assert Converted.from_xcom(json.loads(json.dumps(converted.to_xcom()))) == converted
    assert [parse_outcome(o.to_xcom()) for o in outcomes] == outcomes


def test_converted_names_why_the_series_failed(tmp_path: Path) -> None:
    series = series_for(tmp_path)
    with pytest.raises(InputError, match="scan-a .*duplicate slice positions"):
        Converted.from_outcomes(series, [Failed(series_instance_uid="1.2.3", file="f", reason="duplicate slice positions")])
    with pytest.raises(InputError, match="no matrix written"):
        Converted.from_outcomes(series, [written("9.9", "other", 4)])


def test_dssvd_rank_is_capped_by_slices_and_raised_to_explicit_ranks(tmp_path: Path) -> None:
    series = series_for(tmp_path, {"k": 10, "ranks": [30]})
    args = DssvdJob.for_series(Converted(series=series, matrix=written("1.2.3", series.matrix_url, 64))).arguments()
    assert args[args.index("--rank") + 1] == "30"  # max(k, ranks)
    args = DssvdJob.for_series(Converted(series=series, matrix=written("1.2.3", series.matrix_url, 16))).arguments()
    assert args[args.index("--rank") + 1] == "16"
    assert args[args.index("--matrix") + 1] == series.matrix_url
    assert args[args.index("--out") + 1] == series.svd_url
    assert args[args.index("--local-out") + 1] == series.local_url
    assert args[args.index("--multipliers") + 1] == "0.5,0.75,1" and args[args.index("--inplane") + 1] == "nlm"


def test_series_are_batched_in_order_and_each_keeps_its_own_job(tmp_path: Path) -> None:
    """CT_DENOISE_SPARK_BATCH_SERIES: a dssvd task per batch; the batch's command line cuts
    back into each series' job, the same as the series alone would get."""
    converted = []
    for i, slices in enumerate((64, 12, 30)):
        series = series_for(tmp_path, folder=f"scan-{i}", uid=f"1.2.{i}")
        converted.append(Converted(series=series, matrix=written(f"1.2.{i}", series.matrix_url, slices)))
    assert [[c.series.folder for c in b.converted] for b in SeriesBatch.group(converted, 2)] == [["scan-0", "scan-1"], ["scan-2"]]
    assert [b.label for b in SeriesBatch.group(converted, 2)] == ["scan-0 +1", "scan-2"]
    assert [len(b.converted) for b in SeriesBatch.group(converted, 1)] == [1, 1, 1]
    batch = SeriesBatch.group(converted, 3)[0]
    assert SeriesBatch.from_xcom(json.loads(json.dumps(batch.to_xcom()))) == batch
    args = DssvdBatch.for_series(batch.converted).arguments()
    assert DssvdBatch.split(args) == [DssvdJob.for_series(c).arguments() for c in converted]
    assert DssvdBatch.for_series(converted[:1]).arguments() == DssvdJob.for_series(converted[0]).arguments()


def test_a_batch_fails_as_its_worst_series(tmp_path: Path) -> None:
    """Refused series show at plan_ranks (the batch succeeds when another was done); a transient
    failure or a bug retries the batch; a batch with nothing done is refused (2)."""
    done, refused = {"status": "done"}, {"status": "failed", "kind": "input"}
    assert batch_exit_code([done, done]) == 0
    assert batch_exit_code([refused, done]) == 0
    assert batch_exit_code([refused, refused]) == 2
    assert batch_exit_code([done, {"status": "failed", "kind": "transient"}, refused]) == 75
    assert batch_exit_code([{"status": "failed", "kind": "bug"}, done]) == 1


def test_local_only_run_needs_no_rank_rule_and_no_svd(tmp_path: Path) -> None:
    series = series_for(tmp_path, {"modes": ["local"], "ranks": [], "drop_percents": [], "auto_rank": False})
    assert series.svd_url is None
    args = DssvdJob.for_series(Converted(series=series, matrix=written("1.2.3", series.matrix_url, 6))).arguments()
    assert "--out" not in args and "--rank" not in args and "--local-out" in args


def test_outputs_are_labelled_and_name_their_reconstruct(tmp_path: Path) -> None:
    series = series_for(tmp_path)
    rank = Output(series=series, mode="global", rank=20)
    local = Output(series=series, mode="local", multiplier=0.5)
    assert (rank.label, local.label) == ("scan-a rank=20", "scan-a local x0.5")
    assert rank.output_url == f"{series.series_url}/rank-20" and local.output_url == f"{series.series_url}/local-x0.5"
    assert rank.reconstruct_arguments() == ["reconstruct", series.matrix_url, series.svd_url, rank.output_url, "--rank", "20"]
    assert local.reconstruct_kwargs() == {"matrix_url": series.matrix_url, "svd_url": series.local_url,
                                          "dest_url": local.output_url, "multiplier": 0.5}  # fmt: skip
    assert Output.from_xcom(json.loads(json.dumps(local.to_xcom()))) == local
    with pytest.raises(InputError, match="printed no metrics"):
        Reconstructed.from_metrics(rank, [])
