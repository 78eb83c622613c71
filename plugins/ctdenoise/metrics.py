"""Image quality numbers for CT in HU: PSNR, SSIM (scikit-image) and a noise estimate.

PSNR and SSIM need a data range. CT values span -1024..3071 HU and more, but what matters for
soft tissue and lungs lies in -1000..1000 HU; both images are therefore clipped to
``HU_WINDOW`` and ``DATA_RANGE`` = 2000 HU is used. The numbers are comparable between series
and runs because the window is fixed, not taken from the data.

The noise estimate (:func:`noise_std_hu`) needs no reference: the median of local standard
deviations (7x7 pixels) over soft tissue (-200..300 HU after smoothing, away from its edges).
In flat tissue a local standard deviation is the noise; the median ignores the windows that
straddle an edge or a small structure. CT noise is spatially correlated, and the local mean
absorbs part of its low frequencies, so the estimate is a little low in absolute terms; it is
meant for comparing the input with the denoised output, which it does consistently.
"""

from __future__ import annotations

import math

import numpy as np

HU_WINDOW = (-1000.0, 1000.0)
DATA_RANGE = HU_WINDOW[1] - HU_WINDOW[0]
SOFT_TISSUE_HU = (-200.0, 300.0)


def clip_hu(image: np.ndarray) -> np.ndarray:
    """``image`` clipped to :data:`HU_WINDOW`, as float64."""
    return np.clip(np.asarray(image, dtype=np.float64), *HU_WINDOW)


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB for a mean squared error in HU^2 (``inf`` for identical images)."""
    if mse <= 0:
        return math.inf
    return float(10.0 * math.log10(DATA_RANGE**2 / mse))


def psnr_db(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR (dB) of ``image`` against ``reference``, both clipped to :data:`HU_WINDOW`."""
    from skimage.metrics import peak_signal_noise_ratio

    if np.shape(image) != np.shape(reference):
        raise ValueError(f"PSNR of arrays with different shapes: {np.shape(image)} vs {np.shape(reference)}")
    ref, img = clip_hu(reference), clip_hu(image)
    if np.array_equal(ref, img):
        return math.inf
    return float(peak_signal_noise_ratio(ref, img, data_range=DATA_RANGE))


def ssim(image: np.ndarray, reference: np.ndarray) -> float:
    """Mean SSIM of ``image`` against ``reference`` (clipped to :data:`HU_WINDOW`).

    A 2-D array is one slice; a 3-D array ``(slices, rows, columns)`` gives the mean of the
    per-slice SSIMs (CT slices are compared in-plane; slice spacing differs from pixel spacing).
    """
    from skimage.metrics import structural_similarity

    image, reference = np.asarray(image), np.asarray(reference)
    if image.shape != reference.shape:
        raise ValueError(f"SSIM of arrays with different shapes: {image.shape} vs {reference.shape}")
    if image.ndim == 2:
        image, reference = image[None], reference[None]
    if image.ndim != 3:
        raise ValueError(f"SSIM needs 2-D slices or a (slices, rows, columns) stack, got shape {image.shape}")
    values = [
        structural_similarity(clip_hu(ref), clip_hu(img), data_range=DATA_RANGE)
        for img, ref in zip(image, reference, strict=True)
    ]
    return float(np.mean(values))


class SquaredErrorSum:
    """Running sum of squared differences (clipped to :data:`HU_WINDOW`) over blocks of voxels.

    Lets the writer compute a whole-volume PSNR while it reads the matrices block by block,
    without holding the volumes.
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def add(self, image: np.ndarray, reference: np.ndarray) -> None:
        diff = clip_hu(image) - clip_hu(reference)
        self.total += float(np.sum(diff * diff))
        self.count += diff.size

    @property
    def mse(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def psnr_db(self) -> float:
        return psnr_from_mse(self.mse)


def noise_std_hu(image: np.ndarray, window: int = 7) -> float:
    """Noise standard deviation (HU) of a CT slice without a reference (see module docstring).

    Returns NaN when the slice has too little soft tissue to measure (fewer than 50 pixels).
    """
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"noise_std_hu needs a 2-D slice, got shape {img.shape}")
    smooth = ndimage.gaussian_filter(img, sigma=2.0)
    tissue = (smooth >= SOFT_TISSUE_HU[0]) & (smooth <= SOFT_TISSUE_HU[1])
    inner = ndimage.binary_erosion(tissue, iterations=window // 2 + 1)
    if inner.sum() < 50:
        inner = tissue
    if inner.sum() < 50:
        return math.nan
    n = window * window
    mean = ndimage.uniform_filter(img, size=window, mode="reflect")
    mean_sq = ndimage.uniform_filter(img * img, size=window, mode="reflect")
    local_var = np.maximum(mean_sq - mean * mean, 0.0) * n / (n - 1)
    return float(np.sqrt(np.median(local_var[inner])))


def slice_noise_level(image: np.ndarray) -> float | None:
    """A noise level for comparing the slices of one series (HU, or None without enough tissue).

    :func:`noise_std_hu` of the image decimated 2x: a quarter of the pixels, cheap enough for the
    conversion of every slice. Decimation changes
    the noise texture the same way in every slice of a series, so the ratios between slices,
    which is what the local mode uses (``ctdenoise.local_lowrank``), are kept; the absolute value
    reads lower than :func:`noise_std_hu` of the full image.
    """
    img = np.asarray(image)
    return finite_or_none(noise_std_hu(img[::2, ::2])) if min(img.shape) >= 8 else None


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity: such values are reported as null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)
