"""Distributed truncated SVD of a series matrix: the spark-submit application.

    spark-submit spark/dssvd.py --matrix URL [--out URL --rank K] [--local-out URL] \\
        [--oversample 15] [--power-iters 2] [--seed 0] [--method auto|stochastic|exact] [--with-u] \\
        [--tile 12] [--stride 6] [--multipliers 0.5,0.75,1] [--shrinkage frobenius|hard] \\
        [--inplane nlm|none] [--inplane-strength 1.2]

Two modes, one job (both in one SparkContext when both outputs are given):

- *global* (``--out``): the truncated SVD of the whole series matrix, published as the SVD group;
- *local* (``--local-out``): local low-rank denoising (``ctdenoise.local_lowrank``): overlapping
  tiles through all slices, each shrunk on its own, for every threshold multiplier; published as
  the local group (the denoised matrices ``D``, per-tile ranks and noise levels).

It replaces the seed pipeline's Mahout ``dssvd`` (randomized SVD, Halko-Martinsson-Tropp) with the
same algorithm on numpy blocks. The job is thin: the kernels and the algorithm are in
``ctdenoise.decomposition`` (shared with ``ctdenoise svd``); this file distributes them.

- The driver opens only the matrix metadata (shape, chunks) and validates the parameters before
  any Spark work; it never loads ``A``.
- Executors read their own chunk-aligned row blocks from the Zarr matrix through fsspec (a local
  path, ``file://`` or ``s3://`` with endpoint and keys from the environment: no hadoop-aws jars),
  and return small float64 partial sums, added by a deterministic tree (partition order, then
  pairwise levels when the partials are too many to collect).
- The SVD group is staged locally and published atomically at ``--out``
  (``ctdenoise.matrix_store.write_svd``): nothing is visible there until it is complete.

Exit status: 0 on success; 2 with a one-line ``error: ...`` for a missing matrix or a bad
parameter (checked before Spark starts work); 1 when a Spark stage fails (the cause is logged).
The result is printed as one JSON line, the last line of the output (spark-submit merges the
Python driver's stderr into its stdout, so log lines precede it).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("ctdenoise.dssvd")

#: Partials are collected to the driver when their total size is below this; larger sums first
#: go through pairwise reduce levels on the executors.
MAX_COLLECT_BYTES = 256 * 2**20
#: Environment variables forwarded to executors on a standalone cluster (S3 access).
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)


def _ensure_package() -> str | None:
    """Import ctdenoise; from a source checkout, fall back to ``<repo>/plugins`` (returned)."""
    try:
        import ctdenoise  # noqa: F401

        return None
    except ImportError:
        plugins = Path(__file__).resolve().parent.parent / "plugins"
        sys.path.insert(0, str(plugins))
        import ctdenoise  # noqa: F401

        return str(plugins)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    _ensure_package()
    from ctdenoise.local_params import INPLANE, SHRINKAGES, LocalParams

    local_defaults = LocalParams()
    parser = argparse.ArgumentParser(prog="dssvd.py", description="Distributed truncated SVD of a series matrix (Spark).")
    parser.add_argument("--matrix", required=True, help="series matrix (Zarr URL: path, file://, s3://)")
    parser.add_argument("--out", help="global mode: where to publish the SVD group (Zarr URL)")
    parser.add_argument("--rank", type=int, help="global mode: number of singular triplets k")
    parser.add_argument("--local-out", help="local mode: where to publish the local low-rank group (Zarr URL)")
    parser.add_argument("--tile", type=int, default=local_defaults.tile, help="local mode: tile size in pixels")
    parser.add_argument("--stride", type=int, default=local_defaults.stride, help="local mode: tile stride in pixels")
    parser.add_argument("--multipliers", type=_floats, default=local_defaults.multipliers,
                        help="local mode: threshold multipliers, comma-separated (1 = the optimal threshold of the tiles alone)")
    parser.add_argument("--shrinkage", choices=SHRINKAGES, default=local_defaults.shrinkage,
                        help="local mode: optimal shrinkage for Frobenius loss, or the optimal hard threshold")
    parser.add_argument("--inplane", choices=INPLANE, default=local_defaults.inplane,
                        help="local mode: in-plane stage after the tiles (nlm: non-local means per slice; none)")
    parser.add_argument("--inplane-strength", type=float, default=local_defaults.inplane_strength,
                        help="local mode: strength of the in-plane stage, in units of the estimate's noise")
    parser.add_argument("--oversample", type=int, default=15, help="oversampling p (stochastic)")
    parser.add_argument("--power-iters", type=int, default=2, help="power iterations q (stochastic)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random test matrix")
    parser.add_argument("--method", choices=["auto", "stochastic", "exact"], default="auto")
    parser.add_argument("--with-u", action="store_true", help="also store U (rows x k, float32; gathered on the driver)")
    parser.add_argument("--partitions", type=int, default=None, help="row-block partitions (default: from cores and size)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


class SparkRunner:
    """The block kernels of ``ctdenoise.decomposition`` summed over the matrix by Spark."""

    def __init__(self, sc: Any, matrix_url: str, shape: Sequence[int], chunk_rows: int, partitions: int):
        from ctdenoise.decomposition import partition_row_ranges

        self.sc = sc
        self.url = matrix_url
        self.n = int(shape[1])
        self.groups = partition_row_ranges(int(shape[0]), chunk_rows, partitions)
        self.partitions = len(self.groups)
        # One element per partition: the list of its chunk ranges.
        self.rdd = sc.parallelize(self.groups, self.partitions)

    def _tree_sum(self, kind: str, payload: Any, partial_bytes: int) -> Any:
        from ctdenoise.decomposition import add_partials, pair_key, partition_task, sum_partials

        self.sc.setJobDescription(f"dssvd {kind} pass over {self.partitions} partitions")
        rdd = self.rdd.mapPartitionsWithIndex(functools.partial(partition_task, kind, self.url, payload))
        count = self.partitions
        while count > 1 and count * partial_bytes > MAX_COLLECT_BYTES:
            count = math.ceil(count / 2)
            rdd = rdd.map(pair_key).reduceByKey(add_partials, numPartitions=count)
        parts = sorted(rdd.collect(), key=lambda item: item[0])
        return sum_partials(p for _, p in parts)

    def gram(self):
        return self._tree_sum("gram", None, 8 * self.n * self.n)

    def sketch(self, W, with_norm: bool):
        bc = self.sc.broadcast((W, with_norm))
        try:
            return self._tree_sum("sketch", bc, 8 * (W.shape[1] ** 2 + self.n * W.shape[1]))
        finally:
            bc.unpersist()

    def project(self, V_over_s):
        import numpy as np

        from ctdenoise.decomposition import partition_task

        bc = self.sc.broadcast(V_over_s)
        try:
            self.sc.setJobDescription("dssvd U = A V / s")
            rdd = self.rdd.mapPartitionsWithIndex(functools.partial(partition_task, "project", self.url, bc))
            parts = sorted(rdd.collect(), key=lambda item: item[0])
            return np.concatenate([p for _, p in parts], axis=0)
        finally:
            bc.unpersist()


def local_params(args: argparse.Namespace):
    """The validated :class:`ctdenoise.local_lowrank.LocalParams` of the command line."""
    from ctdenoise.local_lowrank import LocalParams

    return LocalParams(
        tile=args.tile, stride=args.stride, multipliers=tuple(args.multipliers), shrinkage=args.shrinkage,
        inplane=args.inplane, inplane_strength=args.inplane_strength,
    ).validate(args.matrix)


def validate_args(args: argparse.Namespace, shape: Sequence[int]) -> None:
    """Every parameter check that needs no Spark work (:class:`CtDenoiseError` naming the matrix)."""
    from ctdenoise.decomposition import validate_params
    from ctdenoise.errors import ParameterError

    if not args.out and not args.local_out:
        raise ParameterError(f"{args.matrix}: nothing to do: give --out (global SVD) and/or --local-out (local mode)")
    if args.out:
        if args.rank is None:
            raise ParameterError(f"{args.matrix}: --out (global SVD) needs --rank")
        validate_params(shape, args.rank, args.oversample, args.power_iters, args.method, args.matrix)
    if args.local_out:
        local_params(args)
    if args.partitions is not None and args.partitions < 1:
        raise ParameterError(f"{args.matrix}: partitions must be >= 1, got {args.partitions}")


def run_local(sc: Any, args: argparse.Namespace, arr: Any, session_seconds: float | None = None) -> dict[str, Any]:
    """Local low-rank mode: contiguous groups of image-row bands denoised on the executors, which
    write their rows of ``D`` straight into the uncommitted local group; the driver collects the
    per-tile statistics and commits the group at ``--local-out`` (nothing visible before).
    """
    import numpy as np

    from ctdenoise import local_lowrank
    from ctdenoise.decomposition import Timings

    params = local_params(args)
    timings = Timings()
    if session_seconds is not None:
        timings.stages["session_start"] = session_seconds
    rows, columns = local_lowrank.matrix_geometry(arr, args.matrix)
    attrs = local_lowrank.group_attrs(
        params, rows, columns, args.matrix, arr.shape, int(arr.chunks[0]), arr.attrs.get("slice_noise_hu")
    )
    scale = None if attrs["column_scale"] is None else np.asarray(attrs["column_scale"])

    read_rows = functools.partial(local_lowrank.read_image_rows, args.matrix, columns)
    # The in-plane stage's noise levels: measured once, here, on a band through the middle of
    # the image, so every executor filters each slice with the same strength.
    with timings.stage("inplane_sigma"):
        attrs["inplane_sigma"] = local_lowrank.inplane_sigmas(read_rows, rows, columns, params, scale)
    bands = local_lowrank.band_ranges(rows, attrs["band_rows"])
    groups = [bands[a:b] for a, b in _group_bounds(len(bands), args.partitions or 2 * sc.defaultParallelism)]
    attrs.update(partitions=len(groups), spark_master=sc.master, spark_version=sc.version, engine="spark")

    def run_bands(work_url: str) -> list[Any]:
        sc.setJobDescription(f"dssvd local mode: {len(bands)} bands in {len(groups)} partitions")
        task = functools.partial(
            local_lowrank.partition_task, args.matrix, work_url, rows, columns, params.as_dict(), attrs["column_scale"],
            attrs["inplane_sigma"],
        )
        return sc.parallelize(groups, len(groups)).mapPartitionsWithIndex(task).collect()

    return local_lowrank.publish_bands(args.local_out, run_bands, rows, columns, arr.shape, params, attrs, timings)


def _group_bounds(count: int, groups: int) -> list[tuple[int, int]]:
    groups = max(1, min(groups, count))
    bounds = [round(i * count / groups) for i in range(groups + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(groups)]


def configure(plugins_path: str | None = None):
    """The SparkConf this job wants, without overriding anything set by spark-submit."""
    from pyspark import SparkConf, SparkContext

    # Connect to (or start) the JVM first, so that SparkConf() loads what spark-submit set
    # (spark.master among others); without a JVM it would be an empty Python-side conf.
    SparkContext._ensure_initialized()
    conf = SparkConf()
    conf.setIfMissing("spark.app.name", "ctdenoise-dssvd")
    conf.setIfMissing("spark.python.worker.reuse", "true")
    conf.setIfMissing("spark.ui.showConsoleProgress", "false")
    # One BLAS thread per task slot: Spark already runs one task per core.
    task_cpus = conf.get("spark.task.cpus", "1")
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        conf.setIfMissing(f"spark.executorEnv.{var}", task_cpus)
    master = conf.get("spark.master", "")
    if master.startswith("spark://"):
        # Executors of a standalone cluster do not inherit the driver's environment.
        for var in FORWARDED_ENV:
            if os.environ.get(var):
                conf.setIfMissing(f"spark.executorEnv.{var}", os.environ[var])
    if plugins_path:
        conf.setIfMissing("spark.executorEnv.PYTHONPATH", plugins_path)
    return conf


def run(sc: Any, args: argparse.Namespace, session_seconds: float | None = None) -> dict[str, Any]:
    """Compute and publish the SVD with an existing SparkContext; returns the summary record.

    Raises :class:`ctdenoise.errors.CtDenoiseError` / ``FileNotFoundError`` for bad input
    (before any Spark job) and lets Spark errors propagate.
    """
    import numpy as np

    from ctdenoise.decomposition import Timings, decompose, default_partitions, publish_result, warm_up
    from ctdenoise.errors import ParameterError
    from ctdenoise.matrix_store import open_matrix

    timings = Timings()
    if session_seconds is not None:
        timings.stages["session_start"] = session_seconds
    arr = open_matrix(args.matrix)  # metadata only: shape, chunks, dtype
    if arr.ndim != 2:
        raise ParameterError(f"{args.matrix}: a series matrix is 2-D (voxels, slices), got shape {arr.shape}")
    validate_args(args, arr.shape)
    with timings.stage("workers_start"):
        # Python workers start (imports, Zarr and BLAS set-up on one row) here, not inside the
        # first pass; with spark.python.worker.reuse they serve every later task. Reported in
        # the timings, outside compute_total.
        slots = sc.defaultParallelism
        sc.setJobDescription("dssvd: start Python workers")
        pids = sc.parallelize(range(slots), slots).mapPartitionsWithIndex(functools.partial(warm_up, args.matrix)).collect()
        log.info("%d Python worker(s) ready: pids %s", len(set(pids)), sorted(set(pids)))
    if not args.out:
        return run_local(sc, args, arr, session_seconds)
    with timings.stage("open"):
        shape = tuple(int(x) for x in arr.shape)
        chunk_rows = int(arr.chunks[0])
        partitions = args.partitions or default_partitions(shape, chunk_rows, sc.defaultParallelism, arr.dtype.itemsize)
        runner = SparkRunner(sc, args.matrix, shape, chunk_rows, partitions)
    result = decompose(
        runner,
        shape,
        args.rank,
        method=args.method,
        oversample=args.oversample,
        power_iters=args.power_iters,
        seed=args.seed,
        with_u=args.with_u,
        float32_data=arr.dtype != np.float64,
        source=args.matrix,
        timings=timings,
    )
    extra = {
        "partitions": runner.partitions,
        "spark_master": sc.master,
        "spark_version": sc.version,
        "default_parallelism": sc.defaultParallelism,
    }
    record = publish_result(result, args.matrix, args.out, timings, engine="spark", extra_attrs=extra)
    if args.local_out:
        record["local"] = run_local(sc, args, arr)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    plugins_path = _ensure_package()
    from ctdenoise.errors import CtDenoiseError
    from ctdenoise.matrix_store import open_matrix

    # Fail fast, before a SparkContext: a missing matrix or a bad parameter exits 2.
    try:
        arr = open_matrix(args.matrix)
        validate_args(args, arr.shape)
    except (CtDenoiseError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # pyspark may warn about pandas >= 3; this job does not use pandas (nor pyspark.sql: a plain
    # SparkContext starts faster than a SparkSession and imports no pandas).
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    from pyspark import SparkContext

    t0 = time.perf_counter()
    sc = SparkContext._active_spark_context  # tests and notebooks run main() in their context
    owns_session = sc is None
    if owns_session:
        sc = SparkContext(conf=configure(plugins_path))
        if not args.verbose:
            sc.setLogLevel("WARN")
    session_seconds = time.perf_counter() - t0
    try:
        record = run(sc, args, session_seconds=session_seconds if owns_session else None)
    except (CtDenoiseError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a failed Spark stage (Py4JJavaError) or an executor-side error
        log.exception("dssvd failed: %s", exc.__class__.__name__)
        print(f"error: Spark job failed: {_first_line(exc)}", file=sys.stderr)
        return 1
    finally:
        if owns_session:
            sc.stop()
    print(json.dumps(record, sort_keys=True), flush=True)
    return 0


_PY_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


def _first_line(exc: BaseException) -> str:
    """The cause of a failed job in one line: the executor's Python exception when there is one.

    A Py4JJavaError carries the executor's Python traceback among Java frames; its last Python
    exception line (``ctdenoise.errors.InputError: ...``, ``RuntimeError: ...``) names the cause.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    java = ("org.", "java.", "scala.", "py4j.", "Caused by", "at ")
    python = [line for line in lines if _PY_EXCEPTION.match(line) and not line.startswith(java)]
    if python:
        return python[-1][:500]
    return (lines[0][:500] if lines else "") or exc.__class__.__name__


if __name__ == "__main__":
    sys.exit(main())
