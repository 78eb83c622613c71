"""Benchmark: what a user waits for, one series from upload to published outputs (not a test).

    .venv/bin/python bench/e2e.py [--size 512] [--slices 301] [--thin 1000] [--workdir DIR]

1. Simulates a low-dose phantom series (cached in the work folder), starts a moto S3 server and
   ``airflow standalone`` (scheduler, LocalExecutor, triggerer, the API; parallelism 4, the
   local runtime with Spark ``local[2]``) on 127.0.0.1, uploads the series and triggers one run.
2. Reads every task instance of that run from the metadata database: the sensor and the settle
   wait are reported apart; upload-to-published is from the end of the upload to the end of the
   last ``report``.
3. Runs each stage's own work on the same series in one process (``bench/stages.py``: convert,
   the decomposition job on the local engine, every reconstruct, the report), timing it and
   sampling its peak memory; for the decomposition the job's own compute (``compute_total``,
   recorded by the Spark run in its stores) is also shown.
4. Prints each stage's wall time against its own compute, what the difference is made of, and
   whether upload-to-published is within 1.5x the sum of the compute stages.
5. With ``--thin N``, a thin-slice series (size x size x N) goes through the stages in child
   processes for their peak memory, against the pod and executor requests of the Kubernetes
   settings (``CT_DENOISE_POD_MEMORY_REQUEST``, ``CT_DENOISE_SPARK_EXECUTOR_MEMORY``, ...).

Everything started is stopped at the end. The numbers depend on what else runs on the machine;
the CPU load before the run is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "bench"))

import devenv  # noqa: E402
from stages import run_child  # noqa: E402

BUCKET = "ct-denoise"
DATE = "2026-11-20"
FOLDER = "series-e2e"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def phantom(workdir: Path, size: int, slices: int, seed: int) -> Path:
    """The low-dose series (DICOM folder), simulated once per size and kept in ``workdir``."""
    folder = workdir / f"phantom-{size}x{slices}-s{seed}"
    done = folder / ".complete"
    if not done.exists():
        from ctdenoise.phantom import write_phantom_series

        t0 = time.perf_counter()
        write_phantom_series(str(folder), size=size, slices=slices, seed=seed)
        done.write_text(f"{time.perf_counter() - t0:.1f}\n")
    return folder


def standalone(env: dict[str, str], log: Path) -> subprocess.Popen:
    airflow = str(Path(sys.executable).parent / "airflow")
    out = open(log, "ab")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen([airflow, "standalone"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_dag(env: dict[str, str], timeout: float = 300) -> None:
    """Until the DAG processor has stored ct_denoise (a trigger before that is refused)."""
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with sqlite3.connect(db) as con:
                if con.execute("select 1 from dag where dag_id = ? and is_stale = 0", (devenv.DAG_ID,)).fetchone():
                    return
        except sqlite3.Error:
            pass
        time.sleep(2)
    raise RuntimeError("ct_denoise was not parsed in time (see the standalone log)")


def trigger(env: dict[str, str], log: Path, conf: dict[str, Any]) -> str:
    airflow = str(Path(sys.executable).parent / "airflow")
    run_id = f"bench__{int(time.time())}"
    args = [airflow, "dags", "trigger", devenv.DAG_ID, "--run-id", run_id, "--logical-date", f"{DATE}T12:00:00+00:00",
            "--conf", json.dumps(conf)]  # fmt: skip
    with open(log, "ab") as out:
        subprocess.run(args, env=env, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=300)
    return run_id


def task_instances(home: Path, run_id: str) -> tuple[str | None, list[dict[str, Any]]]:
    with sqlite3.connect(home / "airflow.db") as con:
        con.row_factory = sqlite3.Row
        run = con.execute("select state from dag_run where dag_id = ? and run_id = ?", (devenv.DAG_ID, run_id)).fetchone()
        rows = con.execute(
            "select task_id, map_index, state, start_date, end_date, queued_dttm, rendered_map_index from task_instance "
            "where dag_id = ? and run_id = ?", (devenv.DAG_ID, run_id)).fetchall()  # fmt: skip
    return (run["state"] if run else None), [dict(r) for r in rows]


def wait_for_run(home: Path, run_id: str, timeout: float) -> list[dict[str, Any]]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state, tis = task_instances(home, run_id)
        if state in ("success", "failed"):
            return tis
        time.sleep(3)
    raise RuntimeError(f"run {run_id} did not finish within {timeout:.0f} s")


def when(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace(" ", "T"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def stage_spans(tis: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task id: instances, first start, last end, the span, the summed durations, queue waits."""
    out: dict[str, dict[str, Any]] = {}
    for ti in tis:
        start, end, queued = when(ti["start_date"]), when(ti["end_date"]), when(ti["queued_dttm"])
        if start is None or end is None:
            continue
        s = out.setdefault(ti["task_id"], {"n": 0, "start": start, "end": end, "busy": 0.0, "queued": 0.0})
        s["n"] += 1
        s["start"], s["end"] = min(s["start"], start), max(s["end"], end)
        s["busy"] += (end - start).total_seconds()
        s["queued"] += max(0.0, (start - queued).total_seconds()) if queued else 0.0
    for s in out.values():
        s["span"] = (s["end"] - s["start"]).total_seconds()
    return out


def run_pipeline(workdir: Path, series_dir: Path, conf: dict[str, Any]) -> dict[str, Any]:
    """The DAG on one uploaded series under airflow standalone; the task instances and times."""
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh Airflow database: the run's logical date is fixed
    workdir.mkdir(parents=True)
    with devenv.moto_server() as endpoint:
        devenv.create_bucket(endpoint, BUCKET)
        home = workdir / "airflow-home"
        log = workdir / "airflow.log"
        port = free_port()
        extra = {
            "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port), "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True", "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
            "CT_DENOISE_SCHEDULE": "none", "CT_DENOISE_SETTLE_SECONDS": "5", "CT_DENOISE_POKE_INTERVAL_SECONDS": "2",
            "CT_DENOISE_WAIT_TIMEOUT_SECONDS": "900",
        }  # fmt: skip
        env = devenv.airflow_env(home, endpoint, bucket=BUCKET, extra=extra)
        devenv.migrate(env, log)
        devenv.create_pools(env, log)
        proc = standalone(env, log)
        try:
            wait_for_dag(env)
            t0 = time.perf_counter()
            devenv.upload_folder(series_dir, f"s3://{BUCKET}/incoming/{DATE}/{FOLDER}", devenv.s3_options(endpoint))
            upload_seconds = time.perf_counter() - t0
            uploaded = datetime.now(timezone.utc)
            run_id = trigger(env, log, conf)
            tis = wait_for_run(home, run_id, timeout=3600)
        finally:
            devenv.stop_group(proc)
        stores = read_stores(endpoint)
    return {"tis": tis, "upload_seconds": upload_seconds, "uploaded": uploaded, "stores": stores}


def read_stores(endpoint: str) -> dict[str, Any]:
    """The decomposition stores' own timings (what the Spark job measured of its compute)."""
    import fsspec

    fs, _ = fsspec.core.url_to_fs(f"s3://{BUCKET}", **devenv.s3_options(endpoint))
    out: dict[str, Any] = {}
    for path in fs.glob(f"{BUCKET}/work/{DATE}/{FOLDER}/*.zarr/zarr.json"):
        attrs = json.loads(fs.cat_file(path)).get("attributes", {})
        out[path.split("/")[-2]] = attrs.get("timings", {})
    return out


def compute_stages(workdir: Path, series_dir: Path, conf: dict[str, Any]) -> dict[str, Any]:
    """Each stage's own work on the same series, in one process each (bench/stages.py)."""
    from ctdenoise.job import DssvdJob
    from ctdenoise.params import RunParams
    from ctdenoise.plan import plan
    from ctdenoise.records import Converted, Series, parse_outcome

    import pydicom

    root = workdir / "in-process"
    uid = str(pydicom.dcmread(next(iter(sorted(series_dir.glob("*.dcm")))), stop_before_pixels=True).SeriesInstanceUID)
    series = Series(folder=FOLDER, ds=DATE, source_url=str(series_dir), files=0, series_instance_uid=uid,
                    work_url=str(root / "work"), denoised_url=str(root / "denoised"), params=RunParams.from_conf(conf))  # fmt: skip
    stage = [sys.executable, str(REPO / "bench" / "stages.py")]
    result: dict[str, Any] = {}
    converted_out, peak, wall = run_child([*stage, "convert", json.dumps({"src": str(series_dir), "dst": series.matrix_dir})])
    written = [parse_outcome(o) for o in converted_out["outcomes"] if o["status"] == "written"][0]
    result["convert"] = {"seconds": converted_out["times"]["total"], "peak_mb": peak, "parts": converted_out["times"]}
    converted = Converted.from_outcomes(series, [written])
    job_out, peak, _ = run_child([*stage, "job", json.dumps(DssvdJob.for_series(converted).arguments())])
    result["dssvd"] = {"seconds": job_out["times"]["total"], "peak_mb": peak, "record": job_out["record"]}
    outputs = plan([converted]).items
    runs = []
    for output in outputs:
        out, peak, _ = run_child([*stage, "reconstruct", json.dumps({"kwargs": output.reconstruct_kwargs()})])
        runs.append({"label": output.label, "seconds": out["times"]["total"], "peak_mb": peak, "parts": out["times"], "metrics": out["metrics"]})
    result["reconstruct"] = runs
    results = [{"output": o.to_xcom(), "metrics": r["metrics"]} for o, r in zip(outputs, runs, strict=True)]
    out, peak, _ = run_child([*stage, "report", json.dumps({"series": series.to_xcom(), "outputs": [o.to_xcom() for o in outputs], "results": results})])
    result["report"] = {"seconds": out["times"]["total"], "peak_mb": peak}
    return result


def load_before() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def report_latency(pipeline: dict[str, Any], compute: dict[str, Any]) -> None:
    # plan_deliveries and deliver skip without destinations, check_series when no report failed
    failed = [f"{t['task_id']}[{t['map_index']}]={t['state']}" for t in pipeline["tis"] if t["state"] not in ("success", "skipped")]
    if failed:
        print(f"\nthe run did not succeed: {', '.join(failed)} (see the airflow log in the work folder)")
        return
    spans = stage_spans(pipeline["tis"])
    reports_end = spans["report"]["end"]
    published = (reports_end - pipeline["uploaded"]).total_seconds()
    waits = sum(spans[t]["span"] for t in ("wait_for_scans", "wait_for_settled_upload") if t in spans)
    stage_compute = {
        "convert": compute["convert"]["seconds"],
        "dssvd": compute["dssvd"]["seconds"],
        "reconstruct": sum(r["seconds"] for r in compute["reconstruct"]),
        "report": compute["report"]["seconds"],
    }
    total_compute = sum(stage_compute.values())
    print(f"\nupload of the series: {pipeline['upload_seconds']:.1f} s; sensor and settle wait: {waits:.1f} s (reported apart)")
    print("\n| stage | task instances | wall span (s) | summed task time (s) | queue wait (s) | own compute, one process (s) | wall / compute |")
    print("|---|---|---|---|---|---|---|")
    for task in ("discover_series", "convert", "batch_series", "dssvd", "plan_ranks", "reconstruct", "report"):
        s = spans.get(task)
        if s is None:
            continue
        own = stage_compute.get(task)
        ratio = f"{s['span'] / own:.2f}x" if own else "-"
        print(f"| {task} | {s['n']} | {s['span']:.1f} | {s['busy']:.1f} | {s['queued']:.1f} | {'-' if own is None else f'{own:.1f}'} | {ratio} |")
    print(f"\nupload-to-published: {published:.1f} s (end of upload to end of the last report, sensor and settle included)")
    print(f"  without the sensor and settle wait: {published - waits:.1f} s")
    print(f"sum of the compute stages: {total_compute:.1f} s -> ratio {(published - waits) / total_compute:.2f}x (target <= 1.5x)")
    for name, timings in pipeline["stores"].items():
        print(f"  {name}: job timings {json.dumps(timings)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=301)
    parser.add_argument("--thin", type=int, default=0, help="also measure the peak memory of a size x size x THIN series")
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "bench-e2e")
    parser.add_argument("--conf", type=json.loads, default={}, help="run parameters (JSON); default: the DAG's defaults")
    parser.add_argument("--report", action="store_true", help="print the latency table of the last run in WORKDIR again")
    parser.add_argument("--thin-only", action="store_true", help="only the thin-slice series (with --thin)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.thin_only:
        thin_memory(args.workdir, args.size, args.thin, args.conf)
        return 0
    if args.report:
        pipeline = json.loads((args.workdir / "pipeline.json").read_text())
        for t in pipeline["tis"]:
            t.update({k: when(t[k]) for k in ("start_date", "end_date", "queued_dttm")})
        report_latency({**pipeline, "uploaded": when(pipeline["uploaded"])}, json.loads((args.workdir / "result.json").read_text())["compute"])
        return 0
    series_dir = phantom(args.workdir, args.size, args.slices, seed=0)
    print(f"# bench/e2e.py, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {load_before()}")
    print(f"# series {args.size}x{args.size}x{args.slices}, run parameters {json.dumps(args.conf) or 'defaults'}")
    pipeline = run_pipeline(args.workdir / "run", series_dir, args.conf)
    (args.workdir / "pipeline.json").write_text(json.dumps({k: v for k, v in pipeline.items()}, default=str, indent=1))
    compute = compute_stages(args.workdir / "run", series_dir, args.conf)
    report_latency(pipeline, compute)
    (args.workdir / "result.json").write_text(json.dumps({"pipeline": {k: v for k, v in pipeline.items() if k != "uploaded"},
                                                          "compute": compute}, default=str, indent=1))  # fmt: skip
    if args.thin:
        thin_memory(args.workdir, args.size, args.thin, args.conf)
    return 0


def thin_memory(workdir: Path, size: int, slices: int, conf: dict[str, Any]) -> None:
    """Peak memory of each stage on a thin-slice series, against the Kubernetes requests."""
    series_dir = phantom(workdir, size, slices, seed=1)
    compute = compute_stages(workdir / f"thin-{slices}", series_dir, conf)
    (workdir / f"thin-{slices}.json").write_text(json.dumps(compute, default=str, indent=1))
    print_thin(compute, size, slices)


def print_thin(compute: dict[str, Any], size: int, slices: int) -> None:
    from ctdenoise.orchestration.config import load_settings

    k8s = load_settings({})
    pod = {step: getattr(k8s, f"{step}_resources") for step in ("convert", "reconstruct")}
    print(f"\nthin-slice series {size}x{size}x{slices}: peak memory per stage (one process, MB) against the Kubernetes settings")
    print("| stage | seconds (one process) | peak MB | request | limit |")
    print("|---|---|---|---|---|")
    print(f"| convert | {compute['convert']['seconds']:.1f} | {compute['convert']['peak_mb']:.0f} | pod {pod['convert'].requests.get('memory')} "
          f"| {pod['convert'].limits.get('memory')} |")  # fmt: skip
    print(f"| dssvd (local engine: driver and executor work in one process) | {compute['dssvd']['seconds']:.1f} | {compute['dssvd']['peak_mb']:.0f} | "
          f"executor {k8s.spark_executor_memory} x {k8s.spark_executor_instances}, driver {k8s.spark_driver_memory} | - |")  # fmt: skip
    worst = max(compute["reconstruct"], key=lambda r: r["peak_mb"])
    print(f"| reconstruct (largest of {len(compute['reconstruct'])}: {worst['label']}) | {worst['seconds']:.1f} | {worst['peak_mb']:.0f} "
          f"| pod {pod['reconstruct'].requests.get('memory')} | {pod['reconstruct'].limits.get('memory')} |")  # fmt: skip
    print(f"| report | {compute['report']['seconds']:.1f} | {compute['report']['peak_mb']:.0f} | (Airflow worker) | - |")

if __name__ == "__main__":
    sys.exit(main())
