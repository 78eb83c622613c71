"""What a report reads from the stores: the matrix's middle slice, the SVD, the local group.

Cheap on purpose: the previews need the middle slice only, and column ``j`` of ``A V_r V_r^T`` is
``A @ (V_r V_r[j, :])``, so one pass over the matrix row blocks gives the original slice and the
reconstructions at every rank at once, without reading the outputs' DICOM files; the local mode's
middle slices come from its group's ``middle_slice`` copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctdenoise import matrix_store
from ctdenoise.errors import InputError
from ctdenoise.params import LocalParams, Inplane
from ctdenoise.records import Series
from ctdenoise.report.values import local_middle_slices, middle_slice_reconstructions


@dataclass
class LocalData:
    """The local group as the report shows it."""

    url: str
    attrs: dict[str, Any]
    multipliers: list[float]
    automatic: float
    middle: dict[float, np.ndarray]  # multiplier -> middle slice (HU)
    tile_ranks: np.ndarray
    tile_sigma: np.ndarray

    @property
    def inplane(self) -> str:
        return self.attrs.get("inplane", Inplane.NONE.value)  # groups of version 2 have no in-plane stage


@dataclass
class SeriesData:
    """The series' matrix attributes, spectrum and middle slices."""

    attrs: dict[str, Any]
    shape: tuple[int, int]
    rows: int
    columns: int
    column: int
    s: np.ndarray
    svd_attrs: dict[str, Any]
    original: np.ndarray
    recon: dict[int, np.ndarray]
    reference: np.ndarray | None = None
    local: LocalData | None = None

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.rows, self.columns

    @property
    def position(self) -> float | None:
        positions = self.attrs.get("slice_positions") or []
        return positions[self.column] if self.column < len(positions) else None


def load(series: Series, ranks: Sequence[int], reference_url: str | None, storage_options: Mapping[str, Any] | None) -> SeriesData:
    """Everything the report reads; :class:`InputError` when the stores do not fit together."""
    matrix = matrix_store.open_matrix(series.matrix_url, storage_options=storage_options)
    attrs = dict(matrix.attrs)
    m, n = (int(x) for x in matrix.shape)
    rows, columns = int(attrs.get("rows", 0)), int(attrs.get("columns", 0))
    if rows * columns != m:
        raise InputError(f"{series.matrix_url}: attributes rows={rows} x columns={columns} do not match {m} voxel rows")
    if series.svd_url:
        s, V, svd_attrs = matrix_store.read_svd(series.svd_url, storage_options=storage_options)
    else:
        s, V, svd_attrs = np.zeros(0), np.zeros((n, 0)), {}
    if V.shape[0] != n:
        raise InputError(f"{series.svd_url}: V has {V.shape[0]} rows but {series.matrix_url} has {n} slices")
    column = matrix_store.middle_column(n)
    original, recon = middle_slice_reconstructions(matrix, V, [r for r in ranks if r <= s.size], column)
    data = SeriesData(attrs=attrs, shape=(m, n), rows=rows, columns=columns, column=column, s=s,
                      svd_attrs=svd_attrs, original=original, recon=recon)  # fmt: skip
    if reference_url:
        ref = matrix_store.open_matrix(reference_url, storage_options=storage_options)
        if tuple(ref.shape) != (m, n):
            raise InputError(f"{reference_url}: reference shape {tuple(ref.shape)} differs from {series.matrix_url} {(m, n)}")
        data.reference = np.asarray(ref[:, column], dtype=np.float64)
    if series.local_url:
        data.local = load_local(series.local_url, column, storage_options)
    return data


def load_local(url: str, column: int, storage_options: Mapping[str, Any] | None) -> LocalData:
    group, attrs = matrix_store.open_local(url, storage_options)
    multipliers = [float(x) for x in attrs.get("multipliers") or []]
    inplane = attrs.get("inplane", Inplane.NONE.value)
    return LocalData(
        url=url,
        attrs=attrs,
        multipliers=multipliers,
        automatic=LocalParams(inplane=inplane).automatic_multiplier,
        middle=dict(zip(multipliers, local_middle_slices(group, column), strict=True)),
        tile_ranks=np.asarray(group["tile_ranks"][...]),
        tile_sigma=np.asarray(group["tile_sigma"][...]),
    )
