"""The simulated low-dose CT series: anatomy, projection physics, DICOM output, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from scipy import ndimage

from ctdenoise import phantom, storage
from ctdenoise.cli import main
from ctdenoise.errors import ParameterError
from writer_fixtures import DCIODVFY, DCIODVFY_MISSING, dciodvfy_errors, hu_of, read_series

TISSUES_HU = {
    phantom.AIR, phantom.FAT, phantom.SOFT, phantom.LUNG, phantom.HEART, phantom.LIVER, phantom.STOMACH,
    phantom.RIB, phantom.STERNUM, phantom.CORTEX, phantom.CANCELLOUS, phantom.ARCH, phantom.NODULE,
    phantom.LIVER + 20, phantom.LIVER + 12, phantom.SOFT + 15, phantom.HEART + 15,  # lesions
}


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("phantom")
    record = phantom.write_phantom_series(str(root / "low"), size=64, slices=8, seed=3, truth=str(root / "truth"))
    return root / "low", root / "truth", record


@pytest.mark.parametrize("z", np.linspace(-79.0, 79.0, 33))
def test_structures_never_overlap(z: float) -> None:
    """Point-sampled, every pixel holds one tissue value: overlapping shapes would add up."""
    image = phantom.rasterize(phantom.anatomy(float(z)), 256, subsamples=1)
    assert set(np.unique(image).tolist()) <= TISSUES_HU


def test_anatomy_changes_along_the_series() -> None:
    def area(z: float, hu: float) -> int:
        return int(np.sum(phantom.rasterize(phantom.anatomy(z), 128, subsamples=1) == hu))

    assert area(-75.0, phantom.LUNG) == 0 < area(-30.0, phantom.LUNG) < area(40.0, phantom.LUNG)
    assert area(-75.0, phantom.LIVER) > 0 and area(40.0, phantom.LIVER) == 0
    assert area(0.0, phantom.CORTEX) > 0 and area(0.0, phantom.RIB) > 0 and area(0.0, phantom.FAT) > 0


def test_analytic_projection_matches_skimage_radon() -> None:
    """Same geometry conventions as skimage's radon (which iradon inverts)."""
    from skimage.transform import radon

    size = 128
    shapes = phantom.anatomy(10.0)
    theta = np.linspace(0.0, 180.0, phantom.n_views(size), endpoint=False)
    mu_per_pixel = phantom.MU_WATER * (1 + phantom.rasterize(shapes, size) / 1000.0) * phantom.pixel_spacing_mm(size) / 10
    expected = radon(mu_per_pixel, theta, circle=True)
    got = phantom.project(shapes, size, theta)
    assert got.shape == expected.shape
    assert np.abs(got - expected).mean() < 0.01 * expected.mean()
    assert np.abs(got - expected).max() < 0.03 * expected.max()


def test_noise_free_reconstruction_gives_tissue_values() -> None:
    hu, truth = phantom.simulate_slice(0.0, 128, photons=1e12, seed=0, index=0, truth=True)
    for tissue in (phantom.SOFT, phantom.LUNG):
        region = ndimage.binary_erosion(truth == tissue, iterations=3)
        assert abs(float(np.median(hu[region])) - tissue) < 10.0


def _noise_hu(photons: float) -> float:
    hu, truth = phantom.simulate_slice(0.0, 64, photons=photons, seed=1, index=5, truth=True)
    soft = ndimage.binary_erosion(np.abs(truth - phantom.SOFT) < 0.5, iterations=2)
    return float(np.std((hu - truth)[soft]))


def test_noise_grows_as_photons_decrease() -> None:
    noise = [_noise_hu(p) for p in (1e6, 1e5, 1e4, 1e3)]
    assert noise == sorted(noise)
    assert noise[-1] > 3 * noise[0]


def test_series_files_and_geometry(series: tuple[Path, Path, dict]) -> None:
    low_dir, truth_dir, record = series
    assert sorted(p.name for p in low_dir.iterdir()) == [f"IM{i:04d}.dcm" for i in range(1, 9)] + ["_SUCCESS"]
    low, truth = read_series(low_dir), read_series(truth_dir)
    assert len(low) == len(truth) == 8
    spacing = 350.0 / 64
    z = [float(ds.ImagePositionPatient[2]) for ds in low]
    assert np.allclose(np.diff(z), 160.0 / 8) and z == sorted(z)
    for i, (ds, tr) in enumerate(zip(low, truth, strict=True)):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert ds.Modality == "CT" and ds.PatientName == "PHANTOM^LOWDOSE" and ds.Manufacturer == "ctdenoise"
        assert ds.InstanceNumber == i + 1
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert np.allclose([float(v) for v in ds.PixelSpacing], [spacing, spacing])
        assert np.allclose([float(v) for v in ds.ImagePositionPatient[:2]], [-32 * spacing, -32 * spacing])
        assert float(ds.SliceThickness) == pytest.approx(20.0) and float(ds.SliceLocation) == pytest.approx(z[i])
        assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (64, 64, 16, 12, 0)
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
        # The truth shares study, frame of reference and geometry, not the series.
        assert tr.StudyInstanceUID == ds.StudyInstanceUID == record["study_instance_uid"]
        assert tr.FrameOfReferenceUID == ds.FrameOfReferenceUID
        assert tr.ImagePositionPatient == ds.ImagePositionPatient
        assert ds.SeriesInstanceUID == record["series_instance_uid"]
        assert tr.SeriesInstanceUID == record["truth_series_instance_uid"] != ds.SeriesInstanceUID
    sops = {ds.SOPInstanceUID for ds in low + truth}
    assert len(sops) == 16


def test_pixels_are_the_simulation(series: tuple[Path, Path, dict]) -> None:
    low_dir, truth_dir, _ = series
    low, truth = read_series(low_dir), read_series(truth_dir)
    for index, hu, true_hu in phantom.simulate_volume(64, 8, 2e4, seed=3, truth=True, workers=1):
        expected = np.clip(np.rint(hu), -1024, 3071)  # 12-bit unsigned with intercept -1024
        assert np.array_equal(hu_of(low[index]), expected)
        assert np.array_equal(hu_of(truth[index]), np.clip(np.rint(true_hu), -1024, 3071))
    # The truth is noise-free: air is exactly -1000 HU, the low-dose slice is not.
    assert hu_of(truth[0])[0, 0] == -1000.0
    assert np.std(hu_of(low[4]) - hu_of(truth[4])) > 5.0


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = phantom.write_phantom_series(str(tmp_path / "a"), size=48, slices=3, seed=7)
    b = phantom.write_phantom_series(str(tmp_path / "b"), size=48, slices=3, seed=7)
    c = phantom.write_phantom_series(str(tmp_path / "c"), size=48, slices=3, seed=8)
    assert a["series_instance_uid"] == b["series_instance_uid"] != c["series_instance_uid"]
    for name in ("IM0001.dcm", "IM0002.dcm", "IM0003.dcm"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    first, other = read_series(tmp_path / "a"), read_series(tmp_path / "c")
    assert not np.array_equal(first[1].pixel_array, other[1].pixel_array)
    assert first[1].SOPInstanceUID != other[1].SOPInstanceUID


def test_doses_of_one_seed_share_the_study(tmp_path: Path) -> None:
    """Series of several doses (and their truth) of one simulated patient form one study."""
    low = phantom.write_phantom_series(str(tmp_path / "low"), size=48, slices=2, photons=1e4, truth=str(tmp_path / "t1"))
    high = phantom.write_phantom_series(str(tmp_path / "high"), size=48, slices=2, photons=1e6, truth=str(tmp_path / "t2"))
    assert low["study_instance_uid"] == high["study_instance_uid"]
    assert low["frame_of_reference_uid"] == high["frame_of_reference_uid"]
    assert low["truth_series_instance_uid"] == high["truth_series_instance_uid"]
    assert low["series_instance_uid"] != high["series_instance_uid"]
    assert (tmp_path / "t1" / "IM0002.dcm").read_bytes() == (tmp_path / "t2" / "IM0002.dcm").read_bytes()


def test_process_pool_gives_the_serial_result() -> None:
    """Each slice's random stream depends on (seed, slice), not on the worker that draws it."""
    serial = [hu for _, hu, _ in phantom.simulate_volume(128, 4, 1e4, seed=2, workers=1)]
    pooled = [hu for _, hu, _ in phantom.simulate_volume(128, 4, 1e4, seed=2, workers=2)]
    assert all(np.array_equal(a, b) for a, b in zip(serial, pooled, strict=True))


@pytest.mark.skipif(DCIODVFY is None, reason=DCIODVFY_MISSING)
def test_files_pass_dciodvfy(series: tuple[Path, Path, dict]) -> None:
    low_dir, truth_dir, _ = series
    for path in (low_dir / "IM0001.dcm", low_dir / "IM0008.dcm", truth_dir / "IM0004.dcm"):
        code, errors = dciodvfy_errors(path)
        assert errors == [] and code == 0, f"{path}: {errors}"


def test_cli_prints_one_json_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["phantom", str(out), "--size", "48", "--slices", "2", "--photons", "5e3", "--seed", "4"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "written" and record["slices"] == 2 and record["photons"] == 5e3
    assert "truth" not in record and (out / "_SUCCESS").exists() and len(list(out.glob("*.dcm"))) == 2


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"size": 8}, "--size"),
        ({"slices": 0}, "--slices"),
        ({"photons": 0.0}, "--photons"),
        ({"photons": float("nan")}, "--photons"),
        ({"seed": -1}, "--seed"),
        ({"views": 4}, "views"),
    ],
)
def test_bad_parameters(tmp_path: Path, kwargs: dict, word: str) -> None:
    params = {"size": 48, "slices": 2, "photons": 1e4, "seed": 0} | kwargs
    with pytest.raises(ParameterError, match=word):
        phantom.write_phantom_series(str(tmp_path / "x"), **params)
    assert not (tmp_path / "x").exists()


def test_publishes_to_s3(s3_bucket: str) -> None:
    url = f"s3://{s3_bucket}/phantom/low"
    record = phantom.write_phantom_series(url, size=32, slices=2, seed=0, truth=f"s3://{s3_bucket}/phantom/truth")
    fs, _ = storage.get_fs(url)
    for prefix in ("low", "truth"):
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{s3_bucket}/phantom/{prefix}"))
        assert names == ["IM0001.dcm", "IM0002.dcm", "_SUCCESS"]
    assert record["out"] == url


def test_a_larger_body_scales_the_patient_not_the_lesions() -> None:
    """body_scale grows the anatomy and the field of view together (same picture, larger
    pixels), keeps the lesions' size, and at the default leaves every shape as it was."""
    assert phantom.anatomy(-68.0, 1.0) == phantom.anatomy(-68.0)
    default, large = phantom.anatomy(-68.0), phantom.anatomy(-68.0, 1.33)
    assert large[0].a == pytest.approx(1.33 * default[0].a) and large[0].cx == 0.0
    x, y, z, radius, delta = phantom._LESIONS[0]
    lesion = [e for e in large if e.delta_hu == delta and e.a <= radius][0]
    assert lesion.a == [e for e in default if e.delta_hu == delta and e.a <= radius][0].a
    assert lesion.cx == pytest.approx(1.33 * phantom._LESIONS[0][0])
    assert phantom.pixel_spacing_mm(64, 1.33) == pytest.approx(1.33 * phantom.pixel_spacing_mm(64))
    with pytest.raises(ParameterError, match="--body-scale"):
        phantom.write_phantom_series("unused", size=48, slices=2, body_scale=3.0)


def test_a_larger_body_is_noisier_in_its_centre() -> None:
    """Longer paths leave fewer photons: the centre of the large body is much noisier."""
    def centre_noise(body_scale: float) -> float:
        hu, _ = phantom.simulate_slice(-68.0, 64, 2e4, seed=1, index=0, body_scale=body_scale)
        ref, _ = phantom.simulate_slice(-68.0, 64, float("inf"), seed=1, index=0, body_scale=body_scale)
        return float(np.std((hu - ref)[26:38, 26:38]))

    assert centre_noise(1.33) > 1.8 * centre_noise(1.0)
