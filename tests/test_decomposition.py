"""ctdenoise.decomposition: block kernels, both methods against numpy, the SVD group, bad parameters.

Matrices are built with known spectra, A = U diag(s) V^T with random orthonormal U, V, so the
expected singular values are known exactly and numpy's SVD is the reference for subspaces.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from ctdenoise import decomposition as dec
from ctdenoise.errors import ParameterError
from ctdenoise.matrix_store import read_svd, write_matrix


def known_spectrum(m: int, n: int, s: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    V, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
    return (U * s) @ V.T


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


@pytest.fixture(scope="module")
def decaying() -> tuple[np.ndarray, np.ndarray]:
    """3000x60 float64, singular values 1000 .. 0.1 (geometric): the reference spectrum."""
    s = np.geomspace(1000.0, 0.1, 60)
    return known_spectrum(3000, 60, s, seed=1), s


@pytest.fixture(scope="module")
def matrix_url(tmp_path_factory) -> tuple[str, np.ndarray]:
    """A published float32 series matrix (4096x40, 4 chunks) and its float64 copy."""
    s = np.geomspace(2000.0, 1.0, 40)
    A = known_spectrum(4096, 40, s, seed=2).astype(np.float32)
    url = str(tmp_path_factory.mktemp("dec") / "m.zarr")
    write_matrix(A, {"rows": 64, "columns": 64, "slices": 40}, url, row_chunk=1024)
    return url, A.astype(np.float64)


# ---------------------------------------------------------------- kernels


def test_partition_row_ranges_cover_rows_in_chunk_aligned_groups():
    groups = dec.partition_row_ranges(10_000, 1024, 4)
    flat = [r for g in groups for r in g]
    assert len(groups) == 4
    assert flat[0][0] == 0 and flat[-1][1] == 10_000
    assert all(a[1] == b[0] for a, b in zip(flat, flat[1:]))
    assert all(start % 1024 == 0 for start, _ in flat)
    assert max(len(g) for g in groups) - min(len(g) for g in groups) <= 1
    assert len(dec.partition_row_ranges(100, 1024, 8)) == 1  # never more partitions than chunks


def test_gram_and_sketch_kernels_sum_over_blocks_like_the_whole_matrix(decaying):
    A, _ = decaying
    blocks = [A[i : i + 700] for i in range(0, A.shape[0], 700)]
    G, sumsq = dec.sum_partials(dec.gram_kernel([b]) for b in blocks)
    np.testing.assert_allclose(G, A.T @ A, rtol=1e-12, atol=1e-9)
    assert float(sumsq) == pytest.approx(np.sum(A**2), rel=1e-12)
    W = np.random.default_rng(0).standard_normal((60, 7))
    YtY, AtY, sumsq2 = dec.sketch_kernel(blocks, W)
    Y = A @ W
    np.testing.assert_allclose(YtY, Y.T @ Y, rtol=1e-10)
    np.testing.assert_allclose(AtY, A.T @ Y, rtol=1e-10, atol=1e-8)
    assert float(sumsq2) == pytest.approx(float(sumsq), rel=1e-12)
    assert float(dec.sketch_kernel(blocks, W, with_norm=False)[2]) == 0.0


def test_inverse_cholesky_factor_orthonormalizes_and_handles_rank_deficiency():
    rng = np.random.default_rng(3)
    Y = rng.standard_normal((500, 3)) @ rng.standard_normal((3, 6))  # rank 3, 6 columns
    Rinv = dec.inverse_cholesky_factor(Y.T @ Y)
    assert Rinv.shape == (6, 3)
    Q = Y @ Rinv
    np.testing.assert_allclose(Q.T @ Q, np.eye(3), atol=1e-10)


def test_svd_from_gram_is_descending_with_fixed_signs(decaying):
    A, s = decaying
    s2, V = dec.svd_from_gram(A.T @ A)
    assert np.all(np.diff(s2) <= 0)
    assert rel_err(s2[:30], s[:30]) < 1e-12
    assert np.all(V[np.argmax(np.abs(V), axis=0), np.arange(V.shape[1])] > 0)


# ---------------------------------------------------------------- both methods vs numpy


@pytest.mark.parametrize("method", ["exact", "stochastic"])
def test_singular_values_and_subspaces_match_numpy(decaying, method):
    A, s = decaying
    k = 10
    result = dec.decompose(dec.LocalRunner(A, chunk_rows=512), A.shape, k, method=method, power_iters=2, float32_data=False)
    _, s_np, Vt_np = np.linalg.svd(A, full_matrices=False)
    # exact: the Gram route, ~eps (s1/si)^2; stochastic: converged to rounding on this decay
    tol = 1e-11 if method == "exact" else 1e-9
    assert rel_err(result.s[:k], s[:k]) < tol
    assert rel_err(result.s[:k], s_np[:k]) < tol
    angles = subspace_angles(result.V[:, :k], Vt_np[:k].T)
    assert np.max(angles) < 1e-6
    np.testing.assert_allclose(result.V.T @ result.V, np.eye(result.V.shape[1]), atol=1e-10)
    expected_len = A.shape[1] if method == "exact" else k
    assert len(result.s) == expected_len and result.V.shape == (A.shape[1], expected_len)


def test_exact_gives_the_full_spectrum_to_1e_12(decaying):
    A, s = decaying
    result = dec.decompose(dec.LocalRunner(A, chunk_rows=512), A.shape, 5, method="exact", float32_data=False)
    assert len(result.s) == 60
    assert rel_err(result.s[:20], s[:20]) < 1e-12
    # the Gram route's limit, eps (s1/si)^2, holds down to the smallest value (1e4 below s1)
    errors = np.abs(result.s - s) / s
    assert np.all(errors <= 10 * dec.EPS64 * (s[0] / s) ** 2)
    assert result.attrs["error_estimate"] >= rel_err(result.s[:5], s[:5])


def test_stochastic_error_estimate_bounds_the_error_of_an_unconverged_run():
    # A slowly decaying spectrum: two power iterations leave a visible error in s_1..s_k.
    s = 1.0 / np.sqrt(np.arange(1, 81))
    A = known_spectrum(2000, 80, s, seed=4)
    result = dec.decompose(dec.LocalRunner(A, chunk_rows=500), A.shape, 20, method="stochastic", oversample=5, power_iters=2, float32_data=False)
    err = rel_err(result.s[:20], s[:20])
    assert 1e-8 < err <= result.attrs["error_estimate"]
    assert result.attrs["error_estimate_kind"] == "relative_change_over_last_power_iteration"
    no_power = dec.decompose(dec.LocalRunner(A, chunk_rows=500), A.shape, 20, method="stochastic", oversample=5, power_iters=0, float32_data=False)
    assert rel_err(no_power.s[:20], s[:20]) <= no_power.attrs["error_estimate"]  # a rigorous bound
    assert no_power.attrs["error_estimate_kind"] == "weyl_bound_from_sketch_residual"
    assert 0 < no_power.attrs["sketch_residual"] < 1


def test_stochastic_on_an_exactly_low_rank_matrix_pads_with_zeros():
    A = known_spectrum(1000, 30, np.array([50.0, 20.0, 5.0]), seed=5)
    result = dec.decompose(dec.LocalRunner(A, chunk_rows=256), A.shape, 6, method="stochastic", float32_data=False)
    np.testing.assert_allclose(result.s[:3], [50.0, 20.0, 5.0], rtol=1e-10)
    assert np.all(np.abs(result.s[3:]) < 1e-8)
    np.testing.assert_allclose(result.V.T @ result.V, np.eye(6), atol=1e-10)


def test_stochastic_is_deterministic_for_a_seed(decaying):
    A, _ = decaying
    runs = [dec.decompose(dec.LocalRunner(A, chunk_rows=512), A.shape, 8, method="stochastic", seed=seed, power_iters=0, float32_data=False) for seed in (7, 7, 8)]
    assert np.array_equal(runs[0].s, runs[1].s) and np.array_equal(runs[0].V, runs[1].V)
    assert not np.array_equal(runs[0].s, runs[2].s)


def test_choose_method_records_why():
    method, reason = dec.choose_method((262_144, 301), 10, 15, 2)
    assert method == "exact" and "301 columns <= 4096" in reason
    method, reason = dec.choose_method((100_000, 5000), 10, 15, 2)
    assert method == "stochastic" and "5000 columns > 4096" in reason
    assert dec.choose_method((1000, 20), 5, 15, 2, "stochastic")[0] == "stochastic"


# ---------------------------------------------------------------- svd_numpy and the SVD group


@pytest.mark.parametrize("method", ["exact", "stochastic"])
def test_svd_numpy_writes_the_svd_group(matrix_url, tmp_path, method):
    url, A = matrix_url
    out = str(tmp_path / f"{method}.zarr")
    record = dec.svd_numpy(url, out, rank=6, method=method, seed=3, with_u=True)
    s, V, attrs = read_svd(out)
    s_np = np.linalg.svd(A, compute_uv=False)
    assert rel_err(s[:6], s_np[:6]) < (1e-12 if method == "exact" else 1e-5)
    assert record["svd"] == out and record["method"] == method
    for key in ("rank", "method", "method_reason", "oversample", "power_iters", "seed", "matrix_url", "matrix_shape",
                "timings", "error_estimate", "frobenius_norm", "created_by"):
        assert key in attrs, key
    assert attrs["matrix_shape"] == [4096, 40] and attrs["matrix_url"] == url and attrs["seed"] == 3
    assert attrs["frobenius_norm"] == pytest.approx(np.linalg.norm(A), rel=1e-10)
    assert attrs["rank"] == len(s) == (40 if method == "exact" else 6) and attrs["requested_rank"] == 6
    assert V.dtype == np.float64 and s.dtype == np.float64
    assert attrs["timings"]["compute_total"] > 0


def test_reconstruction_from_u_equals_projection_on_v(matrix_url, tmp_path):
    url, A = matrix_url
    out = str(tmp_path / "u.zarr")
    dec.svd_numpy(url, out, rank=5, method="exact", with_u=True)
    import zarr

    group = zarr.open_group(out, mode="r")
    U, s, V = group["U"][...], group["s"][...], group["V"][...]
    r = 5
    assert U.shape == (4096, r) and U.dtype == np.float32
    projected = A @ V[:, :r] @ V[:, :r].T
    from_u = (U.astype(np.float64) * s[:r]) @ V[:, :r].T
    assert np.max(np.abs(projected - from_u)) <= 1e-5 * np.max(np.abs(projected))


def test_bad_parameters_raise_parameter_errors_naming_the_matrix():
    shape = (1000, 40)
    with pytest.raises(ParameterError, match=r"m\.zarr: rank 41 is larger than min\(rows, columns\) = 40"):
        dec.validate_params(shape, 41, 15, 2, "auto", "m.zarr")
    for kwargs, pattern in [
        (dict(rank=0), "rank must be a positive integer"),
        (dict(oversample=-1), "oversample must be an integer >= 0"),
        (dict(power_iters=-1), "power_iters must be an integer"),
        (dict(method="svd"), "method must be one of auto, exact, stochastic"),
    ]:
        params = dict(rank=5, oversample=15, power_iters=2, method="auto") | kwargs
        with pytest.raises(ParameterError, match=pattern):
            dec.validate_params(shape, params["rank"], params["oversample"], params["power_iters"], params["method"], "m.zarr")
    with pytest.raises(ParameterError, match="'exact' needs at most 4096 columns"):
        dec.validate_params((10_000, 5000), 5, 15, 2, "exact", "wide.zarr")


def test_missing_matrix_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Zarr matrix there"):
        dec.svd_numpy(str(tmp_path / "absent.zarr"), str(tmp_path / "out.zarr"), rank=3)
    assert not (tmp_path / "out.zarr").exists()


def test_a_store_of_the_other_kind_is_a_clear_error(tmp_path):
    """A matrix passed where an SVD or local group is expected, or a group as the matrix (a
    swapped argument), names the URL and what it should hold instead of a zarr traceback."""
    import zarr

    from ctdenoise.matrix_store import open_local, open_matrix, read_svd, write_matrix

    matrix = write_matrix(np.zeros((16, 4), np.float32), {}, str(tmp_path / "m.zarr"))
    with pytest.raises(FileNotFoundError, match=r"m.zarr: no SVD group there \(needs arrays 's' and 'V'\)"):
        read_svd(matrix)
    with pytest.raises(FileNotFoundError, match=r"m.zarr: no local low-rank group there \(needs array 'D'\)"):
        open_local(matrix)
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(FileNotFoundError, match="g.zarr: no Zarr matrix there"):
        open_matrix(str(tmp_path / "g.zarr"))
