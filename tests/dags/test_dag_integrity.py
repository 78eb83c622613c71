"""ct_denoise parses cleanly, fast and light in both runtimes, with one graph for both."""

from __future__ import annotations

import pytest
from dag_fixtures import HEAVY_MODULES, probe_dag

RUNTIMES = ("local", "kubernetes")
EXPECTED_EDGES = {
    ("wait_for_scans", "wait_for_settled_upload"),
    ("wait_for_settled_upload", "discover_series"),
    ("discover_series", "convert"),
    ("convert", "batch_series"),
    ("batch_series", "dssvd"),
    ("convert", "plan_ranks"),
    ("dssvd", "plan_ranks"),
    ("plan_ranks", "reconstruct"),
    ("discover_series", "report"),
    ("plan_ranks", "report"),
    ("reconstruct", "report"),
    ("report", "plan_deliveries"),
    ("plan_deliveries", "deliver"),
    ("report", "check_series"),
    ("discover_series", "clean_work"),
    ("report", "clean_work"),
    ("deliver", "clean_work"),
}
PARSE_BUDGET_SECONDS = 2.0


@pytest.fixture(scope="module", params=RUNTIMES)
def probe(request: pytest.FixtureRequest) -> dict:
    return {"runtime": request.param, **probe_dag(request.param)}


@pytest.fixture(scope="module")
def probes() -> dict[str, dict]:
    return {runtime: probe_dag(runtime) for runtime in RUNTIMES}


def edges(tasks: dict) -> set[tuple[str, str]]:
    return {(up, task_id) for task_id, t in tasks.items() for up in t["upstream"]}


def test_no_import_errors_or_warnings(probe: dict) -> None:
    assert probe["import_errors"] == {}
    assert probe["warnings"] == {}, "the DAG file raised warnings at parse time"
    assert "dag" in probe, f"{probe['runtime']}: DAG ct_denoise not found"


def test_parse_time_under_budget(probe: dict) -> None:
    """The DAG file parses in under 2 s once Airflow itself is loaded (as in a DAG processor).

    Airflow's own figure (DagBag file stats) is wall-clock time, which other processes on a
    loaded 2-core machine inflate; the assertion is on the CPU time of the parse, measured
    again (up to 3 parses) only when over budget. Both are in the message.
    """
    runs = [probe]
    while min(r["parse_cpu_seconds"] for r in runs) >= PARSE_BUDGET_SECONDS and len(runs) < 3:
        runs.append(probe_dag(probe["runtime"], fresh=True))
    cpu = [round(r["parse_cpu_seconds"], 2) for r in runs]
    wall = [round(s, 2) for r in runs for s in r["parse_seconds"]]
    print(f"{probe['runtime']}: parse CPU {cpu} s, wall (Airflow DagBag stats) {wall} s")
    assert min(cpu) < PARSE_BUDGET_SECONDS, f"{probe['runtime']}: parse took CPU {cpu} s, wall {wall} s"


def test_no_heavy_imports_at_parse_time(probe: dict) -> None:
    assert probe["heavy_modules"] == [], f"parsing imported {probe['heavy_modules']} (of {HEAVY_MODULES})"


def test_owner_retries_tags(probe: dict) -> None:
    dag = probe["dag"]
    assert {"ctdenoise", probe["runtime"]} <= set(dag["tags"])
    assert dag["catchup"] is False
    assert dag["max_active_runs"] >= 1
    for task_id, t in probe["tasks"].items():
        assert t["owner"] == "ctdenoise", task_id
        assert t["retries"] >= 1, task_id
        assert t["retry_exponential_backoff"], task_id


def test_graph_is_the_pipeline(probe: dict) -> None:
    tasks = probe["tasks"]
    assert edges(tasks) == EXPECTED_EDGES
    mapped = {task_id for task_id, t in tasks.items() if t["mapped"]}
    assert mapped == {"convert", "dssvd", "reconstruct", "report", "deliver", "clean_work"}
    rules = {task_id: t["trigger_rule"] for task_id, t in tasks.items()}
    for task_id in ("batch_series", "plan_ranks", "report"):
        assert rules[task_id] == "all_done_min_one_success", task_id
    # a teardown: runs whatever happened before it, and the run's state stays report's
    assert rules["clean_work"] == "all_done_setup_success"
    for task_id in ("wait_for_scans", "wait_for_settled_upload", "discover_series", "convert", "dssvd", "reconstruct", "deliver"):
        assert rules[task_id] == "all_success", task_id
    assert rules["plan_deliveries"] == "all_done"  # a series' delivery never waits for another's report
    assert rules["check_series"] == "one_failed"  # a failed series still fails the run


def test_clean_work_is_a_teardown_that_waits_for_report(dag) -> None:  # noqa: ANN001 (the parsed DAG)
    """Work data goes after report and the deliveries (ctdenoise.retention.steps_pending); as a
    teardown clean_work never decides the run's state, which stays failed when a series failed."""
    clean = dag.get_task("clean_work")
    assert clean.is_teardown and not clean.on_failure_fail_dagrun
    assert {"report", "deliver"} <= clean.upstream_task_ids


def test_pools_bound_spark_and_pods(probe: dict) -> None:
    tasks = probe["tasks"]
    assert tasks["dssvd"]["pool"] == "ct_denoise_spark"
    assert tasks["convert"]["pool"] == tasks["reconstruct"]["pool"] == "ct_denoise_pods"
    assert tasks["deliver"]["pool"] == "ct_denoise_delivery"
    for task_id in ("convert", "batch_series", "dssvd", "reconstruct", "discover_series", "plan_ranks", "report", "plan_deliveries", "deliver", "check_series"):
        assert tasks[task_id]["execution_timeout"], f"{task_id} has no execution timeout"


def test_runtimes_share_task_ids_and_edges(probes: dict[str, dict]) -> None:
    local, kube = probes["local"]["tasks"], probes["kubernetes"]["tasks"]
    assert sorted(local) == sorted(kube)
    assert edges(local) == edges(kube)
    assert {t: v["trigger_rule"] for t, v in local.items()} == {t: v["trigger_rule"] for t, v in kube.items()}


def test_runtimes_differ_only_in_operators(probes: dict[str, dict]) -> None:
    local, kube = probes["local"]["tasks"], probes["kubernetes"]["tasks"]
    # the provider's KubernetesPodOperator, with exit status 2 of the pod failing at once
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    from airflow.providers.cncf.kubernetes.operators.spark_kubernetes import SparkKubernetesOperator

    from ctdenoise.orchestration.pods import CtDenoisePodOperator
    from ctdenoise.orchestration.spark_operator import CtDenoiseSparkOperator

    assert kube["convert"]["operator"] == kube["reconstruct"]["operator"] == "CtDenoisePodOperator"
    assert issubclass(CtDenoisePodOperator, KubernetesPodOperator)
    assert kube["dssvd"]["operator"] == "CtDenoiseSparkOperator"  # reports the application's own error
    assert issubclass(CtDenoiseSparkOperator, SparkKubernetesOperator)
    assert local["dssvd"]["operator"] == "AwsSparkSubmitOperator"
    assert local["convert"]["operator"] == local["reconstruct"]["operator"] == "_PythonDecoratedOperator"
    assert local["wait_for_scans"]["operator"] == kube["wait_for_scans"]["operator"] == "S3KeySensor"


def test_bad_runtime_is_an_import_error() -> None:
    probe = probe_dag("docker")
    assert probe["import_errors"], "an unknown CT_DENOISE_RUNTIME must fail the parse"
    assert "CT_DENOISE_RUNTIME" in next(iter(probe["import_errors"].values()))
