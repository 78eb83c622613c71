"""The local mode's published group: which bands an engine denoises, and how the group is committed.

:class:`BandPlan` is what the job's driver knows before any band is computed (geometry and the
per-slice scales: the driver computes no pixels); :class:`BandTask` is
what one partition does with its bands, wherever the engine runs it (this process or a Spark
executor: it is pickled, and executors import it by name); :func:`publish_bands` creates the
uncommitted group, lets the engine fill ``D`` and commits the group atomically. The numerics
are :mod:`ctdenoise.local_lowrank`; the group's format is :mod:`ctdenoise.matrix_store`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctdenoise.errors import InputError
from ctdenoise.local_lowrank import (
    TileStats,
    band_ranges,
    column_scales,
    denoised_bands,
    merge_stats,
    tile_starts,
)
from ctdenoise.params import ALGORITHM, LocalParams, multiplier_label

Band = tuple[int, int]


def read_image_rows(matrix_url: str, columns: int, first: int, stop: int, storage_options: Mapping[str, Any] | None = None) -> np.ndarray:
    """The series matrix rows of image rows ``[first, stop)`` (the driver's noise-level band and
    each partition's rows go through here)."""
    from ctdenoise.decomposition import read_row_blocks

    blocks = read_row_blocks(matrix_url, [(first * columns, stop * columns)], storage_options)
    return np.concatenate(list(blocks), axis=0)


def matrix_geometry(arr: Any, url: str) -> tuple[int, int]:
    """``(rows, columns)`` of a series matrix from its attributes; :class:`InputError` if absent or wrong."""
    try:
        rows, columns = int(arr.attrs["rows"]), int(arr.attrs["columns"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{url}: local mode needs the matrix attributes rows and columns") from None
    if rows * columns != int(arr.shape[0]):
        raise InputError(f"{url}: rows*columns = {rows * columns} but the matrix has {arr.shape[0]} rows")
    return rows, columns


@dataclass(frozen=True)
class BandTask:
    """What one partition does: denoise its bands and write them into the uncommitted group at
    ``out_url``; yields ``(row_start, row_stop, stats)``.

    A partition's bands are contiguous: it reads the image rows they need once (their tiles and
    the in-plane halo reach a few rows into the neighbouring groups) and denoises them in one
    pass, so a tile is computed twice only at group edges. Each band is one chunk of ``D``, so no
    two partitions write the same chunk. S3 access comes from ``storage_options`` or, on
    executors, from the environment (``AWS_*``).
    """

    matrix_url: str
    out_url: str
    rows: int
    columns: int
    params: LocalParams
    column_scale: tuple[float, ...] | None
    storage_options: Mapping[str, Any] | None = None

    def __call__(self, index: int, items: Iterable[Sequence[Band]]) -> Iterator[tuple[int, int, TileStats]]:
        from ctdenoise.matrix_store import write_local_band

        bands = sorted(tuple(b) for group in items for b in group)
        if not bands:
            return
        if any(a != b for (_, a), (b, _) in zip(bands, bands[1:])):
            raise ValueError(f"partition {index}: bands {bands} are not contiguous")
        scale = None if self.column_scale is None else np.asarray(self.column_scale, dtype=np.float64)
        span = [(bands[0][0], bands[-1][1])]
        for a, b, D, stats in denoised_bands(self.read_rows, span, self.rows, self.columns, self.params, scale):
            write_local_band(self.out_url, a * self.columns, b * self.columns, D, self.storage_options)
            yield a, b, stats

    def read_rows(self, first: int, stop: int) -> np.ndarray:
        return read_image_rows(self.matrix_url, self.columns, first, stop, self.storage_options)


@dataclass(frozen=True)
class BandPlan:
    """The local mode of one series matrix as the driver plans it."""

    matrix_url: str
    shape: tuple[int, int]
    rows: int
    columns: int
    band_rows: int
    params: LocalParams
    column_scale: tuple[float, ...] | None
    storage_options: Mapping[str, Any] | None = None

    @classmethod
    def for_matrix(cls, url: str, arr: Any, params: LocalParams, storage_options: Mapping[str, Any] | None = None) -> BandPlan:
        """``band_rows`` image rows make one band (one ``D`` chunk), about one chunk of the series
        matrix. ``column_scale`` is :func:`ctdenoise.local_lowrank.column_scales` of the matrix's
        ``slice_noise_hu``, rounded as the group stores it: what every partition divides by."""
        rows, columns = matrix_geometry(arr, url)
        scale = column_scales(arr.attrs.get("slice_noise_hu"), int(arr.shape[1]))
        return cls(
            matrix_url=url,
            shape=(int(arr.shape[0]), int(arr.shape[1])),
            rows=rows,
            columns=columns,
            band_rows=max(1, math.ceil(int(arr.chunks[0]) / columns)),
            params=params,
            column_scale=None if scale is None else tuple(round(float(x), 6) for x in scale),
            storage_options=storage_options,
        )

    @property
    def bands(self) -> list[Band]:
        return band_ranges(self.rows, self.band_rows)

    def partition(self, groups: int) -> list[list[Band]]:
        """The bands cut into at most ``groups`` contiguous, near-equal groups (one per partition)."""
        bands = self.bands
        groups = max(1, min(groups, len(bands)))
        bounds = [round(i * len(bands) / groups) for i in range(groups + 1)]
        return [bands[bounds[i] : bounds[i + 1]] for i in range(groups)]

    def task(self, work_url: str) -> BandTask:
        return BandTask(self.matrix_url, work_url, self.rows, self.columns, self.params, self.column_scale,
                        self.storage_options)  # fmt: skip

    def attrs(self) -> dict[str, Any]:
        """The local group's attributes known before the bands are computed (docs/architecture.md)."""
        from ctdenoise import __version__

        return {
            "mode": "local",
            "algorithm": ALGORITHM,
            "band_rows": self.band_rows,
            **self.params.as_json(),
            "tile_row_starts": tile_starts(self.rows, self.params.tile, self.params.stride),
            "tile_col_starts": tile_starts(self.columns, self.params.tile, self.params.stride),
            "matrix_url": self.matrix_url,
            "matrix_shape": list(self.shape),
            "column_scale": None if self.column_scale is None else list(self.column_scale),
            "created_by": f"ctdenoise {__version__}",
        }


def stats_maps(stats: TileStats, plan: BandPlan) -> tuple[np.ndarray, np.ndarray]:
    """``(ranks (n_mult, tile rows, tile cols) int16, sigma (tile rows, tile cols) float32)`` grids."""
    p = plan.params
    row_starts, col_starts = tile_starts(plan.rows, p.tile, p.stride), tile_starts(plan.columns, p.tile, p.stride)
    r_index = {r: i for i, r in enumerate(row_starts)}
    c_index = {c: j for j, c in enumerate(col_starts)}
    ranks = np.zeros((len(p.multipliers), len(row_starts), len(col_starts)), dtype=np.int16)
    sigma = np.zeros((len(row_starts), len(col_starts)), dtype=np.float32)
    for (r, c), sg, rk in zip(stats.starts, stats.sigma, stats.ranks, strict=True):
        sigma[r_index[r], c_index[c]] = sg
        ranks[:, r_index[r], c_index[c]] = rk
    return ranks, sigma


def summarize(ranks: np.ndarray, sigma: np.ndarray, params: LocalParams) -> dict[str, Any]:
    """Per multiplier, the components the tiles kept; the noise levels estimated (HU): for the
    report and the logs."""
    out: dict[str, Any] = {"tiles": int(sigma.size), "multipliers": {}}
    for i, m in enumerate(params.multipliers):
        r = ranks[i].astype(np.float64)
        out["multipliers"][multiplier_label(m)] = {
            "multiplier": float(m),
            "mean_rank": round(float(r.mean()), 3),
            "median_rank": float(np.median(r)),
            "max_rank": int(r.max()),
        }
    sg = sigma.astype(np.float64)
    out["sigma_hu"] = {"median": round(float(np.median(sg)), 3), "p10": round(float(np.percentile(sg, 10)), 3),
                       "p90": round(float(np.percentile(sg, 90)), 3)}  # fmt: skip
    return out


def publish_bands(
    dest_url: str,
    run_bands: Callable[[str], Iterable[tuple[int, int, TileStats]]],
    plan: BandPlan,
    attrs: Mapping[str, Any],
    timings: Any,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Create the local group, let ``run_bands(work_url)`` fill ``D`` and return the band stats,
    then commit it at ``dest_url`` atomically; the summary record (URL, per-multiplier ranks,
    noise levels, timings).

    ``run_bands`` is where the work happens (the engine), inside the ``local_pass`` stage of
    ``timings``; the bands write their rows straight into the uncommitted group
    (:func:`ctdenoise.storage.open_publication`), so the denoised volume never passes through
    the driver.
    """
    from ctdenoise import matrix_store, storage
    from ctdenoise.decomposition import NON_COMPUTE_STAGES

    grid = (len(attrs["tile_row_starts"]), len(attrs["tile_col_starts"]))
    work = storage.open_publication(dest_url, storage_options)
    try:
        matrix_store.create_local_group(work, plan.shape, len(plan.params.multipliers), grid,
                                        plan.band_rows * plan.columns, storage_options)  # fmt: skip
        with timings.stage("local_pass"):
            parts = [band_stats for _, _, band_stats in run_bands(work)]
            ranks, sigma = stats_maps(merge_stats(parts), plan)
        summary = summarize(ranks, sigma, plan.params)
        stages = timings.as_dict()
        stages["compute_total"] = round(sum(v for k, v in timings.stages.items() if k not in NON_COMPUTE_STAGES), 6)
        with timings.stage("write"):
            matrix_store.commit_local_group(work, {**attrs, "timings": stages, "summary": summary}, ranks, sigma, storage_options)
            storage.commit_publication(work, dest_url)
    except BaseException:
        storage.abandon_publication(work, dest_url, storage_options)
        raise
    stages["write"] = round(timings.stages["write"], 6)
    return {"local": dest_url, "mode": "local", "summary": summary, "timings": stages, "matrix_shape": list(plan.shape)}


def local_numpy(matrix_url: str, out_url: str, params: LocalParams, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The local mode in this process (``ctdenoise local``, tests): the job's code on :class:`~ctdenoise.job.LocalEngine`."""
    from ctdenoise.job import DssvdJob, LocalEngine, run_job

    return run_job(DssvdJob(matrix=matrix_url, local_out=out_url, local=params), LocalEngine(storage_options))
