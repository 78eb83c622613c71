"""Benchmark: does the local mode's automatic output beat a tuned filter, on a grid of bodies and doses.

    .venv/bin/python bench/quality.py [--bodies small,large] [--doses 5e3,1e4,2e4,9e4] [--peers]
                                      [--workdir DIR] [--json PATH] [--skip-bm3d]

The question a radiologist asks of a denoiser is not "how fast" but "is the image closer to the
patient, and does it keep a faint lesion visible". The simulated phantom
(``ctdenoise.phantom``) answers it because it knows the object: for one seed it gives, per
dose, the low-dose FBP series, the *full-dose reference* (FBP of noise-free projections: same
views and filter, no Poisson noise, what the scanner would show at a high dose) and the
*phantom truth* (the noise-free object itself).

The grid (issue 18): two bodies (``BODIES``: the default phantom, and a large one about 43 cm
across, ``phantom`` ``body_scale=1.33``, whose centre is photon-starved with streaks through it)
times four doses (``DOSES``), each with a small low-contrast lesion (``--lesion``). In every
cell it runs

- the local mode as the pipeline runs it (``ctdenoise.local_lowrank``, default parameters, the
  per-slice noise levels conversion records), one row per multiplier, the AUTOMATIC one marked:
  that one is compared, no per-case tuning;
- total variation (scikit-image Chambolle) per slice at its best weight for that cell, chosen
  against the full-dose reference (:func:`tv_oracle`: an oracle, which a hospital does not have;
  it flatters TV).

and prints, per cell, PSNR and SSIM (``ctdenoise.metrics``: window -1000..1000 HU, SSIM per
slice) against the full-dose reference and the truth, the noise in flat liver, the lesion's
contrast-to-noise ratio (``|mean(lesion) - mean(ring)| / std(ring)``, ring a band of flat liver
around it) and the seconds each took; then the grid with the margins of the issue's targets:
PSNR >= TV + 1 dB, SSIM >= TV's, CNR >= TV's, and the lesion not erased (its contrast at least
half the full dose's). ``--peers`` adds the other rows to each cell (global SVD at the seed's
rule ranks and Gavish-Donoho, the local mode's tiles alone and fast setting, Gaussian, NLM and
BM3D, automatic and hand-tuned on a grid of multiples of the per-slice noise level
``sigma_hat``).

Simulated volumes are cached as .npy in ``--workdir`` (default ``.cache/bench-quality/``, git
ignored), keyed by the parameters and the source of ``phantom.py``, so re-runs skip the FBP.
This is not a test: nothing asserts; quality figures are deterministic, timings depend on what
else runs on the machine (the load average is printed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "plugins"))

SeriesFn = Callable[[np.ndarray, float, float], np.ndarray]  # (slice HU, sigma_hat, setting) -> slice HU

DROP_PERCENTS = (0.1, 1.0, 5.0, 10.0, 30.0)
ROI_ERODE_PX = 4  # flat region: this many pixels away from any other tissue
ROI_MIN_PIXELS = 200  # a slice counts for the noise number when its region has at least this many
RING_GAP_PX = 2  # background ring of the lesion: starts this far outside the lesion's edge
LESION_MIN_RADIUS_PX = 3.0  # slices where the lesion's section is smaller are not used for CNR

# Hand-tuning grids (small: the whole bench should take a few minutes on two cores). BM3D costs
# about a second per 256x256 slice, so its grid is shorter and scored on half as many slices.
GAUSSIAN_SIGMAS_PX = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
TV_FACTORS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)  # weight = factor * sigma_hat
NLM_FACTORS = (0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 2.5)  # h = factor * sigma_hat
BM3D_FACTORS = (1.0, 1.5, 2.0, 2.5)  # sigma_psd = factor * sigma_hat


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the volumes


@dataclass
class Dose:
    """One dose of the phantom: the low-dose volume and the shared references, (slices, rows, cols) HU."""

    photons: float
    low: np.ndarray
    reference: np.ndarray
    truth: np.ndarray


def cache_key(size: int, slices: int, photons: float, seed: int, body_scale: float = 1.0) -> str:
    from ctdenoise import phantom

    source = Path(phantom.__file__).read_bytes()
    text = f"size={size} slices={slices} photons={photons!r} seed={seed} views={phantom.n_views(size)} body={body_scale!r}"
    return hashlib.sha256(text.encode() + source).hexdigest()[:16]


def simulate(size: int, slices: int, photons: float, seed: int, workdir: Path, truth: bool,
             body_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """``(low-dose volume, truth volume or None)``, from the cache in ``workdir`` when there."""
    from ctdenoise.phantom import simulate_volume

    key = cache_key(size, slices, photons, seed, body_scale)
    low_path, truth_path = workdir / f"low-{key}.npy", workdir / f"truth-{key}.npy"
    if low_path.exists() and (not truth or truth_path.exists()):
        return np.load(low_path), (np.load(truth_path) if truth else None)
    started = time.perf_counter()
    low = np.empty((slices, size, size), dtype=np.float32)
    true = np.empty_like(low) if truth else None
    for index, hu, true_hu in simulate_volume(size, slices, photons, seed, truth=truth, body_scale=body_scale):
        low[index] = hu
        if true is not None:
            true[index] = true_hu
    workdir.mkdir(parents=True, exist_ok=True)
    for path, array in ((low_path, low), (truth_path, true)):
        if array is not None:
            np.save(path.with_suffix(".tmp.npy"), array)
            os.replace(path.with_suffix(".tmp.npy"), path)
    log(f"simulated {slices}x{size}x{size} at {photons:g} photons/ray in {time.perf_counter() - started:.1f} s")
    return low, true


# ----------------------------------------------------------------------------- masks and metrics


@dataclass
class Masks:
    """Where the noise and the lesion contrast are measured, (slices, rows, cols) booleans."""

    flat: np.ndarray
    lesion: np.ndarray
    ring: np.ndarray
    description: str


def flat_region(truth: np.ndarray, value: float, erode_px: int) -> np.ndarray:
    """Voxels whose truth is exactly ``value`` and stays so ``erode_px`` pixels around (in-plane)."""
    from scipy import ndimage

    equal = np.isclose(truth, value, atol=0.01)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)  # erode within each slice only
    return ndimage.binary_erosion(equal, structure=structure, iterations=erode_px)


def lesion_masks(truth: np.ndarray, lesion: int, background_hu: float, body_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, str]:
    """Lesion interior (1 px inside its edge) and a ring of flat background around it, per slice
    (the lesion moves with the body's scale, its size does not: ``phantom.anatomy``)."""
    from ctdenoise import phantom

    slices, size, _ = truth.shape
    x, y, cz, radius, delta = phantom._LESIONS[lesion]
    x, y = x * body_scale, y * body_scale
    ps = phantom.pixel_spacing_mm(size, body_scale)
    centre = size // 2
    rr, cc = np.mgrid[0:size, 0:size]
    dist_mm = np.hypot((cc - centre) * ps - x, (rr - centre) * ps - y)
    inside = np.zeros(truth.shape, dtype=bool)
    ring = np.zeros(truth.shape, dtype=bool)
    background = np.isclose(truth, background_hu, atol=0.01)
    for k, z in enumerate(phantom.slice_positions(slices)):
        h = (z - cz) / radius
        if abs(h) >= 1.0:
            continue
        r_mm = radius * math.sqrt(1.0 - h * h)
        if r_mm / ps < LESION_MIN_RADIUS_PX:
            continue
        inside[k] = dist_mm <= r_mm - ps
        outer = r_mm + ps * (RING_GAP_PX + max(4.0, r_mm / ps))
        ring[k] = (dist_mm >= r_mm + RING_GAP_PX * ps) & (dist_mm <= outer) & background[k]
    text = f"lesion {lesion} ({x:g}, {y:g}, {cz:g}) mm, radius {radius:g} mm, +{delta:g} HU; {int(inside.any(axis=(1, 2)).sum())} slices"
    return inside, ring, text


def build_masks(truth: np.ndarray, lesion: int, body_scale: float = 1.0) -> Masks:
    from ctdenoise import phantom

    flat = flat_region(truth, phantom.LIVER, ROI_ERODE_PX)
    inside, ring, text = lesion_masks(truth, lesion, phantom.LIVER, body_scale)
    counts = flat.sum(axis=(1, 2))
    desc = (f"flat region: liver ({phantom.LIVER:g} HU) eroded {ROI_ERODE_PX} px, {int((counts >= ROI_MIN_PIXELS).sum())} slices, "
            f"{int(counts.sum())} voxels; CNR: {text}, {int(inside.sum())} lesion / {int(ring.sum())} ring voxels")
    return Masks(flat, inside, ring, desc)


def flat_noise(volume: np.ndarray, flat: np.ndarray) -> float:
    """Std (HU) of ``volume`` in the flat region, per slice, averaged over slices that have it."""
    values = [float(np.std(v[m])) for v, m in zip(volume, flat, strict=True) if m.sum() >= ROI_MIN_PIXELS]
    return float(np.mean(values)) if values else math.nan


def lesion_cnr(volume: np.ndarray, masks: Masks) -> float:
    if not masks.lesion.any() or not masks.ring.any():
        return math.nan
    background = volume[masks.ring].astype(np.float64)
    return float(abs(volume[masks.lesion].mean() - background.mean()) / background.std())


def evaluate(volume: np.ndarray, dose: Dose, masks: Masks) -> dict[str, float]:
    from ctdenoise.metrics import psnr_db, ssim

    return {
        "psnr_full": psnr_db(volume, dose.reference),
        "ssim_full": ssim(volume, dose.reference),
        "psnr_truth": psnr_db(volume, dose.truth),
        "ssim_truth": ssim(volume, dose.truth),
        "noise_hu": flat_noise(volume, masks.flat),
        "cnr": lesion_cnr(volume, masks),
    }


@dataclass
class Row:
    method: str
    seconds: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""
    group: str = ""


# ----------------------------------------------------------------------------- global and local SVD


def series_matrix(volume: np.ndarray) -> np.ndarray:
    """``A`` (voxels x slices): row ``r * cols + c`` is pixel (r, c), one column per slice."""
    return volume.reshape(volume.shape[0], -1).T


def from_matrix(A: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    return np.ascontiguousarray(A.T.reshape(shape), dtype=np.float32)


def global_svd(volume: np.ndarray) -> Iterable[tuple[str, np.ndarray, float, str]]:
    """``(label, volume, seconds, note)`` for each rule rank of the exact global SVD."""
    from ctdenoise.ranks import drop_percent_rank, gavish_donoho_rank

    A = series_matrix(volume).astype(np.float64)
    started = time.perf_counter()
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    svd_seconds = time.perf_counter() - started
    n_full = len(s)
    ranks = [(f"global SVD, drop {p:g}%", drop_percent_rank(n_full, p), "") for p in DROP_PERCENTS]
    gd_rank, detail = gavish_donoho_rank(s, A.shape)
    ranks.append(("global SVD, Gavish-Donoho", gd_rank, f"threshold {detail['threshold']:.0f}"))
    for label, rank, note in ranks:
        started = time.perf_counter()
        out = from_matrix((U[:, :rank] * s[:rank]) @ Vt[:rank], volume.shape)
        seconds = svd_seconds + time.perf_counter() - started
        yield f"{label} (rank {rank}/{n_full})", out, seconds, note


LOCAL_VARIANTS = (("local low-rank + NLM", "default"), ("local low-rank, tiles alone", "tiles"),
                  ("local low-rank, fast setting (8 px tiles, stride 8)", "fast"))
"""The local mode as the pipeline runs it (tiles, then the in-plane non-local means), its tile
stage alone (``inplane="none"``), so the table shows what each stage adds, and the fast setting
(``params.FAST``, the one that meets the speed target in ``bench/svd.py``), so it shows
what that speed costs."""


def local_lowrank(volume: np.ndarray, title: str, variant: str) -> Iterable[tuple[str, np.ndarray, float, str]]:
    """One ``(label, volume, seconds, note)`` per multiplier of the variant; seconds are of the one pass."""
    from ctdenoise.local_lowrank import denoise_matrix
    from ctdenoise.params import multiplier_label
    from ctdenoise.params import BENCH_SETTINGS
    from ctdenoise.metrics import slice_noise_level

    params = BENCH_SETTINGS[variant]
    slices, rows, cols = volume.shape
    started = time.perf_counter()
    noise = [slice_noise_level(image) for image in volume]  # what conversion records per slice
    D, stats = denoise_matrix(series_matrix(volume), rows, cols, params, slice_noise=noise)
    seconds = time.perf_counter() - started
    ranks = np.asarray(stats.ranks)
    for i, m in enumerate(params.multipliers):
        auto = " (automatic)" if float(m) == params.automatic_multiplier else ""
        note = f"tile ranks median {np.median(ranks[:, i]):g}, max {ranks[:, i].max()}; one pass for all multipliers"
        yield f"{title} {multiplier_label(m)}{auto}", D[i].T.reshape(volume.shape), seconds, note


# ----------------------------------------------------------------------------- classic per-slice denoisers


def wavelet_sigmas(volume: np.ndarray) -> np.ndarray:
    """Per-slice noise level (HU) by ``skimage.restoration.estimate_sigma`` (wavelet MAD)."""
    from skimage.restoration import estimate_sigma

    return np.array([estimate_sigma(s.astype(np.float64), channel_axis=None) for s in volume])


def estimate_sigmas(volume: np.ndarray) -> np.ndarray:
    """Per-slice noise level ``sigma_hat`` (HU) without a reference: ``ctdenoise.metrics.noise_std_hu``.

    The wavelet estimate (``estimate_sigma``) assumes white noise and reads only the finest
    diagonal band; ramp-filtered FBP noise is correlated and the field outside the
    reconstruction circle is exactly -1000 HU, so it reports well under half the noise here and
    would cripple the automatic rows. It is the fallback for slices with too little soft tissue.
    """
    from ctdenoise.metrics import noise_std_hu

    local = np.array([noise_std_hu(s) for s in volume])
    return np.where(np.isfinite(local), local, wavelet_sigmas(volume))


def gaussian(image: np.ndarray, sigma_hat: float, width_px: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(image, sigma=width_px)


def total_variation(image: np.ndarray, sigma_hat: float, factor: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(image, weight=factor * sigma_hat)


def nl_means(image: np.ndarray, sigma_hat: float, factor: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(image, h=factor * sigma_hat, sigma=sigma_hat, patch_size=5, patch_distance=6, fast_mode=True)


def bm3d_white(image: np.ndarray, sigma_hat: float, factor: float) -> np.ndarray:
    import bm3d

    return bm3d.bm3d(image, sigma_psd=factor * sigma_hat)


def per_slice(fn: SeriesFn, volume: np.ndarray, sigmas: np.ndarray, setting: float, which: Sequence[int] | None = None) -> np.ndarray:
    """``fn`` on each slice (or the slices ``which``), float64 in, float32 out."""
    which = range(len(volume)) if which is None else which
    return np.stack([fn(volume[k].astype(np.float64), float(sigmas[k]), setting).astype(np.float32) for k in which])


def hand_tune(fn: SeriesFn, grid: Sequence[float], dose: Dose, sigmas: np.ndarray, every: int) -> tuple[float, dict[float, float]]:
    """The setting of ``grid`` with the best PSNR against the full-dose reference on every ``every``-th slice."""
    from ctdenoise.metrics import psnr_db

    which = list(range(every // 2, len(dose.low), every)) or [0]
    scores = {g: psnr_db(per_slice(fn, dose.low, sigmas, g, which), dose.reference[which]) for g in grid}
    return max(scores, key=lambda g: scores[g]), scores


@dataclass(frozen=True)
class Classic:
    name: str
    fn: SeriesFn
    auto: float | None  # setting of the automatic row (None: no automatic rule)
    auto_label: str
    grid: Sequence[float]
    unit: str  # how a setting reads: "{:g} px" or "{:g}*sigma"
    tune_stride: int = 1  # the grid is scored on every (tune_stride * --tune-every)-th slice


def classic_methods() -> list[Classic]:
    return [
        Classic("Gaussian filter", gaussian, 1.0, "fixed width 1 px (no noise rule)", GAUSSIAN_SIGMAS_PX, "width {:g} px"),
        Classic("TV (Chambolle)", total_variation, 1.0, "auto: weight = sigma_hat", TV_FACTORS, "weight {:g}*sigma_hat"),
        Classic("NL means", nl_means, 0.8, "auto: h = 0.8*sigma_hat (skimage's advice)", NLM_FACTORS, "h {:g}*sigma_hat"),
        Classic("BM3D (white noise)", bm3d_white, 1.0, "auto: sigma_psd = sigma_hat", BM3D_FACTORS, "sigma_psd {:g}*sigma_hat", 2),
    ]


def bm3d_unavailable() -> str | None:
    try:
        import bm3d

        bm3d.bm3d(np.zeros((16, 16)), sigma_psd=1.0)
    except Exception as exc:  # any failure to install, import or run: the row says why
        return f"{type(exc).__name__}: {exc}"
    return None


def classic_rows(method: Classic, dose: Dose, sigmas: np.ndarray, masks: Masks, every: int) -> list[Row]:
    rows: list[Row] = []
    if method.auto is not None:
        started = time.perf_counter()
        out = per_slice(method.fn, dose.low, sigmas, method.auto)
        rows.append(Row(f"{method.name}, {method.auto_label}", time.perf_counter() - started, evaluate(out, dose, masks), group="classic"))
    every = every * method.tune_stride
    started = time.perf_counter()
    best, scores = hand_tune(method.fn, method.grid, dose, sigmas, every)
    tune_seconds = time.perf_counter() - started
    started = time.perf_counter()
    out = per_slice(method.fn, dose.low, sigmas, best)
    seconds = time.perf_counter() - started
    grid = ", ".join(f"{g:g}: {v:.2f}" for g, v in scores.items())
    edge = " (best at the EDGE of the grid)" if best in (min(method.grid), max(method.grid)) else ""
    note = f"grid PSNR (every {every}th slice) {{{grid}}}{edge}; grid search {tune_seconds:.1f} s"
    label = f"{method.name}, HAND-TUNED (oracle: {method.unit.format(best)})"
    rows.append(Row(label, seconds, evaluate(out, dose, masks), note, group="classic"))
    return rows


# ----------------------------------------------------------------------------- one dose


def run_dose(dose: Dose, masks: Masks, every: int, bm3d_missing: str | None) -> tuple[list[Row], dict[str, Any]]:
    """Every peer row of one dose (``--peers``): global SVD, the local mode's tiles alone and fast
    setting (the grid holds its default), and the classic denoisers, automatic and hand-tuned."""
    rows = [Row("low-dose input", None, evaluate(dose.low, dose, masks), group="input"),
            Row("full-dose reference (noise-free FBP)", None, evaluate(dose.reference, dose, masks), group="reference")]
    generators = [("global", global_svd(dose.low))]
    generators += [(f"local ({variant})", local_lowrank(dose.low, title, variant)) for title, variant in LOCAL_VARIANTS[1:]]
    for group, gen in generators:
        for label, out, seconds, note in gen:
            rows.append(Row(label, seconds, evaluate(out, dose, masks), note, group=group))
        log(f"{dose.photons:g} photons: {group} done")
    sigmas = estimate_sigmas(dose.low)
    for method in classic_methods():
        if method.fn is bm3d_white and bm3d_missing:
            rows.append(Row(f"{method.name}: not available: {bm3d_missing}", None, group="classic"))
            continue
        rows += classic_rows(method, dose, sigmas, masks, every)
        log(f"{dose.photons:g} photons: {method.name} done")
    true_noise = flat_noise(dose.low - dose.reference, masks.flat)
    info = {"sigma_hat_mean_hu": float(np.mean(sigmas)), "wavelet_sigma_mean_hu": float(np.mean(wavelet_sigmas(dose.low))),
            "noise_of_input_minus_reference_hu": true_noise}
    return rows, info


# ----------------------------------------------------------------------------- output


def fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def print_table(rows: list[Row]) -> None:
    base = rows[0].metrics
    print("| method | PSNR full | SSIM full | PSNR truth | SSIM truth | noise HU | CNR | s | gain full dB | gain truth dB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r.metrics
        if not m:
            print(f"| {r.method} | - | - | - | - | - | - | - | - | - |")
            continue
        gain_full = m["psnr_full"] - base["psnr_full"]
        gain_truth = m["psnr_truth"] - base["psnr_truth"]
        print(f"| {r.method} | {fmt(m['psnr_full'], 2)} | {fmt(m['ssim_full'], 4)} | {fmt(m['psnr_truth'], 2)} | "
              f"{fmt(m['ssim_truth'], 4)} | {fmt(m['noise_hu'], 1)} | {fmt(m['cnr'], 2)} | {fmt(r.seconds, 2)} | "
              f"{gain_full:+.2f} | {gain_truth:+.2f} |")


def find_automatic(rows: list[Row]) -> Row | None:
    """The local mode's automatic row, as the pipeline runs it (the first of ``LOCAL_VARIANTS``)."""
    return next((r for r in rows if r.method.startswith(f"{LOCAL_VARIANTS[0][0]} ") and "(automatic)" in r.method and r.metrics), None)


# ----------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Body:
    """One simulated patient of the grid (``phantom.simulate_volume`` arguments)."""

    name: str
    size: int
    slices: int
    body_scale: float
    description: str


BODIES = {
    "small": Body("small", 256, 32, 1.0, "the default phantom, about 32 cm across, 256 x 256 x 32 (5 mm slices)"),
    "large": Body("large", 512, 64, 1.33, "a large body, about 43 cm across, photon-starved centre, 512 x 512 x 64 (2.5 mm slices)"),
}
DOSES = (5e3, 1e4, 2e4, 9e4)
TV_START_FACTORS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)  # TV weight = factor * sigma_hat
TV_GOLDEN_STEPS = 8
CONTRAST_KEPT_MIN = 0.5  # a lesion whose contrast falls under half the full dose's counts as erased
PSNR_MARGIN_DB = 1.0


def load_body(body: Body, doses: Sequence[float], seed: int, workdir: Path) -> list[Dose]:
    """The body's doses with the shared references (simulated once, then cached)."""
    reference, truth = simulate(body.size, body.slices, math.inf, seed, workdir, True, body.body_scale)
    if truth is None:
        raise RuntimeError("no phantom truth")
    return [Dose(p, simulate(body.size, body.slices, p, seed, workdir, False, body.body_scale)[0], reference, truth) for p in doses]


def tv_oracle(dose: Dose, sigmas: np.ndarray, every: int) -> tuple[float, dict[float, float]]:
    """The TV weight factor (``weight = factor * sigma_hat`` per slice) with the best PSNR against
    the full-dose reference on every ``every``-th slice: a coarse grid, then a golden-section
    search between the best point's neighbours. An oracle that flatters TV: it needs the truth."""
    from ctdenoise.metrics import psnr_db

    which = list(range(every // 2, len(dose.low), every)) or [0]
    scores: dict[float, float] = {}

    def score(log_factor: float) -> float:
        factor = round(math.exp(log_factor), 4)
        if factor not in scores:
            scores[factor] = psnr_db(per_slice(total_variation, dose.low, sigmas, factor, which), dose.reference[which])
        return scores[factor]

    grid = [math.log(f) for f in TV_START_FACTORS]
    best = max(range(len(grid)), key=lambda i: score(grid[i]))
    a, b = grid[max(0, best - 1)], grid[min(len(grid) - 1, best + 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(TV_GOLDEN_STEPS):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if score(c) > score(d):
            b = d
        else:
            a = c
    return max(scores, key=lambda f: scores[f]), scores


def lesion_contrast(volume: np.ndarray, masks: Masks) -> float:
    """Mean of the lesion minus mean of its ring (HU): what a denoiser must not erase."""
    if not masks.lesion.any() or not masks.ring.any():
        return math.nan
    return float(volume[masks.lesion].astype(np.float64).mean() - volume[masks.ring].astype(np.float64).mean())


@dataclass
class Cell:
    """One body and dose: the input, the local mode's outputs and TV at its oracle weight."""

    body: Body
    photons: float
    rows: list[Row]
    automatic: Row
    tv: Row
    reference_contrast: float
    kept: float  # the automatic output's lesion contrast / the full-dose reference's
    tv_kept: float  # TV's, for comparison


def run_cell(body: Body, dose: Dose, masks: Masks, every: int) -> Cell:
    rows = [Row("low-dose input", None, evaluate(dose.low, dose, masks), group="input")]
    automatic_volume = None
    for label, out, seconds, note in local_lowrank(dose.low, LOCAL_VARIANTS[0][0], "default"):
        rows.append(Row(label, seconds, evaluate(out, dose, masks), note, group="local"))
        if "(automatic)" in label:
            automatic_volume = out
    log(f"{body.name} {dose.photons:g}: local mode done")
    sigmas = estimate_sigmas(dose.low)
    started = time.perf_counter()
    factor, scores = tv_oracle(dose, sigmas, every)
    search = time.perf_counter() - started
    started = time.perf_counter()
    out = per_slice(total_variation, dose.low, sigmas, factor)
    note = f"oracle search {search:.1f} s over {len(scores)} weights, best at {factor:g}*sigma_hat (sigma_hat mean {np.mean(sigmas):.1f} HU)"
    tv_contrast = lesion_contrast(out, masks)
    tv = Row(f"TV (Chambolle), ORACLE weight {factor:.3g}*sigma_hat", time.perf_counter() - started, evaluate(out, dose, masks), note, group="tv")
    rows.append(tv)
    log(f"{body.name} {dose.photons:g}: TV done")
    automatic = find_automatic(rows)
    if automatic is None or automatic_volume is None:
        raise RuntimeError("the local mode gave no automatic output")
    reference = lesion_contrast(dose.reference, masks)
    kept = lesion_contrast(automatic_volume, masks) / reference
    return Cell(body, dose.photons, rows, automatic, tv, reference, kept, tv_contrast / reference)


def cell_targets(cell: Cell) -> dict[str, tuple[float, bool]]:
    """The issue's targets in one cell: ``{name: (margin, met)}``."""
    a, t = cell.automatic.metrics, cell.tv.metrics
    return {
        "PSNR - (TV + 1 dB)": (a["psnr_full"] - t["psnr_full"] - PSNR_MARGIN_DB, a["psnr_full"] >= t["psnr_full"] + PSNR_MARGIN_DB),
        "SSIM - TV": (a["ssim_full"] - t["ssim_full"], a["ssim_full"] >= t["ssim_full"]),
        "CNR - TV": (a["cnr"] - t["cnr"], a["cnr"] >= t["cnr"]),
        "lesion contrast kept": (cell.kept, cell.kept >= CONTRAST_KEPT_MIN),
    }


def print_grid(cells: list[Cell]) -> int:
    """The grid: one line per cell, automatic output against oracle TV, margins; returns the
    number of cells where every target is met."""
    print("| body | photons | input PSNR / SSIM / CNR | automatic PSNR / SSIM / CNR | oracle TV PSNR / SSIM / CNR | "
          "PSNR margin over TV+1 dB | SSIM margin | CNR margin | lesion contrast kept (TV's) | all met |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    met_cells = 0
    for c in cells:
        i, a, t = c.rows[0].metrics, c.automatic.metrics, c.tv.metrics
        checks = cell_targets(c)
        met = all(ok for _, ok in checks.values())
        met_cells += met
        margins = " | ".join(f"{value:+.{2 if 'PSNR' in name or 'CNR' in name else 4}f}" if "kept" not in name else f"{value:.2f} ({c.tv_kept:.2f})"
                             for name, (value, _) in checks.items())  # fmt: skip
        print(f"| {c.body.name} | {c.photons:g} | {i['psnr_full']:.2f} / {i['ssim_full']:.4f} / {i['cnr']:.2f} | "
              f"{a['psnr_full']:.2f} / {a['ssim_full']:.4f} / {a['cnr']:.2f} | {t['psnr_full']:.2f} / {t['ssim_full']:.4f} / {t['cnr']:.2f} | "
              f"{margins} | {'yes' if met else 'NO: ' + ', '.join(n for n, (_, ok) in checks.items() if not ok)} |")
    return met_cells


def machine() -> str:
    from threadpoolctl import threadpool_info

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    blas = ", ".join(f"{i['internal_api']} {i['version']} x{i['num_threads']}" for i in threadpool_info() if i["user_api"] == "blas")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cpu}, {cores} cores; Python {platform.python_version()}, numpy {np.__version__} ({blas}); load average {load}"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("numpy", "scipy", "scikit-image", "PyWavelets", "bm3d"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def to_json(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", default=",".join(BODIES), help=f"comma-separated, of {', '.join(BODIES)}")
    parser.add_argument("--doses", default=",".join(f"{d:g}" for d in DOSES), help="comma-separated photons per ray")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lesion", type=int, default=0, help="index in phantom._LESIONS for the CNR (default 0: liver, +20 HU, 10 mm radius)")
    parser.add_argument("--tune-every", type=int, default=4, help="TV's oracle (and --peers' hand-tuning) score every N-th slice")
    parser.add_argument("--peers", action="store_true", help="also every other row in each cell (global SVD, the local "
                        "mode's tiles alone and fast setting, Gaussian, NLM, BM3D): much longer")  # fmt: skip
    parser.add_argument("--workdir", default=str(REPO / ".cache" / "bench-quality"), help="cache of simulated volumes")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--skip-bm3d", action="store_true", help="with --peers: skip BM3D (most of their time)")
    return parser.parse_args()


def print_cell(cell: Cell, peers: list[Row]) -> None:
    print()
    print(f"## {cell.body.name} body ({cell.body.description}), {cell.photons:g} photons/ray")
    print()
    print_table(cell.rows + peers)
    print()
    for r in cell.rows + peers:
        if r.note:
            print(f"# {r.method}: {r.note}")


def main() -> int:
    args = parse_arguments()
    started = time.perf_counter()
    print(f"# machine: {machine()}", flush=True)
    print(f"# packages: {', '.join(f'{k} {v}' for k, v in versions().items())}")
    from ctdenoise.params import LocalParams

    bodies = [BODIES[name.strip()] for name in args.bodies.split(",") if name.strip()]
    doses = [float(d) for d in args.doses.split(",") if d.strip()]
    print(f"# local mode: {json.dumps(LocalParams().as_json())}; the AUTOMATIC output is compared, no per-case tuning")
    print(f"# TV: scikit-image Chambolle per slice, weight = factor * sigma_hat, factor chosen per cell for the best PSNR "
          f"against the full-dose reference on every {args.tune_every}th slice (ORACLE: it needs the truth)")
    bm3d_missing = "skipped (--skip-bm3d)" if args.skip_bm3d else bm3d_unavailable()
    cells: list[Cell] = []
    for body in bodies:
        volumes = load_body(body, doses, args.seed, Path(args.workdir))
        masks = build_masks(volumes[0].truth, args.lesion, body.body_scale)
        print(f"# {body.name}: {body.description}; {masks.description}")
        for dose in volumes:
            cell = run_cell(body, dose, masks, max(1, args.tune_every))
            peers = run_dose(dose, masks, max(1, args.tune_every), bm3d_missing)[0][2:] if args.peers else []
            print_cell(cell, peers)
            cells.append(cell)
    print()
    print("## The grid: the automatic local output against TV at its oracle weight (PSNR and SSIM against the full-dose reference)")
    print()
    met = print_grid(cells)
    print()
    print(f"target: automatic output >= TV + {PSNR_MARGIN_DB:g} dB, >= TV's SSIM and CNR, lesion contrast kept >= "
          f"{CONTRAST_KEPT_MIN:g}, in every cell: {'MET' if met == len(cells) else 'NOT MET'} ({met} of {len(cells)} cells)")
    total = time.perf_counter() - started
    print(f"# total {total:.1f} s; load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        payload = {"machine": machine(), "packages": versions(), "parameters": vars(args), "local_params": LocalParams().as_json(),
                   "seconds_total": total, "cells": [{"body": c.body.name, "photons": c.photons, "targets": cell_targets(c),
                   "rows": [{"method": r.method, "seconds": r.seconds, "note": r.note, **r.metrics} for r in c.rows]} for c in cells]}  # fmt: skip
        Path(args.json).write_text(json.dumps(to_json(payload), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
