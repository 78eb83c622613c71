"""The decomposition job on Spark: parse the arguments, supply the Spark engine, run the package's job.

    spark-submit spark/dssvd.py --matrix URL [--out URL --rank K] [--local-out URL] [options]
    spark-submit spark/dssvd.py --matrix URL1 [options] --and --matrix URL2 [options] ...

``--help`` lists every option; they are derived from the parameter declarations of
``ctdenoise.params`` (``ctdenoise.job.DssvdJob``). The job itself, the same for this engine and
for ``ctdenoise svd``/``local`` in one process, is ``ctdenoise.job.run_job``: the global SVD
(Mahout's ``dssvd``: Halko-Martinsson-Tropp on numpy blocks, or one exact Gram pass) and/or the
local low-rank mode. This file only says how Spark runs its passes: executors read their own
chunk-aligned row blocks (fsspec, S3 from the environment: no hadoop-aws jars) and return small
float64 partial sums, added by a deterministic tree; the local mode's partitions write their
bands of ``D`` straight into the uncommitted group.

Several jobs separated by ``--and`` are a batch (``ctdenoise.job.DssvdBatch``): one Spark
application for several series, so the session's start is paid once; each job is run on its
own and printed as one JSON line, a refused input does not stop the others.

Exit status of one job: 0 on success, the result as one JSON line (the last line of the output); else
one ``error: ...`` line and the status of the failure's kind (``ctdenoise.errors``): 2 for a
missing matrix or a bad parameter (checked before Spark starts), 75 for a storage, network or
memory failure (retried), 1 otherwise (a failed Spark stage: the cause is logged). Logging as
the ``ctdenoise`` command's (``ctdenoise.logs``): ``-v`` never turns on the S3 client's debug
output.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("ctdenoise.dssvd")

#: Partials are collected to the driver when their total size is below this; larger sums first
#: go through pairwise reduce levels on the executors.
MAX_COLLECT_BYTES = 256 * 2**20
#: Environment variables forwarded to executors on a standalone cluster (S3 access).
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION")  # fmt: skip


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


def build_parser():
    _ensure_package()
    from ctdenoise.job import DssvdJob

    return DssvdJob.parser("dssvd.py", "Decomposition of a series matrix on Spark: global SVD and/or local low-rank mode.")


class SparkRunner:
    """The block kernels of ``ctdenoise.decomposition`` summed over the matrix by Spark."""

    def __init__(self, sc: Any, matrix_url: str, shape: Sequence[int], chunk_rows: int, partitions: int):
        from ctdenoise.decomposition import partition_row_ranges

        self.sc = sc
        self.url = matrix_url
        self.n = int(shape[1])
        self.groups = partition_row_ranges(int(shape[0]), chunk_rows, partitions)
        self.partitions = len(self.groups)
        self.rdd = sc.parallelize(self.groups, self.partitions)  # one element per partition: its chunk ranges

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
            return np.concatenate([p for _, p in sorted(rdd.collect(), key=lambda item: item[0])], axis=0)
        finally:
            bc.unpersist()


class SparkEngine:
    """``ctdenoise.job.Engine`` on a SparkContext: passes and band tasks run on the executors."""

    name = "spark"

    def __init__(self, sc: Any) -> None:
        self.sc = sc
        self.started = False

    def start(self, matrix_url: str) -> None:
        """Start one Python worker per slot, ready for the kernels (with worker reuse they serve
        every later task): reported as ``workers_start``, outside the compute."""
        from ctdenoise.decomposition import warm_up

        if self.started:  # a batch's later jobs: the workers are up (spark.python.worker.reuse)
            return
        self.started = True
        slots = self.sc.defaultParallelism
        self.sc.setJobDescription("dssvd: start Python workers")
        pids = self.sc.parallelize(range(slots), slots).mapPartitionsWithIndex(functools.partial(warm_up, matrix_url)).collect()
        log.info("%d Python worker(s) ready: pids %s", len(set(pids)), sorted(set(pids)))

    def block_runner(self, matrix_url: str, shape: Sequence[int], chunk_rows: int, partitions: int | None) -> SparkRunner:
        from ctdenoise.decomposition import default_partitions

        count = partitions or default_partitions(shape, chunk_rows, self.sc.defaultParallelism)
        return SparkRunner(self.sc, matrix_url, shape, chunk_rows, count)

    def map_partitions(self, task: Callable[[int, Iterable[Any]], Iterator[Any]], groups: Sequence[Any]) -> list[Any]:
        self.sc.setJobDescription(f"dssvd local mode: {len(groups)} partitions")
        return self.sc.parallelize(list(groups), len(groups)).mapPartitionsWithIndex(task).collect()

    def band_groups(self, bands: int) -> int:
        """One partition per task slot: each partition computes the in-plane halo's tiles at its
        edges once, so more partitions than slots would only add halos."""
        return self.sc.defaultParallelism

    def describe(self) -> dict[str, Any]:
        return {"spark_master": self.sc.master, "spark_version": self.sc.version, "default_parallelism": self.sc.defaultParallelism}


def configure(plugins_path: str | None = None):
    """The SparkConf this job wants, without overriding anything set by spark-submit."""
    from pyspark import SparkConf, SparkContext

    # Connect to (or start) the JVM first, so that SparkConf() loads what spark-submit set.
    SparkContext._ensure_initialized()
    conf = SparkConf()
    conf.setIfMissing("spark.app.name", "ctdenoise-dssvd")
    conf.setIfMissing("spark.python.worker.reuse", "true")
    conf.setIfMissing("spark.ui.showConsoleProgress", "false")
    task_cpus = conf.get("spark.task.cpus", "1")  # one BLAS thread per task slot
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        conf.setIfMissing(f"spark.executorEnv.{var}", task_cpus)
    if conf.get("spark.master", "").startswith("spark://"):
        for var in FORWARDED_ENV:  # executors of a standalone cluster do not inherit the driver's environment
            if os.environ.get(var):
                conf.setIfMissing(f"spark.executorEnv.{var}", os.environ[var])
    if plugins_path:
        conf.setIfMissing("spark.executorEnv.PYTHONPATH", plugins_path)
    return conf


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    plugins_path = _ensure_package()
    from ctdenoise import logs
    from ctdenoise.job import DssvdBatch, batch_exit_code

    parts = [parser.parse_args(part) for part in DssvdBatch.split(argv)]
    logs.configure(any(part.verbose for part in parts))
    jobs, refused = checked_jobs(parts)  # before a SparkContext: a missing matrix or a bad parameter
    if not jobs:
        return batch_exit_code(refused) if len(parts) == 1 else report_batch(refused)

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # pyspark warns about pandas >= 3; this job uses neither pandas nor pyspark.sql.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    from pyspark import SparkContext

    t0 = time.perf_counter()
    sc = SparkContext._active_spark_context  # tests and notebooks run main() in their context
    owns_session = sc is None
    if owns_session:
        sc = SparkContext(conf=configure(plugins_path))
        if not any(part.verbose for part in parts):
            sc.setLogLevel("WARN")
    try:
        session = time.perf_counter() - t0 if owns_session else None
        return run_one(jobs[0], sc, session) if len(parts) == 1 else run_many(jobs, refused, sc, session)
    finally:
        if owns_session:
            sc.stop()


def checked_jobs(parts: Sequence[Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    """The jobs whose matrix and parameters pass, and a failure result of each refused one (its
    ``error:`` line printed): a refused series of a batch does not stop the others."""
    from ctdenoise.errors import classify, one_line
    from ctdenoise.job import DssvdJob, check_job
    from ctdenoise.matrix_store import open_matrix

    jobs, refused = [], []
    for part in parts:
        try:
            job = DssvdJob.from_arguments(part)
            check_job(job, open_matrix(job.matrix).shape)
            jobs.append(job)
        except Exception as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            refused.append({"matrix": part.matrix, "status": "failed", "kind": classify(exc).value, "reason": one_line(exc)})
    return jobs, refused


def run_one(job: Any, sc: Any, session_seconds: float | None) -> int:
    """One series: its record as the last line, or one ``error:`` line and the failure's status."""
    from ctdenoise.errors import Failure, classify, exit_code
    from ctdenoise.job import run_job

    try:
        record = run_job(job, SparkEngine(sc), session_seconds=session_seconds)
    except Exception as exc:  # input, storage, or a failed Spark stage (Py4JJavaError: its executor's cause)
        if classify(exc) != Failure.INPUT:
            log.error("dssvd failed (%s): %s", classify(exc).value, exc.__class__.__name__, exc_info=True)
        print(f"error: {failure_reason(exc)}", file=sys.stderr)
        return exit_code(exc)
    print(json.dumps(record, sort_keys=True), flush=True)
    return 0


def run_many(jobs: Sequence[Any], refused: list[dict[str, Any]], sc: Any, session_seconds: float | None) -> int:
    """A batch in one session: one JSON line per job (its record, or why it failed) in the order
    given, refused ones first; the batch's status from :func:`ctdenoise.job.batch_exit_code`."""
    from ctdenoise.job import run_batch

    return report_batch(refused + run_batch(jobs, SparkEngine(sc), session_seconds, reason=failure_reason))


def report_batch(results: list[dict[str, Any]]) -> int:
    from ctdenoise.job import batch_exit_code

    for result in results:
        print(json.dumps(result, sort_keys=True), flush=True)
    return batch_exit_code(results)


def failure_reason(exc: BaseException) -> str:
    from ctdenoise.errors import one_line

    return "Spark job failed: " + _first_line(exc) if exc.__class__.__module__.startswith("py4j") else one_line(exc)


_PY_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


def _first_line(exc: BaseException) -> str:
    """The cause of a failed job in one line: the executor's Python exception when there is one
    (a Py4JJavaError carries the executor's Python traceback among Java frames)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    java = ("org.", "java.", "scala.", "py4j.", "Caused by", "at ")
    python = [line for line in lines if _PY_EXCEPTION.match(line) and not line.startswith(java)]
    if python:
        return python[-1][:500]
    return (lines[0][:500] if lines else "") or exc.__class__.__name__


if __name__ == "__main__":
    sys.exit(main())
