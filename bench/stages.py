"""Each stage of the pipeline on one series, in a child process: its time, its peak memory.

Used by ``bench/e2e.py``: the DAG's task instances tell what a user waits for; these tell what
the work itself costs on the same series and machine, so the difference is overhead (Airflow,
JVM and Python-worker start, S3 transfer). Each stage runs in its own child process
(``python bench/stages.py STAGE ...``) that prints one JSON line with its timings, and the
parent samples the peak resident memory of the child's process tree (the Spark JVM and its
Python workers included).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "plugins"))


def run_child(args: Sequence[str], env: dict[str, str] | None = None, poll: float = 0.05) -> tuple[dict[str, Any], float, float]:
    """Run a command; ``(its last JSON line, peak RSS of its process tree in MB, wall seconds)``."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(list(args), stdout=subprocess.PIPE, text=True, env=env)
    peak = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(poll)
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])}... exited {proc.returncode}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), peak / 2**20, wall


@contextmanager
def timed(into: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        into[name] = into.get(name, 0.0) + time.perf_counter() - t0


def _wrap(module: Any, name: str, into: dict[str, float], key: str) -> None:
    """Time every call of ``module.name`` into ``into[key]`` (the writer's DICOM encoding, its
    publication): where a stage's time goes, without touching the package."""
    original: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with timed(into, key):
            return original(*args, **kwargs)

    setattr(module, name, wrapper)


def stage_convert(src: str, dst: str) -> dict[str, Any]:
    from ctdenoise import dicom_series, storage
    from ctdenoise.convert import convert

    times: dict[str, float] = {}
    _wrap(dicom_series, "read_hu", times, "read_and_decode")
    _wrap(storage, "publish_dir", times, "publish")
    with timed(times, "total"):
        outcomes = [o.to_xcom() for o in convert(src, dst)]
    return {"times": times, "outcomes": outcomes}


def stage_job(job_args: list[str]) -> dict[str, Any]:
    """The decomposition job in this process (the local engine): both modes as the DAG asks."""
    from ctdenoise.job import DssvdJob, LocalEngine, run_job

    job = DssvdJob.from_arguments(DssvdJob.parser("job", "").parse_args(job_args))
    times: dict[str, float] = {}
    with timed(times, "total"):
        record = run_job(job, LocalEngine())
    return {"times": times, "record": record}


def stage_reconstruct(kwargs: dict[str, Any]) -> dict[str, Any]:
    from ctdenoise import storage, writer

    times: dict[str, float] = {}
    _wrap(writer, "_denoise_blocks", times, "denoise_pass")
    _wrap(writer, "_write_dicom", times, "dicom_encoding")
    _wrap(storage, "publish_dir", times, "publish")
    with timed(times, "total"):
        metrics = writer.reconstruct(**kwargs)
    return {"times": times, "metrics": metrics}


def stage_report(series: dict[str, Any], outputs: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
    from ctdenoise.records import Output, Reconstructed, Series
    from ctdenoise.report import RunInfo, publish_report

    times: dict[str, float] = {}
    with timed(times, "total"):
        publish_report(Series.from_xcom(series), [Output.from_xcom(o) for o in outputs],
                       [Reconstructed.from_xcom(r) for r in results], RunInfo(dag_id="bench"))  # fmt: skip
    return {"times": times}


STAGES = {"convert": stage_convert, "job": stage_job, "reconstruct": stage_reconstruct, "report": stage_report}


def main(argv: list[str]) -> int:
    stage, payload = argv[0], json.loads(argv[1])
    result = STAGES[stage](**payload) if isinstance(payload, dict) else STAGES[stage](payload)
    print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
