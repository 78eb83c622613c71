"""The images, exercised: each image's Python environment (``scripts/image_envs.py``: its requirement
file in a fresh virtualenv, the package installed non-editable, as its Dockerfile does) runs what
the image must run.

- worker: the pod entry point, with the container arguments the DAG renders, converts a series
  in every supported transfer syntax and reconstructs one output;
- spark: ``spark/dssvd.py``, copied away from the source tree as the image holds it, with the
  arguments of the SparkApplication, in both modes (``local[1]``; pyspark stands in for the
  base image's ``/opt/spark``);
- airflow: decodes every syntax, renders the SparkApplication from the installed package's
  template, parses the DAG from a dags folder outside the checkout, and creates the pools on a
  fresh Airflow database twice (idempotent), as the chart's migrate job does.

The environments are cached across runs (minutes to build); the package is reinstalled each time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from syntax_fixtures import write_every_syntax
from test_transfer_syntaxes import assert_converted

import image_envs

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def envs() -> dict[str, Path]:
    """Built lazily per image; the package reinstalled once per session."""
    return {}


def env_of(envs: dict[str, Path], name: str) -> Path:
    if name not in envs:
        env = image_envs.build(name)
        image_envs.install_package(env)
        envs[name] = env
    return envs[name]


def run(env: Path, args: list[str], *, extra_env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:  # fmt: skip
    """A command inside ``env`` only: its bin first on PATH, no PYTHONPATH into the checkout."""
    inherited = ("PYTHONPATH", "VIRTUAL_ENV", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")  # the tests' own interpreter
    clean = {k: v for k, v in os.environ.items() if k not in inherited and not k.startswith("CT_DENOISE_")}
    clean.update({"PATH": f"{env / 'bin'}:{os.environ.get('PATH', '')}", "MPLBACKEND": "Agg", **(extra_env or {})})
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=clean, cwd=cwd or env)


@pytest.fixture(scope="module")
def every_syntax(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list]]:
    return write_every_syntax(tmp_path_factory.mktemp("syntaxes"))


def series_record(folder: Path, uid: str, work: Path) -> dict[str, Any]:
    from ctdenoise.params import RunParams
    from ctdenoise.records import Series

    return Series(folder=folder.name, ds="2026-11-20", source_url=str(folder), files=3, series_instance_uid=uid,
                  work_url=str(work / folder.name), denoised_url=str(work / "denoised"), params=RunParams()).to_xcom()  # fmt: skip


def pod_args(kwargs: dict[str, Any], xcom: Path) -> list[str]:
    """The container's command line as the DAG renders it, with the XCom file moved to ``xcom``."""
    from ctdenoise.orchestration.pods import PODRUN

    args = kwargs["arguments"]
    split = args.index("--")
    return [*PODRUN, *args[:split], "--xcom", str(xcom), *args[split:]]


def test_worker_converts_every_supported_syntax_through_the_pod_entry_point(envs, every_syntax, tmp_path: Path) -> None:
    from ctdenoise.matrix_store import open_matrix
    from ctdenoise.orchestration.pods import convert_pod_kwargs
    from ctdenoise.records import Converted

    env = env_of(envs, "worker")
    done = run(env, ["ctdenoise", "decoders"])
    assert done.returncode == 0, done.stdout + done.stderr
    for syntax_uid, (folder, slices) in every_syntax.items():
        series = series_record(folder, slices[0].dataset.SeriesInstanceUID, tmp_path / "work")
        xcom = tmp_path / f"{folder.name}.json"
        done = run(env, pod_args(convert_pod_kwargs(series), xcom))
        assert done.returncode == 0, f"{syntax_uid}: {done.stderr[-2000:]}"
        converted = Converted.from_xcom(json.loads(xcom.read_text()))
        assert_converted(open_matrix(converted.matrix.url)[:], slices, syntax_uid)


def test_worker_pod_exit_statuses_follow_the_classification(envs, tmp_path: Path) -> None:
    """Bad input exits 2 (not retried); the XCom is written only on success."""
    from ctdenoise.orchestration.pods import convert_pod_kwargs

    env = env_of(envs, "worker")
    (tmp_path / "empty").mkdir()
    series = series_record(tmp_path / "empty", "1.2.3", tmp_path / "work")
    done = run(env, pod_args(convert_pod_kwargs(series), tmp_path / "x.json"))
    assert done.returncode == 2 and not (tmp_path / "x.json").exists(), done.stderr


def test_worker_reconstructs_through_the_pod_entry_point(envs, every_syntax, tmp_path: Path) -> None:
    from pydicom import uid as uids

    from ctdenoise.decomposition import svd_numpy
    from ctdenoise.orchestration.pods import convert_pod_kwargs, reconstruct_pod_kwargs
    from ctdenoise.records import Converted, Output

    env = env_of(envs, "worker")
    folder, slices = every_syntax[uids.ExplicitVRLittleEndian]
    series = series_record(folder, slices[0].dataset.SeriesInstanceUID, tmp_path / "work")
    assert run(env, pod_args(convert_pod_kwargs(series), tmp_path / "c.json")).returncode == 0
    converted = Converted.from_xcom(json.loads((tmp_path / "c.json").read_text()))
    svd_numpy(converted.matrix.url, converted.series.svd_url, rank=2)
    item = Output(series=converted.series, mode="global", rank=2).to_xcom()
    done = run(env, pod_args(reconstruct_pod_kwargs(item), tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["metrics"]["rank"] == 2 and (Path(result["output"]["output_url"]) / "_SUCCESS").is_file()


@pytest.mark.spark
@pytest.mark.parametrize("mode", ["global", "local"])
def test_spark_image_runs_dssvd(envs, every_syntax, tmp_path: Path, mode: str) -> None:
    """dssvd.py as the SparkApplication runs it: the image's copy, the manifest's arguments."""
    from pydicom import uid as uids

    from ctdenoise.convert import convert
    from ctdenoise.job import DssvdJob
    from ctdenoise.matrix_store import open_local, read_svd
    from ctdenoise.orchestration.config import load_settings
    from ctdenoise.orchestration.sparkapp import spark_application
    from ctdenoise.params import LocalParams
    from ctdenoise.records import Written

    env = env_of(envs, "spark")
    folder, _ = every_syntax[uids.ExplicitVRLittleEndian]
    (written,) = [o for o in convert(str(folder), str(tmp_path / "m")) if isinstance(o, Written)]
    job = DssvdJob(matrix=written.url, out=str(tmp_path / "svd.zarr"), rank=2) if mode == "global" else DssvdJob(
        matrix=written.url, local_out=str(tmp_path / "local.zarr"), local=LocalParams(tile=8, stride=4, multipliers=(1.0,)))
    arguments = spark_application(job, load_settings({}), "dssvd-test")["spec"]["arguments"]
    app = tmp_path / "opt" / "dssvd.py"  # away from the checkout: the installed package must serve
    app.parent.mkdir()
    shutil.copy(REPO / "spark" / "dssvd.py", app)
    done = run(env, ["spark-submit", "--master", "local[1]", str(app), *arguments], timeout=600,
               extra_env={"PYSPARK_PYTHON": str(env / "bin" / "python"), "SPARK_LOCAL_IP": "127.0.0.1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    if mode == "global":
        s, _, attrs = read_svd(job.out)
        assert attrs["matrix_shape"] == [32 * 32, 3] and len(s) == 3  # exact: the whole spectrum of 3 slices
    else:
        group, attrs = open_local(job.local_out)
        assert group["D"].shape == (1, 32 * 32, 3) and attrs["multipliers"] == [1.0]


def test_airflow_image_decodes_renders_parses_and_creates_pools(envs, every_syntax, tmp_path: Path) -> None:
    env = env_of(envs, "airflow")
    done = run(env, ["ctdenoise", "decoders"])
    assert done.returncode == 0, done.stdout + done.stderr
    for folder, _ in every_syntax.values():
        done = run(env, ["ctdenoise", "convert", str(folder), str(tmp_path / "m")])
        assert done.returncode == 0, done.stderr[-2000:]
    # the SparkApplication template from the installed (non-editable) package
    code = ("import ctdenoise, json; from ctdenoise.job import DssvdJob; from ctdenoise.orchestration.config import load_settings;"
            "from ctdenoise.orchestration.sparkapp import spark_application;"
            "m = spark_application(DssvdJob(matrix='s3://b/m', out='s3://b/s', rank=3), load_settings(), 'dssvd-x');"
            "print(json.dumps({'file': ctdenoise.__file__, 'kind': m['kind'], 'restart': m['spec']['restartPolicy']}))")  # fmt: skip
    done = run(env, [str(env / "bin" / "python"), "-c", code])
    assert done.returncode == 0, done.stderr[-2000:]
    rendered = json.loads(done.stdout)
    assert "site-packages" in rendered["file"] and str(REPO / "plugins") not in rendered["file"]
    assert rendered["kind"] == "SparkApplication" and rendered["restart"] == {"type": "Never"}
    _airflow_parses_the_dag_and_creates_pools(env, tmp_path)


def _airflow_parses_the_dag_and_creates_pools(env: Path, tmp_path: Path) -> None:
    home, dags = tmp_path / "airflow", tmp_path / "airflow" / "dags"
    dags.mkdir(parents=True)
    shutil.copy(REPO / "dags" / "ct_denoise.py", dags)  # as the image holds it: no plugins folder, no checkout
    airflow_env = {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                   "CT_DENOISE_RUNTIME": "kubernetes", "CT_DENOISE_SPARK_POOL_SLOTS": "2"}  # fmt: skip
    probe = ("from airflow.dag_processing.dagbag import DagBag; import sys;"
             f"b = DagBag(dag_folder={str(dags)!r}); print(sorted(b.dag_ids), b.import_errors); sys.exit(bool(b.import_errors))")  # fmt: skip
    done = run(env, [str(env / "bin" / "python"), "-c", probe], extra_env=airflow_env)
    assert done.returncode == 0 and "ct_denoise" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    done = run(env, ["airflow", "db", "migrate"], extra_env=airflow_env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    check = run(env, ["ctdenoise", "pools", "--check"], extra_env=airflow_env)
    assert check.returncode == 2 and "ct_denoise_spark" in check.stderr
    first, second = (run(env, ["ctdenoise", "pools"], extra_env=airflow_env) for _ in range(2))
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    actions = [[json.loads(line)["action"] for line in out.stdout.splitlines()] for out in (first, second)]
    assert actions == [["created"] * 3, ["unchanged"] * 3]  # the spark, pods and delivery pools
    assert run(env, ["ctdenoise", "pools", "--check"], extra_env=airflow_env).returncode == 0
    listed = run(env, ["airflow", "pools", "list", "-o", "json"], extra_env=airflow_env)
    pools = {p["pool"]: p for p in json.loads(listed.stdout)}
    assert str(pools["ct_denoise_spark"]["slots"]) == "2" and str(pools["ct_denoise_pods"]["include_deferred"]).lower() == "true"
