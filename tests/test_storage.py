"""Atomic publication and URL handling, locally and on S3 (moto)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctdenoise import matrix_store, storage


def _stage(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    staged = tmp_path / name
    for rel, text in files.items():
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        (staged / rel).write_text(text)
    return staged


def test_publish_local_replaces_whole_folder(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "rank-5"
    storage.publish_dir(_stage(tmp_path, "a", {"old.txt": "1", "x/y.txt": "2"}), str(dest))
    assert storage.is_published(str(dest))
    storage.publish_dir(_stage(tmp_path, "b", {"new.txt": "3"}), str(dest))
    assert sorted(p.name for p in dest.rglob("*") if p.is_file()) == ["_SUCCESS", "new.txt"]
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")], "no temporary siblings left"


def test_publish_s3_writes_commit_file_last(tmp_path: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    fs, _ = storage.get_fs(f"s3://{s3_bucket}")
    real = type(fs)._put_file  # s3fs routes put() and put_file() through this coroutine

    async def recording(self, lpath, rpath, **kwargs):
        order.append(rpath)
        return await real(self, lpath, rpath, **kwargs)

    monkeypatch.setattr(type(fs), "_put_file", recording)
    url = f"s3://{s3_bucket}/denoised/uid/rank-3"
    storage.publish_dir(_stage(tmp_path, "a", {"dicom/IM0001.dcm": "d", "metrics.json": "{}"}), url)
    assert len(order) == 3 and order[-1].endswith("/_SUCCESS")
    assert storage.is_published(url)
    assert storage.read_bytes(f"{url}/metrics.json") == b"{}"


def test_failed_publish_leaves_nothing_visible(tmp_path: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fs, _ = storage.get_fs(f"s3://{s3_bucket}")

    async def boom(self, lpath, rpath, **kwargs):
        if rpath.endswith("zarr.json"):
            raise OSError("network down")
        return await real(self, lpath, rpath, **kwargs)

    real = type(fs)._put_file
    monkeypatch.setattr(type(fs), "_put_file", boom)
    url = f"s3://{s3_bucket}/m.zarr"
    with pytest.raises(OSError):
        matrix_store.write_matrix(np.ones((10, 3), np.float32), {"rows": 2}, url)
    assert not storage.is_published(url)
    with pytest.raises(FileNotFoundError, match="m.zarr"):
        matrix_store.open_matrix(url)


@pytest.mark.parametrize("scheme", ["plain", "file"])
def test_matrix_round_trip_local(tmp_path: Path, scheme: str) -> None:
    path = tmp_path / "m.zarr"
    url = str(path) if scheme == "plain" else f"file://{path}"
    data = np.arange(40000 * 3, dtype=np.float32).reshape(40000, 3)
    matrix_store.write_matrix(data, {"rows": 200, "columns": 200}, url)
    arr = matrix_store.open_matrix(url)
    assert arr.chunks == (matrix_store.ROW_CHUNK, 3)
    assert arr.attrs["columns"] == 200
    np.testing.assert_array_equal(arr[...], data)


def test_svd_group_round_trip_s3(s3_bucket: str) -> None:
    url = f"s3://{s3_bucket}/svd.zarr"
    matrix_store.write_svd(url, np.array([3.0, 2.0]), np.eye(4, 2), {"method": "exact"})
    s, V, attrs = matrix_store.read_svd(url)
    np.testing.assert_array_equal(s, [3.0, 2.0])
    assert V.shape == (4, 2) and attrs["method"] == "exact"


def test_svd_shapes_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        matrix_store.write_svd(str(tmp_path / "s.zarr"), np.ones(3), np.eye(4, 2), {})
