"""Loading the ct_denoise DAG for tests, in this process or in a fresh one per runtime.

The runtime is read from ``CT_DENOISE_RUNTIME`` when the DAG file is parsed, so each runtime is
parsed with its own environment. Airflow is pointed at a private ``AIRFLOW_HOME`` in the temp
folder before it is first imported, so tests never write to ``~/airflow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_FILE = REPO_ROOT / "dags" / "ct_denoise.py"
DAG_ID = "ct_denoise"
HEAVY_MODULES = ("numpy", "pydicom", "pyspark", "zarr", "scipy", "pandas", "skimage", "matplotlib")

os.environ.setdefault("AIRFLOW_HOME", str(Path(tempfile.gettempdir()) / f"ctdenoise-test-airflow-{os.getuid()}"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

# Run in a fresh interpreter: Airflow itself is imported first (the DAG processor has it loaded),
# then the DagBag parses the DAG file and reports Airflow's own parse duration for it.
_PROBE = r"""
import json, sys, time
import airflow.sdk  # noqa: F401  (already loaded in a DAG processor)
from airflow.dag_processing.dagbag import DagBag
before = set(sys.modules)
cpu = time.process_time()
bag = DagBag(dag_folder=sys.argv[1], known_pools={"default_pool"})
cpu = time.process_time() - cpu
dag = bag.dags.get(sys.argv[2])
out = {
    "import_errors": {str(k): v for k, v in bag.import_errors.items()},
    "warnings": {str(k): list(v) for k, v in bag.captured_warnings.items()},
    "parse_seconds": [s.duration.total_seconds() for s in bag.dagbag_stats],
    "parse_cpu_seconds": cpu,
    "heavy_modules": sorted(m for m in json.loads(sys.argv[3]) if m in sys.modules),
    "new_modules": len(set(sys.modules) - before),
}
def _operator_name(t):
    cls = getattr(t, "operator_class", type(t))  # mapped operators hold the class they unmap to
    return cls.get("task_type") if isinstance(cls, dict) else cls.__name__
if dag is not None:
    out["dag"] = {
        "tags": sorted(dag.tags),
        "max_active_runs": dag.max_active_runs,
        "catchup": dag.catchup,
        "schedule": str(dag.timetable.summary) if hasattr(dag.timetable, "summary") else repr(dag.timetable),
        "params": sorted(dag.params.keys()),
    }
    out["tasks"] = {
        t.task_id: {
            "type": type(t).__name__,
            "operator": _operator_name(t),
            "upstream": sorted(t.upstream_task_ids),
            "downstream": sorted(t.downstream_task_ids),
            "trigger_rule": getattr(t.trigger_rule, "value", str(t.trigger_rule)),
            "owner": t.owner,
            "retries": t.retries,
            "retry_exponential_backoff": t.retry_exponential_backoff,
            "pool": t.pool,
            "mapped": type(t).__name__.endswith("MappedOperator"),
            "execution_timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
        }
        for t in dag.tasks
    }
print("PROBE-RESULT " + json.dumps(out))
"""


_PROBES: dict[tuple, dict[str, Any]] = {}


def probe_dag(
    runtime: str, extra_env: dict[str, str] | None = None, timeout: float = 180, fresh: bool = False
) -> dict[str, Any]:
    """Parse the DAG file in a fresh interpreter with ``CT_DENOISE_RUNTIME=runtime``; what it saw.

    Results are cached per (runtime, extra_env) for the session unless ``fresh``.
    """
    key = (runtime, tuple(sorted((extra_env or {}).items())))
    if not fresh and key in _PROBES:
        return _PROBES[key]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CT_DENOISE_")}
    env.update({"CT_DENOISE_RUNTIME": runtime, **(extra_env or {})})
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(DAG_FILE), DAG_ID, json.dumps(HEAVY_MODULES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("PROBE-RESULT "):
            _PROBES[key] = json.loads(line[len("PROBE-RESULT ") :])
            return _PROBES[key]
    raise AssertionError(f"DAG probe failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def load_dag(runtime: str, monkeypatch: Any, extra_env: dict[str, str] | None = None) -> Any:
    """Parse the DAG file in this process with the given runtime (and ``CT_DENOISE_*`` settings); the DAG object."""
    from airflow.dag_processing.dagbag import DagBag

    for name in [k for k in os.environ if k.startswith("CT_DENOISE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CT_DENOISE_RUNTIME", runtime)
    for name, value in (extra_env or {}).items():
        monkeypatch.setenv(name, value)
    bag = DagBag(dag_folder=str(DAG_FILE), known_pools={"default_pool"})
    assert not bag.import_errors, bag.import_errors
    return bag.dags[DAG_ID]


def sample_series(uid: str = "1.2.826.0.1.3680043.8.498.1", folder: str = "scan-a", ds: str = "2026-11-20") -> dict[str, Any]:
    """A series record as discover_series produces it (default params), as its XCom."""
    from ctdenoise.params import RunParams
    from ctdenoise.records import Series

    return Series(folder=folder, ds=ds, source_url=f"s3://ct-denoise/incoming/{ds}/{folder}", files=64,
                  series_instance_uid=uid, work_url=f"s3://ct-denoise/work/{ds}/{folder}",
                  denoised_url="s3://ct-denoise/denoised", params=RunParams()).to_xcom()  # fmt: skip


def sample_converted(series: dict[str, Any], slices: int = 64) -> dict[str, Any]:
    """The convert XCom of a series whose matrix was written."""
    from ctdenoise.records import Converted, Series, Written

    one = Series.from_xcom(series)
    written = Written(series_instance_uid=one.series_instance_uid, url=one.matrix_url, rows=512, columns=512,
                      slices=slices, ordering="normal", seconds=1.0)  # fmt: skip
    return Converted.from_outcomes(one, [written]).to_xcom()


def sample_item(series: dict[str, Any], rank: int = 20) -> dict[str, Any]:
    """One planned output of ``plan_ranks``, as its XCom."""
    from ctdenoise.records import Output, RankChoice, RuleDetail, Series

    choice = RankChoice(rank=rank, rules=(RuleDetail(rule="explicit"),))
    return Output(series=Series.from_xcom(series), mode="global", rank=rank, choice=choice).to_xcom()
