"""Benchmark: spark/dssvd.py against single-machine and Spark peers, all measured in one run.

    .venv/bin/python bench/svd.py [--workdir DIR] [--matrix URL] [--skip-mllib]

On a 512x512 x 301-slice matrix (the seed's volume size; a phantom-like CT volume in HU with
Gaussian noise, or ``--matrix`` for a converted series) it measures

- this job (``spark-submit --master local[2] spark/dssvd.py``): the compute time recorded by the
  job (``timings.compute_total``: from opening the matrix to the SVD in memory, without the JVM,
  session and Python-worker start) and the wall time of the whole spark-submit;
- this job in local mode (``--local-out``) in three settings: the default (tiles, then its
  in-plane stage; 3 multipliers), its tiles alone (``--inplane none``) and the fast setting
  (``params.FAST``: 8 px tiles without overlap, x1, no in-plane stage): each one's compute
  time against the global exact compute time and against TV over the same volume;
- TV (scikit-image Chambolle, per slice, at its oracle weight for this matrix) on as many
  processes as cores: the local mode's cost target (issue 18: the default, all outputs, no
  slower than TV);
- ``svd_numpy`` (the same kernels in one process);
- ``numpy.linalg.svd`` thin, numpy Gram + ``eigh``, scikit-learn ``randomized_svd`` (k=10, 50;
  p=15, q=2; default normalizer and LU), Spark MLlib ``RowMatrix.computeSVD`` (k=10);

each in its own child process, reporting time, the largest relative error of the top-k singular
values against a float64 LAPACK reference, and the peak resident memory of the child's process
tree (sampled every 20 ms; includes the matrix in memory and, for Spark rows, the JVM). The
numpy, scikit-learn and MLlib times exclude reading the matrix; this job's and ``svd_numpy``'s
include it (they read the Zarr chunks as part of their pass).

The machine is shared (other jobs skew every timing): before each run the bench waits for the
CPUs to be nearly idle (``--max-busy``), runs each row ``--repeat`` times and keeps the fastest.
It prints a table, ratios against the peers and whether each target of the issue is met.
This is not a test: nothing asserts, and the numbers depend on what else runs on the machine
(the load average is printed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "plugins"))

JAVA_HOME = os.environ.get("JAVA_HOME", "/usr/lib/jvm/java-17-openjdk-amd64")


# ----------------------------------------------------------------------------- the matrix


def phantom_like(size: int = 512, slices: int = 301, noise_hu: float = 25.0, seed: int = 0) -> np.ndarray:
    """A CT-like volume as a (size*size, slices) float32 matrix in HU.

    Shepp-Logan-like ellipsoids (air -1000, water/soft tissue, lungs, bone, a lesion) whose
    cross-sections change smoothly along z, plus white Gaussian noise of ``noise_hu`` HU: a
    spectrum with a few dominant values, a slowly decaying structured part and a noise floor,
    like a low-dose series.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j].astype(np.float32)
    # x0, y0, z0, semi-axes a, b, c, rotation (deg), HU added inside
    ellipsoids = [
        (0.0, 0.0, 0.0, 0.72, 0.92, 1.2, 0, 1000.0),
        (0.0, -0.02, 0.0, 0.66, 0.87, 1.15, 0, 40.0),
        (0.22, 0.0, 0.1, 0.13, 0.33, 0.6, -18, -840.0),
        (-0.22, 0.0, -0.1, 0.17, 0.43, 0.7, 18, -840.0),
        (0.0, 0.35, 0.2, 0.23, 0.27, 0.5, 0, 60.0),
        (0.0, 0.1, -0.3, 0.05, 0.05, 0.4, 0, 900.0),
        (-0.08, -0.6, 0.0, 0.05, 0.025, 0.3, 0, 30.0),
        (0.06, -0.6, 0.3, 0.025, 0.05, 0.2, 0, 25.0),
        (0.0, -0.1, 0.5, 0.04, 0.04, 0.15, 0, 80.0),
    ]
    out = np.empty((size * size, slices), dtype=np.float32)
    for j, z in enumerate(np.linspace(-1, 1, slices)):
        img = np.full((size, size), -1000.0, dtype=np.float32)
        for x0, y0, z0, a, b, c, angle, hu in ellipsoids:
            t = 1.0 - ((z - z0) / c) ** 2
            if t <= 0:
                continue
            scale = np.sqrt(t)
            th = np.deg2rad(angle)
            xr = (x - x0) * np.cos(th) + (y - y0) * np.sin(th)
            yr = -(x - x0) * np.sin(th) + (y - y0) * np.cos(th)
            img[(xr / (a * scale)) ** 2 + (yr / (b * scale)) ** 2 <= 1.0] += hu
        out[:, j] = img.ravel()
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(noise_hu)
    return out


def prepare(workdir: Path, matrix_url: str | None) -> tuple[str, Path]:
    """The matrix URL and the float64 reference spectrum (cached in ``workdir``)."""
    from ctdenoise.matrix_store import open_matrix, write_matrix

    workdir.mkdir(parents=True, exist_ok=True)
    if matrix_url is None:
        matrix_url = str(workdir / "phantom_like.zarr")
        if not (Path(matrix_url) / "zarr.json").exists():
            t0 = time.perf_counter()
            A = phantom_like()
            write_matrix(A, {"rows": 512, "columns": 512, "slices": A.shape[1], "note": "bench phantom_like"}, matrix_url)
            print(f"# wrote {matrix_url} {A.shape} in {time.perf_counter() - t0:.1f} s", flush=True)
    reference = workdir / f"reference_{hashlib.sha1(matrix_url.encode()).hexdigest()[:12]}.npy"
    if not reference.exists():
        A = np.asarray(open_matrix(matrix_url)[...], dtype=np.float64)
        t0 = time.perf_counter()
        np.save(reference, np.linalg.svd(A, compute_uv=False))
        print(f"# float64 LAPACK reference spectrum in {time.perf_counter() - t0:.1f} s", flush=True)
    return matrix_url, reference


# ----------------------------------------------------------------------------- one peer per child


def _load(matrix_url: str) -> np.ndarray:
    from ctdenoise.matrix_store import open_matrix

    return np.asarray(open_matrix(matrix_url)[...])


def peer(name: str, matrix_url: str, k: int, workdir: Path) -> dict[str, Any]:
    """Run one peer in this (child) process; returns its time and top singular values."""
    out: dict[str, Any] = {}
    if name == "svd_numpy":
        from ctdenoise.decomposition import svd_numpy
        from ctdenoise.matrix_store import read_svd

        record = svd_numpy(matrix_url, str(workdir / "svd_numpy.zarr"), rank=k, method="exact")
        out["seconds"] = record["timings"]["compute_total"]  # includes reading the Zarr matrix
        out["s"] = read_svd(str(workdir / "svd_numpy.zarr"))[0][:k].tolist()
        return out
    if name == "mllib":
        return mllib(matrix_url, k)
    A = _load(matrix_url)
    t0 = time.perf_counter()
    if name == "numpy_svd":
        _, s, _ = np.linalg.svd(A, full_matrices=False)  # float32 in, as stored
    elif name == "numpy_gram_eigh":
        A64 = A.astype(np.float64)
        lam = np.linalg.eigh(A64.T @ A64)[0][::-1]
        s = np.sqrt(np.clip(lam, 0, None))
    elif name in ("sklearn", "sklearn_lu"):
        from sklearn.utils.extmath import randomized_svd

        normalizer = "LU" if name == "sklearn_lu" else "auto"
        _, s, _ = randomized_svd(A, k, n_oversamples=15, n_iter=2, power_iteration_normalizer=normalizer, random_state=0)
    else:
        raise SystemExit(f"unknown peer {name}")
    out["seconds"] = time.perf_counter() - t0
    out["s"] = np.asarray(s[:k], dtype=np.float64).tolist()
    return out


def mllib(matrix_url: str, k: int) -> dict[str, Any]:
    """MLlib RowMatrix.computeSVD on local[2]: rows read by executors, cached, then timed."""
    os.environ.setdefault("JAVA_HOME", JAVA_HOME)
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    os.environ["PYSPARK_PYTHON"] = sys.executable
    import warnings

    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    from pyspark.mllib.linalg import Vectors
    from pyspark.mllib.linalg.distributed import RowMatrix
    from pyspark.sql import SparkSession

    from ctdenoise.decomposition import partition_row_ranges, read_row_blocks
    from ctdenoise.matrix_store import open_matrix

    arr = open_matrix(matrix_url)
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.driver.memory", "6g")
        .config("spark.ui.enabled", "false")
        .config("spark.executorEnv.PYTHONPATH", str(REPO / "plugins"))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    try:
        groups = partition_row_ranges(arr.shape[0], arr.chunks[0], 4)
        url = matrix_url

        def rows(items):
            for group in items:
                for block in read_row_blocks(url, group):
                    for row in block.astype(np.float64):
                        yield Vectors.dense(row)

        rdd = spark.sparkContext.parallelize(groups, len(groups)).mapPartitions(rows).cache()
        t0 = time.perf_counter()
        count = rdd.count()
        load = time.perf_counter() - t0
        mat = RowMatrix(rdd, numRows=count, numCols=arr.shape[1])
        t0 = time.perf_counter()
        svd = mat.computeSVD(k, computeU=False)
        seconds = time.perf_counter() - t0
        s = svd.s.toArray()
    finally:
        spark.stop()
    return {"seconds": seconds, "load_seconds": load, "s": s[:k].tolist()}


def _submit_job(*job_args: str) -> tuple[dict[str, Any], float]:
    """spark-submit spark/dssvd.py on local[2] (Java 17, loopback, the package on the path);
    returns the job's JSON record and the wall time of the whole spark-submit."""
    env = dict(os.environ)
    env.setdefault("JAVA_HOME", JAVA_HOME)
    env.update(SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "plugins"), env.get("PYTHONPATH", "")) if p)
    submit = Path(sys.executable).parent / "spark-submit"
    cmd = [str(submit), "--master", "local[2]", "--conf", "spark.ui.enabled=false", str(REPO / "spark" / "dssvd.py"), *job_args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"spark-submit failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1]), wall


LOCAL_ROWS = {
    "default": "this job, local mode (default: tiles + in-plane stage; 3 multipliers)",
    "tiles": "this job, local mode, tiles alone (--inplane none)",
    "fast": "this job, local mode, fast setting (8 px tiles, stride 8, x1, --inplane none)",
}
"""The local-mode rows: the default, its tile stage alone, and ``params.FAST``."""


def this_job_local(matrix_url: str, workdir: Path, variant: str) -> dict[str, Any]:
    """This job in local mode (``--local-out``) with one of the :data:`LOCAL_ROWS` parameter sets."""
    from ctdenoise.params import BENCH_SETTINGS

    from ctdenoise.job import DssvdJob

    job = DssvdJob(matrix=matrix_url, local_out=str(workdir / f"job_local_{variant}.zarr"), local=BENCH_SETTINGS[variant])
    record, wall = _submit_job(*job.arguments())
    return {"seconds": record["timings"]["compute_total"], "wall": wall, "timings": record["timings"],
            "summary": record["summary"], "s": None}  # fmt: skip


def this_job(matrix_url: str, k: int, method: str, workdir: Path) -> dict[str, Any]:
    """This job's global SVD; its own timings and the whole wall time."""
    from ctdenoise.matrix_store import read_svd

    out = workdir / f"job_{method}_{k}.zarr"
    record, wall = _submit_job("--matrix", matrix_url, "--out", str(out), "--rank", str(k), "--method", method)
    s = read_svd(str(out))[0]
    return {"seconds": record["timings"]["compute_total"], "wall": wall, "timings": record["timings"],
            "method": record["method"], "s": s[:k].tolist()}


# ----------------------------------------------------------------------------- TV, the local mode's cost target

TV_NOISE_FACTORS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)  # weights tried: factor * the matrix's noise (25 HU)
TV_SAMPLE_EVERY = 16  # the oracle scores every 16th slice


def tv_oracle_weight(workdir: Path) -> dict[str, Any]:
    """TV's weight (HU) on the phantom-like matrix with the best PSNR against its noise-free
    version on every ``TV_SAMPLE_EVERY``-th slice (an oracle, as in bench/quality.py), cached in
    ``workdir``. Only for the default matrix: ``--matrix`` has no noise-free version."""
    from skimage.restoration import denoise_tv_chambolle

    from ctdenoise.metrics import psnr_db

    cache = workdir / "tv_oracle.json"
    if cache.exists():
        return json.loads(cache.read_text())
    noisy, clean = phantom_like(), phantom_like(noise_hu=0.0)
    which = list(range(TV_SAMPLE_EVERY // 2, noisy.shape[1], TV_SAMPLE_EVERY))
    scores = {}
    for factor in TV_NOISE_FACTORS:
        weight = 25.0 * factor
        out = np.stack([denoise_tv_chambolle(noisy[:, k].reshape(512, 512).astype(np.float64), weight=weight) for k in which])
        scores[weight] = psnr_db(out, np.stack([clean[:, k].reshape(512, 512) for k in which]))
    best = max(scores, key=lambda w: scores[w])
    result = {"weight": best, "scores": {f"{w:g}": round(v, 3) for w, v in scores.items()}}
    cache.write_text(json.dumps(result))
    return result


def _tv_slices(args: tuple[np.ndarray, float]) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    block, weight = args
    return np.stack([denoise_tv_chambolle(image.astype(np.float64), weight=weight).astype(np.float32) for image in block])


def tv_volume(matrix_url: str, weight: float, workers: int) -> dict[str, Any]:
    """TV (scikit-image Chambolle, float64 per slice, as bench/quality.py runs it) over every slice
    of the matrix on ``workers`` processes (the same cores as the local mode), started before the
    clock: the time is reading the matrix, the filters, and gathering the volume."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_tv_slices, [(np.zeros((1, 8, 8)), 1.0)] * workers))  # start the workers
        t0 = time.perf_counter()
        A = _load(matrix_url)
        rows = int(math.isqrt(A.shape[0]))
        volume = A.T.reshape(A.shape[1], rows, -1)
        chunks = np.array_split(np.arange(volume.shape[0]), 4 * workers)
        out = np.concatenate(list(pool.map(_tv_slices, [(volume[c], weight) for c in chunks])))
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "s": None, "slices": int(out.shape[0])}


# ----------------------------------------------------------------------------- the parent


def run_child(args: list[str]) -> tuple[dict[str, Any], float]:
    """Run ``bench/svd.py --child ...``; returns its JSON result and the peak RSS (MB) of its tree."""
    import psutil

    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            total = 0
            for p in tree:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, total)
        except psutil.Error:
            pass
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{stderr[-4000:]}")
    return json.loads(stdout.strip().splitlines()[-1]), peak / 2**20


def cpu_busy(window: float = 2.0) -> float:
    """Fraction of all CPU time spent busy over ``window`` seconds (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(window)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(max_busy: float, timeout: float) -> float:
    """Wait until the machine is nearly idle (other work skews every timing); returns the busy
    fraction last seen (still measured, and reported, when the timeout passes)."""
    deadline = time.monotonic() + timeout
    busy = cpu_busy()
    while busy > max_busy and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def machine() -> str:
    from threadpoolctl import threadpool_info

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    blas = ", ".join(f"{i['internal_api']} {i['version']} {i.get('architecture', '')} x{i['num_threads']}" for i in threadpool_info() if i["user_api"] == "blas")
    openblas_env = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")}
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB; Python {platform.python_version()}, numpy {np.__version__} "
            f"({blas}); OPENBLAS env: {openblas_env or 'unset'}; load average {os.getloadavg()[0]:.2f}")


def global_targets(rows: dict[str, dict[str, Any]], exact: dict[str, Any], ratio: Any) -> list[tuple[str, bool, str]]:
    """The global mode's ratios and targets (against its peers measured in the same run)."""
    sto50 = rows["this job, stochastic, k=50"]
    sk50 = rows["sklearn randomized_svd k=50"]
    numpy_svd = rows["numpy.linalg.svd thin (float32)"]
    r_numpy = ratio("numpy thin SVD time / this job exact compute", numpy_svd["seconds"], exact["seconds"])
    r_gram = ratio("this job exact compute / numpy Gram+eigh", exact["seconds"], rows["numpy Gram (float64) + eigh"]["seconds"])
    r_sk = ratio("this job stochastic k=50 compute / sklearn k=50", sto50["seconds"], sk50["seconds"])
    ratio("this job stochastic k=50 compute / sklearn k=50 LU", sto50["seconds"], rows["sklearn randomized_svd k=50, LU normalizer"]["seconds"])
    targets = [
        ("exact path compute <= 1.5 s", exact["seconds"] <= 1.5, f"{exact['seconds']:.3f} s"),
        ("exact path error <= 1e-6", exact["error"] <= 1e-6, f"{exact['error']:.1e}"),
        (">= 5x faster than numpy thin SVD", r_numpy >= 5, f"{r_numpy:.1f}x"),
        ("stochastic k=50 within 2x of sklearn's time", r_sk <= 2, f"{r_sk:.2f}x"),
        ("stochastic k=50 error <= sklearn's", sto50["error"] <= sk50["error"], f"{sto50['error']:.1e} vs {sk50['error']:.1e}"),
        ("whole spark-submit <= 15 s", exact["wall"] <= 15, f"{exact['wall']:.1f} s"),
    ]
    if "Spark MLlib RowMatrix.computeSVD k=10" in rows:
        r_mllib = ratio("MLlib computeSVD k=10 / this job exact compute", rows["Spark MLlib RowMatrix.computeSVD k=10"]["seconds"], exact["seconds"])
        targets.append((">= 50x faster than MLlib computeSVD k=10", r_mllib >= 50, f"{r_mllib:.0f}x"))
    del r_gram
    return targets


TV_ROW = "TV (Chambolle) per slice, oracle weight, same cores"


def tv_rows(workdir: Path, url: str, default_matrix: bool) -> list[tuple[str, list[str], int]]:
    """The TV row of the plan (the local mode's cost target), on as many processes as cores."""
    if not default_matrix:
        return []
    oracle = tv_oracle_weight(workdir)
    print(f"# TV oracle on every {TV_SAMPLE_EVERY}th slice: PSNR by weight (HU) {oracle['scores']}; best {oracle['weight']:g}", flush=True)
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return [(TV_ROW, ["--child", "tv", url, str(workers), "--tv-weight", str(oracle["weight"])], 0)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/ctdenoise-bench")
    parser.add_argument("--matrix", help="an existing series matrix (Zarr URL); default: a phantom-like one")
    parser.add_argument("--skip-mllib", action="store_true", help="skip MLlib computeSVD (~75 s)")
    parser.add_argument("--local-only", action="store_true", help="only the local mode's rows, TV and the global exact compute (their ratios)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per row; the table shows the fastest (default 2)")
    parser.add_argument("--max-busy", type=float, default=0.15, help="wait for CPU busy <= this before each run")
    parser.add_argument("--quiet-timeout", type=float, default=120.0, help="longest wait for a quiet machine (s)")
    parser.add_argument("--child", nargs=3, metavar=("PEER", "MATRIX", "K"), help=argparse.SUPPRESS)
    parser.add_argument("--method", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="default", choices=sorted(LOCAL_ROWS), help=argparse.SUPPRESS)
    parser.add_argument("--tv-weight", default="0", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    if args.child:
        name, url, k = args.child[0], args.child[1], int(args.child[2])
        if name == "job":
            result = this_job(url, k, args.method, workdir)
        elif name == "job_local":
            result = this_job_local(url, workdir, args.variant)
        elif name == "tv":
            result = tv_volume(url, float(args.tv_weight), k)
        else:
            result = peer(name, url, k, workdir)
        print(json.dumps(result))
        return 0

    print(f"# machine: {machine()}", flush=True)
    url, reference_path = prepare(workdir, args.matrix)
    reference = np.load(reference_path)
    from ctdenoise.matrix_store import open_matrix

    shape = open_matrix(url).shape
    print(f"# matrix {url}: {shape[0]}x{shape[1]} float32", flush=True)

    plan: list[tuple[str, list[str], int]] = [
        ("this job, auto (exact), k=10", ["--child", "job", url, "10", "--method", "auto"], 10),
        ("this job, stochastic, k=10", ["--child", "job", url, "10", "--method", "stochastic"], 10),
        ("this job, stochastic, k=50", ["--child", "job", url, "50", "--method", "stochastic"], 50),
        *((label, ["--child", "job_local", url, "0", "--variant", variant], 0) for variant, label in LOCAL_ROWS.items()),
        *tv_rows(workdir, url, args.matrix is None),
        ("svd_numpy, exact (same kernels, 1 process)", ["--child", "svd_numpy", url, "50"], 50),
        ("numpy.linalg.svd thin (float32)", ["--child", "numpy_svd", url, "50"], 50),
        ("numpy Gram (float64) + eigh", ["--child", "numpy_gram_eigh", url, "50"], 50),
        ("sklearn randomized_svd k=10", ["--child", "sklearn", url, "10"], 10),
        ("sklearn randomized_svd k=50", ["--child", "sklearn", url, "50"], 50),
        ("sklearn randomized_svd k=50, LU normalizer", ["--child", "sklearn_lu", url, "50"], 50),
    ]
    if not args.skip_mllib:
        plan.append(("Spark MLlib RowMatrix.computeSVD k=10", ["--child", "mllib", url, "10"], 10))
    if args.local_only:
        keep = {"this job, auto (exact), k=10", TV_ROW, *LOCAL_ROWS.values()}
        plan = [row for row in plan if row[0] in keep]

    rows: dict[str, dict[str, Any]] = {}
    for label, child_args, k in plan:
        child_args = [*child_args, "--workdir", str(workdir)]
        runs = []
        for _ in range(max(1, args.repeat)):
            busy = wait_quiet(args.max_busy, args.quiet_timeout)
            result, peak = run_child(child_args)
            result["busy_before"], result["peak_mb"] = busy, peak
            runs.append(result)
            extra = f", whole spark-submit {result['wall']:.1f} s" if label.startswith("this job") else ""
            print(f"# run: {label}: {result['seconds']:.3f} s{extra} (CPU busy before: {busy:.0%})", flush=True)
        result = min(runs, key=lambda r: r["seconds"])
        if label.startswith("this job"):
            result["wall"] = min(r["wall"] for r in runs)  # fastest whole spark-submit
        result["peak_mb"] = max(r["peak_mb"] for r in runs)
        if result.get("s") is not None:
            s = np.asarray(result["s"])
            result["error"] = float(np.max(np.abs(s[:k] - reference[:k]) / reference[:k]))
        else:  # the local mode computes no singular values of A
            result["error"] = math.nan
        result["k"] = k
        rows[label] = result
    print_results(rows, args)
    return 0


def print_results(rows: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    """The table, each job's stages, the ratios and the targets of one run."""
    print()
    print(f"Fastest of {max(1, args.repeat)} run(s) per row; peak memory is the largest RSS of the child's process tree.")
    print()
    print("| method | k | time (s) | max rel. error top-k | peak memory (MB) |")
    print("|---|---|---|---|---|")
    for label, r in rows.items():
        time_text = f"{r['seconds']:.3f}"
        if label.startswith("this job"):
            time_text += f" compute ({r['wall']:.1f} whole spark-submit)"
        if "load_seconds" in r:
            time_text += f" (+{r['load_seconds']:.1f} to read and cache the rows)"
        error = "-" if math.isnan(r["error"]) else f"{r['error']:.1e}"
        print(f"| {label} | {r['k'] or '-'} | {time_text} | {error} | {r['peak_mb']:.0f} |")
    print()
    for label, r in rows.items():
        if "timings" in r:
            print(f"# {label} stages: {json.dumps(r['timings'])}")

    exact = rows["this job, auto (exact), k=10"]
    print()

    def ratio(name: str, a: float, b: float) -> float:
        print(f"ratio: {name} = {a / b:.2f}")
        return a / b

    targets = [] if args.local_only else global_targets(rows, exact, ratio)
    local = rows[LOCAL_ROWS["default"]]
    r_local = ratio("this job local mode (default) compute / this job exact compute", local["seconds"], exact["seconds"])
    r_tiles = ratio("this job local mode, tiles alone, compute / this job exact compute", rows[LOCAL_ROWS["tiles"]]["seconds"], exact["seconds"])
    r_fast = ratio("this job local mode, fast setting, compute / this job exact compute", rows[LOCAL_ROWS["fast"]]["seconds"], exact["seconds"])
    targets.append(("local mode compute within 3x of the global exact compute", r_local <= 3, f"{r_local:.2f}x"))
    if TV_ROW in rows:
        tv = rows[TV_ROW]["seconds"]
        r_tv = ratio("this job local mode (default, all outputs) compute / TV over the same volume", local["seconds"], tv)
        ratio("this job local mode, tiles alone, compute / TV", rows[LOCAL_ROWS["tiles"]]["seconds"], tv)
        ratio("this job local mode, fast setting, compute / TV", rows[LOCAL_ROWS["fast"]]["seconds"], tv)
        targets.append(("local mode (default, all outputs) no slower than TV over the same volume on the same cores", r_tv <= 1, f"{r_tv:.2f}x"))
    targets.append(("local mode, tiles alone (--inplane none), within 3x of the global exact compute", r_tiles <= 3, f"{r_tiles:.2f}x"))
    targets.append(("local mode, fast setting (params.FAST; its quality: bench/quality.py), within 3x", r_fast <= 3, f"{r_fast:.2f}x"))
    print(f"# local mode summary: {json.dumps(local.get('summary'))}")
    print(f"# local mode timings (default): {json.dumps(local.get('timings'))}")
    print()
    for name, met, value in targets:
        print(f"target: {name}: {'MET' if met else 'NOT MET'} ({value})")
    print(f"# load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
