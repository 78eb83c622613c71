"""Benchmark: throughput of the decomposition job as Spark gets more executors (not a test).

    .venv/bin/python bench/scale.py [--series 8] [--size 512] [--slices 128] [--modes global,local] [--batch 8]

On a Spark standalone cluster on this machine (``scripts/spark-standalone.sh``) with one and then
two workers of one core each, it decomposes ``--series`` series matrices of a partition with
``spark/dssvd.py``, ``--batch`` series per Spark application (``CT_DENOISE_SPARK_BATCH_SERIES``:
the jobs of a batch run one after the other in one session; 1 is a spark-submit per series, as
the DAG does by default), one application after the other (as the DAG's ``ct_denoise_spark``
pool of one slot runs them), for each mode, and prints per mode and cluster size: the wall time,
what the jobs measured of themselves (session start, Python workers' start, compute), the
throughput in series per hour and the speed-up from one worker to two (goal: >= 1.7x).

From the two sizes it separates, per series, the part that does not shrink with executors
(``serial``: JVM and session start shared by a batch, the driver's own work, submission) from
the part that does (``parallel``), t(E) = serial + parallel / E, and projects a 100-series day on
4, 16 and 64 executors under the assumptions it prints. The numbers depend on what else runs on
the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(0, str(REPO / "bench"))

MASTER_PORT = 17077


def matrices(workdir: Path, count: int, size: int, slices: int) -> list[str]:
    """``count`` phantom-like series matrices (different noise), written once and kept."""
    from svd import phantom_like

    from ctdenoise.matrix_store import write_matrix

    urls = []
    for i in range(count):
        url = workdir / f"series-{i}-{size}x{slices}.zarr"
        if not (url / "zarr.json").exists():
            A = phantom_like(size, slices, seed=i)
            write_matrix(A, {"rows": size, "columns": size, "slices": slices,
                             "slice_noise_hu": [25.0] * slices}, str(url))  # fmt: skip
        urls.append(str(url))
    return urls


def cluster(action: str, workers: int, workdir: Path) -> None:
    env = {**os.environ, "SPARK_STANDALONE_DIR": str(workdir / "cluster"), "SPARK_WORKERS": str(workers),
           "SPARK_WORKER_CORES": "1", "SPARK_WORKER_MEMORY": "3g", "SPARK_MASTER_PORT": str(MASTER_PORT),
           "SPARK_MASTER_WEBUI_PORT": "18180", "SPARK_WORKER_WEBUI_PORT": "18181", "PYTHON": sys.executable}  # fmt: skip
    subprocess.run(["bash", str(REPO / "scripts" / "spark-standalone.sh"), action], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def submit(job_args: list[str], workers: int) -> tuple[list[dict[str, Any]], float]:
    """One Spark application; the records of its jobs (one JSON line each) and its wall time."""
    submit_bin = Path(sys.executable).parent / "spark-submit"
    env = {**os.environ, "JAVA_HOME": os.environ.get("JAVA_HOME", "/usr/lib/jvm/java-17-openjdk-amd64"),
           "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}  # fmt: skip
    cmd = [str(submit_bin), "--master", f"spark://127.0.0.1:{MASTER_PORT}", "--conf", f"spark.cores.max={workers}",
           "--executor-cores", "1", "--executor-memory", "2g", "--driver-memory", "1g",
           "--conf", "spark.ui.enabled=false", str(REPO / "spark" / "dssvd.py"), *job_args]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=7200)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"dssvd failed ({done.returncode}): {done.stdout[-1500:]} {done.stderr[-1500:]}")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    records = [line["record"] if "status" in line else line for line in lines]  # a batch prints a line per job
    return records, wall


def series_job(url: str, mode: str, workdir: Path, tag: str) -> Any:
    from ctdenoise.job import DssvdJob

    out = str(workdir / "out" / f"{tag}-{Path(url).stem}.zarr")
    rank = min(50, int(Path(url).stem.rsplit("x", 1)[-1]))  # the DAG's k, at most the slices
    return DssvdJob(matrix=url, out=out, rank=rank) if mode == "global" else DssvdJob(matrix=url, local_out=out)


def run_partition(urls: list[str], mode: str, workers: int, batch: int, workdir: Path) -> dict[str, Any]:
    from ctdenoise.job import DssvdBatch

    t0 = time.perf_counter()
    jobs = []
    for start in range(0, len(urls), batch):
        one = DssvdBatch(jobs=tuple(series_job(url, mode, workdir, f"{mode}-{workers}w") for url in urls[start : start + batch]))
        records, wall = submit(one.arguments(), workers)
        for record in records:
            timings = record["timings"]
            jobs.append({"wall": wall / len(records), **{k: timings.get(k, 0.0) for k in ("session_start", "workers_start", "compute_total")}})
    total = time.perf_counter() - t0
    return {"mode": mode, "workers": workers, "batch": batch, "total": total, "per_hour": 3600 * len(urls) / total, "jobs": jobs}


def print_results(results: list[dict[str, Any]], series: int) -> None:
    print("\n| mode | workers (1 core each) | series per application | partition of %d series (s) "
          "| per series: wall / session / workers / compute (s) | series per hour |" % series)  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in results:
        mean = {k: float(np.mean([j[k] for j in r["jobs"]])) for k in ("wall", "session_start", "workers_start", "compute_total")}
        print(f"| {r['mode']} | {r['workers']} | {r['batch']} | {r['total']:.1f} | {mean['wall']:.1f} / {mean['session_start']:.1f} / "
              f"{mean['workers_start']:.1f} / {mean['compute_total']:.1f} | {r['per_hour']:.0f} |")  # fmt: skip
    print()
    for mode in sorted({r["mode"] for r in results}):
        one, two = (next(r for r in results if r["mode"] == mode and r["workers"] == w) for w in (1, 2))
        speedup = one["total"] / two["total"]
        print(f"{mode}: speed-up from one worker to two {speedup:.2f}x (goal >= 1.7x: {'met' if speedup >= 1.7 else 'NOT met'})")
        project(mode, one["total"] / series, two["total"] / series)


def project(mode: str, t1: float, t2: float) -> None:
    """t(E) = serial + parallel / E fitted on E = 1, 2; a 100-series day on 4, 16, 64 executors."""
    parallel = max(0.0, 2 * (t1 - t2))
    serial = max(0.0, t1 - parallel)
    print(f"  per series: serial {serial:.1f} s (JVM, session, driver work), parallel {parallel:.1f} s at one executor")
    print("  assumptions: the serial part stays per series (a batch's session start shared by its series); the parallel part divides evenly over")
    print("  executors of one core (enough partitions: bands and row blocks); S3 and the network are not the limit;")
    print("  convert, reconstruct and report run beside the jobs (pod pool) and are not counted here.")
    print("  | executors | one job at a time: hours for 100 series | 4 jobs at once, executors shared: hours |")
    print("  |---|---|---|")
    for e in (4, 16, 64):
        sequential = 100 * (serial + parallel / e) / 3600
        shared = 100 / 4 * (serial + parallel / max(1, e // 4)) / 3600
        print(f"  | {e} | {sequential:.2f} | {shared:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=128)
    parser.add_argument("--modes", default="global,local")
    parser.add_argument("--batch", type=int, default=0, help="series per Spark application (default: all of them)")
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "bench-scale")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    urls = matrices(args.workdir, args.series, args.size, args.slices)
    one, five, _ = os.getloadavg()
    print(f"# bench/scale.py: {args.series} series of {args.size}x{args.size}x{args.slices}, {args.batch or args.series} per application, load average {one:.2f}/{five:.2f} on {os.cpu_count()} CPUs")
    results = []
    for workers in (1, 2):
        cluster("start", workers, args.workdir)
        try:
            results += [run_partition(urls, mode, workers, args.batch or args.series, args.workdir) for mode in args.modes.split(",")]
        finally:
            cluster("stop", workers, args.workdir)
    print_results(results, args.series)
    (args.workdir / "result.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
