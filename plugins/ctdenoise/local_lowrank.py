"""Local low-rank denoising: small overlapping tiles through all slices, each shrunk on its own.

Why local: a whole-series SVD must keep a component for every structure that changes along the
series, so at a rank that removes noise it also blurs anatomy across slices. A tile of
``tile x tile`` pixels followed through all ``n`` slices is a small Casorati matrix
``X`` (``tile**2`` pixels x ``n`` slices) whose signal has a handful of components, while the
noise of a CT slice is independent from slice to slice. Shrinking the singular values of each
tile and averaging the overlapping estimates keeps edges and removes noise; the tiles are
independent, thousands of small SVDs, which is what a cluster distributes well.

Before the tiles, each slice is divided by its noise level relative to the series median
(:func:`column_scales`, from the levels conversion records), so that the columns of a tile
matrix carry the same noise; the estimate is multiplied back at the end.

Per tile (``p = tile**2`` rows, ``n`` columns, ``N = max(p, n)``, ``beta = min(p, n) / N``):

1. the full spectrum of ``X``: a batched eigendecomposition of the Gram matrix of its small
   side (``min(p, n)`` is at most ``tile**2``: 144 at the default 12-pixel tiles). Exact on
   purpose: a randomized range finder of width 24 (tried, measured: 5x faster) barely denoised
   a 301-slice series (39.3 dB against an input of 39.6, the exact spectrum 46.5), because
   tiles on moving edges keep 50-80 components, more than any cheap sketch holds, and its
   noise estimate from the energy outside the sketch then counts signal as noise;
2. noise level ``sigma`` of the tile, from the data: the median singular value against the
   Marchenko-Pastur median (Gavish and Donoho 2014, unknown noise). The noise of filtered back
   projection varies across the image (streaks, the spine, long lateral paths), so a per-tile
   estimate follows it where a single global level would not;
3. shrinkage of ``y = s / (m sigma sqrt(N))`` for each *multiplier* ``m``: ``frobenius``, the
   optimal shrinker for Frobenius loss, ``eta(y) = sqrt((y^2 - beta - 1)^2 - 4 beta) / y`` for
   ``y > 1 + sqrt(beta)``, else 0 (Gavish and Donoho 2017), or ``hard``, keep ``s`` where
   ``y > lambda*(beta)`` (the optimal hard threshold). ``m = 1`` is the optimum; 0.5 and 1.5
   show a reader weaker and stronger denoising side by side;
4. the tile estimate ``U diag(eta) V^T`` is added to the output with weight ``1 / (1 + r)``
   (``r`` the number of components kept), so that simple, confident tiles count more where
   tiles overlap (the aggregation weights of BM3D); the sum is divided by the summed weights.

Then the in-plane stage (``inplane="nlm"``, the default; :mod:`ctdenoise.inplane`): on each
slice of each multiplier's estimate, non-local means then a guided filter, both at the strength
of the estimate's *local* noise (a noise map measured on the image it filters). Why a second
stage: the tiles use the redundancy *between* slices, and on 5 mm slices anatomy changes too
much from one slice to the next for a tile to be low rank at its edges; an optimal tile
threshold then either blurs those edges across slices or keeps their noise. Shrinking the tiles
at half the optimal threshold (x0.5, the automatic multiplier with this stage) keeps every
structure that changes along the series and removes part of the noise that does not; the
in-plane stage removes what is left, telling edges from noise within the slice, which the tiles
cannot. Why local strength: CT noise follows what the rays crossed (a large body's centre is
several times noisier than its periphery), so one strength per slice fits no region of it.

Tiles start every ``stride`` pixels along rows and columns, and a last tile is added flush with
the far edge so that every pixel is covered. Everything is deterministic: tiles are processed in
a fixed order, so a result depends only on the inputs and the parameters (not on how rows are
split over Spark partitions: each output row is computed by exactly one task, and the in-plane
stage reads a halo of ``inplane_halo`` rows beyond its band (its filters' reach and its noise
map's), which makes a band's result that of the whole slice; a test checks it).

The matrix layout is that of the series matrix (``ctdenoise.matrix_store``): row
``r * columns + c`` is pixel ``(r, c)``, one column per slice. :func:`denoise_rows` is the tile
pass on a band of image rows, :func:`denoise_band` the whole local mode on one (what one Spark
task does: the tile pass over the band and the in-plane stage's halo, then the in-plane stage);
:func:`denoise_matrix` loops over bands (numpy engine, tests, benchmark).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ctdenoise.errors import ParameterError

from ctdenoise.params import Inplane, LocalParams, Shrinkage, Weights


# --------------------------------------------------------------------------------------------
# Random-matrix constants
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def mp_median(beta: float) -> float:
    """Median of the Marchenko-Pastur law (:func:`ctdenoise.ranks.mp_median`), cached per ratio."""
    from ctdenoise.ranks import mp_median as median

    return median(beta)


def shrink(s: np.ndarray, sigma: np.ndarray, N: int, beta: float, shrinkage: Shrinkage) -> np.ndarray:
    """Shrunk singular values for noise level ``sigma`` (per tile: ``s`` is ``(t, d)``, ``sigma`` ``(t,)``)."""
    from ctdenoise.ranks import lambda_star

    scale = sigma[:, None] * math.sqrt(N)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(scale > 0, s / scale, np.inf)
        if shrinkage == Shrinkage.HARD:
            return np.where(y > lambda_star(beta), s, 0.0)
        edge = 1.0 + math.sqrt(beta)
        eta = np.sqrt(np.maximum((y * y - beta - 1.0) ** 2 - 4.0 * beta, 0.0)) / y
        out = np.where(y > edge, eta * scale, 0.0)
    return np.where(np.isfinite(y), out, s)  # a noise-free tile (sigma 0) is kept as it is


# --------------------------------------------------------------------------------------------
# Tiles
# --------------------------------------------------------------------------------------------


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets along one axis: every ``stride``, plus one flush with the far edge."""
    tile = min(tile, size)
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def rows_needed(row_start: int, row_stop: int, rows: int, tile: int, stride: int) -> tuple[list[int], int, int]:
    """``(tile row starts touching rows [row_start, row_stop), first input row, stop input row)``."""
    tile_eff = min(tile, rows)
    starts = [r for r in tile_starts(rows, tile, stride) if r < row_stop and r + tile_eff > row_start]
    return starts, starts[0], starts[-1] + tile_eff


@dataclass
class TileStats:
    """Per-tile numbers of one band, for the report (rank maps, noise map)."""

    starts: list[tuple[int, int]] = field(default_factory=list)
    sigma: list[float] = field(default_factory=list)
    ranks: list[list[int]] = field(default_factory=list)  # per tile, one rank per multiplier


def _spectra(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(s descending (t, d), vectors of the small side, vectors_are_right)`` from batched Gram eigh."""
    right = X.shape[2] <= X.shape[1]
    G = np.matmul(X.transpose(0, 2, 1), X) if right else np.matmul(X, X.transpose(0, 2, 1))
    lam, vec = np.linalg.eigh(G)
    lam, vec = lam[:, ::-1], vec[:, :, ::-1]
    s = np.sqrt(np.clip(lam, 0.0, None))
    # Values under the Gram matrix's rounding (~1e-16 of the largest eigenvalue, 1e-8 of the
    # largest singular value) are zero: a constant tile (outside the field of view) has rank 1,
    # not rank "everything its rounding left", in the rank maps.
    return np.where(s > 1e-7 * s[:, :1], s, 0.0), vec, right


def tile_factors(X: np.ndarray, params: LocalParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shrunk estimates of a stack of tile matrices ``X`` ``(t, p, n)`` float64, as factors:
    ``estimate[i] = left[i] @ right``.

    Returns ``(left (n_mult, t, p, r), right (t, r, n), ranks (n_mult, t), sigma (t,))`` with
    ``r`` the largest rank any tile keeps at any multiplier: the product costs ``r / min(p, n)``
    of a full one (most tiles keep a handful of components), and the caller folds its
    aggregation weights into ``left`` and can cut ``r`` per multiplier.
    """
    t, p, n = X.shape
    d, N = min(p, n), max(p, n)
    beta = d / N
    s, vec, right_side = _spectra(X)
    sigma = np.sqrt(np.median(s * s, axis=1) / (N * mp_median(beta)))
    shrunk = np.stack([shrink(s, float(m) * sigma, N, beta, params.shrinkage) for m in params.multipliers])
    ranks = np.count_nonzero(shrunk > 0, axis=2).astype(np.int32)
    r = max(1, int(ranks.max()))  # singular values are sorted: the kept ones come first
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(s[None, :, :r] > 0, shrunk[:, :, :r] / s[None, :, :r], 0.0)
    vec = vec[:, :, :r]
    if right_side:  # X V diag(f) V^T
        return np.matmul(X, vec)[None] * f[:, :, None, :], vec.transpose(0, 2, 1), ranks, sigma
    return vec[None] * f[:, :, None, :], np.matmul(vec.transpose(0, 2, 1), X), ranks, sigma  # U diag(f) U^T X


def denoise_tiles(X: np.ndarray, params: LocalParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shrunk estimates of a stack of tile matrices: ``(estimates (n_mult, t, p, n), ranks
    (n_mult, t), sigma (t,))``, the products of :func:`tile_factors`."""
    left, right, ranks, sigma = tile_factors(X, params)
    return np.matmul(left, right[None]), ranks, sigma


SCALE_LIMITS = (0.25, 4.0)


def column_scales(slice_noise: Sequence[float | None] | None, n: int) -> np.ndarray | None:
    """Per-slice divisors that give every slice the same noise level, from the series' recorded
    noise levels (None when there are none, or none usable).

    Why: the noise of a CT slice depends on what the rays crossed (shoulders and pelvis more
    than the neck), so the columns of a tile matrix are heteroscedastic, and a Marchenko-Pastur
    threshold set from the median then keeps noise in the noisier slices. Dividing each slice by
    its level relative to the series median (clipped to ``SCALE_LIMITS``; slices without a level
    keep 1) makes the columns exchangeable; the estimate is multiplied back. Measured on the
    quality benchmark (x1, 2e4 photons): +0.6 dB at 32 slices, +0.45 dB at 301.
    """
    if slice_noise is None:
        return None
    if len(slice_noise) != n:
        raise ParameterError(f"slice noise levels: {len(slice_noise)} values for {n} slices")
    values = np.array([np.nan if v is None else float(v) for v in slice_noise], dtype=np.float64)
    valid = np.isfinite(values) & (values > 0)
    if not valid.any():
        return None
    scale = np.ones(n)
    scale[valid] = np.clip(values[valid] / np.median(values[valid]), *SCALE_LIMITS)
    # rounded as the local group stores them (6 decimals), so that every engine divides by the
    # same numbers: the in-plane stage's 16-bit rounding would turn a last-digit difference into
    # a visible one at a few pixels
    return np.round(scale, 6)


def denoise_rows(
    block: np.ndarray,
    block_row_start: int,
    row_start: int,
    row_stop: int,
    rows: int,
    columns: int,
    params: LocalParams,
    column_scale: np.ndarray | None = None,
    stats_rows: tuple[int, int] | None = None,
) -> tuple[np.ndarray, TileStats]:
    """Denoised matrix rows of image rows ``[row_start, row_stop)`` for every multiplier.

    ``block`` holds image rows ``[block_row_start, ...)`` of the series matrix (``r * columns``
    matrix rows each, all slices) and must cover :func:`rows_needed` for the band.
    ``column_scale`` (one positive value per slice, :func:`column_scales`) divides each slice
    before the tiles are decomposed and multiplies it back after. Returns
    ``(D (n_mult, (row_stop - row_start) * columns, n) float32, stats)``; ``stats`` lists the
    tiles whose first row lies in ``stats_rows`` (default: the band), so that each tile is
    reported by exactly one band also when a band is computed with a halo around it.
    """
    n = block.shape[1]
    vol = np.asarray(block).reshape(-1, columns, n)
    tile_r, tile_c = min(params.tile, rows), min(params.tile, columns)
    starts, first, stop = rows_needed(row_start, row_stop, rows, params.tile, params.stride)
    if block_row_start > first or block_row_start + vol.shape[0] < stop:
        raise ValueError(
            f"band rows {row_start}:{row_stop} need image rows {first}:{stop}, block holds "
            f"{block_row_start}:{block_row_start + vol.shape[0]}"
        )
    col_starts = tile_starts(columns, params.tile, params.stride)
    n_mult = len(params.multipliers)
    height = row_stop - row_start
    report_start, report_stop = stats_rows or (row_start, row_stop)
    # Spectra in float64 (the median noise eigenvalue sits ~1e5 below the largest); products
    # and sums in float32, the output's precision (half the memory traffic of the adds).
    acc = np.zeros((n_mult, height, columns, n), dtype=np.float32)
    wsum = np.zeros((n_mult, height, columns))
    classes = _disjoint_classes(col_starts, tile_c)
    stats = TileStats()
    # Tile stacks and products reuse two buffers: fresh ~20 MB arrays per tile row cost page
    # faults that took longer than the GEMMs filling them.
    p, t = tile_r * tile_c, len(col_starts)
    x_buf = np.empty((t, p, n), dtype=np.float64)
    est_buf = np.empty(t * p * n, dtype=np.float32)
    for r0 in starts:
        slab = vol[r0 - block_row_start : r0 - block_row_start + tile_r]
        X = np.stack([slab[:, c0 : c0 + tile_c, :].reshape(p, n) for c0 in col_starts], out=x_buf)
        if column_scale is not None:
            X /= column_scale
        left, right, ranks, sigma = tile_factors(X, params)
        right = right.astype(np.float32)
        weights = 1.0 / (1.0 + ranks) if params.weights == Weights.INVERSE_RANK else np.ones(ranks.shape)
        lo, hi = max(r0, row_start), min(r0 + tile_r, row_stop)
        rs = slice(lo - row_start, hi - row_start)
        # only the tile rows inside the band (left rows are tile pixels, row-major), and only the
        # components this multiplier keeps somewhere in the tile row
        left = left.reshape(n_mult, t, tile_r, tile_c, -1)[:, :, lo - r0 : hi - r0]
        for i in range(n_mult):
            r_i = max(1, int(ranks[i].max()))
            L = (left[i, ..., :r_i] * weights[i][:, None, None, None]).astype(np.float32)
            est = est_buf[: t * (hi - lo) * tile_c * n].reshape(t, (hi - lo) * tile_c, n)
            np.matmul(L.reshape(t, (hi - lo) * tile_c, r_i), right[:, :r_i], out=est)
            _accumulate(acc[i, rs], wsum[i, rs], est.reshape(t, hi - lo, tile_c, n), weights[i], classes, tile_c)
        if report_start <= r0 < report_stop:
            for j, c0 in enumerate(col_starts):
                stats.starts.append((r0, c0))
                stats.sigma.append(float(sigma[j]))
                stats.ranks.append([int(x) for x in ranks[:, j]])
    np.divide(acc, wsum[..., None].astype(np.float32), out=acc)  # in place: a band's D is ~100 MB per multiplier
    if column_scale is not None:
        acc *= column_scale.astype(np.float32)
    D = acc.reshape(n_mult, height * columns, n)
    return D, stats


def _accumulate(acc: np.ndarray, wsum: np.ndarray, est: np.ndarray, weights: np.ndarray,
                classes: list[tuple[list[int], int]], tile_c: int) -> None:  # fmt: skip
    """Add the weighted tile estimates ``est`` (tiles, rows, tile columns, slices) of one tile row
    into the band's accumulator ``acc`` (rows, columns, slices) and their weights into ``wsum``:
    adjacent, non-overlapping tiles (one class of :func:`_disjoint_classes`) in one strided add."""
    height, n = est.shape[1], est.shape[3]
    for members, c_first in classes:
        k = len(members)
        sel = slice(members[0], members[-1] + 1, members[1] - members[0] if k > 1 else 1)
        view = acc[:, c_first : c_first + k * tile_c].reshape(height, k, tile_c, n)
        if not np.may_share_memory(view, acc):  # splitting one sliced axis is always a view
            raise RuntimeError("accumulator reshape copied: the tiles would be lost")
        view += est[sel].transpose(1, 0, 2, 3)
        wview = wsum[:, c_first : c_first + k * tile_c].reshape(height, k, tile_c)
        wview += weights[sel][None, :, None]


def band_input_rows(row_start: int, row_stop: int, rows: int, params: LocalParams) -> tuple[int, int, int, int]:
    """``(start, stop, first input row, stop input row)`` for the band ``[row_start, row_stop)``:
    the tile pass covers ``[start, stop)``, the band widened by the in-plane stage's halo (clipped
    to the image), and reads input rows ``[first, stop input row)``."""
    halo = params.inplane_halo
    start, stop = max(0, row_start - halo), min(rows, row_stop + halo)
    _, first, last = rows_needed(start, stop, rows, params.tile, params.stride)
    return start, stop, first, last


def denoise_band(
    block: np.ndarray,
    block_row_start: int,
    row_start: int,
    row_stop: int,
    rows: int,
    columns: int,
    params: LocalParams,
    column_scale: np.ndarray | None = None,
) -> tuple[np.ndarray, TileStats]:
    """The local mode's result on image rows ``[row_start, row_stop)``: the tile pass
    (:func:`denoise_rows`) over the band and its in-plane halo, then, with ``inplane="nlm"``, the
    in-plane stage (:func:`ctdenoise.inplane.filter_slice`) on each slice of each multiplier's
    estimate, cropped to the band.

    ``block`` must cover :func:`band_input_rows`. The halo makes the result on the band's rows
    exactly that of the whole slice (the filters and the noise map see the same pixels), so it
    does not depend on how rows are split into bands. Returns
    ``(D (n_mult, (row_stop - row_start) * columns, n) float32, stats)``.
    """
    from ctdenoise.inplane import filter_slice

    start, stop, _, _ = band_input_rows(row_start, row_stop, rows, params)
    # tiles first seen in the halo belong to the neighbouring band
    D, stats = denoise_rows(block, block_row_start, start, stop, rows, columns, params, column_scale, (row_start, row_stop))
    if params.inplane == Inplane.NONE:  # no halo: the tile pass covered the band exactly
        return D, stats
    n_mult, _, n = D.shape
    keep = (row_start - start, row_stop - start)
    out = np.empty((n_mult, n, (row_stop - row_start) * columns), dtype=np.float32)
    for i in range(n_mult):
        slices = np.ascontiguousarray(D[i].T)  # one transposition, then each slice is contiguous
        for k in range(n):
            image = slices[k].reshape(stop - start, columns)
            filtered = filter_slice(image, start, rows, params.inplane_strength, params.inplane_smoothing, keep)
            out[i, k] = filtered.reshape(-1)
    return out.transpose(0, 2, 1), stats


def denoised_bands(
    read_rows: Any,
    bands: Sequence[tuple[int, int]],
    rows: int,
    columns: int,
    params: LocalParams,
    column_scale: np.ndarray | None = None,
) -> Iterator[tuple[int, int, np.ndarray, TileStats]]:
    """:func:`denoise_band` of each band in turn, reading the input rows it needs (its tiles and
    halo, :func:`band_input_rows`) with ``read_rows(first, stop)`` (the series matrix rows of
    image rows ``[first, stop)``): ``(row_start, row_stop, D, stats)``. Each band's input is
    dropped before the next is read."""
    for start, stop in bands:
        _, _, first, last = band_input_rows(start, stop, rows, params)
        D, stats = denoise_band(read_rows(first, last), first, start, stop, rows, columns, params, column_scale)
        yield start, stop, D, stats


def _disjoint_classes(starts: Sequence[int], tile: int) -> list[tuple[list[int], int]]:
    """Tiles grouped into runs of adjacent, non-overlapping tiles: ``[(tile indices, first column)]``.

    The tiles of a run have evenly spaced indices and follow each other without a gap
    (``start[j + 1] = start[j] + tile``), so a run is one strided view of the accumulator and
    overlapping tiles are added with a few vectorized adds per tile row instead of one per
    tile. With a stride that divides the tile size there are ``tile / stride`` runs, plus short
    ones for the tile flush with the edge.
    """
    runs: list[list[int]] = []
    for j, c0 in enumerate(starts):
        for run in runs:
            last = run[-1]
            step = (run[1] - run[0]) if len(run) > 1 else j - last
            if starts[last] + tile == c0 and j - last == step:
                run.append(j)
                break
        else:
            runs.append([j])
    return [(run, starts[run[0]]) for run in runs]


def band_ranges(rows: int, band_rows: int) -> list[tuple[int, int]]:
    """Image-row bands ``[start, stop)`` of ``band_rows`` rows (the last one shorter)."""
    return [(start, min(rows, start + band_rows)) for start in range(0, rows, band_rows)]


def denoise_matrix(
    A: np.ndarray,
    rows: int,
    columns: int,
    params: LocalParams,
    band_rows: int | None = None,
    slice_noise: Sequence[float | None] | None = None,
) -> tuple[np.ndarray, TileStats]:
    """The whole series matrix in one process: ``(D (n_mult, m, n) float32, stats)``, in bands of
    ``band_rows`` image rows (default: one band, so that no in-plane halo is computed twice; the
    result is the same for any split).

    ``slice_noise``: the per-slice noise levels of :func:`ctdenoise.metrics.slice_noise_level`
    (what conversion records as the matrix attribute ``slice_noise_hu``), or None: no per-slice
    normalization."""
    scale = column_scales(slice_noise, A.shape[1])
    A = np.asarray(A)
    if A.ndim != 2 or A.shape[0] != rows * columns:
        raise ParameterError(f"matrix of shape {A.shape} is not (rows*columns, slices) = ({rows * columns}, n)")
    def read_rows(first: int, stop: int) -> np.ndarray:
        return A[first * columns : stop * columns]

    out = np.empty((len(params.multipliers), A.shape[0], A.shape[1]), dtype=np.float32)
    parts = []
    for start, stop, D, band_stats in denoised_bands(read_rows, band_ranges(rows, band_rows or rows), rows, columns, params, scale):
        out[:, start * columns : stop * columns] = D
        parts.append(band_stats)
    return out, merge_stats(parts)


def merge_stats(parts: Sequence[TileStats]) -> TileStats:
    out = TileStats()
    for p in parts:
        out.starts += p.starts
        out.sigma += p.sigma
        out.ranks += p.ranks
    return out
