"""A throw-away local stack for the DAG: moto S3 on 127.0.0.1 + ``airflow dags test`` (local runtime).

Used by the end-to-end test and the demo; also by hand::

    python scripts/devenv.py --date 2026-11-20 --size 64 --slices 16

It starts a moto S3 server on a free port of 127.0.0.1, creates the bucket, simulates a low-dose
phantom series (``ctdenoise phantom``) and uploads it to ``incoming/<date>/<folder>/``, prepares
a private ``AIRFLOW_HOME`` (SQLite, ``airflow db migrate``) whose connections point at moto and
at Spark ``local[2]``, runs ``airflow dags test ct_denoise <date>``, and reads the task states
back from the metadata database. Everything it starts is stopped at the end; the work folder is
deleted unless ``--keep`` (or a ``--workdir`` you chose).

Everything here is stdlib, boto3 and fsspec; Airflow runs in child processes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

DAG_ID = "ct_denoise"
DEFAULT_JAVA_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"
TEST_KEY = TEST_SECRET = "testing"  # moto accepts any credentials
REGION = "us-east-1"


@dataclass
class DagTestResult:
    """Outcome of one ``airflow dags test`` run."""

    returncode: int
    seconds: float
    log_path: Path
    run_state: str | None
    tasks: list[dict[str, Any]] = field(default_factory=list)

    def states(self, task_id: str) -> list[str]:
        """States of a task's instances (one per map index), in map index order."""
        return [t["state"] for t in sorted(self.tasks, key=lambda t: t["map_index"]) if t["task_id"] == task_id]

    def labels(self, task_id: str) -> list[str | None]:
        return [t["rendered_map_index"] for t in sorted(self.tasks, key=lambda t: t["map_index"]) if t["task_id"] == task_id]

    def log_tail(self, lines: int = 80) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on a free port of 127.0.0.1 (in a thread); yields its endpoint URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_options(endpoint: str) -> dict[str, Any]:
    return {"key": TEST_KEY, "secret": TEST_SECRET, "endpoint_url": endpoint, "client_kwargs": {"region_name": REGION}}


def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=TEST_KEY, aws_secret_access_key=TEST_SECRET, region_name=REGION
    )
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass


def upload_folder(local: Path, url: str, storage_options: Mapping[str, Any]) -> int:
    """Upload every file below ``local`` to the prefix ``url``; returns the number of files."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **storage_options)
    files = sorted(p for p in Path(local).rglob("*") if p.is_file())
    fs.put([str(p) for p in files], [f"{root.rstrip('/')}/{p.relative_to(local).as_posix()}" for p in files])
    return len(files)


def airflow_env(
    home: Path, s3_endpoint: str, *, bucket: str, spark_master: str = "local[2]", extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment of the Airflow child processes: private home, connections, local runtime."""
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CT_DENOISE_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
                {
                    "conn_type": "aws",
                    "login": TEST_KEY,
                    "password": TEST_SECRET,
                    "extra": {"endpoint_url": s3_endpoint, "region_name": REGION},
                }
            ),
            "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": spark_master}),
            "CT_DENOISE_RUNTIME": "local",
            "CT_DENOISE_BUCKET": bucket,
            "CT_DENOISE_SETTLE_SECONDS": "0",
            "CT_DENOISE_POKE_INTERVAL_SECONDS": "2",
            "CT_DENOISE_WAIT_TIMEOUT_SECONDS": "20",
            "CT_DENOISE_RETRY_DELAY_SECONDS": "2",
            "CT_DENOISE_RETRIES": "1",
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "JAVA_HOME": os.environ.get("JAVA_HOME") or DEFAULT_JAVA_HOME,
            "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "MPLBACKEND": "Agg",
            "OPENBLAS_NUM_THREADS": "1",
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    env.update(extra or {})
    return env


def _airflow(args: list[str], env: Mapping[str, str], log: Path, timeout: float) -> int:
    airflow = str(Path(sys.executable).parent / "airflow")
    with open(log, "ab") as out:
        out.write(f"\n$ airflow {' '.join(args)}\n".encode())
        out.flush()
        # Its own session, so its Spark JVM and workers can be stopped as one group; that also
        # keeps Ctrl-C from reaching it, so on any interruption (timeout, KeyboardInterrupt,
        # the demo's SIGTERM handler) the group is stopped here before the error goes on.
        proc = subprocess.Popen([airflow, *args], env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except BaseException:
            stop_group(proc)
            raise


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session``), SIGKILL after 20 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def migrate(env: Mapping[str, str], log: Path, timeout: float = 300) -> None:
    code = _airflow(["db", "migrate"], env, log, timeout)
    if code != 0:
        raise RuntimeError(f"airflow db migrate failed (exit {code}); see {log}")


def create_pools(env: Mapping[str, str], log: Path) -> None:
    """Create or update the DAG's pools as a deployment does (``ctdenoise pools``, from the
    settings in ``env``) for a scheduler-run stack; ``airflow dags test`` ignores pools."""
    ctdenoise = str(Path(sys.executable).parent / "ctdenoise")
    with open(log, "ab") as out:
        code = subprocess.run([ctdenoise, "pools"], env=dict(env), stdout=out, stderr=subprocess.STDOUT, timeout=300).returncode
    if code != 0:
        raise RuntimeError(f"ctdenoise pools failed (exit {code}); see {log}")


def task_states(home: Path, dag_id: str = DAG_ID) -> tuple[str | None, list[dict[str, Any]]]:
    """``(run state, task instances)`` of the latest run, from the SQLite metadata database."""
    db = home / "airflow.db"
    if not db.exists():
        return None, []
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        run = con.execute(
            "select run_id, state from dag_run where dag_id = ? order by id desc limit 1", (dag_id,)
        ).fetchone()
        if run is None:
            return None, []
        rows = con.execute(
            "select task_id, map_index, state, rendered_map_index, try_number from task_instance "
            "where dag_id = ? and run_id = ? order by task_id, map_index",
            (dag_id, run["run_id"]),
        ).fetchall()
    return run["state"], [dict(r) for r in rows]


def dags_test(
    env: Mapping[str, str], date: str, log: Path, conf: Mapping[str, Any] | None = None, timeout: float = 1200
) -> DagTestResult:
    """``airflow dags test ct_denoise <date> [-c conf]``; the result with task states."""
    args = ["dags", "test", DAG_ID, date]
    if conf is not None:
        args += ["-c", json.dumps(conf)]
    started = time.perf_counter()
    code = _airflow(args, env, log, timeout)
    seconds = round(time.perf_counter() - started, 1)
    state, tasks = task_states(Path(env["AIRFLOW_HOME"]))
    return DagTestResult(returncode=code, seconds=seconds, log_path=log, run_state=state, tasks=tasks)


def write_phantom(out: Path, size: int, slices: int, seed: int = 0) -> dict[str, Any]:
    from ctdenoise.phantom import write_phantom_series

    return write_phantom_series(str(out), size=size, slices=slices, seed=seed)


def write_bad_series(source: Path, out: Path) -> str:
    """A copy of a phantom series as a new series whose slices 0 and 1 share one position.

    Its header is a valid CT slice (discover_series accepts the folder) but convert refuses the
    series (duplicate slice): the failure-isolation scenario. Returns its SeriesInstanceUID.
    """
    import pydicom
    from pydicom.uid import generate_uid

    out.mkdir(parents=True, exist_ok=True)
    uid = generate_uid(entropy_srcs=[str(out)])
    files = sorted(source.glob("*.dcm"))
    first = pydicom.dcmread(files[0])
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[uid, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if i == 1:
            ds.ImagePositionPatient = first.ImagePositionPatient
            if "SliceLocation" in first:
                ds.SliceLocation = first.SliceLocation
        ds.save_as(out / path.name)
    return str(uid)


def run_demo(
    *,
    date: str,
    size: int,
    slices: int,
    workdir: Path,
    conf: Mapping[str, Any] | None,
    bucket: str = "ct-denoise",
    folders: int = 1,
    bad_folder: bool = False,
    extra_env: Mapping[str, str] | None = None,
) -> int:
    """Phantom(s) -> moto -> ``airflow dags test`` -> summary on stdout; returns the exit status."""
    import fsspec

    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "airflow.log"
    with moto_server() as endpoint:
        create_bucket(endpoint, bucket)
        options = s3_options(endpoint)
        for i in range(folders):
            local = workdir / f"phantom-{i}"
            record = write_phantom(local, size, slices, seed=i)
            n = upload_folder(local, f"s3://{bucket}/incoming/{date}/series-{i}", options)
            print(f"uploaded {n} files of series {record['series_instance_uid']} to s3://{bucket}/incoming/{date}/series-{i}/")
        if bad_folder:
            source = workdir / "phantom-bad-source"
            write_phantom(source, size, slices, seed=99)
            uid = write_bad_series(source, workdir / "phantom-bad")
            n = upload_folder(workdir / "phantom-bad", f"s3://{bucket}/incoming/{date}/series-bad", options)
            print(f"uploaded {n} files of the bad series {uid} (duplicate slice) to s3://{bucket}/incoming/{date}/series-bad/")
        env = airflow_env(workdir / "airflow-home", endpoint, bucket=bucket, extra=extra_env)
        migrate(env, log)
        result = dags_test(env, date, log, conf=conf)
        print(f"airflow dags test: exit {result.returncode}, run {result.run_state}, {result.seconds} s (log: {log})")
        for t in result.tasks:
            label = f" [{t['rendered_map_index']}]" if t["rendered_map_index"] else ""
            print(f"  {t['task_id']:<24} {t['map_index']:>3} {t['state']}{label}")
        fs, _ = fsspec.core.url_to_fs(f"s3://{bucket}", **options)
        outputs = sorted(p for p in fs.find(f"{bucket}/denoised") if p.endswith(("report.json", "metrics.json")))
        for path in outputs:
            print(f"  s3://{path}")
        if result.returncode != 0:
            print(result.log_tail(), file=sys.stderr)
        return result.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctdenoise.orchestration.devenv", description=__doc__.splitlines()[0])
    parser.add_argument("--date", default="2026-11-20", help="logical date = partition incoming/<date>/")
    parser.add_argument("--size", type=int, default=64, help="phantom rows = columns")
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--folders", type=int, default=1, help="phantom series folders to upload (0: empty partition)")
    parser.add_argument("--bad-folder", action="store_true", help="also upload a series that convert refuses")
    parser.add_argument("--conf", type=json.loads, default=None, help='run conf JSON, e.g. \'{"ranks": [4]}\'')
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment, e.g. CT_DENOISE_DEFERRABLE=false")
    parser.add_argument("--workdir", type=Path, default=None, help="kept; default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ct-denoise-devenv-"))
    try:
        return run_demo(
            date=args.date,
            size=args.size,
            slices=args.slices,
            workdir=workdir,
            conf=args.conf,
            folders=args.folders,
            bad_folder=args.bad_folder,
            extra_env=dict(item.split("=", 1) for item in args.env),
        )
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work folder kept: {workdir}")


if __name__ == "__main__":
    sys.exit(main())
