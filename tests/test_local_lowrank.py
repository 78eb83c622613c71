"""Local low-rank mode: tiles, noise estimate, shrinkage, band independence, the published group."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctdenoise import local_lowrank as llr
from ctdenoise.errors import ParameterError
from ctdenoise.local_group import local_numpy
from ctdenoise.params import LocalParams
from ctdenoise.matrix_store import open_local, write_matrix


def smooth_volume(rows: int, columns: int, slices: int, seed: int = 0) -> np.ndarray:
    """(slices, rows, columns): a few blobs whose intensity changes smoothly along the slices."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    vol = np.zeros((slices, rows, columns))
    for _ in range(4):
        cy, cx, r = rng.uniform(0, rows), rng.uniform(0, columns), rng.uniform(4, 10)
        blob = ((y - cy) ** 2 + (x - cx) ** 2 < r * r).astype(float)
        profile = 100 * np.sin(np.linspace(0, rng.uniform(1, 3), slices) + rng.uniform(0, 3))
        vol += profile[:, None, None] * blob[None]
    return vol


def as_matrix(vol: np.ndarray) -> np.ndarray:
    return vol.reshape(vol.shape[0], -1).T.copy()


def test_tiles_cover_every_pixel_and_end_flush() -> None:
    assert llr.tile_starts(20, 8, 4) == [0, 4, 8, 12]
    assert llr.tile_starts(21, 8, 4) == [0, 4, 8, 12, 13]
    assert llr.tile_starts(5, 8, 4) == [0]  # a tile larger than the image shrinks to it
    for size, tile, stride in [(64, 16, 8), (37, 8, 3), (9, 4, 4)]:
        covered = np.zeros(size, bool)
        for start in llr.tile_starts(size, tile, stride):
            covered[start : start + tile] = True
        assert covered.all()
    starts, first, stop = llr.rows_needed(32, 64, 128, 16, 8)
    assert starts == [24, 32, 40, 48, 56] and (first, stop) == (24, 72)


def test_mp_median_matches_the_known_values() -> None:
    # Gavish and Donoho (2014): the Marchenko-Pastur median is ~0.6528 for beta = 1 (their Table),
    # and tends to 1 as beta -> 0.
    assert llr.mp_median(1.0) == pytest.approx(0.6528, abs=2e-3)
    assert llr.mp_median(0.01) == pytest.approx(1.0, abs=0.02)


def test_shrinkers() -> None:
    sigma, N, beta = np.array([1.0]), 100, 0.25
    s = np.array([[5.0, 15.0, 30.0]]) * math.sqrt(N) / 10  # y = 0.5, 1.5, 3.0
    fro = llr.shrink(s, sigma, N, beta, "frobenius")
    assert fro[0, 0] == 0.0 and fro[0, 1] == 0.0  # below the bulk edge 1 + sqrt(beta) = 1.5 (y = 1.5 is on it)
    assert 0 < fro[0, 2] < s[0, 2]
    y = 3.0
    assert fro[0, 2] == pytest.approx(math.sqrt((y * y - beta - 1) ** 2 - 4 * beta) / y * math.sqrt(N))
    hard = llr.shrink(s, sigma, N, beta, "hard")
    from ctdenoise.ranks import lambda_star

    assert list(hard[0] > 0) == [y_ > lambda_star(beta) for y_ in (0.5, 1.5, 3.0)]
    assert (hard[hard > 0] == s[hard > 0]).all()


@pytest.mark.parametrize("slices", [24, 300])  # the Gram matrix on the slice side, then on the pixel side
def test_noise_level_of_pure_noise_tiles_is_estimated_and_removed(slices: int) -> None:
    rng = np.random.default_rng(3)
    X = 20.0 * rng.standard_normal((30, 144, slices))
    params = LocalParams(tile=12, stride=12)
    est, ranks, sigma = llr.denoise_tiles(X, params)
    assert np.median(sigma) == pytest.approx(20.0, rel=0.05)
    i = params.multipliers.index(1.0)
    assert ranks[i].mean() < 0.5  # noise only: (almost) nothing kept
    assert np.linalg.norm(est[i]) < 0.2 * np.linalg.norm(X)


@pytest.mark.parametrize("slices", [80, 300])  # (the median estimate of sigma needs r < min(p, n) / 2)
def test_high_rank_tiles_keep_their_components(slices: int) -> None:
    """Tiles on edges that move through a long series hold dozens of components (the reason
    the spectrum is exact): all of them above the noise must survive, whatever side is small."""
    rng = np.random.default_rng(5)
    t, p, r = 6, 144, 30
    signal = np.matmul(rng.standard_normal((t, p, r)) * 40, rng.standard_normal((t, r, slices)))
    X = signal + 5.0 * rng.standard_normal((t, p, slices))
    est, ranks, _ = llr.denoise_tiles(X, LocalParams(tile=12))
    i = LocalParams().multipliers.index(1.0)
    assert (ranks[i] == r).all()
    # what is left is the noise inside the kept subspace, sqrt(r (p + n - r) / (p n)) of the input noise
    assert np.linalg.norm(est[i] - signal) < 0.8 * np.linalg.norm(X - signal)


def test_denoising_a_volume_beats_the_input_and_bands_do_not_matter() -> None:
    rows, columns, slices = 40, 36, 16
    truth = smooth_volume(rows, columns, slices)
    noisy = truth + 15.0 * np.random.default_rng(1).standard_normal(truth.shape)
    A = as_matrix(noisy)
    params = LocalParams(tile=8, stride=4)
    D, stats = llr.denoise_matrix(A, rows, columns, params, band_rows=32)
    D_small_bands, _ = llr.denoise_matrix(A, rows, columns, params, band_rows=7)
    np.testing.assert_allclose(D_small_bands, D, rtol=0, atol=1e-4)
    i = params.multipliers.index(1.0)
    err_in = np.linalg.norm(A - as_matrix(truth))
    err_out = np.linalg.norm(D[i] - as_matrix(truth))
    assert err_out < 0.5 * err_in
    # each tile reported once, with one rank per multiplier, weaker threshold keeps more
    assert len(stats.starts) == len(set(stats.starts)) == len(llr.tile_starts(rows, 8, 4)) * len(llr.tile_starts(columns, 8, 4))
    ranks = np.array(stats.ranks)
    assert ranks.shape[1] == 3 and (ranks[:, 0] >= ranks[:, 1]).all() and (ranks[:, 1] >= ranks[:, 2]).all()
    # deterministic
    again, _ = llr.denoise_matrix(A, rows, columns, params, band_rows=32)
    assert np.array_equal(again, D)


def test_params_are_validated() -> None:
    with pytest.raises(ParameterError, match="stride must be between 1 and the tile size 8, got 9"):
        LocalParams.parse({"tile": 8, "stride": 9}, "m.zarr")
    with pytest.raises(ParameterError, match="multipliers: Input should be greater than 0"):
        LocalParams.parse({"multipliers": [0.0]}, "m.zarr")
    with pytest.raises(ParameterError, match="shrinkage: Input should be 'frobenius' or 'hard'"):
        LocalParams.parse({"shrinkage": "soft"}, "m.zarr")
    with pytest.raises(ParameterError, match=r"is not \(rows\*columns, slices\)"):
        llr.denoise_matrix(np.zeros((10, 4)), 3, 3, LocalParams())
    p = LocalParams(tile=8, stride=2, multipliers=(1.0, 2.0))
    assert LocalParams.model_validate(p.as_json()) == p


def test_local_numpy_publishes_the_group(tmp_path) -> None:
    rows, columns, slices = 24, 20, 10
    noisy = smooth_volume(rows, columns, slices) + 10.0 * np.random.default_rng(2).standard_normal((slices, rows, columns))
    url = str(tmp_path / "m.zarr")
    write_matrix(as_matrix(noisy), {"rows": rows, "columns": columns, "slices": slices}, url, row_chunk=100)
    params = LocalParams(tile=8, stride=4, multipliers=(0.5, 1.0))
    record = local_numpy(url, str(tmp_path / "local.zarr"), params)
    group, attrs = open_local(record["local"])
    expected, _ = llr.denoise_matrix(as_matrix(noisy).astype(np.float32), rows, columns, params)
    np.testing.assert_allclose(group["D"][...], expected, atol=1e-4)
    # The report's copy of the middle slice (slice 5 of 10), written band by band with D.
    np.testing.assert_array_equal(group["middle_slice"][...], group["D"][:, :, 5])
    from ctdenoise.report.values import local_middle_slices

    np.testing.assert_array_equal(np.stack(local_middle_slices(group, 5)), group["D"][:, :, 5])
    np.testing.assert_array_equal(np.stack(local_middle_slices(group, 3)), group["D"][:, :, 3])  # any other column: from D
    assert attrs["mode"] == "local" and attrs["matrix_url"] == url and attrs["multipliers"] == [0.5, 1.0]
    assert group["tile_ranks"].shape == (2, 5, 4) and group["tile_sigma"].shape == (5, 4)  # 24 rows, 20 columns
    assert set(record["summary"]["multipliers"]) == {"x0.5", "x1"} and record["timings"]["compute_total"] > 0
    with pytest.raises(FileNotFoundError, match="no local low-rank group"):
        open_local(str(tmp_path / "absent.zarr"))


def test_a_failed_pass_publishes_nothing_and_leaves_no_work_folder(tmp_path) -> None:
    from ctdenoise.decomposition import Timings

    from ctdenoise.local_group import BandPlan, publish_bands

    params = LocalParams(tile=4, stride=4)
    plan = BandPlan(matrix_url="m.zarr", shape=(64, 5), rows=8, columns=8, band_rows=4, params=params, column_scale=None)
    dest = tmp_path / "local.zarr"
    seen = {}

    def failing(work: str):
        seen["work"] = work
        assert not dest.exists()  # being written: not at the destination yet
        raise RuntimeError("executor lost")

    with pytest.raises(RuntimeError, match="executor lost"):
        publish_bands(str(dest), failing, plan, plan.attrs(), Timings())
    assert not dest.exists() and not any(tmp_path.iterdir()), list(tmp_path.iterdir())
    assert seen["work"] != str(dest)


def test_column_scales_even_out_the_recorded_slice_noise() -> None:
    assert llr.column_scales(None, 4) is None and llr.column_scales([None, None], 2) is None
    scale = llr.column_scales([10.0, 20.0, None, 1000.0, 20.0], 5)
    np.testing.assert_allclose(scale, [0.5, 1.0, 1.0, 4.0, 1.0])  # median 20; no level: 1; clipped to 4
    with pytest.raises(ParameterError, match="3 values for 4 slices"):
        llr.column_scales([1.0, 2.0, 3.0], 4)


def test_slices_with_more_noise_are_normalized_before_the_tiles_are_shrunk() -> None:
    """Half the slices three times noisier (what the shoulders do to a chest series): with the
    recorded per-slice levels the result is closer to the truth than without them."""
    rows, columns, slices = 40, 36, 24
    truth = smooth_volume(rows, columns, slices, seed=2)
    levels = np.where(np.arange(slices) % 2 == 0, 5.0, 15.0)
    noisy = truth + levels[:, None, None] * np.random.default_rng(4).standard_normal(truth.shape)
    params = LocalParams(tile=8, stride=4, inplane="none")  # the tile stage is what is normalized
    i = params.multipliers.index(1.0)
    plain, _ = llr.denoise_matrix(as_matrix(noisy), rows, columns, params)
    scaled, _ = llr.denoise_matrix(as_matrix(noisy), rows, columns, params, slice_noise=list(levels))
    err = [np.linalg.norm(D[i] - as_matrix(truth)) for D in (plain, scaled)]
    assert err[1] < 0.6 * err[0]


def test_a_constant_tile_keeps_one_component_not_its_rounding() -> None:
    """Outside the field of view a tile is constant in every slice (slices scaled apart): rank 1."""
    X = np.full((3, 144, 40), -1000.0) / np.linspace(0.8, 1.3, 40)
    est, ranks, sigma = llr.denoise_tiles(X, LocalParams(tile=12))
    assert (ranks == 1).all() and (sigma == 0).all()
    np.testing.assert_allclose(est[1], X, rtol=1e-9)


# --------------------------------------------------------------------------------------------
# The in-plane stage (non-local means per slice of the tile estimate)
# --------------------------------------------------------------------------------------------


def test_params_of_the_inplane_stage() -> None:
    with pytest.raises(ParameterError, match="inplane: Input should be 'nlm' or 'none' \\(got 'bm3d'\\)"):
        LocalParams.parse({"inplane": "bm3d"}, "m.zarr")
    with pytest.raises(ParameterError, match="inplane_strength: Input should be greater than 0"):
        LocalParams.parse({"inplane_strength": 0}, "m.zarr")
    with pytest.raises(ParameterError, match="inplane_smoothing: Input should be greater than or equal to 0"):
        LocalParams.parse({"inplane_smoothing": -1}, "m.zarr")
    assert LocalParams().inplane == "nlm" and LocalParams().automatic_multiplier == 0.5
    assert LocalParams(inplane="none").automatic_multiplier == 1.0 and LocalParams(inplane="none").inplane_halo == 0
    from ctdenoise.params import GUIDED_RADIUS, NLM_DISTANCE, NLM_PATCH, NOISE_BLOCK, NOISE_WINDOW

    reach = NLM_DISTANCE + NLM_PATCH // 2 + 2 * GUIDED_RADIUS + 2 * NOISE_BLOCK + NOISE_WINDOW // 2
    assert LocalParams().inplane_halo == reach
    p = LocalParams(inplane="none", inplane_strength=1.5, inplane_smoothing=0)
    assert LocalParams.model_validate(p.as_json()) == p


def two_noise_levels(size: int = 192, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(noisy, clean, sigma)``: flat tissue with a bright disc in each half, white noise of 10 HU
    on the left half and 40 HU on the right (what a large body's periphery and centre look like)."""
    y, x = np.mgrid[0:size, 0:size]
    discs = [(size / 2, size / 4), (size / 2, 3 * size / 4)]
    clean = np.where(np.any([(y - cy) ** 2 + (x - cx) ** 2 < 20**2 for cy, cx in discs], axis=0), 300.0, 40.0)
    sigma = np.where(x < size // 2, 10.0, 40.0)
    return clean + sigma * np.random.default_rng(seed).standard_normal(clean.shape), clean, sigma


def test_the_noise_map_follows_the_local_noise_not_the_edges() -> None:
    from ctdenoise import inplane

    noisy, _, sigma = two_noise_levels()
    level = inplane.noise_map(noisy, 0, noisy.shape[0])
    left, right = level[:, :64], level[:, 128:]  # a block away from the boundary between the halves
    # a 3 x 3 window reads under the noise (its mean absorbs part of it), the same share everywhere
    assert 0.7 * 10 < np.median(left) < 1.1 * 10 and 0.7 * 40 < np.median(right) < 1.1 * 40
    r = np.hypot(*(np.mgrid[0:192, 0:192] - np.array([96, 48])[:, None, None]))
    assert np.median(level[np.abs(r - 20) < 1.5]) < 1.2 * np.median(left)  # the disc's edge is not read as noise
    assert inplane.noise_map(np.full((40, 40), -1000.0), 0, 40).min() == inplane.NOISE_FLOOR_HU


def test_the_inplane_strength_follows_the_local_noise() -> None:
    """Both halves lose most of their noise, the noisy one included: one strength for the
    slice would leave it noisy or blur the quiet one."""
    from ctdenoise import inplane

    noisy, clean, sigma = two_noise_levels(seed=1)
    params = LocalParams()
    out = inplane.filter_slice(noisy, 0, noisy.shape[0], params.inplane_strength, params.inplane_smoothing)
    x = np.arange(noisy.shape[1])[None, :]
    away = (np.abs(x - 96) > 16) & (np.abs(clean - 40.0) < 1)  # flat tissue, away from the boundary
    for half in (sigma == 10, sigma == 40):
        inside = half & away
        assert np.std((out - clean)[inside]) < 0.45 * np.std((noisy - clean)[inside])
    assert np.abs(np.mean(out[clean > 100]) - 300.0) < 15  # the discs keep their value


def test_a_band_with_its_halo_is_the_whole_slice() -> None:
    """The in-plane stage of a band (tiles over the band and its halo, then the stage, cropped)
    equals the stage on the whole slice's tile estimate, on every row of the band."""
    from ctdenoise import inplane

    rows, columns, slices = 120, 36, 6
    noisy = smooth_volume(rows, columns, slices) + np.linspace(5, 30, rows)[None, :, None] * np.random.default_rng(3).standard_normal((slices, rows, columns))
    A = as_matrix(noisy)
    params = LocalParams(tile=8, stride=4, multipliers=(0.5, 1.0))
    tiles, _ = llr.denoise_matrix(A, rows, columns, LocalParams(tile=8, stride=4, multipliers=(0.5, 1.0), inplane="none"))
    for row_start, row_stop in ((0, 9), (50, 61), (111, 120)):
        start, stop, first, last = llr.band_input_rows(row_start, row_stop, rows, params)
        assert (start, stop) == (max(0, row_start - params.inplane_halo), min(rows, row_stop + params.inplane_halo))
        band, stats = llr.denoise_band(A[first * columns : last * columns], first, row_start, row_stop, rows, columns, params)
        for i in range(2):
            for k in (0, slices - 1):
                image = tiles[i][:, k].reshape(rows, columns)
                whole = inplane.filter_slice(image, 0, rows, params.inplane_strength, params.inplane_smoothing)
                np.testing.assert_array_equal(band[i][:, k], whole[row_start:row_stop].ravel())
                assert not np.allclose(band[i][:, k], tiles[i][row_start * columns : row_stop * columns, k], atol=1e-2)
        assert {r for r, _ in stats.starts} <= set(range(row_start, row_stop))  # the band's tiles, not the halo's


def test_the_result_does_not_depend_on_the_split() -> None:
    rows, columns, slices = 100, 30, 6
    noisy = smooth_volume(rows, columns, slices) + 20.0 * np.random.default_rng(4).standard_normal((slices, rows, columns))
    A = as_matrix(noisy)
    params = LocalParams(tile=8, stride=4)
    whole, _ = llr.denoise_matrix(A, rows, columns, params, band_rows=rows)
    for band_rows in (5, 17, 40):
        D, _ = llr.denoise_matrix(A, rows, columns, params, band_rows=band_rows)
        np.testing.assert_array_equal(D, whole)


def test_the_inplane_stage_removes_the_noise_the_tiles_keep() -> None:
    """On a small simulated low-dose CT (FBP noise), the pipeline's automatic output is closer to
    the full-dose reference than the tiles alone at their own optimum."""
    from ctdenoise.phantom import simulate_volume

    size, slices = 96, 12
    low = np.empty((slices, size, size), np.float32)
    full = np.empty_like(low)
    for k, hu, _ in simulate_volume(size, slices, 2e4, seed=3, workers=1):
        low[k] = hu
    for k, hu, _ in simulate_volume(size, slices, float("inf"), seed=3, workers=1):
        full[k] = hu
    A = as_matrix(low)
    errors = {}
    for inplane in ("nlm", "none"):
        params = LocalParams(inplane=inplane)
        D, _ = llr.denoise_matrix(A, size, size, params)
        errors[inplane] = [np.linalg.norm(D[i] - as_matrix(full)) for i in range(len(params.multipliers))]
    automatic = errors["nlm"][LocalParams().multipliers.index(0.5)]
    assert automatic < 0.9 * min(errors["none"]) and automatic < 0.65 * np.linalg.norm(A - as_matrix(full))
