"""End to end: ``airflow dags test ct_denoise`` (local runtime) on a phantom series in moto S3.

One simulated low-dose series (64 x 64 pixels, 16 slices) is uploaded to
``incoming/2026-11-20/series-0/``; the whole DAG runs (deferrable sensor, settle rule, convert,
spark-submit on local[2], rank plan, reconstruct, report) in a private AIRFLOW_HOME. A second run
of the same date finds the series published with the same parameters and skips. ~2-3 minutes.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest

from ctdenoise.orchestration import devenv
from ctdenoise.orchestration import params as run_params

pytestmark = [pytest.mark.e2e, pytest.mark.spark]

DATE = "2026-11-20"
CONF = {"ranks": [4], "drop_percents": [], "auto_rank": True}


def test_dag_runs_green_on_a_phantom_and_skips_it_once_published(tmp_path: Path, s3_endpoint: str) -> None:
    import fsspec

    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    devenv.create_bucket(s3_endpoint, bucket)
    options = devenv.s3_options(s3_endpoint)
    record = devenv.write_phantom(tmp_path / "phantom", size=64, slices=16)
    uid = record["series_instance_uid"]
    devenv.upload_folder(tmp_path / "phantom", f"s3://{bucket}/incoming/{DATE}/series-0", options)
    env = devenv.airflow_env(tmp_path / "airflow-home", s3_endpoint, bucket=bucket)
    log = tmp_path / "airflow.log"
    devenv.migrate(env, log)
    devenv.create_pools(env, log)  # dags test ignores pools; a scheduler needs them
    with sqlite3.connect(tmp_path / "airflow-home" / "airflow.db") as con:
        pools = dict(con.execute("select pool, slots from slot_pool").fetchall())
    assert {name: slots for name, (slots, _) in devenv.POOLS.items()}.items() <= pools.items()

    result = devenv.dags_test(env, DATE, log, conf=CONF)
    assert result.returncode == 0 and result.run_state == "success", result.log_tail()
    assert {t["state"] for t in result.tasks} == {"success"}, result.tasks
    assert result.labels("convert") == result.labels("dssvd") == result.labels("report") == ["series-0"]
    labels = result.labels("reconstruct")
    assert "series-0 rank=4" in labels and len(labels) in (1, 2)  # 4 and the Gavish-Donoho rank (may coincide)

    fs, _ = fsspec.core.url_to_fs(f"s3://{bucket}", **options)
    series_root = f"{bucket}/denoised/{uid}"
    report = json.loads(fs.cat_file(f"{series_root}/report.json"))
    assert report["params_hash"] == run_params.params_hash(run_params.normalize(CONF))
    assert fs.exists(f"{series_root}/report.html")
    ranks = sorted(r["rank"] for r in report["ranks"])
    assert [f"series-0 rank={r}" for r in ranks] == sorted(labels, key=lambda s: int(s.split("=")[1]))
    for rank in ranks:
        out = f"{series_root}/rank-{rank}"
        assert fs.exists(f"{out}/_SUCCESS") and fs.exists(f"{out}/preview.png")
        assert json.loads(fs.cat_file(f"{out}/metrics.json"))["rank"] == rank
        assert len(fs.glob(f"{out}/dicom/*.dcm")) == 16
    assert fs.exists(f"{bucket}/work/{DATE}/series-0/matrix/{uid}.zarr/zarr.json")

    again = devenv.dags_test(env, DATE, log, conf=CONF)
    assert again.returncode == 0 and again.run_state == "success", again.log_tail()
    states = {t["task_id"]: t["state"] for t in again.tasks}
    assert states["discover_series"] == "skipped" and states["wait_for_scans"] == "success"
    assert {states[t] for t in ("convert", "dssvd", "plan_ranks", "reconstruct", "report")} == {"skipped"}
    assert "already published with the same parameters" in log.read_text()
