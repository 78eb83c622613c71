"""``reconstruct``: A V_r V_r^T as a derived DICOM series, its references, metrics and preview."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import CTImageStorage

from ctdenoise import matrix_store, storage
from ctdenoise.cli import main
from ctdenoise.errors import InputError, ParameterError
from ctdenoise.writer import reconstruct
from writer_fixtures import DCIODVFY, DCIODVFY_MISSING, PhantomCase, build_case, dciodvfy_errors, hu_of, read_series

SLICES = 16
RANK = 4  # where the 64x64x16 phantom at 2e3 photons/ray gains most (PSNR +2 dB)
HU_RANGE = (-1024.0, 3071.0)  # what the phantom's 12-bit unsigned format can hold


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> PhantomCase:
    return build_case(tmp_path_factory.mktemp("writer"), size=64, slices=SLICES, photons=2e3)


@pytest.fixture(scope="module")
def rank_out(case: PhantomCase, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("out") / f"rank-{RANK}"
    metrics = reconstruct(case.matrix_url, case.svd_url, str(dest), RANK, reference_url=case.truth_url)
    return dest, metrics


def _volume(folder: Path) -> np.ndarray:
    """(voxels, slices) HU of a written series, columns in file order."""
    return np.stack([hu_of(ds).reshape(-1) for ds in read_series(folder)], axis=1)


def test_layout(rank_out: tuple[Path, dict]) -> None:
    dest, metrics = rank_out
    assert sorted(p.name for p in dest.iterdir()) == ["_SUCCESS", "dicom", "metrics.json", "preview.png"]
    assert sorted(p.name for p in (dest / "dicom").iterdir()) == [f"IM{i:04d}.dcm" for i in range(1, SLICES + 1)]
    assert json.loads((dest / "metrics.json").read_text()) == metrics
    with Image.open(dest / "preview.png") as png:
        assert png.format == "PNG" and png.size[0] > 2 * png.size[1]


def test_full_rank_gives_back_the_input(case: PhantomCase, tmp_path: Path) -> None:
    """V V^T = I: the stored values of the input come back exactly (they are integers in HU)."""
    metrics = reconstruct(case.matrix_url, case.svd_url, str(tmp_path / "full"), SLICES)
    assert np.array_equal(_volume(tmp_path / "full" / "dicom"), case.A)
    assert metrics["retained_energy"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["noise_std_hu_denoised"] == pytest.approx(metrics["noise_std_hu_input"])


def test_rank_r_is_the_truncated_svd(case: PhantomCase, rank_out: tuple[Path, dict]) -> None:
    dest, metrics = rank_out
    expected = (case.U[:, :RANK] * case.s[:RANK]) @ case.V[:, :RANK].T
    got = _volume(dest / "dicom")
    assert np.abs(got - np.clip(expected, *HU_RANGE)).max() <= 0.5 + 1e-6
    assert not np.array_equal(got, case.A)
    energy = float(np.sum(case.s[:RANK] ** 2) / np.sum(case.A**2))
    assert metrics["retained_energy"] == pytest.approx(energy, rel=1e-9)
    assert (metrics["rank"], metrics["k"], metrics["n_slices"]) == (RANK, SLICES, SLICES)


def test_derived_series_header_and_references(case: PhantomCase, rank_out: tuple[Path, dict]) -> None:
    dest, metrics = rank_out
    sources = {round(float(ds.ImagePositionPatient[2]), 3): ds for ds in read_series(case.low_dir)}
    derived = read_series(dest / "dicom")
    first_source = next(iter(sources.values()))
    assert len({ds.SOPInstanceUID for ds in derived}) == SLICES
    for j, ds in enumerate(derived):
        src = sources[round(float(ds.ImagePositionPatient[2]), 3)]
        assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert ds.SeriesInstanceUID == metrics["series_instance_uid"] != src.SeriesInstanceUID
        assert ds.SeriesDescription.startswith(f"DENOISED SVD rank {RANK}")
        assert f"rank {RANK}" in ds.DerivationDescription
        assert ds.SeriesDescription == f"DENOISED SVD rank {RANK}: {src.SeriesDescription}"[:64]
        assert int(ds.SeriesNumber) == int(src.SeriesNumber) * 1000 + RANK
        equipment = ds.ContributingEquipmentSequence[0]  # IHE AI Results: the algorithm that made it
        assert (equipment.ManufacturerModelName, equipment.PurposeOfReferenceCodeSequence[0].CodeValue) == ("ctdenoise", "109103")
        assert equipment.SoftwareVersions and equipment.ContributionDescription == ds.DerivationDescription
        assert ds.InstanceNumber == j + 1
        for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientName", "PatientID", "StudyDate",
                        "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
            assert ds[keyword].value == src[keyword].value, keyword
        ref = ds.SourceImageSequence[0]
        assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (src.SOPClassUID, src.SOPInstanceUID)
        assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        series_ref = ds.ReferencedSeriesSequence[0]
        assert series_ref.SeriesInstanceUID == first_source.SeriesInstanceUID
        assert series_ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    # columns are in ascending position along the normal, as in the matrix
    z = [float(ds.ImagePositionPatient[2]) for ds in derived]
    assert z == sorted(z)


def test_reruns_are_byte_identical_and_ranks_differ(case: PhantomCase, rank_out: tuple[Path, dict], tmp_path: Path) -> None:
    dest, metrics = rank_out
    again = reconstruct(case.matrix_url, case.svd_url, str(tmp_path / "again"), RANK)
    other = reconstruct(case.matrix_url, case.svd_url, str(tmp_path / "other"), RANK + 1)
    assert again["series_instance_uid"] == metrics["series_instance_uid"] != other["series_instance_uid"]
    for name in ("IM0001.dcm", f"IM{SLICES:04d}.dcm"):
        assert (tmp_path / "again" / "dicom" / name).read_bytes() == (dest / "dicom" / name).read_bytes()
        assert (
            pydicom.dcmread(tmp_path / "other" / "dicom" / name).SOPInstanceUID
            != pydicom.dcmread(dest / "dicom" / name).SOPInstanceUID
        )


def test_denoising_improves_psnr_and_ssim_against_the_truth(rank_out: tuple[Path, dict]) -> None:
    _, metrics = rank_out
    assert metrics["psnr_db_denoised"] > metrics["psnr_db_input"] + 1.0
    assert metrics["ssim_denoised"] > metrics["ssim_input"]
    assert metrics["noise_std_hu_denoised"] < 0.8 * metrics["noise_std_hu_input"]
    assert SLICES // 2 in metrics["ssim_slices"]


def test_metrics_without_reference(case: PhantomCase, tmp_path: Path) -> None:
    metrics = reconstruct(case.matrix_url, case.svd_url, str(tmp_path / "r2"), 2)
    assert {"rank", "k", "retained_energy", "noise_std_hu_input", "noise_std_hu_denoised", "seconds",
            "series_instance_uid", "n_slices"} <= metrics.keys()
    assert not {"psnr_db_input", "psnr_db_denoised", "ssim_input", "ssim_denoised"} & metrics.keys()
    assert 0.0 < metrics["retained_energy"] < 1.0


@pytest.mark.parametrize("rank", [0, SLICES + 1, -3])
def test_rank_out_of_range(case: PhantomCase, tmp_path: Path, rank: int) -> None:
    with pytest.raises(ParameterError) as err:
        reconstruct(case.matrix_url, case.svd_url, str(tmp_path / "bad"), rank)
    assert case.svd_url in str(err.value) and f"k={SLICES}" in str(err.value)
    assert not (tmp_path / "bad").exists()


def test_svd_of_another_matrix_is_refused(case: PhantomCase, tmp_path: Path) -> None:
    wrong = str(tmp_path / "wrong.zarr")
    matrix_store.write_svd(wrong, case.s[:4], np.eye(SLICES + 2, 4), {"method": "exact", "seed": 0})
    with pytest.raises(InputError, match="slices"):
        reconstruct(case.matrix_url, wrong, str(tmp_path / "bad"), 2)
    assert not (tmp_path / "bad").exists()


def test_reference_of_another_shape_is_refused(case: PhantomCase, tmp_path: Path) -> None:
    other = str(tmp_path / "other.zarr")
    matrix_store.write_matrix(np.zeros((64 * 64, SLICES - 1), np.float32), {}, other)
    with pytest.raises(InputError, match="reference"):
        reconstruct(case.matrix_url, case.svd_url, str(tmp_path / "bad"), 2, reference_url=other)


@pytest.mark.skipif(DCIODVFY is None, reason=DCIODVFY_MISSING)
def test_derived_files_pass_dciodvfy(rank_out: tuple[Path, dict]) -> None:
    dest, _ = rank_out
    for name in ("IM0001.dcm", f"IM{SLICES:04d}.dcm"):
        code, errors = dciodvfy_errors(dest / "dicom" / name)
        assert errors == [] and code == 0, f"{name}: {errors}"


def test_cli_reconstruct(case: PhantomCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "cli"
    args = ["reconstruct", case.matrix_url, case.svd_url, str(dest), "--rank", "3", "--reference", case.truth_url]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["rank"] == 3 and record["status"] == "written" and "psnr_db_denoised" in record
    assert main(["reconstruct", case.matrix_url, case.svd_url, str(tmp_path / "x"), "--rank", "99"]) == 2
    assert "k=16" in capsys.readouterr().err


def test_reads_and_publishes_on_s3(case: PhantomCase, s3_bucket: str) -> None:
    matrix = matrix_store.open_matrix(case.matrix_url)
    s, V, attrs = matrix_store.read_svd(case.svd_url)
    matrix_url, svd_url = f"s3://{s3_bucket}/m.zarr", f"s3://{s3_bucket}/svd.zarr"
    matrix_store.write_matrix(matrix[...], dict(matrix.attrs), matrix_url)
    matrix_store.write_svd(svd_url, s, V, attrs)
    dest = f"s3://{s3_bucket}/denoised/rank-2"
    metrics = reconstruct(matrix_url, svd_url, dest, 2)
    assert storage.is_published(dest)
    assert json.loads(storage.read_bytes(storage.join(dest, "metrics.json"))) == metrics
    assert storage.exists(storage.join(dest, "dicom", f"IM{SLICES:04d}.dcm"))


@pytest.fixture(scope="module")
def local_out(case: PhantomCase, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    from ctdenoise.local_group import local_numpy
    from ctdenoise.params import LocalParams

    root = tmp_path_factory.mktemp("local")
    local_url = local_numpy(case.matrix_url, str(root / "local.zarr"), LocalParams(tile=8, stride=4, multipliers=(0.5, 1.0)))["local"]
    dest = root / "local-x1"
    metrics = reconstruct(case.matrix_url, local_url, str(dest), reference_url=case.truth_url, multiplier=1.0)
    return dest, metrics, local_url


def test_local_mode_writes_the_denoised_matrix_of_its_multiplier(case: PhantomCase, local_out: tuple[Path, dict, str]) -> None:
    from ctdenoise.matrix_store import open_local

    dest, metrics, local_url = local_out
    assert sorted(p.name for p in dest.iterdir()) == ["_SUCCESS", "dicom", "metrics.json", "preview.png"]
    assert metrics["mode"] == "local" and metrics["multiplier"] == 1.0 and metrics["mean_tile_rank"] > 0
    group, _ = open_local(local_url)
    expected = np.clip(group["D"][1], *HU_RANGE)
    np.testing.assert_allclose(_volume(dest / "dicom"), expected, atol=0.51)  # integer storage
    datasets = read_series(dest / "dicom")
    assert datasets[0].SeriesDescription.startswith("DENOISED local x1") and int(datasets[0].SeriesNumber) % 1000 == 910
    assert "Local low-rank" in datasets[0].DerivationDescription
    assert metrics["psnr_db_denoised"] > metrics["psnr_db_input"] and metrics["ssim_denoised"] > metrics["ssim_input"]


def test_local_mode_uids_differ_from_the_global_ranks(local_out: tuple[Path, dict, str], rank_out: tuple[Path, dict]) -> None:
    assert local_out[1]["series_instance_uid"] != rank_out[1]["series_instance_uid"]


@pytest.mark.parametrize("change", [{"inplane": "none"}, {"inplane_strength": 2.0}, {"weights": "uniform"}])
def test_local_mode_uids_differ_between_settings(case: PhantomCase, local_out: tuple[Path, dict, str], tmp_path: Path, change: dict) -> None:
    """Another setting gives other pixels, so it must not reuse the series (and SOP) UIDs."""
    from ctdenoise.local_group import local_numpy
    from ctdenoise.params import LocalParams

    params = LocalParams(tile=8, stride=4, multipliers=(0.5, 1.0), **change)
    other_url = local_numpy(case.matrix_url, str(tmp_path / "other.zarr"), params)["local"]
    other = reconstruct(case.matrix_url, other_url, str(tmp_path / "other-x1"), multiplier=1.0)
    assert other["series_instance_uid"] != local_out[1]["series_instance_uid"]
    sops = {ds.SOPInstanceUID for ds in read_series(tmp_path / "other-x1" / "dicom")}
    assert sops.isdisjoint(ds.SOPInstanceUID for ds in read_series(local_out[0] / "dicom"))


def test_local_mode_refuses_a_multiplier_not_computed_and_rank_with_multiplier(
    case: PhantomCase, local_out: tuple[Path, dict, str], tmp_path: Path
) -> None:
    local_url = local_out[2]
    with pytest.raises(ParameterError, match=r"multiplier 1.5 was not computed \(the group holds \[0.5, 1.0\]\)"):
        reconstruct(case.matrix_url, local_url, str(tmp_path / "x"), multiplier=1.5)
    with pytest.raises(ParameterError, match="not both"):
        reconstruct(case.matrix_url, local_url, str(tmp_path / "x"), 3, multiplier=1.0)
    with pytest.raises(ParameterError, match="not neither"):
        reconstruct(case.matrix_url, local_url, str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
