"""The Zarr formats shared by every stage: the series matrix and the SVD group.

Series matrix (written by ``convert``, read by the Spark job and the writer)
    ``<SeriesInstanceUID>.zarr``: a Zarr v3 array of shape ``(rows*columns, slices)``, float32
    Hounsfield units, one column per slice in ascending position along the slice normal,
    chunked by voxel rows (``ROW_CHUNK`` rows, all slices) so executors read row blocks
    independently. Attributes: see docs/architecture.md (``rows``, ``columns``,
    ``sop_instance_uids``, ``slice_positions``, geometry, UIDs, header template).

SVD group (written by ``spark/dssvd.py`` or :func:`write_svd`)
    a Zarr v3 group with arrays ``s`` (k,) and ``V`` (slices, k), optionally ``U``
    (rows*columns, k), and attributes: the parameters, the method chosen, matrix shape, seed,
    per-stage timings and an error estimate.

Both are written to a local staging folder and published atomically
(:func:`ctdenoise.storage.publish_dir`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from ctdenoise import storage

ROW_CHUNK = 16384  # voxel rows per chunk: 16 chunks for a 512x512 slice, ~20 MB for 301 slices


def open_store(url: str, *, read_only: bool = True, storage_options: Mapping[str, Any] | None = None):
    """A Zarr store for a local path or an fsspec URL."""
    if storage.is_local(url):
        return zarr.storage.LocalStore(str(storage.local_path(url)), read_only=read_only)
    protocol = url.split("://", 1)[0]
    options = dict(storage_options) if storage_options is not None else storage.storage_options_from_env(protocol)
    return zarr.storage.FsspecStore.from_url(url, storage_options=options, read_only=read_only)


# What zarr raises when a URL holds no node, or a node of the other kind (an array where a group
# is expected, or the reverse): all mean "not the store you meant", reported in one line.
_NOT_THAT_NODE = (
    FileNotFoundError,
    KeyError,
    zarr.errors.NodeNotFoundError,
    zarr.errors.ContainsArrayError,
    zarr.errors.ContainsGroupError,
    zarr.errors.NodeTypeValidationError,
)


def open_matrix(url: str, storage_options: Mapping[str, Any] | None = None) -> zarr.Array:
    """Open a published series matrix read-only; a clear error if it is not there."""
    try:
        return zarr.open_array(store=open_store(url, storage_options=storage_options), mode="r")
    except _NOT_THAT_NODE as exc:
        raise FileNotFoundError(f"{url}: no Zarr matrix there ({exc.__class__.__name__})") from exc


def write_matrix(
    matrix: np.ndarray,
    attrs: Mapping[str, Any],
    dest_url: str,
    storage_options: Mapping[str, Any] | None = None,
    row_chunk: int = ROW_CHUNK,
) -> str:
    """Stage and publish a (voxels, slices) float32 matrix with its attributes."""
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D (voxels, slices), got shape {matrix.shape}")
    with storage.staging_dir() as staged:
        target = Path(staged) / "m.zarr"
        arr = zarr.create_array(
            store=str(target),
            shape=matrix.shape,
            chunks=(min(row_chunk, matrix.shape[0]), matrix.shape[1]),
            dtype="float32",
            attributes=dict(attrs),
            zarr_format=3,
        )
        arr[...] = matrix.astype(np.float32, copy=False)
        storage.publish_dir(target, dest_url, storage_options)
    return dest_url


def write_svd(
    dest_url: str,
    s: np.ndarray,
    V: np.ndarray,
    attrs: Mapping[str, Any],
    U: np.ndarray | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Stage and publish an SVD group (``s``, ``V``, optional ``U``, attributes)."""
    s = np.asarray(s, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    if V.ndim != 2 or s.shape != (V.shape[1],):
        raise ValueError(f"inconsistent SVD shapes: s {s.shape}, V {V.shape}")
    with storage.staging_dir() as staged:
        target = Path(staged) / "svd.zarr"
        group = zarr.open_group(store=str(target), mode="w", zarr_format=3)
        group.attrs.update(dict(attrs))
        group.create_array("s", data=s)
        group.create_array("V", data=V)
        if U is not None:
            U = np.asarray(U, dtype=np.float32)
            group.create_array("U", data=U, chunks=(min(ROW_CHUNK, U.shape[0]), U.shape[1]))
        storage.publish_dir(target, dest_url, storage_options)
    return dest_url


def read_svd(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(s, V, attrs)`` of a published SVD group."""
    try:
        group = zarr.open_group(store=open_store(url, storage_options=storage_options), mode="r")
        return np.asarray(group["s"][...]), np.asarray(group["V"][...]), dict(group.attrs)
    except _NOT_THAT_NODE as exc:
        raise FileNotFoundError(f"{url}: no SVD group there (needs arrays 's' and 'V')") from exc


# ---------------------------------------------------------------------------------------------
# Local low-rank group (written by ``spark/dssvd.py --local-out``; see ctdenoise.local_lowrank)
#
# A Zarr v3 group with ``D`` (multipliers, rows*columns, slices) float32, the denoised series
# matrix for each threshold multiplier (chunked by bands of whole image rows, about one
# series-matrix chunk each, one multiplier per chunk, so each writer owns whole chunks), ``tile_ranks`` (multipliers, tile rows, tile columns) int16, the components each tile
# kept, and ``tile_sigma`` (tile rows, tile columns) float32, the noise level (HU) estimated per
# tile, and ``middle_slice`` (multipliers, rows*columns) float32, column :func:`middle_column` of
# ``D`` again, chunked like ``D``'s bands: the report's previews need that one slice, and a column
# of ``D`` spans all its chunks (reading it would read the whole matrix per multiplier, ~300 MB
# for a 512x512x301 series). Attributes: ``mode`` = "local", the parameters (``tile``, ``stride``, ``multipliers``,
# ``shrinkage``, ...), ``tile_row_starts``/``tile_col_starts``, ``matrix_url``,
# ``matrix_shape``, ``timings``, ``created_by``.


def middle_column(slices: int) -> int:
    """The slice the previews show (the writer's PNG and the report): the middle one."""
    return slices // 2


def create_local_group(
    url: str,
    shape: tuple[int, int],
    multipliers: int,
    tile_grid: tuple[int, int],
    band_matrix_rows: int,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """The arrays of a local group at ``url`` (a work location of
    :func:`ctdenoise.storage.open_publication`), *without* the group's ``zarr.json``: the group
    stays invisible until :func:`commit_local_group`. ``D`` is chunked by bands of
    ``band_matrix_rows`` matrix rows, so that each writer (one band each) owns whole chunks."""
    m, n = shape
    store = open_store(url, read_only=False, storage_options=storage_options)
    # Blosc LZ4 with byte shuffle: faster to write than Zarr's default Zstd and about as small on
    # denoised bands (docs/local-mode.md); D is written once per multiplier per series, inside the
    # job's timed pass.
    zarr.create_array(
        store=store,
        name="D",
        shape=(multipliers, m, n),
        chunks=(1, min(band_matrix_rows, m), n),
        dtype="float32",
        compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    )
    zarr.create_array(
        store=store,
        name="middle_slice",
        shape=(multipliers, m),
        chunks=(1, min(band_matrix_rows, m)),
        dtype="float32",
        compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    )
    zarr.create_array(store=store, name="tile_ranks", shape=(multipliers, *tile_grid), dtype="int16", fill_value=0)
    zarr.create_array(store=store, name="tile_sigma", shape=tile_grid, dtype="float32", fill_value=0.0)
    fs, path = storage.get_fs(url, storage_options)
    root = f"{path.rstrip('/')}/zarr.json"
    if fs.exists(root):  # zarr writes the parent group's metadata with the first array
        fs.rm(root)


def write_local_band(url: str, row_start: int, row_stop: int, D: np.ndarray, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write matrix rows ``[row_start, row_stop)`` of ``D`` (all multipliers) into an uncommitted
    local group, and the same rows of its middle slice."""
    store = open_store(url, read_only=False, storage_options=storage_options)
    zarr.open_array(store=store, path="D", mode="r+")[:, row_start:row_stop, :] = D
    zarr.open_array(store=store, path="middle_slice", mode="r+")[:, row_start:row_stop] = D[:, :, middle_column(D.shape[2])]


def commit_local_group(
    url: str, attrs: Mapping[str, Any], ranks: np.ndarray, sigma: np.ndarray, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Write the per-tile maps, then the group's ``zarr.json`` with ``attrs``: the commit file."""
    store = open_store(url, read_only=False, storage_options=storage_options)
    zarr.open_array(store=store, path="tile_ranks", mode="r+")[...] = ranks
    zarr.open_array(store=store, path="tile_sigma", mode="r+")[...] = sigma
    zarr.create_group(store=store, attributes=dict(attrs))


def open_local(url: str, storage_options: Mapping[str, Any] | None = None):
    """``(group, attrs)`` of a published local group (``D`` is read lazily, block by block)."""
    try:
        group = zarr.open_group(store=open_store(url, storage_options=storage_options), mode="r")
        group["D"]  # noqa: B018 (fails now, not in the writer's loop, when it is missing)
    except _NOT_THAT_NODE as exc:
        raise FileNotFoundError(f"{url}: no local low-rank group there (needs array 'D')") from exc
    return group, dict(group.attrs)
