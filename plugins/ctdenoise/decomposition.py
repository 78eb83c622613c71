"""Truncated SVD of a series matrix: numpy block kernels, the driver-side algorithm, ``svd_numpy``.

The series matrix ``A`` (voxels x slices, float32 HU) is tall and skinny: 262 144 rows and a few
hundred columns for a 512x512 series. Everything that touches ``A`` is a *block kernel*: a function
of one or a few row blocks ``A_i`` that returns small float64 partial sums (``n x n`` or ``n x l``)
which add up over blocks. The Spark job (``spark/dssvd.py``) runs the kernels on executors and sums
the partials with a tree; :func:`svd_numpy` runs the same kernels in a loop. The algorithm itself
(:func:`decompose`) only sees the sums, so both engines share it line for line.

Two methods
-----------
``exact``
    One pass: ``G = sum_i A_i^T A_i`` in float64 (blocks are cast to float64 first: float32
    products are exact in float64, so only the summation rounds), then ``eigh(G)`` on the
    driver: ``s = sqrt(eigvals)``, ``V = eigvecs``. The relative error of ``s_i`` is about
    ``eps64 * (s_1 / s_i)^2``: ~1e-13 for the top singular values of a CT series, far below the
    float32 precision of the data. It gives the *full* spectrum (all ``n`` values), which the
    rank rules need (drop-percent counts, the Gavish-Donoho median), so the SVD group stores all
    ``n`` values and the ``n x n`` matrix ``V``. Limited to ``n <= EXACT_MAX_COLUMNS``.
``stochastic``
    Halko, Martinsson and Tropp's randomized SVD (rank ``k``, oversampling ``p``, ``q`` power
    iterations; sketch width ``l = k + p``), the algorithm of Mahout's ``dssvd``. Each pass over
    ``A`` is *fused*: for a broadcast ``n x l`` matrix ``W`` an executor computes ``Y_i = A_i W``
    and returns ``Y_i^T Y_i`` and ``A_i^T Y_i``; ``Y`` itself is never stored. From the sums the
    driver forms ``R^{-1}`` with ``R^T R = Y^T Y`` (a rank-revealing Cholesky factor from
    ``eigh``: directions below ``l * eps64`` of the largest eigenvalue are dropped, so exactly
    low-rank matrices are fine) and so ``A^T Q = (A^T Y) R^{-1}`` for the orthonormal
    ``Q = Y R^{-1}``, without forming ``Q``. A power iteration re-orthonormalizes on the small side
    with Householder QR (``W <- qr(A^T Q)``) and makes another pass; after ``q`` of them
    ``B^T = A^T Q`` is decomposed on the driver (``svd`` of an ``n x l`` matrix). ``q + 1``
    passes in all, ``2 (q + 1)`` GEMMs of ``A`` with ``l`` columns (the same as ``2q + 2`` in
    Halko et al.).

    Numerics: ``W`` is orthonormal at every pass, so ``cond(Y) ~ s_1 / s_l``; the implicit
    ``Q`` is orthonormal to ``eps64 * cond(Y)^2`` and the Ritz values have relative error about
    ``eps64 * (s_1 / s_i)^2`` from that step (the same as the Gram route, and below the float32
    resolution of the data for every ``s_i > 1e-4 s_1``). Products with float32 blocks run in
    float32 GEMM with float64 sums across blocks: that adds an error like perturbing ``A`` by
    ``eps32 ||A||``, i.e. relative ``~eps32 s_1 / s_i`` -- the precision the data is stored
    with. Float64 blocks use float64 GEMM throughout.

Determinism: the test matrix ``Omega`` comes from ``numpy.random.default_rng(seed)`` and partial
sums are added in a fixed order (:func:`add_partials` over partitions in index order, see
``spark/dssvd.py``), so a run is bitwise reproducible for a seed and a partition count; other
partition counts agree to rounding (~1e-14 relative). Signs of singular vectors are fixed (the
largest-magnitude entry of each column of ``V`` is positive).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ctdenoise.errors import ParameterError

log = logging.getLogger(__name__)

METHODS = ("auto", "exact", "stochastic")
#: Above this many columns the n x n Gram matrix and its eigendecomposition stop being cheap
#: (4096 columns: a 134 MB matrix on the driver); ``auto`` switches to the stochastic path.
EXACT_MAX_COLUMNS = 4096
MAX_POWER_ITERS = 50
EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)

Partial = tuple[np.ndarray, ...]
"""Block-kernel output: float64 arrays (and 0-d arrays for scalars) that add up over blocks."""


# --------------------------------------------------------------------------------------------
# Parameters and the method choice
# --------------------------------------------------------------------------------------------


def validate_params(
    shape: Sequence[int], rank: int, oversample: int, power_iters: int, method: str, source: str = "matrix"
) -> None:
    """Raise :class:`ParameterError` naming the matrix and the reason for any bad parameter."""
    m, n = (int(x) for x in shape)
    if m < 1 or n < 1:
        raise ParameterError(f"{source}: empty matrix of shape {m}x{n}")
    if method not in METHODS:
        raise ParameterError(f"{source}: method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ParameterError(f"{source}: rank must be a positive integer, got {rank!r}")
    if rank > min(m, n):
        raise ParameterError(f"{source}: rank {rank} is larger than min(rows, columns) = {min(m, n)} of the {m}x{n} matrix")
    if isinstance(oversample, bool) or not isinstance(oversample, (int, np.integer)) or oversample < 0:
        raise ParameterError(f"{source}: oversample must be an integer >= 0, got {oversample!r}")
    if (
        isinstance(power_iters, bool)
        or not isinstance(power_iters, (int, np.integer))
        or not 0 <= power_iters <= MAX_POWER_ITERS
    ):
        raise ParameterError(f"{source}: power_iters must be an integer in [0, {MAX_POWER_ITERS}], got {power_iters!r}")
    if method == "exact" and n > EXACT_MAX_COLUMNS:
        raise ParameterError(
            f"{source}: method 'exact' needs at most {EXACT_MAX_COLUMNS} columns (an n x n Gram matrix on the "
            f"driver), the matrix has {n}; use 'stochastic' or 'auto'"
        )


def sketch_width(shape: Sequence[int], rank: int, oversample: int) -> int:
    """``l = min(k + p, min(m, n))``: columns of the random test matrix."""
    return int(min(rank + oversample, min(shape)))


def choose_method(shape: Sequence[int], rank: int, oversample: int, power_iters: int, method: str = "auto") -> tuple[str, str]:
    """The method to run and why (the reason is stored in the SVD group as ``method_reason``).

    ``auto`` picks ``exact`` whenever the columns are few (``n <= EXACT_MAX_COLUMNS``): one pass
    gives the whole spectrum exactly, which the rank rules need, and its cost (``m n^2`` flops,
    one read of ``A``) is below or near the stochastic cost (``4 (q + 1) m n l`` flops and
    ``q + 1`` reads) up to a few hundred columns and within a small factor up to a few thousand.
    """
    m, n = (int(x) for x in shape)
    l = sketch_width(shape, rank, oversample)
    exact_flops = float(m) * n * n
    stochastic_flops = 4.0 * (power_iters + 1) * m * n * l
    costs = (
        f"Gram pass {exact_flops:.2e} flops in 1 read of A vs stochastic {stochastic_flops:.2e} flops in "
        f"{power_iters + 1} reads (l={l})"
    )
    if method == "exact":
        return "exact", f"requested; {costs}"
    if method == "stochastic":
        return "stochastic", f"requested; {costs}"
    if n <= EXACT_MAX_COLUMNS:
        return "exact", (
            f"auto: {n} columns <= {EXACT_MAX_COLUMNS}, one Gram pass gives the full spectrum to ~1e-12; {costs}"
        )
    return "stochastic", f"auto: {n} columns > {EXACT_MAX_COLUMNS}, the n x n Gram matrix is too large; {costs}"


# --------------------------------------------------------------------------------------------
# Row blocks and block kernels (run where the data is: Spark executors or the local loop)
# --------------------------------------------------------------------------------------------


def partition_row_ranges(n_rows: int, chunk_rows: int, partitions: int) -> list[list[tuple[int, int]]]:
    """Chunk-aligned row ranges grouped into ``partitions`` contiguous, near-equal groups.

    Each range is one Zarr chunk (``chunk_rows`` rows), so a reader decompresses every chunk
    exactly once; a partition processes its chunks one after the other (memory: one block).
    """
    if n_rows < 1 or chunk_rows < 1:
        raise ValueError(f"bad row layout: {n_rows} rows in chunks of {chunk_rows}")
    chunks = [(start, min(start + chunk_rows, n_rows)) for start in range(0, n_rows, chunk_rows)]
    partitions = max(1, min(int(partitions), len(chunks)))
    bounds = [round(i * len(chunks) / partitions) for i in range(partitions + 1)]
    return [chunks[bounds[i] : bounds[i + 1]] for i in range(partitions)]


def default_partitions(shape: Sequence[int], chunk_rows: int, parallelism: int, itemsize: int = 4) -> int:
    """Partitions for a pass: at least one per core (twice for balance when chunks allow), and
    no more than ~256 MB of matrix per partition; never more than the number of chunks."""
    m, n = (int(x) for x in shape)
    n_chunks = math.ceil(m / chunk_rows)
    by_size = math.ceil(m * n * itemsize / (256 * 2**20))
    return max(1, min(n_chunks, max(2 * max(1, parallelism), by_size)))


def _compute_dtype(block: np.ndarray) -> np.dtype:
    return np.dtype(np.float64) if block.dtype == np.float64 else np.dtype(np.float32)


def gram_kernel(blocks: Iterable[np.ndarray], slab_rows: int = 2048) -> Partial:
    """``(G, sumsq)``: ``G = sum A_i^T A_i`` and ``||A||_F^2`` in float64.

    Blocks are cast to float64 (float32 products are then exact; only the sums round) a
    cache-sized slab at a time into one reused buffer, instead of a new block-sized float64 copy
    per chunk (which costs page faults and memory traffic).
    """
    G: np.ndarray | None = None
    buf: np.ndarray | None = None
    for block in blocks:
        b = np.asarray(block)
        if G is None:
            G = np.zeros((b.shape[1], b.shape[1]))
            buf = np.empty((min(slab_rows, b.shape[0]), b.shape[1]))
        for start in range(0, b.shape[0], slab_rows):
            slab = b[start : start + slab_rows]
            if b.dtype == np.float64:
                x = slab
            else:
                if buf.shape[0] < slab.shape[0]:
                    buf = np.empty((slab.shape[0], b.shape[1]))
                x = buf[: slab.shape[0]]
                np.copyto(x, slab)
            G += x.T @ x  # numpy uses SYRK for a transposed self-product
    if G is None:
        raise ValueError("gram_kernel got no blocks")
    return G, np.asarray(float(np.trace(G)))


def sketch_kernel(blocks: Iterable[np.ndarray], W: np.ndarray, with_norm: bool = True) -> Partial:
    """One fused pass: ``(Y^T Y, A^T Y, ||A||_F^2)`` with ``Y_i = A_i W`` (never stored).

    GEMMs run in the block's precision (float32 blocks: float32 GEMM); ``Y_i`` is cast to
    float64 before its Gram product and every sum is float64. ``with_norm=False`` skips the
    Frobenius norm (returned as 0) on passes that do not need it.
    """
    YtY: np.ndarray | None = None
    AtY: np.ndarray | None = None
    sumsq = 0.0
    Wc: np.ndarray | None = None
    for block in blocks:
        b = np.asarray(block)
        if b.dtype not in (np.float32, np.float64):
            b = b.astype(np.float32)
        if Wc is None or Wc.dtype != _compute_dtype(b):
            Wc = np.ascontiguousarray(W, dtype=_compute_dtype(b))
        Y = b @ Wc
        Y64 = Y.astype(np.float64, copy=False)
        yty = Y64.T @ Y64
        aty = (b.T @ Y).astype(np.float64, copy=False)
        sq = _sum_of_squares(b) if with_norm else 0.0
        YtY = yty if YtY is None else YtY + yty
        AtY = aty if AtY is None else AtY + aty
        sumsq += sq
    if YtY is None or AtY is None:
        raise ValueError("sketch_kernel got no blocks")
    return YtY, AtY, np.asarray(sumsq)


def _sum_of_squares(block: np.ndarray, rows: int = 1024) -> float:
    """``||block||_F^2`` summed in float64, cast a cache-sized slab at a time (faster than
    casting the whole block)."""
    total = 0.0
    for start in range(0, block.shape[0], rows):
        x = np.asarray(block[start : start + rows], dtype=np.float64).reshape(-1)
        total += float(np.dot(x, x))
    return total


def project_kernel(blocks: Iterable[np.ndarray], V_over_s: np.ndarray) -> np.ndarray:
    """``U_i = A_i V_k diag(1/s_k)`` for the blocks, stacked, float32 (left singular vectors)."""
    parts = [np.asarray(b, dtype=np.float64) @ V_over_s for b in blocks]
    return np.concatenate(parts, axis=0).astype(np.float32)


def add_partials(a: Partial, b: Partial) -> Partial:
    """Elementwise sum of two partials (commutative bit for bit, so pairwise trees are deterministic)."""
    return tuple(x + y for x, y in zip(a, b, strict=True))


def sum_partials(partials: Iterable[Partial]) -> Partial:
    """Sum partials in the order given (deterministic)."""
    total: Partial | None = None
    for p in partials:
        total = p if total is None else add_partials(total, p)
    if total is None:
        raise ValueError("no partial sums to add")
    return total


def read_row_blocks(
    matrix_url: str, ranges: Sequence[tuple[int, int]], storage_options: Mapping[str, Any] | None = None
) -> Iterator[np.ndarray]:
    """The row blocks ``A[start:stop]`` of a published Zarr matrix, read one at a time (executor side)."""
    from ctdenoise.errors import InputError, about_the_data, one_line
    from ctdenoise.matrix_store import open_matrix

    arr = open_matrix(matrix_url, storage_options=storage_options)
    for start, stop in ranges:
        # a corrupt chunk is the input's fault; a storage error stays transient (the task retries)
        with about_the_data(lambda exc: InputError(f"{matrix_url}: cannot read rows {start}:{stop}: {one_line(exc)}"), storage=True):
            block = np.asarray(arr[start:stop])
        yield block


def partition_task(
    kind: str, matrix_url: str, payload: Any, index: int, items: Iterable[list[tuple[int, int]]]
) -> Iterator[tuple[int, Any]]:
    """What one Spark partition computes: ``(index, result)`` for its row ranges.

    ``kind`` is ``gram``, ``sketch`` (payload: a broadcast ``(W, with_norm)``) or ``project``
    (payload: a broadcast ``V diag(1/s)``). Lives here, not in the Spark job, so executors
    import it by name.
    """
    ranges = [r for group in items for r in group]
    if not ranges:
        return
    blocks = read_row_blocks(matrix_url, ranges)
    if kind == "gram":
        yield index, gram_kernel(blocks)
    elif kind == "sketch":
        W, with_norm = payload.value
        yield index, sketch_kernel(blocks, W, with_norm)
    elif kind == "project":
        yield index, project_kernel(blocks, payload.value)
    else:
        raise ValueError(f"unknown partition task {kind!r}")


def warm_up(matrix_url: str | None, index: int, items: Iterable[Any]) -> Iterator[int]:
    """Start a Python worker ready for the kernels, once per slot; yields its pid.

    Imports Zarr, numpy and fsspec and, given ``matrix_url``, exercises the read path and BLAS
    on the matrix's first row (Zarr's I/O loop and codec pipeline, OpenBLAS buffers are set up on
    first use). Its time is reported as ``workers_start``, apart from the computation.
    """
    import fsspec  # noqa: F401
    import zarr  # noqa: F401

    from ctdenoise import matrix_store  # noqa: F401

    for _ in items:
        pass
    if matrix_url is not None:
        for block in read_row_blocks(matrix_url, [(0, 1)]):
            gram_kernel([block])
            sketch_kernel([block], np.ones((block.shape[1], 1)), with_norm=True)
    yield os.getpid()


def pair_key(item: tuple[int, Any]) -> tuple[int, Any]:
    """Tree-sum level: partials ``2j`` and ``2j + 1`` meet under key ``j`` (two operands, so the
    order-independent sum is bitwise deterministic)."""
    return item[0] // 2, item[1]


# --------------------------------------------------------------------------------------------
# Driver-side small problems
# --------------------------------------------------------------------------------------------


def gaussian_test_matrix(n: int, l: int, seed: int) -> np.ndarray:
    """The ``n x l`` standard normal test matrix Omega, a function of the seed only."""
    return np.random.default_rng(seed).standard_normal((n, l))


def fix_signs(V: np.ndarray) -> np.ndarray:
    """Flip columns so the largest-magnitude entry of each is positive (a deterministic choice)."""
    if V.size == 0:
        return V
    idx = np.argmax(np.abs(V), axis=0)
    signs = np.sign(V[idx, np.arange(V.shape[1])])
    signs[signs == 0] = 1.0
    return V * signs


def svd_from_gram(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(s, V)`` of ``A`` from ``G = A^T A``: descending ``s = sqrt(max(eigvals, 0))``, eigenvectors ``V``."""
    G = 0.5 * (G + G.T)
    lam, V = np.linalg.eigh(G)
    order = np.argsort(lam)[::-1]
    lam, V = lam[order], V[:, order]
    return np.sqrt(np.clip(lam, 0.0, None)), fix_signs(V)


def inverse_cholesky_factor(YtY: np.ndarray) -> np.ndarray:
    """``R^{-1}`` (``l x r``) with ``R^T R = Y^T Y`` on the numerically non-null directions.

    From ``eigh(Y^T Y) = U diag(lam) U^T``: ``R^{-1} = U_+ diag(lam_+^{-1/2})`` keeps the
    eigenvalues above ``l * eps64 * lam_max``, so ``Q = Y R^{-1}`` is an orthonormal basis of the
    numerical range of ``Y`` even when ``Y`` is rank deficient (an exactly low-rank ``A``).
    """
    YtY = 0.5 * (YtY + YtY.T)
    lam, U = np.linalg.eigh(YtY)
    lam_max = float(lam[-1]) if lam.size else 0.0
    if lam_max <= 0.0:
        return np.zeros((YtY.shape[0], 0))
    keep = lam > YtY.shape[0] * EPS64 * lam_max
    return U[:, keep] / np.sqrt(lam[keep])


def complete_basis(V: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Extend orthonormal columns ``V`` (``n x r``, ``r < k``) to ``k`` orthonormal columns."""
    n, r = V.shape
    if r >= k:
        return V[:, :k]
    extra = np.random.default_rng(seed + 1).standard_normal((n, k - r))
    extra -= V @ (V.T @ extra)
    Q, _ = np.linalg.qr(np.concatenate([V, extra], axis=1))
    out = np.concatenate([V, Q[:, r:k]], axis=1)
    return out


@dataclass
class Timings:
    """Per-stage wall-clock seconds, in the order they ran."""

    stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in self.stages.items()}


class BlockRunner(Protocol):
    """What :func:`decompose` needs from an engine: the block kernels summed over all of ``A``."""

    def gram(self) -> Partial: ...

    def sketch(self, W: np.ndarray, with_norm: bool) -> Partial: ...

    def project(self, V_over_s: np.ndarray) -> np.ndarray: ...


@dataclass
class SvdResult:
    s: np.ndarray
    V: np.ndarray
    U: np.ndarray | None
    attrs: dict[str, Any]


def _small_problem_threads(n: int):
    """One BLAS thread for the driver's small problems (n <= 1024): a 301x301 eigh takes
    milliseconds on one core but can take a second when two BLAS threads compete for busy cores."""
    if n > 1024:
        return nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional (comes with scikit-learn)
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def exact_error_estimate(s: np.ndarray, k: int, n: int, frob2: float) -> float:
    """First-order bound on the relative error of ``s_1..s_k`` from the float64 Gram route.

    The computed Gram matrix and its ``eigh`` are exact for a perturbation ``||dG|| <~ n eps64
    ||A||_F^2``; by Weyl, ``|ds_i| / s_i <= ||dG|| / (2 s_i^2)``, largest at ``i = k``.
    """
    sk = float(s[k - 1]) if k - 1 < len(s) else 0.0
    if sk <= 0.0:
        return float("inf") if frob2 > 0 else 0.0
    return float(n * EPS64 * frob2 / (2.0 * sk * sk))


def stochastic_error_estimate(
    s_last: np.ndarray, s_prev: np.ndarray | None, k: int, frob2: float, ritz_sumsq: float, float32_data: bool
) -> tuple[float, str, float]:
    """``(estimate, kind, sketch_residual)`` for the top-``k`` Ritz values.

    With power iterations, the estimate is the largest relative change of ``s_1..s_k`` over the
    last iteration (an upper estimate of their error when the iteration converges geometrically),
    floored at the data precision (``eps32 s_1 / s_k`` for float32 matrices). Without, it is the
    rigorous bound ``sqrt(1 + r^2 / s_k^2) - 1`` with ``r = ||A - Q Q^T A||_F`` (Weyl on
    ``A^T A = B^T B + A^T (I - Q Q^T) A``). ``sketch_residual = r / ||A||_F``.
    """
    resid2 = max(frob2 - ritz_sumsq, 0.0)
    residual = math.sqrt(resid2 / frob2) if frob2 > 0 else 0.0
    sk = float(s_last[k - 1]) if k - 1 < len(s_last) else 0.0
    if sk <= 0.0:
        return (0.0 if resid2 == 0.0 else float("inf")), "zero singular value in the top k", residual
    if s_prev is None:
        return math.sqrt(1.0 + resid2 / (sk * sk)) - 1.0, "weyl_bound_from_sketch_residual", residual
    top = np.asarray(s_last[:k], dtype=np.float64)
    prev = np.zeros(k)
    prev[: min(k, len(s_prev))] = s_prev[:k]
    with np.errstate(divide="ignore", invalid="ignore"):
        change = np.where(top > 0, np.abs(top - prev) / top, 0.0)
    floor = (EPS32 if float32_data else EPS64) * float(s_last[0]) / sk
    return float(max(change.max(initial=0.0), floor)), "relative_change_over_last_power_iteration", residual


def _ritz(YtY: np.ndarray, AtY: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(Bt, s, V)``: ``B^T = A^T Q = (A^T Y) R^{-1}`` and its thin SVD (``s`` descending)."""
    Bt = AtY @ inverse_cholesky_factor(YtY)
    if Bt.shape[1] == 0:
        return Bt, np.zeros(0), np.zeros((AtY.shape[0], 0))
    V, s, _ = np.linalg.svd(Bt, full_matrices=False)
    return Bt, s, V


def decompose(
    runner: BlockRunner,
    shape: Sequence[int],
    rank: int,
    *,
    method: str = "auto",
    oversample: int = 15,
    power_iters: int = 2,
    seed: int = 0,
    with_u: bool = False,
    float32_data: bool = True,
    source: str = "matrix",
    timings: Timings | None = None,
) -> SvdResult:
    """Run the chosen method on ``runner`` (see the module docstring) and build the SVD attributes.

    The returned ``attrs`` hold everything of the SVD group but ``matrix_url`` and
    ``created_by``, which the caller knows.
    """
    validate_params(shape, rank, oversample, power_iters, method, source)
    m, n = (int(x) for x in shape)
    chosen, reason = choose_method(shape, rank, oversample, power_iters, method)
    log.info("%s: %dx%d, rank %d, method %s (%s)", source, m, n, rank, chosen, reason)
    timings = timings if timings is not None else Timings()
    if chosen == "exact":
        s, V, frob2, error, extra = _exact(runner, n, rank, timings)
    else:
        s, V, frob2, error, extra = _stochastic(runner, shape, rank, oversample, power_iters, seed, float32_data, timings)
    U = None
    if with_u:
        with timings.stage("project_u"):
            U = runner.project(V[:, :rank] * _safe_inverse(s[:rank], max(m, n)))
    attrs: dict[str, Any] = {
        "rank": int(len(s)),
        "requested_rank": int(rank),
        "method": chosen,
        "method_reason": reason,
        "oversample": int(oversample),
        "power_iters": int(power_iters),
        "seed": int(seed),
        "matrix_shape": [m, n],
        "frobenius_norm": math.sqrt(max(frob2, 0.0)),
        "error_estimate": float(error),
        "u_rank": int(rank) if with_u else None,
        **extra,
    }
    return SvdResult(s=np.asarray(s, dtype=np.float64), V=np.asarray(V, dtype=np.float64), U=U, attrs=attrs)


def _safe_inverse(sk: np.ndarray, size: int) -> np.ndarray:
    """``1 / s`` for the singular values above the rounding floor, 0 for the others (so ``U = A V / s``
    has no infinite column for an exactly low-rank matrix)."""
    if sk.size == 0 or sk[0] <= 0:
        return np.zeros_like(sk)
    return np.divide(1.0, sk, out=np.zeros_like(sk), where=sk > sk[0] * EPS64 * size)


def _exact(runner: BlockRunner, n: int, rank: int, timings: Timings) -> tuple[np.ndarray, np.ndarray, float, float, dict[str, Any]]:
    """``(s, V, ||A||_F^2, error estimate, attrs)`` from one Gram pass and the driver's ``eigh``."""
    with timings.stage("gram_pass"):
        G, sumsq = runner.gram()
    with timings.stage("driver_eigh"), _small_problem_threads(n):
        frob2 = float(sumsq)
        s, V = svd_from_gram(G)
        error = exact_error_estimate(s, rank, n, frob2)
    return s, V, frob2, error, {"error_estimate_kind": "weyl_bound_float64_gram", "spectrum": "full", "sketch_width": None}


def _stochastic(
    runner: BlockRunner, shape: Sequence[int], rank: int, oversample: int, power_iters: int, seed: int,
    float32_data: bool, timings: Timings,
) -> tuple[np.ndarray, np.ndarray, float, float, dict[str, Any]]:  # fmt: skip
    """``(s, V, ||A||_F^2, error estimate, attrs)`` by Halko-Martinsson-Tropp: ``q + 1`` fused passes."""
    n = int(shape[1])
    l = sketch_width(shape, rank, oversample)
    W = gaussian_test_matrix(n, l, seed)
    s_prev: np.ndarray | None = None
    frob2 = 0.0
    for it in range(power_iters + 1):
        with timings.stage(f"pass_{it}"):
            YtY, AtY, sumsq = runner.sketch(W, it == 0)
        with timings.stage("driver_small"), _small_problem_threads(n):
            if it == 0:
                frob2 = float(sumsq)
            Bt, s_all, V_all = _ritz(YtY, AtY)
            if it < power_iters:
                s_prev = s_all
                # Re-orthonormalize on the small side (Householder QR); keep l columns even
                # when Y lost rank (an exactly low-rank A): pad with fresh random directions.
                if Bt.shape[1] < l:
                    Bt = np.concatenate([Bt, gaussian_test_matrix(n, l - Bt.shape[1], seed + 1 + it)], axis=1)
                W, _ = np.linalg.qr(Bt)
    with timings.stage("driver_small"), _small_problem_threads(n):
        ritz_sumsq = float(np.sum(s_all**2))
        V = complete_basis(fix_signs(V_all[:, :rank]), rank, seed)
        s = np.zeros(rank)
        s[: min(rank, len(s_all))] = s_all[:rank]
        error, kind, residual = stochastic_error_estimate(s_all, s_prev, rank, frob2, ritz_sumsq, float32_data)
    return s, V, frob2, error, {"error_estimate_kind": kind, "spectrum": "top", "sketch_width": l, "sketch_residual": residual}


# --------------------------------------------------------------------------------------------
# Single-machine engine
# --------------------------------------------------------------------------------------------


class LocalRunner:
    """The block kernels in a loop over the chunks of a Zarr matrix (or an in-memory array)."""

    def __init__(self, matrix: Any, chunk_rows: int | None = None):
        self.matrix = matrix
        rows = int(matrix.shape[0])
        if chunk_rows is None:
            chunks = getattr(matrix, "chunks", None)
            chunk_rows = int(chunks[0]) if chunks else rows
        self.ranges = [r for part in partition_row_ranges(rows, chunk_rows, 1) for r in part]

    def _blocks(self) -> Iterator[np.ndarray]:
        for start, stop in self.ranges:
            yield np.asarray(self.matrix[start:stop])

    def gram(self) -> Partial:
        return gram_kernel(self._blocks())

    def sketch(self, W: np.ndarray, with_norm: bool) -> Partial:
        return sketch_kernel(self._blocks(), W, with_norm)

    def project(self, V_over_s: np.ndarray) -> np.ndarray:
        return project_kernel(self._blocks(), V_over_s)


def svd_numpy(
    matrix_url: str,
    out_url: str,
    rank: int,
    method: str = "auto",
    seed: int = 0,
    oversample: int = 15,
    power_iters: int = 2,
    with_u: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Single-machine SVD of a published series matrix, written as the SVD group at ``out_url``:
    the job's code (:func:`ctdenoise.job.run_job`) on :class:`~ctdenoise.job.LocalEngine`
    (``ctdenoise svd``, tests). Returns the summary (``svd`` URL, method, rank, timings, error
    estimate, top singular values)."""
    from ctdenoise.job import DssvdJob, LocalEngine, run_job

    svd = {"method": method, "seed": seed, "oversample": oversample, "power_iters": power_iters}
    job = DssvdJob.parse({"matrix": matrix_url, "out": out_url, "rank": rank, "svd": svd, "with_u": with_u}, matrix_url)
    return run_job(job, LocalEngine(storage_options))


def publish_result(
    result: SvdResult,
    matrix_url: str,
    out_url: str,
    timings: Timings,
    engine: str,
    extra_attrs: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the SVD group atomically (``matrix_store.write_svd``) and return the summary record."""
    from ctdenoise import __version__
    from ctdenoise.matrix_store import write_svd

    attrs = dict(result.attrs)
    attrs.update(matrix_url=matrix_url, created_by=f"ctdenoise {__version__} ({engine})", engine=engine)
    attrs.update(extra_attrs or {})
    # The group's timings cover everything before the write (a file cannot time its own write);
    # the returned record adds it. ``compute_total`` excludes the Spark session start.
    attrs["timings"] = _with_total(timings)
    with timings.stage("write"):
        write_svd(out_url, result.s, result.V, attrs, U=result.U, storage_options=storage_options)
    return {
        "svd": out_url,
        "method": attrs["method"],
        "method_reason": attrs["method_reason"],
        "rank": attrs["rank"],
        "requested_rank": attrs["requested_rank"],
        "matrix_shape": attrs["matrix_shape"],
        "error_estimate": attrs["error_estimate"],
        "timings": _with_total(timings),
        "top_singular_values": [float(x) for x in result.s[: min(10, len(result.s))]],
    }


#: Stages that are engine start-up or output, not computation: excluded from ``compute_total``.
NON_COMPUTE_STAGES = ("session_start", "workers_start", "write")


def _with_total(timings: Timings) -> dict[str, float]:
    """Stages plus ``compute_total`` (opening the matrix to the SVD in memory) and ``job_total``."""
    stages = timings.as_dict()
    stages["compute_total"] = round(sum(v for k, v in timings.stages.items() if k not in NON_COMPUTE_STAGES), 6)
    stages["job_total"] = round(sum(timings.stages.values()), 6)
    return stages
