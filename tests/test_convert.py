"""`ctdenoise convert`: DICOM folders/URLs -> series matrices, records, failures, atomicity, S3."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGExtended12Bit

from convert_fixtures import AXIAL, ct_series, ct_small_path, pixel_data_offset, truncate, write_slices
from ctdenoise import matrix_store, storage
from ctdenoise.convert import convert
from ctdenoise.errors import InputError
from ctdenoise.params import RunParams

ONE_SLICE_OK = RunParams(min_slices_global=1, min_slices_local=1)

REPO = Path(__file__).resolve().parents[1]

CONTRACT_KEYS = {
    "rows", "columns", "slices", "sop_instance_uids", "source_files", "slice_positions",
    "image_positions_patient", "image_orientation_patient", "pixel_spacing", "slice_thickness",
    "slice_spacing", "ordering", "series_instance_uid", "study_instance_uid", "frame_of_reference_uid",
    "sop_class_uid", "rescale_slope", "rescale_intercept", "bits_allocated", "bits_stored",
    "pixel_representation", "header", "slice_noise_hu", "warnings",
}  # docs/architecture.md, "Series matrix"

TILTED = (1.0, 0.0, 0.0, 0.0, math.cos(math.radians(25)), -math.sin(math.radians(25)))
REVERSED = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # normal -z


def convert_json(*args, **kwargs):
    """``convert``'s outcomes as the CLI prints them (JSON documents), one at a time."""
    for outcome in convert(*args, **kwargs):
        yield outcome.to_xcom()


def by_status(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {"written": [], "failed": [], "skipped": []}
    for r in records:
        out[r["status"]].append(r)
    return out


def expected_matrix(slices) -> np.ndarray:
    return np.stack([s.hu.reshape(-1) for s in slices], axis=1)


@pytest.mark.parametrize(
    ("orientation", "shift", "file_order"),
    [
        (AXIAL, 0.0, "shuffled"),
        (AXIAL, 0.0, "reversed"),
        (REVERSED, 0.0, "sorted"),
        (TILTED, 4.0, "shuffled"),  # z decreases along the stack here: only the normal rule gets it right
    ],
    ids=["axial-shuffled", "axial-reversed", "reversed-normal", "tilted"],
)
def test_columns_follow_the_slice_normal(tmp_path: Path, orientation, shift: float, file_order: str) -> None:
    slices = ct_series(5, orientation=orientation, in_plane_shift=shift, spacing=1.5)
    on_disk = {"sorted": slices, "reversed": slices[::-1], "shuffled": [slices[i] for i in (2, 4, 0, 3, 1)]}[file_order]
    write_slices(tmp_path / "src", on_disk)
    records = list(convert_json(str(tmp_path / "src"), str(tmp_path / "dst")))
    (record,) = records
    uid = str(slices[0].dataset.SeriesInstanceUID)
    assert record["status"] == "written" and record["series_instance_uid"] == uid
    assert (record["rows"], record["columns"], record["slices"], record["ordering"]) == (32, 32, 5, "normal")
    assert record["url"] == str(tmp_path / "dst" / f"{uid}.zarr") and record["seconds"] >= 0

    arr = matrix_store.open_matrix(record["url"])
    assert arr.shape == (32 * 32, 5) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr[...], expected_matrix(slices))
    attrs = dict(arr.attrs)
    assert set(attrs) == CONTRACT_KEYS
    assert attrs["sop_instance_uids"] == [s.sop_instance_uid for s in slices]
    names = {s.sop_instance_uid: f"IM{i:04d}.dcm" for i, s in enumerate(on_disk)}
    assert attrs["source_files"] == [names[s.sop_instance_uid] for s in slices]
    assert attrs["slice_positions"] == pytest.approx([s.position for s in slices])
    assert np.diff(attrs["slice_positions"]) == pytest.approx([1.5] * 4)
    assert attrs["slice_spacing"] == pytest.approx(1.5)
    noise = attrs["slice_noise_hu"]  # one level per column, in column order (None: too little tissue)
    assert len(noise) == attrs["slices"] and all(v is None or v > 0 for v in noise)
    ipp = [[float(v) for v in s.dataset.ImagePositionPatient] for s in slices]
    np.testing.assert_allclose(attrs["image_positions_patient"], ipp, rtol=1e-6)
    if shift:
        z = [p[2] for p in attrs["image_positions_patient"]]
        assert all(b < a for a, b in zip(z, z[1:])), "the tilted case must not be orderable by z"
    assert attrs["image_orientation_patient"] == pytest.approx(list(orientation))
    assert attrs["ordering"] == "normal"


def test_attributes_of_the_real_ct_small(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    shutil.copy(ct_small_path(), tmp_path / "src" / "CT_small.dcm")
    (record,) = convert_json(str(tmp_path / "src"), str(tmp_path / "dst"), params=ONE_SLICE_OK)
    ds = pydicom.dcmread(ct_small_path())
    arr = matrix_store.open_matrix(record["url"])
    attrs = dict(arr.attrs)
    np.testing.assert_array_equal(arr[:, 0], ds.pixel_array.reshape(-1).astype(np.float32) - 1024.0)
    assert arr[128 * 3 + 7, 0] == float(ds.pixel_array[3, 7]) - 1024.0  # pixel (r, c) -> row r*columns + c
    assert attrs["slices"] == 1 and attrs["slice_spacing"] is None
    assert attrs["pixel_spacing"] == pytest.approx([0.661468, 0.661468])
    assert attrs["slice_thickness"] == 5.0
    assert (attrs["rescale_slope"], attrs["rescale_intercept"]) == (1.0, -1024.0)
    assert (attrs["bits_allocated"], attrs["bits_stored"], attrs["pixel_representation"]) == (16, 16, 1)
    assert attrs["study_instance_uid"] == ds.StudyInstanceUID
    assert attrs["frame_of_reference_uid"] == ds.FrameOfReferenceUID
    assert attrs["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.2"
    header = pydicom.Dataset.from_json(attrs["header"])
    assert header.PatientName == ds.PatientName and "SOPInstanceUID" not in header and "PixelData" not in header


@pytest.mark.parametrize("drop", [("ImagePositionPatient",), ("ImagePositionPatient", "SliceLocation")])
def test_fallback_ordering_is_recorded(tmp_path: Path, drop: tuple[str, ...], caplog: pytest.LogCaptureFixture) -> None:
    slices = ct_series(4)
    for s in slices:
        for keyword in drop:
            del s.dataset[keyword]
    write_slices(tmp_path / "src", slices[::-1])
    expected = "slice_location" if len(drop) == 1 else "instance_number"
    # Ordered by InstanceNumber the spacing cannot be checked: converted only when told to warn.
    params = RunParams(uneven_spacing="warn") if expected == "instance_number" else None
    (record,) = convert_json(str(tmp_path / "src"), str(tmp_path / "dst"), params=params)
    assert record["ordering"] == expected
    arr = matrix_store.open_matrix(record["url"])
    assert arr.attrs["ordering"] == expected
    assert bool(arr.attrs["warnings"]) == (expected == "instance_number")
    np.testing.assert_array_equal(arr[...], expected_matrix(slices))
    assert arr.attrs["image_positions_patient"] == [None] * 4
    assert any(r.levelname == "WARNING" and "ordering by" in r.getMessage() for r in caplog.records)


def _bad_series(src: Path) -> dict[str, str]:
    """One series per kind of bad input; returns {series uid: (file name, reason fragment)}."""
    cases: dict[str, tuple[str, str]] = {}

    uid = "1.2.826.0.1.1.1"  # truncated pixel data
    paths = write_slices(src / "truncated", ct_series(3, series_uid=uid))
    truncate(paths[1], pixel_data_offset(paths[1]) + 12 + 500)
    cases[uid] = (str(paths[1]), "pixel data")

    uid = "1.2.826.0.1.1.2"  # no pixel data at all
    paths = write_slices(src / "nopixels", ct_series(3, series_uid=uid))
    truncate(paths[2], pixel_data_offset(paths[2]))
    cases[uid] = (str(paths[2]), "no pixel data")

    uid = "1.2.826.0.1.1.3"  # undecodable: 12-bit JPEG Extended has no decoder we ship
    slices = ct_series(3, series_uid=uid)
    ds = slices[0].dataset
    ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    paths = write_slices(src / "undecodable", slices)
    cases[uid] = (str(paths[0]), "cannot decode pixel data")

    uid = "1.2.826.0.1.1.4"  # one slice with another matrix size
    slices = ct_series(3, series_uid=uid)
    odd = ct_series(3, series_uid=uid, rows=16, columns=16)[2]
    paths = write_slices(src / "rows", [slices[0], slices[1], odd])
    cases[uid] = (str(paths[2]), "Rows x Columns")

    uid = "1.2.826.0.1.1.5"  # two files at the same position
    slices = ct_series(3, series_uid=uid)
    slices[2].dataset.ImagePositionPatient = slices[1].dataset.ImagePositionPatient
    paths = write_slices(src / "duplicate", slices)
    cases[uid] = (str(paths[2]), "duplicate")
    return cases


def test_bad_series_fail_alone_and_leave_nothing(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    cases = _bad_series(src)
    good = ct_series(3, series_uid="1.2.826.0.1.9")
    write_slices(src / "zz_good", good)  # listed last: the failures come first
    records = by_status(list(convert_json(str(src), str(dst))))
    assert [r["series_instance_uid"] for r in records["written"]] == ["1.2.826.0.1.9"]
    np.testing.assert_array_equal(matrix_store.open_matrix(records["written"][0]["url"])[...], expected_matrix(good))
    failed = {r["series_instance_uid"]: r for r in records["failed"]}
    assert set(failed) == set(cases)
    for uid, (file, fragment) in cases.items():
        assert failed[uid]["file"] == file, uid
        assert fragment in failed[uid]["reason"] and file in failed[uid]["reason"] and uid in failed[uid]["reason"]
        assert "\n" not in failed[uid]["reason"]
    assert sorted(p.name for p in dst.iterdir()) == ["1.2.826.0.1.9.zarr"]


def test_no_ct_series_is_an_input_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(pydicom.data.get_testdata_file("MR_small.dcm"), src / "mr.dcm")
    (src / "readme.txt").write_text("hello")
    records = []
    with pytest.raises(InputError, match="no CT image series") as info:
        for record in convert_json(str(src), str(tmp_path / "dst")):
            records.append(record)
    assert len(records) == 2 and all(r["status"] == "skipped" for r in records)
    assert "modality MR, not CT" in str(info.value)
    assert not (tmp_path / "dst").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "ctdenoise.cli", "convert", *args], capture_output=True, text=True, env=env, timeout=120
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_cli_bad_inputs_exit_nonzero_without_traceback(tmp_path: Path) -> None:
    src = tmp_path / "src"
    cases = _bad_series(src)
    (src / "notes.txt").write_text("not DICOM")
    proc = _cli(str(src), str(tmp_path / "dst"))
    assert proc.returncode == 2, proc.stderr  # bad input: a pod fails at once instead of retrying
    assert "Traceback" not in proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    failed = {r["series_instance_uid"]: r["file"] for r in records if r["status"] == "failed"}
    assert failed == {uid: file for uid, (file, _) in cases.items()}
    assert [r["reason"] for r in records if r["status"] == "skipped"] == [
        "not a DICOM file (no DICM prefix, no DICOM header found)"
    ]
    assert _error_lines(proc.stderr) == [f"error: no CT series could be converted from {src}"]


def test_cli_without_ct_series_prints_one_error_line(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(pydicom.data.get_testdata_file("test-SR.dcm"), src / "report.dcm")
    proc = _cli(str(src), str(tmp_path / "dst"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert str(src) in line and "no CT image series" in line and "not an image" in line
    proc = _cli(str(tmp_path / "missing"), str(tmp_path / "dst"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert _error_lines(proc.stderr) == [f"error: {tmp_path / 'missing'}: no such folder or URL prefix"]


def test_failure_while_writing_leaves_nothing_at_dst(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zarr

    src, dst = tmp_path / "src", tmp_path / "dst"
    write_slices(src, ct_series(3))
    real = zarr.Array.__setitem__

    def half_then_fail(self, key, value):
        real(self, (slice(0, 512), slice(None)), np.asarray(value)[:512])  # some chunks written...
        raise OSError("disk full")  # ...then the write dies

    monkeypatch.setattr(zarr.Array, "__setitem__", half_then_fail)
    (failed,) = convert_json(str(src), str(dst))  # the series fails, as transient (retried); nothing raises
    assert failed["status"] == "failed" and failed["kind"] == "transient" and "disk full" in failed["reason"]
    assert not dst.exists() or not any(dst.iterdir())


def test_failed_publication_keeps_the_previous_matrix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    slices = ct_series(3)
    write_slices(src, slices)
    (first,) = convert_json(str(src), str(dst))
    before = matrix_store.open_matrix(first["url"])[...]

    for s in slices:  # new pixel data, same series
        s.dataset.RescaleIntercept = -1000
    write_slices(src, slices)
    real_copytree = shutil.copytree

    def copy_then_fail(source, target, *args, **kwargs):
        real_copytree(source, target, *args, **kwargs)
        raise OSError("connection reset")

    monkeypatch.setattr(storage.shutil, "copytree", copy_then_fail)
    (failed,) = convert_json(str(src), str(dst))
    assert failed["kind"] == "transient" and "connection reset" in failed["reason"]
    monkeypatch.undo()
    assert [p.name for p in dst.iterdir() if p.name.endswith(".zarr")] == [Path(first["url"]).name]
    np.testing.assert_array_equal(matrix_store.open_matrix(first["url"])[...], before)


def test_file_url_source(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    slices = ct_series(3)
    write_slices(src / "a" / "b", slices)
    (src / "a" / "notes.txt").write_text("x")
    records = by_status(list(convert_json(f"file://{src}", f"file://{dst}")))
    assert records["skipped"] == [
        {"status": "skipped", "file": f"file://{src}/a/notes.txt",
         "reason": "not a DICOM file (no DICM prefix, no DICOM header found)"}
    ]
    (written,) = records["written"]
    arr = matrix_store.open_matrix(written["url"])
    np.testing.assert_array_equal(arr[...], expected_matrix(slices))
    assert arr.attrs["source_files"] == [f"a/b/IM{i:04d}.dcm" for i in range(3)]


def test_s3_source_and_destination(tmp_path: Path, s3_bucket: str) -> None:
    slices = ct_series(3, rows=16, columns=16)
    local = tmp_path / "src"
    write_slices(local, slices[::-1])
    (local / "notes.txt").write_text("x")
    fs, _ = storage.get_fs(f"s3://{s3_bucket}")
    fs.put(f"{local}/", f"{s3_bucket}/in/", recursive=True)

    records = by_status(list(convert_json(f"s3://{s3_bucket}/in", f"s3://{s3_bucket}/out")))
    assert [r["file"] for r in records["skipped"]] == [f"s3://{s3_bucket}/in/notes.txt"]
    (written,) = records["written"]
    uid = str(slices[0].dataset.SeriesInstanceUID)
    assert written["url"] == f"s3://{s3_bucket}/out/{uid}.zarr"
    assert storage.is_published(written["url"])
    arr = matrix_store.open_matrix(written["url"])
    np.testing.assert_array_equal(arr[...], expected_matrix(slices))
    assert arr.attrs["sop_instance_uids"] == [s.sop_instance_uid for s in slices]
    assert arr.attrs["source_files"] == ["IM0002.dcm", "IM0001.dcm", "IM0000.dcm"]


def test_an_unexpected_error_fails_its_series_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug or a MemoryError in one series is its Failed record (one line, its kind); the old
    code let it escape convert() and the series after it were never converted."""
    import ctdenoise.convert as convert_module

    src = tmp_path / "src"
    write_slices(src / "a", ct_series(3, series_uid="1.2.826.0.1.7.1"))
    write_slices(src / "b", ct_series(3, series_uid="1.2.826.0.1.7.2"))
    write_slices(src / "c", ct_series(3, series_uid="1.2.826.0.1.7.3"))
    real = convert_module.read_hu

    def read_hu(header, storage_options=None):  # noqa: ANN001
        if header.series_instance_uid == "1.2.826.0.1.7.1":
            raise KeyError("a bug")
        if header.series_instance_uid == "1.2.826.0.1.7.2":
            raise MemoryError("Unable to allocate 48.0 GiB")
        return real(header, storage_options)

    monkeypatch.setattr(convert_module, "read_hu", read_hu)
    records = by_status(list(convert_json(str(src), str(tmp_path / "dst"))))
    assert [r["series_instance_uid"] for r in records["written"]] == ["1.2.826.0.1.7.3"]
    kinds = {r["series_instance_uid"]: (r["kind"], r["reason"]) for r in records["failed"]}
    assert kinds["1.2.826.0.1.7.1"] == ("bug", "series 1.2.826.0.1.7.1: KeyError: 'a bug'")
    assert kinds["1.2.826.0.1.7.2"][0] == "transient" and "MemoryError" in kinds["1.2.826.0.1.7.2"][1]


def test_cli_exit_status_follows_the_worst_kind(tmp_path: Path) -> None:
    from ctdenoise.cli import convert_status
    from ctdenoise.records import Failed, Written

    written = Written(series_instance_uid="1.2.3", url="x", rows=1, columns=1, slices=3, ordering="normal", seconds=0)

    def failed(kind: str) -> Failed:
        return Failed(series_instance_uid="1.2.4", file="", reason="r", kind=kind)

    assert convert_status([written], "src") == 0
    assert convert_status([written, failed("input")], "src") == 3  # partial: the others were refused
    assert convert_status([failed("input")], "src") == 2
    assert convert_status([written, failed("transient")], "src") == 75  # retry: the written one is rewritten identically
    assert convert_status([written, failed("bug")], "src") == 1
