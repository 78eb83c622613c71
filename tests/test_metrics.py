"""PSNR/SSIM in the fixed HU window, the reference-free noise estimate, and previews."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctdenoise import metrics
from ctdenoise.preview import window, write_preview


def _body(size: int = 128) -> np.ndarray:
    """A piecewise-constant slice: air, a soft-tissue ellipse with two lungs and a bone."""
    y, x = np.mgrid[:size, :size] - size / 2
    image = np.full((size, size), -1000.0)
    image[(x / (0.45 * size)) ** 2 + (y / (0.3 * size)) ** 2 <= 1] = 40.0
    for cx in (-0.2 * size, 0.2 * size):
        image[((x - cx) / (0.1 * size)) ** 2 + (y / (0.18 * size)) ** 2 <= 1] = -850.0
    image[x**2 + (y - 0.2 * size) ** 2 <= (0.05 * size) ** 2] = 800.0
    return image


def test_window_maps_level_and_width() -> None:
    out = window(np.array([-1000.0, -160.0, 40.0, 240.0, 2000.0]), width=400, level=40)
    assert out.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError):
        window(np.zeros(2), width=0)


def test_psnr_uses_the_fixed_window() -> None:
    reference = _body()
    noisy = reference + np.random.default_rng(0).normal(0, 20, reference.shape)
    diff = metrics.clip_hu(noisy) - metrics.clip_hu(reference)
    expected = 10 * math.log10(2000.0**2 / np.mean(diff**2))
    assert metrics.psnr_db(noisy, reference) == pytest.approx(expected)
    assert metrics.psnr_db(reference, reference) == math.inf
    # differences above +1000 HU (bone 1500 vs 3000) do not count
    bone = np.full((8, 8), 1500.0)
    assert metrics.psnr_db(bone + 1500.0, bone) == math.inf


def test_blockwise_squared_errors_match_the_whole_volume() -> None:
    rng = np.random.default_rng(1)
    reference = rng.uniform(-1200, 1500, (1000, 6))
    image = reference + rng.normal(0, 30, reference.shape)
    acc = metrics.SquaredErrorSum()
    for start in range(0, 1000, 128):
        acc.add(image[start : start + 128], reference[start : start + 128])
    assert acc.count == image.size
    assert acc.psnr_db == pytest.approx(metrics.psnr_db(image, reference))
    assert math.isnan(metrics.SquaredErrorSum().mse)


def test_ssim_of_slices_and_stacks() -> None:
    reference = _body(64)
    noisy = reference + np.random.default_rng(2).normal(0, 50, reference.shape)
    assert metrics.ssim(reference, reference) == pytest.approx(1.0)
    single = metrics.ssim(noisy, reference)
    assert 0.0 < single < 0.99
    stack = metrics.ssim(np.stack([noisy, reference]), np.stack([reference, reference]))
    assert stack == pytest.approx((single + 1.0) / 2)
    with pytest.raises(ValueError):
        metrics.ssim(reference, reference[:32])


@pytest.mark.parametrize("sigma", [10.0, 30.0, 80.0])
def test_noise_estimate_recovers_white_noise(sigma: float) -> None:
    clean = _body(256)
    noisy = clean + np.random.default_rng(int(sigma)).normal(0, sigma, clean.shape)
    assert metrics.noise_std_hu(noisy) == pytest.approx(sigma, rel=0.1)
    assert metrics.noise_std_hu(clean) < 1.0


def test_noise_estimate_without_soft_tissue_is_nan() -> None:
    assert math.isnan(metrics.noise_std_hu(np.full((64, 64), -1000.0)))
    assert metrics.finite_or_none(math.nan) is None and metrics.finite_or_none(math.inf) is None
    assert metrics.finite_or_none(2.5) == 2.5


def test_preview_png_is_deterministic(tmp_path: Path) -> None:
    original = _body(96)
    denoised = original + np.random.default_rng(3).normal(0, 5, original.shape)
    a = write_preview(tmp_path / "a.png", original, denoised, title="t")
    b = write_preview(tmp_path / "b.png", original, denoised, title="t")
    assert a.read_bytes() == b.read_bytes()
    with Image.open(a) as png:
        assert png.format == "PNG" and png.size == (1200, 460)
        pixels = np.asarray(png.convert("L"))
    assert pixels.std() > 10  # not a blank figure
    with pytest.raises(ValueError):
        write_preview(tmp_path / "c.png", original, denoised[:10])
