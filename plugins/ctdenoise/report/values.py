"""The numbers a report shows that are not in the outputs' metrics: energies, middle slices, versions."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any

import numpy as np

from ctdenoise.errors import InputError, ParameterError

#: Distributions whose versions identify the software that produced a report.
VERSION_PACKAGES = ("ctdenoise", "numpy", "pydicom", "zarr", "pyspark", "apache-airflow")


def installed_versions(packages: Iterable[str] = VERSION_PACKAGES) -> dict[str, str]:
    """Installed versions of the distributions that shape the result ('not installed' if absent)."""
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def retained_energy(s: np.ndarray, rank: int, frobenius_norm: float | None = None) -> float:
    """Fraction of ||A||_F^2 kept by the first ``rank`` singular values (0..1).

    Uses the SVD's ``frobenius_norm`` attribute when given: with a truncated spectrum the sum of
    the stored ``s**2`` is smaller than ||A||_F^2.
    """
    s = np.asarray(s, dtype=np.float64)
    total = float(frobenius_norm) ** 2 if frobenius_norm else float(np.sum(s**2))
    if total <= 0:
        return float("nan")
    return float(np.sum(s[: max(0, rank)] ** 2) / total)


def middle_slice_reconstructions(
    matrix: Any, V: np.ndarray, ranks: Sequence[int], column: int
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Column ``column`` of ``A`` and of ``A V_r V_r^T`` for every rank, in one pass over ``A``.

    ``matrix`` is a (voxels, slices) array (a Zarr array or numpy); it is read once, block of
    rows by block of rows (its chunk height), so the memory used is one block plus the outputs.
    Returns the original column and ``{rank: column}``, float64 HU, length rows*columns.
    """
    m, n = matrix.shape
    V = np.asarray(V, dtype=np.float64)
    if V.shape[0] != n:
        raise InputError(f"V has {V.shape[0]} rows but the matrix has {n} slices")
    if not 0 <= column < n:
        raise ParameterError(f"column {column} is outside 0..{n - 1}")
    bad = [r for r in ranks if not 1 <= r <= V.shape[1]]
    if bad:
        raise ParameterError(f"ranks {bad} are outside 1..{V.shape[1]} (the SVD's rank)")
    # w_r = V_r V_r[j, :]^T, one column per rank: A @ W gives every reconstruction's column j.
    W = np.stack([V[:, :r] @ V[column, :r] for r in ranks], axis=1) if ranks else np.zeros((n, 0))
    block = getattr(matrix, "chunks", None)
    step = int(block[0]) if block else 16384
    original = np.empty(m, dtype=np.float64)
    out = np.empty((m, len(ranks)), dtype=np.float64)
    for start in range(0, m, step):
        stop = min(m, start + step)
        rows = np.asarray(matrix[start:stop, :], dtype=np.float64)
        original[start:stop] = rows[:, column]
        out[start:stop] = rows @ W
    return original, {r: out[:, i] for i, r in enumerate(ranks)}


def local_middle_slices(group: Any, column: int) -> list[np.ndarray]:
    """Column ``column`` of ``D[i]`` (the middle slice) for every multiplier of a local group.

    Read from the group's ``middle_slice`` copy when the job wrote one for this column (a few MB);
    groups written before it existed give it from ``D``, whose every chunk holds a part of it."""
    from ctdenoise import matrix_store

    if "middle_slice" in group and column == matrix_store.middle_column(group["D"].shape[2]):
        middle = np.asarray(group["middle_slice"][...], dtype=np.float64)
        return list(middle)
    D = group["D"]
    return [np.asarray(D[i, :, column], dtype=np.float64) for i in range(D.shape[0])]


def json_safe(value: Any) -> Any:
    """Plain JSON: numpy scalars to Python, NaN/inf to null, tuples to lists."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
