"""Quality of a DICOM series against a reference, as the demo measures it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctdenoise.errors import InputError
from ctdenoise.evaluate import compare, load_volume
from ctdenoise.phantom import write_phantom_series


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("phantom")
    write_phantom_series(str(root / "low"), size=64, slices=6, photons=5e3, seed=3, truth=str(root / "truth"))
    return root / "low", root / "truth"


def test_load_volume_orders_slices_and_keeps_hu(phantom: tuple[Path, Path]) -> None:
    volume, attrs = load_volume(phantom[1])
    assert volume.shape == (6, 64, 64)
    assert attrs["ordering"] == "normal" and attrs["slice_positions"] == sorted(attrs["slice_positions"])
    assert volume.min() >= -1024 and 0 < np.median(volume[3][24:40, 24:40]) < 200  # soft tissue at the centre


def test_compare_ranks_noisy_below_truth(phantom: tuple[Path, Path]) -> None:
    noisy, truth = load_volume(phantom[0])[0], load_volume(phantom[1])[0]
    same = compare(truth, truth)
    assert same["psnr_db"] is None and same["ssim"] == pytest.approx(1.0)  # infinite PSNR is reported as null
    measured = compare(noisy, truth)
    assert 5 < measured["psnr_db"] < 40 and measured["ssim"] < 0.99
    assert measured["noise_std_hu"] > compare(truth, truth)["noise_std_hu"]


def test_compare_refuses_other_shapes() -> None:
    with pytest.raises(InputError, match="shape"):
        compare(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)))
