"""What one run works on: series folders, the settled rule, already-published, plan and report."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from convert_fixtures import ct_series, uid_for

from ctdenoise import storage
from ctdenoise.errors import InputError
from ctdenoise.orchestration import batch
from ctdenoise.orchestration import params as run_params

DS = "2026-11-20"


def write_series(folder: Path, uid: str, n: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, sl in enumerate(ct_series(n, series_uid=uid, rows=16, columns=16)):
        sl.dataset.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)


def upload(local: Path, url: str) -> None:
    fs, root = storage.get_fs(url)
    for p in sorted(local.rglob("*")):
        if p.is_file():
            fs.put_file(str(p), f"{root}/{p.relative_to(local).as_posix()}")


def discover(partition: str, bucket_url: str, conf: dict[str, Any] | None = None, **kwargs: Any):
    normalized = run_params.normalize(conf or {})
    return batch.discover(
        partition,
        ds=DS,
        work_url=f"{bucket_url}/work/{DS}",
        denoised_url=f"{bucket_url}/denoised",
        params=normalized,
        params_hash=run_params.params_hash(normalized),
        svd_key=run_params.svd_key(normalized),
        **kwargs,
    )


@pytest.fixture()
def partition(tmp_path: Path, s3_bucket: str) -> dict[str, Any]:
    """incoming/<ds>/ with two CT folders, a non-DICOM folder, a badly named folder, a loose file."""
    local = tmp_path / "up"
    uids = {"scan-a": uid_for("a"), "scan-b": uid_for("b")}
    for folder, uid in uids.items():
        write_series(local / folder, uid)
    (local / "notes").mkdir()
    (local / "notes" / "readme.txt").write_text("not a scan")
    write_series(local / "bad{name}", uid_for("c"), n=1)
    (local / "loose.dcm").write_bytes(b"outside any folder")
    url = f"s3://{s3_bucket}/incoming/{DS}"
    upload(local, url)
    return {"url": url, "bucket_url": f"s3://{s3_bucket}", "uids": uids}


def test_discover_lists_series_with_their_layout(partition: dict[str, Any]) -> None:
    series, skipped = discover(partition["url"], partition["bucket_url"])
    assert [s["folder"] for s in series] == ["scan-a", "scan-b"]
    a = series[0]
    uid, root = partition["uids"]["scan-a"], partition["bucket_url"]
    assert a["series_instance_uid"] == uid
    assert a["source_url"] == f"{partition['url']}/scan-a"
    assert a["matrix_dir"] == f"{root}/work/{DS}/scan-a/matrix"
    assert a["matrix_url"] == f"{root}/work/{DS}/scan-a/matrix/{uid}.zarr"
    assert a["svd_url"] == f"{root}/work/{DS}/scan-a/svd-k50-o15-q2-s0.zarr"
    assert a["series_url"] == f"{root}/denoised/{uid}"
    assert a["files"] == 3 and a["label"] == "scan-a"
    assert a["params"] == run_params.normalize({})
    reasons = {s["folder"]: s["reason"] for s in skipped}
    assert set(reasons) == {"notes", "bad{name}"}
    assert "no CT image slice" in reasons["notes"] and "readme.txt: not DICOM" in reasons["notes"]
    assert "characters" in reasons["bad{name}"]
    json.dumps(series)  # travels through XCom and pod arguments


def test_published_series_are_skipped_unless_force_or_new_params(partition: dict[str, Any]) -> None:
    normalized = run_params.normalize({})
    uid = partition["uids"]["scan-a"]
    report_url = f"{partition['bucket_url']}/denoised/{uid}/report.json"
    storage.write_bytes(report_url, json.dumps({"params_hash": run_params.params_hash(normalized)}).encode())

    series, skipped = discover(partition["url"], partition["bucket_url"])
    assert [s["folder"] for s in series] == ["scan-b"]
    assert "already published with the same parameters" in next(s["reason"] for s in skipped if s["folder"] == "scan-a")

    series, _ = discover(partition["url"], partition["bucket_url"], {"force": True})
    assert [s["folder"] for s in series] == ["scan-a", "scan-b"]
    series, _ = discover(partition["url"], partition["bucket_url"], {"seed": 1})
    assert [s["folder"] for s in series] == ["scan-a", "scan-b"]


def test_second_folder_of_the_same_series_is_skipped(tmp_path: Path, s3_bucket: str) -> None:
    uid = uid_for("same")  # (not deterministic across calls: computed once)
    write_series(tmp_path / "up" / "first", uid)
    write_series(tmp_path / "up" / "second", uid)
    url = f"s3://{s3_bucket}/incoming/{DS}"
    upload(tmp_path / "up", url)
    series, skipped = discover(url, f"s3://{s3_bucket}")
    assert [s["folder"] for s in series] == ["first"]
    assert skipped == [{"folder": "second", "reason": f"SeriesInstanceUID {uid} already in folder first of this partition"}]


def test_folders_still_changing_are_left_for_a_later_run(partition: dict[str, Any]) -> None:
    series, skipped = discover(partition["url"], partition["bucket_url"], settle_seconds=3600)
    assert series == []
    assert all("upload not settled" in s["reason"] for s in skipped if s["folder"].startswith("scan-"))

    state = batch.settled_state(partition["url"], 3600)
    assert state["settled"] is False and set(state["unsettled"]) >= {"scan-a", "scan-b"}
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    state = batch.settled_state(partition["url"], 3600, now=later)
    assert state["settled"] is True and state["folders"]["scan-a"] == 3


def test_empty_or_missing_partition_is_not_settled(s3_bucket: str) -> None:
    state = batch.settled_state(f"s3://{s3_bucket}/incoming/1999-01-01", 0)
    assert state == {"partition": f"s3://{s3_bucket}/incoming/1999-01-01", "folders": {}, "unsettled": {}, "settled": False}


def test_unsettled_folders_rule() -> None:
    now = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
    listing = {
        "old": [{"modified": now - timedelta(minutes=30)}, {"modified": now - timedelta(minutes=10)}],
        "fresh": [{"modified": now - timedelta(minutes=30)}, {"modified": now - timedelta(seconds=90)}],
        "untimed": [{"modified": None}],
    }
    assert batch.unsettled_folders(listing, 300, now) == {"fresh": 90.0}
    assert batch.unsettled_folders(listing, 0, now) == {}


def test_modified_time_of_s3_and_local_infos() -> None:
    aware = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert batch.modified_time({"LastModified": aware}) == aware
    assert batch.modified_time({"mtime": aware.timestamp()}) == aware
    assert batch.modified_time({"LastModified": "2026-01-02T03:04:05"}) == aware
    assert batch.modified_time({}) is None


# -- convert and dssvd ------------------------------------------------------------------------


def series_for(
    tmp_path: Path, conf: dict[str, Any] | None = None, uid: str = "1.2.3", folder: str = "scan-a"
) -> dict[str, Any]:
    normalized = run_params.normalize(conf or {})
    return batch.series_record(
        folder=folder,
        source_url=str(tmp_path / "incoming" / folder),
        series_uid=uid,
        ds=DS,
        work_url=str(tmp_path / "work"),
        denoised_url=str(tmp_path / "denoised"),
        params=normalized,
        params_hash=run_params.params_hash(normalized),
        svd_key=run_params.svd_key(normalized),
        files=3,
    )


def test_convert_result_keeps_the_folders_series(tmp_path: Path) -> None:
    series = series_for(tmp_path)
    records = [
        {"status": "skipped", "file": "x", "reason": "not DICOM"},
        {"status": "written", "series_instance_uid": "9.9", "url": "other", "slices": 4},
        {"status": "written", "series_instance_uid": "1.2.3", "url": series["matrix_url"], "slices": 12},
    ]
    result = batch.convert_result(series, records)
    assert result["series"] == series and result["matrix"]["slices"] == 12 and len(result["records"]) == 3


def test_convert_result_names_why_the_series_failed(tmp_path: Path) -> None:
    series = series_for(tmp_path)
    records = [{"status": "failed", "series_instance_uid": "1.2.3", "file": "f", "reason": "duplicate slice positions"}]
    with pytest.raises(InputError, match="scan-a .*duplicate slice positions"):
        batch.convert_result(series, records)


def test_dssvd_rank_is_capped_by_slices_and_raised_to_explicit_ranks(tmp_path: Path) -> None:
    series = series_for(tmp_path, {"k": 10, "ranks": [30]})
    args = batch.dssvd_arguments({"series": series, "matrix": {"slices": 64}})
    assert args[args.index("--rank") + 1] == "30"  # max(k, ranks)
    args = batch.dssvd_arguments({"series": series, "matrix": {"slices": 16}})
    assert args[args.index("--rank") + 1] == "16"
    assert args[args.index("--matrix") + 1] == series["matrix_url"]
    assert args[args.index("--out") + 1] == series["svd_url"]


# -- plan and report --------------------------------------------------------------------------


@pytest.fixture()
def converted_series(tmp_path: Path) -> dict[str, Any]:
    """A real series: DICOM -> matrix (convert) -> SVD (numpy), all on the local file system."""
    from ctdenoise.convert import convert
    from ctdenoise.decomposition import svd_numpy

    uid = uid_for("report")
    series = series_for(tmp_path, {"ranks": [2, 4], "drop_percents": [], "auto_rank": False}, uid=uid)
    write_series(Path(series["source_url"]), uid, n=6)
    records = list(convert(series["source_url"], series["matrix_dir"]))
    svd_numpy(series["matrix_url"], series["svd_url"], rank=6)
    return batch.convert_result(series, records)


def test_plan_leaves_out_series_without_svd(tmp_path: Path, converted_series: dict[str, Any]) -> None:
    missing = {"series": series_for(tmp_path, uid="4.5.6", folder="scan-z"), "matrix": {"slices": 6}, "records": []}
    items, left_out = batch.plan([converted_series, missing, None])
    assert [(i["series"]["folder"], i["rank"]) for i in items] == [("scan-a", 2), ("scan-a", 4)]
    assert left_out[0]["folder"] == "scan-z" and "no SVD" in left_out[0]["reason"]


def test_plan_refuses_an_svd_of_another_matrix(converted_series: dict[str, Any]) -> None:
    stale = json.loads(json.dumps(converted_series))
    stale["series"]["matrix_url"] = stale["series"]["matrix_url"].replace("scan-a", "scan-old")
    with pytest.raises(InputError, match="stale"):
        batch.plan_series(stale)


def results_for(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [batch.reconstruct_result(i, [{"rank": i["rank"], "retained_energy": 0.9, "seconds": 0.1}]) for i in items]


def test_incomplete_series_publishes_no_report(converted_series: dict[str, Any]) -> None:
    items = batch.plan_series(converted_series)
    series = converted_series["series"]
    with pytest.raises(InputError, match=r"rank\(s\) \[4\] not reconstructed"):
        batch.report_series(series, items, results_for(items[:1]), {"dag_id": "ct_denoise"})
    with pytest.raises(InputError, match="no ranks planned"):
        batch.report_series(series, None, None, {"dag_id": "ct_denoise"})
    assert not storage.exists(storage.join(series["series_url"], "report.json"))


def test_complete_series_publishes_report_json_with_params_hash(converted_series: dict[str, Any]) -> None:
    items = batch.plan_series(converted_series)
    series = converted_series["series"]
    run_info = {"dag_id": "ct_denoise", "run_id": "manual__x", "logical_date": "2026-11-20T00:00:00+00:00"}
    summary = batch.report_series(series, items, results_for(items), run_info)
    report = json.loads(storage.read_bytes(summary["report_json"]))
    assert report["params_hash"] == series["params_hash"]
    assert [r["rank"] for r in report["ranks"]] == [2, 4]
    assert storage.exists(storage.join(series["series_url"], "report.html"))
    assert batch.published_hash(summary["report_json"]) == series["params_hash"]
    assert summary["ranks"] == [{"rank": 2, "rules": ["explicit"], "output_url": items[0]["output_url"]},
                                {"rank": 4, "rules": ["explicit"], "output_url": items[1]["output_url"]}]  # fmt: skip


def test_report_needs_a_converted_matrix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not converted"):
        batch.report_series(series_for(tmp_path), [], [], {})


# -- local mode --------------------------------------------------------------------------------


@pytest.fixture()
def converted_both(tmp_path: Path) -> dict[str, Any]:
    """A real series decomposed in both modes (numpy engines), as the DAG's dssvd leaves it."""
    from ctdenoise.convert import convert
    from ctdenoise.decomposition import svd_numpy
    from ctdenoise.local_lowrank import LocalParams, local_numpy

    uid = uid_for("both-modes")
    conf = {"ranks": [2], "drop_percents": [], "auto_rank": False, "tile": 8, "stride": 4, "multipliers": [1.5, 0.5]}
    normalized = run_params.normalize(conf)
    series = batch.series_record(
        folder="scan-b", source_url=str(tmp_path / "incoming" / "scan-b"), series_uid=uid, ds=DS,
        work_url=str(tmp_path / "work"), denoised_url=str(tmp_path / "denoised"), params=normalized,
        params_hash=run_params.params_hash(normalized), svd_key=run_params.svd_key(normalized),
        local_key=run_params.local_key(normalized), files=6,
    )  # fmt: skip
    write_series(Path(series["source_url"]), uid, n=6)
    records = list(convert(series["source_url"], series["matrix_dir"]))
    svd_numpy(series["matrix_url"], series["svd_url"], rank=6)
    local_numpy(series["matrix_url"], series["local_url"], LocalParams.from_dict(normalized))
    return batch.convert_result(series, records)


def test_local_mode_plans_one_output_per_multiplier_and_reports_both_modes(converted_both: dict[str, Any]) -> None:
    from ctdenoise.writer import reconstruct

    def reconstruct_item(item: dict[str, Any]) -> dict[str, Any]:  # what the local runtime's task does
        return batch.reconstruct_result(item, [reconstruct(**batch.reconstruct_kwargs(item))])

    series = converted_both["series"]
    assert series["local_url"].endswith("/work/scan-b/local-t8-s4-frobenius-m0.5_1.5-nlm.zarr")
    args = batch.dssvd_arguments(converted_both)
    assert args[args.index("--local-out") + 1] == series["local_url"] and args[args.index("--multipliers") + 1] == "0.5,1.5"
    assert args[args.index("--inplane") + 1] == "nlm"
    assert args[args.index("--out") + 1] == series["svd_url"]
    items = batch.plan_series(converted_both)
    assert [(i["mode"], i["rank"], i["multiplier"]) for i in items] == [("global", 2, None), ("local", None, 0.5), ("local", None, 1.5)]
    assert [i["label"] for i in items] == ["scan-b rank=2", "scan-b local x0.5", "scan-b local x1.5"]
    assert items[1]["output_url"].endswith(f"/denoised/{series['series_instance_uid']}/local-x0.5")
    assert batch.reconstruct_arguments(items[2])[-2:] == ["--multiplier", "1.5"]
    results = [reconstruct_item(i) for i in items[:2]]
    with pytest.raises(InputError, match=r"local multiplier\(s\) \['x1.5'\] not reconstructed"):
        batch.report_series(series, items, results, {"dag_id": "ct_denoise"})
    results.append(reconstruct_item(items[2]))
    summary = batch.report_series(series, items, results, {"dag_id": "ct_denoise", "run_id": "r"})
    report = json.loads(storage.read_bytes(summary["report_json"]))
    assert [o["multiplier"] for o in report["local"]["outputs"]] == [0.5, 1.5]
    assert {o["status"] for o in report["local"]["outputs"]} == {"ok"} and report["local"]["tile"] == 8
    assert report["local"]["inplane"] == "nlm" and report["local"]["automatic_multiplier"] == 0.5
    assert [r["rank"] for r in report["ranks"]] == [2]
    assert summary["local"] == [{"multiplier": 0.5, "output_url": items[1]["output_url"]},
                                {"multiplier": 1.5, "output_url": items[2]["output_url"]}]  # fmt: skip
    html = storage.read_bytes(summary["report_html"]).decode()
    assert "Local low-rank tiles (local mode)" in html and "local x1.5" in html
    assert "the automatic output, x0.5, is highlighted" in html
    assert "then non-local means per slice" in html and "(automatic x0.5), in-plane stage: non-local means" in html


def test_local_only_run_needs_no_rank_rule_and_no_svd(tmp_path: Path) -> None:
    series = series_for(tmp_path, {"modes": ["local"], "ranks": [], "drop_percents": [], "auto_rank": False})
    assert series["svd_url"] is None
    args = batch.dssvd_arguments({"series": series, "matrix": {"slices": 6}})
    assert "--out" not in args and "--rank" not in args
