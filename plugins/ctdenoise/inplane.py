"""The local mode's in-plane stage: each slice of a tile estimate, filtered at the strength of its
own local noise.

Why per region: the noise of filtered back projection follows what the rays crossed. In a large
body the centre, behind the longest paths, is several times noisier than the periphery, and the
streaks run through it; a strength set for a slice as a whole (or for a band through its middle)
keeps noise in the centre and blurs the periphery. So the stage first measures a *noise map* of
the image it filters (:func:`noise_map`), then:

1. non-local means (OpenCV's 16-bit ``fastNlMeansDenoising`` with an L1 norm) on the image
   divided by its noise map, so that one strength ``h = inplane_strength`` (in units of the local
   noise) fits every region, then multiplied back;
2. a guided filter (the image guiding itself, radius ``GUIDED_RADIUS``) whose regularization is
   ``(inplane_smoothing * noise)**2`` per pixel: where the local variance is of the order of the
   noise (flat tissue) it averages, where it is well above (edges) it keeps the pixel. Non-local
   means alone leaves blotches of low-frequency noise in flat tissue (FBP noise is correlated),
   which bury a low-contrast lesion; this removes them and stops at edges.

The noise map is the median, over blocks of ``NOISE_BLOCK`` x ``NOISE_BLOCK`` pixels, of the
local variance in ``NOISE_WINDOW`` x ``NOISE_WINDOW`` windows (the estimator of
:func:`ctdenoise.metrics.noise_std_hu`, made local), interpolated linearly between block centres.
The median ignores the windows that straddle an edge. Blocks sit on a grid anchored at the
image's first row and column, so a band of rows gives the whole slice's map on its rows as long
as it holds every block those rows interpolate between: ``LocalParams.inplane_halo`` rows
beyond a band make its result exactly the whole slice's (a test checks it), whatever the split.

Everything is float32 and deterministic; OpenCV runs single-threaded here (``cv2.setNumThreads``):
an executor task owns one core, and the engine runs as many tasks as there are cores.
"""

from __future__ import annotations

import math

import numpy as np

from ctdenoise.params import (
    FILTER_REACH,
    GUIDED_RADIUS,
    NLM_DISTANCE,
    NLM_PATCH,
    NOISE_BLOCK,
    NOISE_WINDOW,
)

NOISE_FLOOR_HU = 1.0
"""The smallest noise level the map holds: constant regions (outside the field of view) have
none, and the stage divides by it."""

QUANTUM = 16.0
"""Levels per unit of local noise when the normalized image is stored as 16-bit for OpenCV: the
rounding adds 1 / (QUANTUM * sqrt(12)) of the noise, far below what the filter leaves."""

OFFSET_NOISE_UNITS = 8.0
"""Added before the 16-bit conversion (in units of the local noise, on top of +1024 HU) so that
noise below -1024 HU in air is not clipped: clipping only the negative half would raise air."""


def _box(image: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.boxFilter(image, -1, (size, size), borderType=cv2.BORDER_REFLECT)


def _taps(first: int, count: int, blocks: int, size: int, first_block: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation of image positions ``first .. first + count - 1`` between the centres
    of ``blocks`` grid blocks of ``size`` pixels (the first is block ``first_block`` of the image's
    grid): ``(lower block, upper block, weight of the upper)``, nearest block beyond the centres.
    Two taps per position, elementwise: the same value wherever a band starts."""
    centres = (first_block + np.arange(blocks)) * size + (size - 1) / 2.0
    position = np.clip(np.arange(first, first + count, dtype=np.float64), centres[0], centres[-1])
    upper = np.clip(np.searchsorted(centres, position, side="right"), 0, blocks - 1)
    lower = np.maximum(upper - 1, 0)
    span = centres[upper] - centres[lower]
    t = np.divide(position - centres[lower], span, out=np.zeros(count), where=span > 0)
    return lower, upper, t.astype(np.float32)


def noise_map(image: np.ndarray, first_row: int, total_rows: int) -> np.ndarray:
    """Local noise level (HU) of each pixel of ``image``, rows ``first_row ..`` of a slice of
    ``total_rows`` rows (see the module docstring), at least :data:`NOISE_FLOOR_HU`.

    Only blocks whose variance windows lie inside ``image`` (or reach a true edge of the slice,
    where the whole slice reflects too) are measured, so the rows a band keeps see the values of
    the whole slice."""
    height, width = image.shape
    x = image.astype(np.float32)
    mean = _box(x, NOISE_WINDOW)
    var = np.maximum(_box(x * x, NOISE_WINDOW) - mean * mean, 0.0)
    margin = NOISE_WINDOW // 2
    lo = first_row if first_row == 0 else first_row + margin  # first row with a full window
    hi = first_row + height if first_row + height == total_rows else first_row + height - margin
    b0, b1 = math.ceil(lo / NOISE_BLOCK), (hi - NOISE_BLOCK) // NOISE_BLOCK + 1
    if b1 <= b0:  # less than one block of rows (tiny images only): one level for the region
        return np.full(image.shape, max(NOISE_FLOOR_HU, float(np.sqrt(np.median(var)))), dtype=np.float32)
    block_w = min(NOISE_BLOCK, width)
    cols = width // block_w
    rows = var[b0 * NOISE_BLOCK - first_row : b1 * NOISE_BLOCK - first_row, : cols * block_w]
    blocks = rows.reshape(b1 - b0, NOISE_BLOCK, cols, block_w).transpose(0, 2, 1, 3).reshape(b1 - b0, cols, -1)
    level = np.sqrt(np.median(blocks, axis=2)).astype(np.float32)
    lower, upper, t = _taps(first_row, height, b1 - b0, NOISE_BLOCK, b0)
    level = level[lower] * (1 - t)[:, None] + level[upper] * t[:, None]
    lower, upper, t = _taps(0, width, cols, block_w)
    level = level[:, lower] * (1 - t) + level[:, upper] * t
    return np.maximum(level, np.float32(NOISE_FLOOR_HU))


def nlm(image: np.ndarray, noise: np.ndarray, strength: float) -> np.ndarray:
    """Non-local means of ``image`` (HU) divided by its ``noise`` map, strength ``h = strength``
    noise units, multiplied back (float32)."""
    import cv2

    cv2.setNumThreads(1)
    levels = (image.astype(np.float32) + 1024.0) / noise * QUANTUM + OFFSET_NOISE_UNITS * QUANTUM
    stored = np.clip(np.rint(levels), 0, 65535).astype(np.uint16)
    out = cv2.fastNlMeansDenoising(stored, [float(strength * QUANTUM)], templateWindowSize=NLM_PATCH,
                                   searchWindowSize=2 * NLM_DISTANCE + 1, normType=cv2.NORM_L1)  # fmt: skip
    return (out.astype(np.float32) / QUANTUM - OFFSET_NOISE_UNITS) * noise - 1024.0


def guided(image: np.ndarray, noise: np.ndarray, smoothing: float) -> np.ndarray:
    """The guided filter of ``image`` by itself (He et al. 2013), radius :data:`GUIDED_RADIUS`,
    regularization ``(smoothing * noise)**2`` per pixel: a local linear model that averages where
    the local variance is of the order of the noise and keeps edges."""
    size = 2 * GUIDED_RADIUS + 1
    x = image.astype(np.float32)
    mean = _box(x, size)
    var = np.maximum(_box(x * x, size) - mean * mean, 0.0)
    eps = np.square(np.float32(smoothing) * noise)
    a = var / (var + eps)
    b = mean - a * mean
    return _box(a, size) * x + _box(b, size)



def filter_slice(image: np.ndarray, first_row: int, total_rows: int, strength: float, smoothing: float,
                 keep: tuple[int, int] | None = None) -> np.ndarray:  # fmt: skip
    """The in-plane stage on one slice (or a band of it starting at ``first_row``): noise map,
    non-local means, guided filter (``smoothing`` 0 skips it); the rows ``keep`` of ``image``
    (default all). The map needs the whole region, the filters only ``FILTER_REACH`` rows
    around ``keep``: they run on those alone (a band's halo is mostly the map's)."""
    lo, hi = keep or (0, image.shape[0])
    noise = noise_map(image, first_row, total_rows)
    a, b = max(0, lo - FILTER_REACH), min(image.shape[0], hi + FILTER_REACH)
    part, noise = image[a:b], noise[a:b]
    out = nlm(part, noise, strength)
    out = guided(out, noise, smoothing) if smoothing > 0 else out
    return out[lo - a : hi - a]
