"""spark/dssvd.py on Spark: one local[2] SparkContext for the in-process runs, one spark-submit pair.

The job's ``main`` runs in-process against the module's context (both methods, determinism, U,
a failing stage, bad parameters); the spark-submit tests run the whole CLI in a subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from ctdenoise.decomposition import svd_numpy
from ctdenoise.matrix_store import read_svd, write_matrix

pytestmark = [
    pytest.mark.spark,
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

REPO = Path(__file__).resolve().parent.parent
JOB = REPO / "spark" / "dssvd.py"
PLUGINS = REPO / "plugins"
JAVA_HOME = os.environ.get("JAVA_HOME", "/usr/lib/jvm/java-17-openjdk-amd64")


def _java() -> str | None:
    candidate = Path(JAVA_HOME) / "bin" / "java"
    return str(candidate) if candidate.exists() else shutil.which("java")


if _java() is None:
    pytest.skip("Spark needs Java: no java in JAVA_HOME or on PATH (make install adds OpenJDK 17)", allow_module_level=True)


def _spark_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("JAVA_HOME", JAVA_HOME)
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGINS), env.get("PYTHONPATH", "")) if p)
    return env


def _load_job():
    spec = importlib.util.spec_from_file_location("dssvd", JOB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dssvd():
    return _load_job()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_bucket():
    """A moto S3 server on 127.0.0.1 with a bucket; its endpoint and keys in the environment
    before the Spark session starts, as executors get them in a pod (local executors inherit
    the JVM's environment)."""
    server = Path(sys.executable).parent / "moto_server"
    if not server.exists():
        pytest.skip("moto_server (moto[server]) is not installed")
    port = _free_port()
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("moto_server did not start")
                time.sleep(0.2)
        import boto3

        boto3.client("s3").create_bucket(Bucket="ctdenoise")
        yield "s3://ctdenoise"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def spark(dssvd, s3_bucket):
    os.environ.update({k: v for k, v in _spark_env().items() if k in ("JAVA_HOME", "SPARK_LOCAL_IP", "PYSPARK_PYTHON")})
    from pyspark import SparkContext

    conf = dssvd.configure(str(PLUGINS)).setMaster("local[2]").set("spark.ui.enabled", "false")
    sc = SparkContext(conf=conf)
    sc.setLogLevel("ERROR")
    yield sc
    sc.stop()
    # py4j closes its leftover connections from __del__ at interpreter exit and logs that at INFO,
    # into a stream pytest has closed by then ("--- Logging error ---" at the end of the run).
    logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> tuple[str, np.ndarray]:
    """4096x40 float32 with singular values 2000 .. 1 (geometric), 4 chunks of 1024 rows."""
    rng = np.random.default_rng(11)
    s = np.geomspace(2000.0, 1.0, 40)
    U, _ = np.linalg.qr(rng.standard_normal((4096, 40)))
    V, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    A = ((U * s) @ V.T).astype(np.float32)
    url = str(tmp_path_factory.mktemp("spark") / "m.zarr")
    write_matrix(A, {"rows": 64, "columns": 64, "slices": 40, "slice_noise_hu": SLICE_NOISE}, url, row_chunk=1024)
    return url, A.astype(np.float64)


SLICE_NOISE = [None] + [10.0 + j for j in range(39)]  # as conversion records them (None: no tissue)


def run_main(dssvd, capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = dssvd.main(list(argv))
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("{")]
    return code, (json.loads(lines[-1]) if lines else None), captured.err


@pytest.mark.parametrize("method", ["exact", "stochastic"])
def test_both_methods_match_numpy(spark, dssvd, matrix, tmp_path, capsys, method):
    url, A = matrix
    out = str(tmp_path / "svd.zarr")
    code, record, err = run_main(dssvd, capsys, "--matrix", url, "--out", out, "--rank", "8", "--method", method)
    assert code == 0, err
    s, V, attrs = read_svd(out)
    _, s_np, Vt_np = np.linalg.svd(A, full_matrices=False)
    top = np.abs(s[:8] - s_np[:8]) / s_np[:8]
    assert top.max() < (1e-12 if method == "exact" else 1e-5)
    assert np.max(subspace_angles(V[:, :8], Vt_np[:8].T)) < 1e-4
    assert attrs["method"] == method and attrs["engine"] == "spark"
    assert attrs["partitions"] == 4 and attrs["spark_master"].startswith("local")
    assert attrs["rank"] == (40 if method == "exact" else 8)
    assert record["svd"] == out and record["timings"]["compute_total"] > 0
    assert {"open", "workers_start", "write"} <= set(record["timings"])
    # the same kernels on one machine agree to rounding: float64 sums in another order (exact);
    # float32 GEMMs with other blockings (stochastic, ~eps32)
    local = str(tmp_path / "local.zarr")
    svd_numpy(url, local, rank=8, method=method)
    s_local, V_local, _ = read_svd(local)
    np.testing.assert_allclose(s[:8], s_local[:8], rtol=1e-12 if method == "exact" else 1e-6)
    np.testing.assert_allclose(np.abs(V[:, :8].T @ V_local[:, :8]), np.eye(8), atol=1e-6)


@pytest.fixture(scope="module")
def s3_matrix(matrix, s3_bucket) -> str:
    """The test matrix published on the moto S3 server (read by executors through s3fs)."""
    _, A = matrix
    url = f"{s3_bucket}/matrices/m.zarr"
    write_matrix(A.astype(np.float32), {"rows": 64, "columns": 64, "slices": 40}, url, row_chunk=1024)
    return url


def test_executors_read_and_the_driver_publishes_on_s3(spark, dssvd, matrix, s3_matrix, s3_bucket, capsys):
    _, A = matrix
    url, out = s3_matrix, f"{s3_bucket}/svd/m.zarr"
    code, record, err = run_main(dssvd, capsys, "--matrix", url, "--out", out, "--rank", "4", "--method", "stochastic")
    assert code == 0, err
    s, V, attrs = read_svd(out)
    s_np = np.linalg.svd(A, compute_uv=False)
    assert np.max(np.abs(s - s_np[:4]) / s_np[:4]) < 1e-5
    assert attrs["matrix_url"] == url and record["svd"] == out


def test_pairwise_tree_sum_on_executors_gives_the_same_result(spark, dssvd, matrix, tmp_path, capsys, monkeypatch):
    url, _ = matrix
    direct, tree = str(tmp_path / "direct.zarr"), str(tmp_path / "tree.zarr")
    assert run_main(dssvd, capsys, "--matrix", url, "--out", direct, "--rank", "5", "--method", "exact")[0] == 0
    # partials too large to collect: 4 partitions are added pairwise on executors (4 -> 2 -> 1)
    monkeypatch.setattr(dssvd, "MAX_COLLECT_BYTES", 1)
    assert run_main(dssvd, capsys, "--matrix", url, "--out", tree, "--rank", "5", "--method", "exact")[0] == 0
    s_tree, s_direct = read_svd(tree)[0], read_svd(direct)[0]
    np.testing.assert_allclose(s_tree[:10], s_direct[:10], rtol=1e-12)
    # another summation order: small values move within the Gram route's eps (s1/si)^2
    assert np.all(np.abs(s_tree - s_direct) / s_direct <= 10 * np.finfo(float).eps * (s_direct[0] / s_direct) ** 2)


def test_stochastic_is_deterministic_for_a_seed(spark, dssvd, matrix, tmp_path, capsys):
    url, _ = matrix
    arrays = []
    for i, seed in enumerate(("5", "5", "6")):
        out = str(tmp_path / f"run{i}.zarr")
        code, _, err = run_main(dssvd, capsys, "--matrix", url, "--out", out, "--rank", "6", "--method", "stochastic",
                                "--seed", seed, "--power-iters", "0")
        assert code == 0, err
        arrays.append(read_svd(out)[:2])
    assert np.array_equal(arrays[0][0], arrays[1][0]) and np.array_equal(arrays[0][1], arrays[1][1])
    assert not np.array_equal(arrays[0][0], arrays[2][0])


def test_u_reconstruction_equals_projection(spark, dssvd, matrix, tmp_path, capsys):
    url, A = matrix
    out = str(tmp_path / "u.zarr")
    code, _, err = run_main(dssvd, capsys, "--matrix", url, "--out", out, "--rank", "5", "--method", "stochastic", "--with-u")
    assert code == 0, err
    import zarr

    group = zarr.open_group(out, mode="r")
    U, s, V = group["U"][...].astype(np.float64), group["s"][...], group["V"][...]
    assert U.shape == (4096, 5)
    projected = A @ V @ V.T
    assert np.max(np.abs(projected - (U * s) @ V.T)) <= 1e-5 * np.max(np.abs(projected))


def test_failed_stage_on_a_corrupt_matrix_exits_2_with_the_cause(spark, dssvd, matrix, tmp_path, capsys):
    """An executor that finds a corrupt chunk raises an input error: the job exits 2 (fails at
    once, as in-process), not 75 or 1 (retried), whatever Spark wraps it in."""
    url, _ = matrix
    broken = tmp_path / "broken.zarr"
    shutil.copytree(url, broken)
    chunk = next(p for p in sorted(broken.rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"not a zstd frame" * 8)
    out = tmp_path / "never.zarr"
    code, record, err = run_main(dssvd, capsys, "--matrix", str(broken), "--out", str(out), "--rank", "4", "--method", "exact")
    assert code == 2 and record is None
    assert "error: Spark job failed" in err
    assert "zstd" in err.lower() or "decompress" in err.lower() or "frame" in err.lower(), err
    assert not out.exists()  # nothing published


def test_bad_parameters_exit_2_before_spark_work(spark, dssvd, matrix, tmp_path, capsys):
    url, _ = matrix
    out = str(tmp_path / "x.zarr")
    code, _, err = run_main(dssvd, capsys, "--matrix", url, "--out", out, "--rank", "41")
    assert code == 2 and "rank 41 is larger than min(rows, columns) = 40" in err
    code, _, err = run_main(dssvd, capsys, "--matrix", str(tmp_path / "absent.zarr"), "--out", out, "--rank", "3")
    assert code == 2 and "no Zarr matrix there" in err
    code, _, err = run_main(dssvd, capsys, "--matrix", url, "--out", out, "--rank", "3", "--oversample", "-2")
    assert code == 2 and "oversample: Input should be greater than or equal to 0 (got -2)" in err
    assert not Path(out).exists()


def run_batch_main(dssvd, capsys, *argv: str) -> tuple[int, list[dict], str]:
    code = dssvd.main(list(argv))
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")], captured.err


def test_a_batch_runs_each_series_and_a_refused_one_does_not_stop_the_others(spark, dssvd, matrix, tmp_path, capsys):
    """``--and`` joins jobs in one session; each is published as alone, a refused matrix is
    named and skipped (exit 0: it shows at plan_ranks), and a batch of refused inputs exits 2."""
    url, A = matrix
    good, alone = str(tmp_path / "batch.zarr"), str(tmp_path / "alone.zarr")
    absent = str(tmp_path / "absent.zarr")
    code, lines, err = run_batch_main(dssvd, capsys, "--matrix", absent, "--out", str(tmp_path / "x.zarr"), "--rank", "3", "--and",
                                      "--matrix", url, "--out", good, "--rank", "4", "--method", "exact")  # fmt: skip
    assert code == 0, err
    assert [line["status"] for line in lines] == ["failed", "done"]
    assert lines[0]["matrix"] == absent and lines[0]["kind"] == "input" and "no Zarr matrix there" in lines[0]["reason"]
    assert lines[1]["record"]["svd"] == good
    assert run_main(dssvd, capsys, "--matrix", url, "--out", alone, "--rank", "4", "--method", "exact")[0] == 0
    np.testing.assert_array_equal(read_svd(good)[0], read_svd(alone)[0])  # the same job, batched or not
    code, lines, err = run_batch_main(dssvd, capsys, "--matrix", absent, "--out", good, "--rank", "3", "--and",
                                      "--matrix", url, "--out", good, "--rank", "41")  # fmt: skip
    assert code == 2 and [line["kind"] for line in lines] == ["input", "input"]
    assert "rank 41 is larger than min(rows, columns) = 40" in err


def _spark_submit(*argv: str) -> subprocess.CompletedProcess:
    submit = Path(sys.executable).parent / "spark-submit"
    cmd = [str(submit) if submit.exists() else "spark-submit", "--master", "local[2]", "--conf", "spark.ui.enabled=false", str(JOB), *argv]
    return subprocess.run(cmd, env=_spark_env(), capture_output=True, text=True, timeout=300)


def test_spark_submit_whole_cli(matrix, tmp_path):
    url, A = matrix
    out = str(tmp_path / "submitted.zarr")
    proc = _spark_submit("--matrix", url, "--out", out, "--rank", "5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert record["method"] == "exact" and "auto" in record["method_reason"]
    s, V, attrs = read_svd(out)
    s_np = np.linalg.svd(A, compute_uv=False)
    assert np.max(np.abs(s[:5] - s_np[:5]) / s_np[:5]) < 1e-12
    assert attrs["timings"]["session_start"] > 0


def test_spark_submit_bad_parameter_fails_with_a_clear_message(matrix, tmp_path):
    url, _ = matrix
    proc = _spark_submit("--matrix", url, "--out", str(tmp_path / "x.zarr"), "--rank", "0")
    assert proc.returncode != 0
    assert "rank: Input should be greater than or equal to 1 (got 0)" in proc.stdout + proc.stderr


def test_local_mode_matches_the_numpy_engine_and_publishes_both_groups(spark, dssvd, matrix, tmp_path, capsys):
    """Both modes in one job; the tiles denoised on executors equal the in-process loop."""
    from ctdenoise.local_lowrank import LocalParams, denoise_matrix
    from ctdenoise.matrix_store import open_local

    url, A = matrix
    out, local_out = str(tmp_path / "svd.zarr"), str(tmp_path / "local.zarr")
    code, record, err = run_main(
        dssvd, capsys, "--matrix", url, "--out", out, "--rank", "4", "--local-out", local_out,
        "--tile", "8", "--stride", "4", "--multipliers", "0.5,1", "--partitions", "3",
    )  # fmt: skip
    assert code == 0, err
    assert record["svd"] == out and record["local"]["local"] == local_out
    group, attrs = open_local(local_out)
    assert attrs["mode"] == "local" and attrs["multipliers"] == [0.5, 1.0] and attrs["partitions"] == 3
    params = LocalParams(tile=8, stride=4, multipliers=(0.5, 1.0))
    expected, _ = denoise_matrix(A.astype(np.float32), 64, 64, params, slice_noise=SLICE_NOISE)
    np.testing.assert_allclose(group["D"][...], expected, rtol=1e-6, atol=1e-3)
    n = A.shape[1]
    np.testing.assert_array_equal(group["middle_slice"][...], group["D"][:, :, n // 2])  # every executor's band of it
    assert attrs["column_scale"][0] == 1.0 and attrs["column_scale"][-1] > attrs["column_scale"][1]
    unscaled, _ = denoise_matrix(A.astype(np.float32), 64, 64, params)
    assert not np.allclose(unscaled, expected, rtol=1e-6, atol=1e-3)  # the levels did reach the executors
    ranks = group["tile_ranks"][...]
    assert ranks.shape == (2, 15, 15) and (ranks[0] >= ranks[1]).all() and ranks.min() >= 0
    assert group["tile_sigma"][...].shape == (15, 15)
    assert record["local"]["timings"]["compute_total"] > 0


def test_local_mode_alone_and_its_bad_parameters(spark, dssvd, matrix, tmp_path, capsys):
    url, _ = matrix
    local_out = str(tmp_path / "local.zarr")
    code, _, err = run_main(dssvd, capsys, "--matrix", url, "--local-out", local_out, "--tile", "8", "--stride", "9")
    assert code == 2 and "stride must be between 1 and the tile size 8, got 9" in err
    code, _, err = run_main(dssvd, capsys, "--matrix", url)
    assert code == 2 and "nothing to do" in err
    assert not Path(local_out).exists()
    code, record, err = run_main(dssvd, capsys, "--matrix", url, "--local-out", local_out, "--tile", "16", "--stride", "8")
    assert code == 0, err
    assert record["mode"] == "local" and not (tmp_path / "svd.zarr").exists()
    assert set(record["summary"]["multipliers"]) == {"x0.5", "x0.75", "x1"}


def test_local_mode_executors_write_to_s3_and_the_driver_commits(spark, dssvd, s3_matrix, s3_bucket, capsys):
    from ctdenoise.matrix_store import open_local

    url, out = s3_matrix, f"{s3_bucket}/local/m.zarr"
    code, record, err = run_main(dssvd, capsys, "--matrix", url, "--local-out", out, "--tile", "8", "--stride", "8")
    assert code == 0, err
    group, attrs = open_local(out)
    assert group["D"].shape == (3, 4096, 40) and attrs["engine"] == "spark" and attrs["band_rows"] == 16
    assert np.isfinite(group["D"][...]).all() and float(np.abs(group["D"][1]).max()) > 0
