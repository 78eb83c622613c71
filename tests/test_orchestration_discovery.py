"""What one run works on: the series folders of a partition, the settled rule, already-published."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pydicom
import pytest
from convert_fixtures import ct_series, uid_for

from ctdenoise import storage
from ctdenoise.orchestration import discovery
from ctdenoise.params import RunParams

DS = "2026-11-20"


def write_series(folder: Path, uid: str, n: int = 8) -> None:  # the default selection takes 8 slices or more
    folder.mkdir(parents=True, exist_ok=True)
    for k, sl in enumerate(ct_series(n, series_uid=uid, rows=16, columns=16)):
        sl.dataset.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)


def upload(local: Path, url: str) -> None:
    fs, root = storage.get_fs(url)
    for p in sorted(local.rglob("*")):
        if p.is_file():
            fs.put_file(str(p), f"{root}/{p.relative_to(local).as_posix()}")


def discover(partition: str, bucket_url: str, conf: dict[str, Any] | None = None, **kwargs: Any):
    series, skipped = discovery.discover(partition, ds=DS, work_url=f"{bucket_url}/work/{DS}", denoised_url=f"{bucket_url}/denoised",
                                         params=RunParams.from_conf(conf), **kwargs)  # fmt: skip
    return [s.to_xcom() for s in series], skipped


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
    assert a["files"] == 8 and a["label"] == "scan-a"
    assert a["params"] == RunParams().as_json()
    reasons = {s["folder"]: s["reason"] for s in skipped}
    assert set(reasons) == {"notes", "bad{name}"}
    assert "no CT image slice" in reasons["notes"] and "readme.txt: not DICOM" in reasons["notes"]
    assert "characters" in reasons["bad{name}"]
    json.dumps(series)  # travels through XCom and pod arguments


def test_published_series_are_skipped_unless_force_or_new_params(partition: dict[str, Any]) -> None:
    uid = partition["uids"]["scan-a"]
    report_url = f"{partition['bucket_url']}/denoised/{uid}/report.json"
    storage.write_bytes(report_url, json.dumps({"params_hash": RunParams().params_hash()}).encode())

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

    state = discovery.settled_state(partition["url"], 3600)
    assert state["settled"] is False and set(state["unsettled"]) >= {"scan-a", "scan-b"}
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    state = discovery.settled_state(partition["url"], 3600, now=later)
    assert state["settled"] is True and state["folders"]["scan-a"] == 8


def test_empty_or_missing_partition_is_not_settled(s3_bucket: str) -> None:
    state = discovery.settled_state(f"s3://{s3_bucket}/incoming/1999-01-01", 0)
    assert state == {"partition": f"s3://{s3_bucket}/incoming/1999-01-01", "folders": {}, "unsettled": {}, "settled": False}


def test_unsettled_folders_rule() -> None:
    now = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
    listing = {
        "old": [{"modified": now - timedelta(minutes=30)}, {"modified": now - timedelta(minutes=10)}],
        "fresh": [{"modified": now - timedelta(minutes=30)}, {"modified": now - timedelta(seconds=90)}],
        "untimed": [{"modified": None}],
    }
    assert discovery.unsettled_folders(listing, 300, now) == {"fresh": 90.0}
    assert discovery.unsettled_folders(listing, 0, now) == {}


def test_modified_time_of_s3_and_local_infos() -> None:
    aware = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert discovery.modified_time({"LastModified": aware}) == aware
    assert discovery.modified_time({"mtime": aware.timestamp()}) == aware
    assert discovery.modified_time({"LastModified": "2026-01-02T03:04:05"}) == aware
    assert discovery.modified_time({}) is None


def test_series_the_selection_rules_exclude_are_named_with_the_condition(tmp_path: Path, s3_bucket: str) -> None:
    """Too few slices for the default rules, or a derived series: skipped before any conversion."""
    local = tmp_path / "up"
    write_series(local / "short", uid_for("short"), n=4)
    write_series(local / "derived", uid_for("derived"))
    for path in (local / "derived").iterdir():
        ds = pydicom.dcmread(path)
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.save_as(path)
    write_series(local / "fine", uid_for("fine"))
    url = f"s3://{s3_bucket}/incoming/{DS}"
    upload(local, url)
    series, skipped = discover(url, f"s3://{s3_bucket}")
    reasons = {s["folder"]: s["reason"] for s in skipped}
    assert [s["folder"] for s in series] == ["fine"]
    assert reasons["short"] == 'not selected: axial original CT: slices ">=8" (series has 4)'
    assert reasons["derived"].startswith('not selected: axial original CT: ImageType ["ORIGINAL", "AXIAL", "!LOCALIZER"] (series has DERIVED')
    rules = {"selections": [{"name": "any CT", "conditions": {"Modality": "CT"}}]}
    series, _ = discover(url, f"s3://{s3_bucket}", conf={"selection": rules})
    assert [s["folder"] for s in series] == ["derived", "fine", "short"]
