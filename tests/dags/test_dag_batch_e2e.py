"""End to end: the batch behaviour of ``ct_denoise`` through ``airflow dags test`` (local runtime).

One moto S3 server (HTTP on 127.0.0.1) and one migrated ``AIRFLOW_HOME`` serve the whole module.
Six DAG runs on small phantoms (48 x 48 pixels, 10 slices, so each spark-submit is quick) cover
the batch rules (:mod:`ctdenoise.orchestration.discovery`, :func:`ctdenoise.report.publish_report`):

===  ==========================================================  ===============================
run  partition and set-up                                        scenarios
===  ==========================================================  ===============================
1    ``incoming/D1/``: ``series-a`` uploaded before the run,     1 two series published at every
     ``series-b`` uploaded one slice per second *during* the     rank; 2 a corrupt series fails
     run (settle 8 s), ``series-bad`` (two slices at one         alone; 5 a series being
     position) and ``series-trunc`` (one slice cut short);       uploaded waits until settled
     two series per dssvd (``CT_DENOISE_SPARK_BATCH_SERIES``)
2    ``incoming/D2/``: ``series-c``                              4 one partition per run
3    D2 again, same parameters                                   3 all published: all skipped
4    D1 again, same parameters                                   3 only incomplete series redone
5    D2 again with ``force``                                     3 redone, identical outputs
6    ``incoming/D3/`` empty, reschedule-mode sensor, 6 s         6 skipped, not failed
===  ==========================================================  ===============================

plus ``airflow backfill create --dry-run`` over D1..D2 (4: one run per date) and the pools.

The runs are module-scoped fixtures chained in that order, so that each scenario sees the
bucket its predecessors left, and a single test can still be selected on its own. Everything
read from the metadata database (task states, sensor end dates, reschedules, XComs) is read
right after its run: ``airflow dags test`` deletes the previous run of the same logical date.
Three spark-submits in all (~30 s each on 2 cores; run 1's two series share one): about 5 minutes.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import devenv
from ctdenoise.params import RunParams

pytestmark = [pytest.mark.e2e, pytest.mark.spark]

D1, D2, D_EMPTY = "2026-11-20", "2026-11-21", "2026-11-22"
SIZE, SLICES = 48, 10
# Global mode: two explicit ranks + Gavish-Donoho; local mode at the optimal threshold only.
CONF = {"ranks": [2, 5], "drop_percents": [], "auto_rank": True, "multipliers": [1.0]}
LOCAL_OUTPUT = "local-x1"
SETTLE_SECONDS = 8  # run 1 only; gaps between slices of the slow upload stay well below it
POKE_SECONDS = 2
UPLOAD_INTERVAL_SECONDS = 1.0
HELD_BACK, HOLD_SECONDS = 3, 5.0  # see _upload_slowly; HOLD_SECONDS + 1 s (LastModified) < SETTLE_SECONDS
GOOD, SLOW, OTHER_DAY = "series-a", "series-b", "series-c"
DUPLICATE, TRUNCATED = "series-bad", "series-trunc"
TRUNCATED_FILE = "IM0005.dcm"
SENSOR = "wait_for_settled_upload"
DELIVERY = ("plan_deliveries", "deliver")  # skipped here: these runs name no destinations (tests/test_orchestration_delivery.py)
QUIET = (*DELIVERY, "check_series")  # check_series runs only when a series failed


# ---------------------------------------------------------------------------------------------
# The stack: moto, bucket, Airflow home, and what one run left in the metadata database


def processing_states(run: "Run") -> set[str]:
    """The states of every task but the delivery steps (which skip without destinations) and
    check_series (which skips when no series failed)."""
    assert {t["state"] for t in run.tis if t["task_id"] in QUIET} <= {"skipped"}, run.summary()
    return {t["state"] for t in run.tis if t["task_id"] not in QUIET}


def _utc(value: str | None) -> datetime | None:
    """A datetime column of the SQLite metadata database (UTC, with or without offset)."""
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _json(value: Any) -> Any:
    """An XCom value column: JSON text (possibly JSON of a JSON string)."""
    while isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError:
            break
    return value


@dataclass
class Series:
    """A series folder as uploaded: local files, folder name, SeriesInstanceUID."""

    folder: str
    path: Path
    uid: str

    def dicom_files(self) -> list[Path]:
        return sorted(self.path.glob("*.dcm"))


@dataclass
class Run:
    """One ``airflow dags test`` run and what it left in the metadata database."""

    name: str
    date: str
    result: devenv.DagTestResult
    log: str
    run_id: str
    tis: list[dict[str, Any]]
    reschedules: dict[str, list[dict[str, Any]]]
    xcoms: dict[tuple[str, int], Any]

    def ti(self, task_id: str, label: str) -> dict[str, Any]:
        found = [t for t in self.tis if t["task_id"] == task_id and t["rendered_map_index"] == label]
        assert len(found) == 1, f"{task_id}[{label}]: {found} in {self.summary()}"
        return found[0]

    def state(self, task_id: str, label: str) -> str:
        return self.ti(task_id, label)["state"]

    def labels(self, task_id: str) -> list[str]:
        return sorted(t["rendered_map_index"] for t in self.tis if t["task_id"] == task_id and t["rendered_map_index"])

    def ranks(self, folder: str) -> dict[int, str]:
        """``{rank: state}`` of the reconstruct instances of one series folder."""
        out = {}
        for t in self.tis:
            label = t["rendered_map_index"] or ""
            if t["task_id"] == "reconstruct" and label.startswith(f"{folder} rank="):
                out[int(label.split("=")[1])] = t["state"]
        return dict(sorted(out.items()))

    def summary(self) -> str:
        rows = [f"{t['task_id']}[{t['rendered_map_index'] or t['map_index']}]={t['state']}" for t in self.tis]
        return f"run {self.name} ({self.result.run_state}, exit {self.result.returncode}): " + ", ".join(rows)


@dataclass
class Stack:
    """The module's moto endpoint, bucket, temp folder (Airflow home, run logs) and S3 client."""

    endpoint: str
    bucket: str
    tmp: Path
    fs: Any

    @property
    def home(self) -> Path:
        return self.tmp / "airflow-home"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return devenv.airflow_env(self.home, self.endpoint, bucket=self.bucket, extra=extra)

    def query(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        with closing(sqlite3.connect(self.home / "airflow.db", timeout=30)) as con:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute(sql, args).fetchall()]

    def running_state(self, date: str, task_id: str) -> str | None:
        """State of a task of the *running* run of ``date`` (None before it exists or if locked)."""
        try:
            rows = self.query(
                "select ti.state from task_instance ti join dag_run r on r.dag_id = ti.dag_id and r.run_id = ti.run_id "
                "where r.dag_id = ? and r.state = 'running' and r.logical_date like ? and ti.task_id = ?",
                (devenv.DAG_ID, f"{date}%", task_id),
            )
        except sqlite3.OperationalError:  # locked mid-write by the run: ask again
            return None
        return rows[0]["state"] if rows else None

    def dags_test(self, name: str, date: str, conf: dict | None = None, extra: dict[str, str] | None = None) -> Run:
        log = self.tmp / f"run-{name}.log"
        result = devenv.dags_test(self.env(extra), date, log, conf=conf, timeout=600)
        (run,) = self.query(
            "select run_id from dag_run where dag_id = ? and logical_date like ? order by id desc limit 1",
            (devenv.DAG_ID, f"{date}%"),
        )
        run_id = run["run_id"]
        tis = self.query(
            "select id, task_id, map_index, state, rendered_map_index, try_number, start_date, end_date "
            "from task_instance where dag_id = ? and run_id = ? order by task_id, map_index",
            (devenv.DAG_ID, run_id),
        )
        for t in tis:
            t["start_date"], t["end_date"] = _utc(t["start_date"]), _utc(t["end_date"])
        reschedules: dict[str, list[dict[str, Any]]] = {}
        for row in self.query(
            "select ti.task_id, tr.start_date, tr.end_date, tr.reschedule_date from task_reschedule tr "
            "join task_instance ti on ti.id = tr.ti_id where ti.dag_id = ? and ti.run_id = ? order by tr.id",
            (devenv.DAG_ID, run_id),
        ):
            reschedules.setdefault(row.pop("task_id"), []).append({k: _utc(v) for k, v in row.items()})
        xcoms = {
            (r["task_id"], r["map_index"]): _json(r["value"])
            for r in self.query(
                "select task_id, map_index, value from xcom where dag_id = ? and run_id = ? and key = 'return_value'",
                (devenv.DAG_ID, run_id),
            )
        }
        return Run(name, date, result, log.read_text(errors="replace"), run_id, tis, reschedules, xcoms)

    def key(self, *parts: str) -> str:
        return "/".join([self.bucket, *parts])

    def upload(self, series: Series, date: str) -> None:
        devenv.upload_folder(series.path, f"s3://{self.key('incoming', date, series.folder)}", devenv.s3_options(self.endpoint))

    def snapshot(self, *prefix: str) -> dict[str, tuple[str, datetime]]:
        """``{key: (ETag, LastModified)}`` of every object below a prefix."""
        self.fs.invalidate_cache()
        root = self.key(*prefix)
        if not self.fs.exists(root):
            return {}
        return {
            path: (info["ETag"], info["LastModified"])
            for path, info in self.fs.find(root, detail=True).items()
            if info.get("type") != "directory"
        }

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.fs.cat_file(self.key(*parts)))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Moto S3 on a free port, a bucket, and an ``AIRFLOW_HOME`` migrated once for every run."""
    import fsspec

    tmp = tmp_path_factory.mktemp("batch-e2e")
    with devenv.moto_server() as endpoint:
        bucket = "ct-denoise-e2e"
        devenv.create_bucket(endpoint, bucket)
        fs = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False, **devenv.s3_options(endpoint))
        out = Stack(endpoint=endpoint, bucket=bucket, tmp=tmp, fs=fs)
        devenv.migrate(out.env(), tmp / "migrate.log")
        yield out


# ---------------------------------------------------------------------------------------------
# Input series


def write_truncated_series(source: Path, out: Path, cut_file: str) -> str:
    """A copy of ``source`` as a new series whose ``cut_file`` lost half of its pixel data.

    The header of every file still reads (discover_series takes the folder); convert cannot
    decode the cut slice and refuses the series. Returns its SeriesInstanceUID.
    """
    import pydicom
    from pydicom.uid import generate_uid

    out.mkdir(parents=True, exist_ok=True)
    uid = generate_uid(entropy_srcs=[str(out)])
    for i, path in enumerate(sorted(source.glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[uid, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(out / path.name)
    cut = out / cut_file
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) - SIZE * SIZE])  # 2 bytes per pixel: half of the pixel data
    return str(uid)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Series]:
    """The local series folders: three good phantoms, a duplicate-slice and a truncated copy."""
    tmp = tmp_path_factory.mktemp("series")
    out: dict[str, Series] = {}
    for seed, folder in enumerate((GOOD, SLOW, OTHER_DAY), start=1):
        record = devenv.write_phantom(tmp / folder, SIZE, SLICES, seed=seed)
        out[folder] = Series(folder, tmp / folder, record["series_instance_uid"])
    out[DUPLICATE] = Series(DUPLICATE, tmp / DUPLICATE, devenv.write_bad_series(tmp / GOOD, tmp / DUPLICATE))
    out[TRUNCATED] = Series(TRUNCATED, tmp / TRUNCATED, write_truncated_series(tmp / GOOD, tmp / TRUNCATED, TRUNCATED_FILE))
    assert len({s.uid for s in out.values()}) == len(out)
    return out


def _source_headers(series: Series) -> dict[str, Any]:
    """``{SOPInstanceUID: header}`` of the uploaded files of a series."""
    import pydicom

    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in series.dicom_files()]
    return {str(ds.SOPInstanceUID): ds for ds in headers}


# ---------------------------------------------------------------------------------------------
# Run 1: D1 with a good series, one uploaded during the run, and two corrupt series


@dataclass
class Upload:
    name: str
    started: datetime  # UTC, before the PUT
    finished: datetime  # UTC, after the PUT returned


@dataclass
class FirstRun:
    run: Run
    uploads: list[Upload]
    denoised: dict[str, tuple[str, datetime]]  # snapshot of denoised/ right after the run


def _wait_until(condition: Callable[[], bool], timeout: float, alive: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        if condition():
            return True
        time.sleep(0.5)
    return False


def _upload_slowly(
    stack: Stack, series: Series, date: str, sensor_poked: Callable[[], bool], which: slice = slice(None)
) -> list[Upload]:
    """PUT the slices ``which`` of a series one by one, ``UPLOAD_INTERVAL_SECONDS`` apart; their times.

    The last ``HELD_BACK`` slices also wait (up to ``HOLD_SECONDS`` each, well below the settle
    time, so that the folder never looks settled) until the sensor has poked once: it then sees
    the folder half uploaded however long the run took to get there.
    """
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=stack.endpoint,
        aws_access_key_id=devenv.TEST_KEY,
        aws_secret_access_key=devenv.TEST_SECRET,
        region_name=devenv.REGION,
    )
    uploads: list[Upload] = []
    every = series.dicom_files()
    files = every[which]
    first = every.index(files[0])
    for i, path in enumerate(files, start=first):
        if i > first:
            time.sleep(UPLOAD_INTERVAL_SECONDS)
            if len(every) - i <= HELD_BACK:
                deadline = time.monotonic() + HOLD_SECONDS - UPLOAD_INTERVAL_SECONDS
                while not sensor_poked() and time.monotonic() < deadline:
                    time.sleep(0.25)
        started = datetime.now(timezone.utc)
        client.put_object(Bucket=stack.bucket, Key=f"incoming/{date}/{series.folder}/{path.name}", Body=path.read_bytes())
        uploads.append(Upload(path.name, started, datetime.now(timezone.utc)))
    return uploads


@pytest.fixture(scope="module")
def run_d1(stack: Stack, sources: dict[str, Series]) -> FirstRun:
    """Run 1. ``series-b``'s first slice is there before the run, the others are uploaded from
    the moment ``wait_for_scans`` starts (it finds ``series-a``), so that every poke of
    ``wait_for_settled_upload`` finds series-b there but incomplete until the last slice (a
    first poke racing the first PUT would see no series-b at all)."""
    for folder in (GOOD, DUPLICATE, TRUNCATED):
        stack.upload(sources[folder], D1)
    head = _upload_slowly(stack, sources[SLOW], D1, lambda: False, which=slice(0, 1))
    # Work data kept in this run only: scenario 5 reads series-b's matrix afterwards (clean_work
    # removes a published series' work data by default: scenario 4 checks that).
    extra = {"CT_DENOISE_SETTLE_SECONDS": str(SETTLE_SECONDS), "CT_DENOISE_POKE_INTERVAL_SECONDS": str(POKE_SECONDS),
             "CT_DENOISE_WORK_RETENTION": "keep", "CT_DENOISE_SPARK_BATCH_SERIES": "2"}  # fmt: skip
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["run"] = stack.dags_test("d1", D1, CONF, extra)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the test thread below)
            box["error"] = exc

    poked = threading.Event()

    def sensor_poked() -> bool:
        if not poked.is_set() and stack.running_state(D1, SENSOR) in ("up_for_reschedule", "success", "failed"):
            poked.set()
        return poked.is_set()

    thread = threading.Thread(target=run, name="airflow-dags-test", daemon=True)
    thread.start()
    started = ("running", "deferred", "up_for_reschedule", "success")
    _wait_until(lambda: stack.running_state(D1, "wait_for_scans") in started, timeout=300, alive=thread.is_alive)
    uploads = head + _upload_slowly(stack, sources[SLOW], D1, sensor_poked, which=slice(1, None))
    thread.join(timeout=900)
    assert not thread.is_alive(), "airflow dags test did not end"
    if "error" in box:
        raise box["error"]
    return FirstRun(run=box["run"], uploads=uploads, denoised=stack.snapshot("denoised"))


def test_two_series_are_published_at_every_planned_rank(run_d1: FirstRun, stack: Stack, sources: dict[str, Series]) -> None:
    """Scenario 1: both good series converted, decomposed, reconstructed and reported; every
    derived DICOM re-reads with the source's geometry and UIDs."""
    import pydicom

    run = run_d1.run
    expected_hash = RunParams.from_conf(CONF).params_hash()
    derived_series: set[str] = set()
    derived_sops: set[str] = set()
    # CT_DENOISE_SPARK_BATCH_SERIES=2: both good series in one dssvd task (one Spark application)
    assert [run.state("dssvd", label) for label in run.labels("dssvd")] == ["success"], run.summary()
    for folder in (GOOD, SLOW):
        series = sources[folder]
        assert run.state("convert", folder) == "success", run.summary()
        assert run.state("report", folder) == "success", run.summary()
        planned = run.ranks(folder)
        assert set(CONF["ranks"]) <= set(planned) and set(planned.values()) == {"success"}, planned

        report = stack.read_json("denoised", series.uid, "report.json")
        assert report["series_instance_uid"] == series.uid and report["params_hash"] == expected_hash
        assert report["run"]["run_id"] == run.run_id
        assert [r["rank"] for r in report["ranks"]] == list(planned)
        assert {r["status"] for r in report["ranks"]} == {"ok"} and report["failed_ranks"] == []
        assert stack.fs.exists(stack.key("denoised", series.uid, "report.html"))
        assert run.state("reconstruct", f"{folder} local x1") == "success", run.summary()
        assert [o["multiplier"] for o in report["local"]["outputs"]] == [1.0]
        assert report["local"]["outputs"][0]["status"] == "ok" and report["local"]["tile"] == report["params"]["tile"]

        source = _source_headers(series)
        first = next(iter(source.values()))
        for rank in [*planned, None]:
            out = ("denoised", series.uid, f"rank-{rank}" if rank is not None else LOCAL_OUTPUT)
            assert stack.fs.exists(stack.key(*out, "_SUCCESS")) and stack.fs.exists(stack.key(*out, "preview.png"))
            metrics = stack.read_json(*out, "metrics.json")
            if rank is None:
                assert metrics["mode"] == "local" and metrics["multiplier"] == 1.0
            else:
                assert metrics["mode"] == "global" and metrics["rank"] == rank
            assert metrics["source_series_instance_uid"] == series.uid
            files = sorted(stack.fs.glob(stack.key(*out, "dicom", "*.dcm")))
            assert len(files) == SLICES, files
            blobs = stack.fs.cat(files)
            datasets = [pydicom.dcmread(io.BytesIO(blobs[f])) for f in files]
            uids = {str(ds.SeriesInstanceUID) for ds in datasets}
            assert len(uids) == 1 and uids.isdisjoint({series.uid} | derived_series), uids
            assert uids == {metrics["series_instance_uid"]}
            derived_series |= uids
            referenced = []
            for ds in datasets:
                assert str(ds.StudyInstanceUID) == str(first.StudyInstanceUID)
                assert str(ds.FrameOfReferenceUID) == str(first.FrameOfReferenceUID)
                assert str(ds.SOPInstanceUID) not in derived_sops and str(ds.SOPInstanceUID) not in source
                derived_sops.add(str(ds.SOPInstanceUID))
                ref = str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
                assert ref in source, f"{ds.filename}: SourceImageSequence references {ref}, not a source slice"
                referenced.append(ref)
                src = source[ref]
                assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx([float(v) for v in src.ImagePositionPatient])
                assert [float(v) for v in ds.ImageOrientationPatient] == pytest.approx(
                    [float(v) for v in src.ImageOrientationPatient]
                )
                assert [float(v) for v in ds.PixelSpacing] == pytest.approx([float(v) for v in src.PixelSpacing])
                assert ds.pixel_array.shape == (SIZE, SIZE) == (src.Rows, src.Columns)
            assert sorted(referenced) == sorted(source), "each source slice is referenced exactly once"
            z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
            assert z == sorted(z) and len(set(z)) == SLICES, "files in ascending slice position"


def test_a_corrupt_series_fails_alone_and_publishes_nothing(
    run_d1: FirstRun, stack: Stack, sources: dict[str, Series]
) -> None:
    """Scenario 2: the duplicate-slice and truncated series fail their own tasks with a one-line
    reason; the good series are complete; nothing of the bad ones is visible in denoised/."""
    run = run_d1.run
    assert run.result.returncode != 0 and run.result.run_state == "failed", run.summary()
    assert run.ti("check_series", None)["state"] == "failed", "the failed series fail the run"
    assert run.labels("convert") == sorted([GOOD, SLOW, DUPLICATE, TRUNCATED])
    assert run.labels("dssvd") == [f"{min(GOOD, SLOW)} +1"], "dssvd runs for the converted series only (one batch)"
    reasons = {
        DUPLICATE: ("duplicate slice", "IM0002.dcm"),
        TRUNCATED: ("cannot decode pixel data", TRUNCATED_FILE),
    }
    for folder, (reason, file) in reasons.items():
        uid = sources[folder].uid
        ti = run.ti("convert", folder)
        assert ti["state"] == "failed" and ti["try_number"] == 1, f"{ti}: input errors fail without retry"
        assert run.state("report", folder) == "failed"
        assert not any(label.startswith(f"{folder} ") for label in run.labels("reconstruct"))
        lines = [
            line
            for line in run.log.splitlines()
            if f"series folder {folder} ({uid}): conversion failed" in line and reason in line and file in line
        ]
        assert lines, f"no single log line names {folder}, {file} and '{reason}' in {run.result.log_path}"
        assert not stack.snapshot("denoised", uid), f"denoised/{uid}/ must stay empty"
        assert not [k for k in stack.snapshot("work", D1, folder) if k.endswith("zarr.json")], "no matrix published"
    for folder in (GOOD, SLOW):
        assert stack.fs.exists(stack.key("denoised", sources[folder].uid, "report.json"))


def test_a_series_still_uploading_waits_until_settled(run_d1: FirstRun, stack: Stack, sources: dict[str, Series]) -> None:
    """Scenario 5: the sensor poked while series-b was half uploaded, ended only once its last
    slice was SETTLE_SECONDS old, and the matrix holds every slice."""
    from ctdenoise.matrix_store import open_matrix

    run, uploads = run_d1.run, run_d1.uploads
    assert [u.name for u in uploads] == [p.name for p in sources[SLOW].dicom_files()]
    last_put = max(u.started for u in uploads)
    (sensor,) = [t for t in run.tis if t["task_id"] == SENSOR]
    assert sensor["state"] == "success", run.summary()
    # S3 LastModified has 1 s resolution (moto truncates it too): the newest slice counts from
    # the whole second its PUT started in, never earlier.
    settled_at = last_put.replace(microsecond=0) + timedelta(seconds=SETTLE_SECONDS)
    assert sensor["end_date"] >= settled_at, (sensor["end_date"], settled_at)
    pokes = run.reschedules.get(SENSOR, [])
    assert pokes and uploads[0].finished < pokes[0]["start_date"] < last_put, f"no poke mid-upload: {pokes}, {uploads}"
    assert any("still changing" in line and SLOW in line for line in run.log.splitlines())
    listing = run.xcoms[(SENSOR, -1)]
    assert listing["settled"] and listing["folders"][SLOW] == SLICES and not listing["unsettled"], listing

    assert run.state("convert", SLOW) == "success"
    matrix = open_matrix(
        f"s3://{stack.key('work', D1, SLOW, 'matrix', sources[SLOW].uid + '.zarr')}", devenv.s3_options(stack.endpoint)
    )
    assert matrix.shape == (SIZE * SIZE, SLICES)
    assert sorted(matrix.attrs["sop_instance_uids"]) == sorted(_source_headers(sources[SLOW]))


# ---------------------------------------------------------------------------------------------
# Run 2: another date is another partition


@dataclass
class Snapshots:
    """A run and the objects (``{key: (ETag, LastModified)}``) just before and after it."""

    run: Run
    before: dict[str, tuple[str, datetime]]
    after: dict[str, tuple[str, datetime]]


@pytest.fixture(scope="module")
def run_d2(run_d1: FirstRun, stack: Stack, sources: dict[str, Series]) -> Snapshots:
    stack.upload(sources[OTHER_DAY], D2)
    before = {**stack.snapshot("denoised"), **stack.snapshot("work", D1)}
    run = stack.dags_test("d2", D2, CONF)
    return Snapshots(run, before, {**stack.snapshot("denoised"), **stack.snapshot("work", D1)})


def test_each_date_is_processed_in_its_own_run(
    run_d2: Snapshots, run_d1: FirstRun, stack: Stack, sources: dict[str, Series]
) -> None:
    """Scenario 4: the run of D2 processes incoming/D2/ only, under its own run id, and leaves
    every object of D1 (published series and work files) as it was."""
    run = run_d2.run
    assert run.result.returncode == 0 and run.result.run_state == "success", run.summary()
    assert processing_states(run) == {"success"}, run.summary()
    assert run.labels("convert") == run.labels("report") == [OTHER_DAY]
    runs = {r["run_id"]: r["logical_date"] for r in stack.query("select run_id, logical_date from dag_run")}
    assert runs.get(run_d1.run.run_id, "").startswith(D1) and runs.get(run.run_id, "").startswith(D2), runs
    assert run.run_id != run_d1.run.run_id

    uid = sources[OTHER_DAY].uid
    report = stack.read_json("denoised", uid, "report.json")
    assert report["run"]["run_id"] == run.run_id and report["run"]["logical_date"].startswith(D2)
    assert report["source"]["source_url"] == f"s3://{stack.key('incoming', D2, OTHER_DAY)}"
    # published and reported: clean_work removed the series' work data (patient data)
    assert run.state("clean_work", OTHER_DAY) == "success" and run.xcoms[("clean_work", 0)]["removed"] is True
    assert stack.snapshot("work", D2) == {}
    new = set(run_d2.after) - set(run_d2.before)
    assert new and all(k.startswith(stack.key("denoised", uid) + "/") for k in new), sorted(new)[:5]
    assert run_d1.denoised.items() <= run_d2.before.items(), "D1 outputs as run 1 left them"
    assert {k: run_d2.after[k] for k in run_d2.before} == run_d2.before, "D1 objects untouched"


# ---------------------------------------------------------------------------------------------
# Runs 3 and 4: a date again, without and with force


@pytest.fixture(scope="module")
def rerun_d2(run_d2: Snapshots, stack: Stack) -> Snapshots:
    before = stack.snapshot("denoised")
    run = stack.dags_test("d2-again", D2, CONF)
    return Snapshots(run, before, stack.snapshot("denoised"))


def test_a_rerun_of_a_completed_partition_skips_everything(rerun_d2: Snapshots, sources: dict[str, Series]) -> None:
    """Scenario 3a: D2 again, same parameters: its only series is published, so discover_series
    skips, everything after it is skipped, the run succeeds, and no object changes."""
    run = rerun_d2.run
    assert run.result.returncode == 0 and run.result.run_state == "success", run.summary()
    states = {}
    for t in run.tis:
        states.setdefault(t["task_id"], set()).add(t["state"])
    assert states.pop("wait_for_scans") == states.pop(SENSOR) == {"success"}, run.summary()
    assert set(states) >= {"discover_series", "convert", "dssvd", "plan_ranks", "reconstruct", "report"}
    assert set().union(*states.values()) == {"skipped"}, run.summary()
    assert f"series {sources[OTHER_DAY].uid} already published with the same parameters" in run.log
    assert rerun_d2.after == rerun_d2.before and rerun_d2.before


@pytest.fixture(scope="module")
def rerun_d1(rerun_d2: Snapshots, stack: Stack) -> Snapshots:
    before = stack.snapshot("denoised")
    run = stack.dags_test("d1-again", D1, CONF)
    return Snapshots(run, before, stack.snapshot("denoised"))


def test_a_rerun_redoes_only_incomplete_series(rerun_d1: Snapshots, run_d1: FirstRun, sources: dict[str, Series]) -> None:
    """Scenario 3a: D1 again, same parameters: the published series are not redone (no convert,
    dssvd or reconstruct for them; same ETag and LastModified), the corrupt ones are tried again."""
    run = rerun_d1.run
    assert run.labels("convert") == sorted([DUPLICATE, TRUNCATED]), run.summary()
    assert {run.state("convert", f) for f in (DUPLICATE, TRUNCATED)} == {"failed"}
    assert not [t for t in run.tis if t["task_id"] in ("dssvd", "reconstruct") and t["state"] == "success"], run.summary()
    for folder in (GOOD, SLOW):
        assert f"series {sources[folder].uid} already published with the same parameters" in run.log
    assert run_d1.denoised.items() <= rerun_d1.before.items()
    assert rerun_d1.after == rerun_d1.before


@dataclass
class Forced(Snapshots):
    before_bytes: dict[str, bytes] = field(default_factory=dict)
    after_bytes: dict[str, bytes] = field(default_factory=dict)


@pytest.fixture(scope="module")
def forced_d2(rerun_d1: Snapshots, stack: Stack, sources: dict[str, Series]) -> Forced:
    def state() -> tuple[dict[str, tuple[str, datetime]], dict[str, bytes]]:
        snap = stack.snapshot("denoised")
        mine = sorted(k for k in snap if k.startswith(stack.key("denoised", sources[OTHER_DAY].uid) + "/"))
        return snap, stack.fs.cat(mine)

    before, before_bytes = state()
    run = stack.dags_test("d2-force", D2, {**CONF, "force": True})
    after, after_bytes = state()
    return Forced(run, before, after, before_bytes, after_bytes)


#: report.json fields that describe the run rather than the result: expected to change.
RUN_SPECIFIC = (
    "run.run_id", "params.force", "svd.timings", "ranks.*.metrics.seconds", "local.timings", "local.outputs.*.metrics.seconds",
    "ranks.*.publication", "local.outputs.*.publication",  # each publication has its own id (ctdenoise.completion)
)  # fmt: skip


def _without(data: Any, path: str) -> None:
    """Delete ``path`` (dotted, ``*`` = every list item) from nested dicts and lists."""
    head, _, rest = path.partition(".")
    if not rest:
        data.pop(head, None)
        return
    for item in data if head == "*" else [data.get(head)]:
        if isinstance(item, (dict, list)):
            _without(item, rest)


def test_force_redoes_and_reproduces_identically(
    forced_d2: Forced, run_d2: Snapshots, stack: Stack, sources: dict[str, Series]
) -> None:
    """Scenario 3b: with ``force`` a published series is converted, decomposed and reconstructed
    again, every DICOM file comes out byte-identical (same UIDs, same pixels) and report.json
    differs only in what describes the run; other series are not touched."""
    run, series = forced_d2.run, sources[OTHER_DAY]
    assert run.result.returncode == 0 and processing_states(run) == {"success"}, run.summary()
    assert run.labels("convert") == run.labels("dssvd") == [OTHER_DAY]
    assert run.ranks(OTHER_DAY) == run_d2.run.ranks(OTHER_DAY), "same ranks planned"
    prefix = stack.key("denoised", series.uid) + "/"
    mine = sorted(k for k in forced_d2.before if k.startswith(prefix))
    assert sorted(k for k in forced_d2.after if k.startswith(prefix)) == mine
    dicoms = [k for k in mine if k.endswith(".dcm")]
    assert len(dicoms) == SLICES * (len(run.ranks(OTHER_DAY)) + 1), "every rank and the local output"
    for key in dicoms:
        (etag0, modified0), (etag1, modified1) = forced_d2.before[key], forced_d2.after[key]
        assert modified1 > modified0, f"{key} was not rewritten"
        assert etag1 == etag0 and forced_d2.after_bytes[key] == forced_d2.before_bytes[key], f"{key} differs"
    key = prefix + "report.json"
    assert forced_d2.after[key][1] > forced_d2.before[key][1], "report.json rewritten"
    old, new = (json.loads(b[key]) for b in (forced_d2.before_bytes, forced_d2.after_bytes))
    assert new["run"]["run_id"] == run.run_id != old["run"]["run_id"] and new["params"]["force"] is True
    for data in (old, new):
        for path in RUN_SPECIFIC:
            _without(data, path)
    assert new == old
    others = {k: v for k, v in forced_d2.before.items() if not k.startswith(prefix)}
    assert others and {k: forced_d2.after[k] for k in others} == others, "other series untouched"


# ---------------------------------------------------------------------------------------------
# Run 5: an empty partition


@pytest.fixture(scope="module")
def run_empty(stack: Stack) -> Run:
    # `airflow dags test` never times a deferred trigger out: the sensor waits in reschedule mode.
    extra = {"CT_DENOISE_DEFERRABLE": "false", "CT_DENOISE_WAIT_TIMEOUT_SECONDS": "6"}
    return stack.dags_test("empty", D_EMPTY, CONF, extra)


def test_an_empty_partition_ends_skipped_not_failed(run_empty: Run, stack: Stack) -> None:
    """Scenario 6: nothing arrives; wait_for_scans times out into skipped, and so does everything after."""
    run = run_empty
    assert run.result.returncode == 0 and run.result.run_state == "success", run.summary()
    assert {t["task_id"] for t in run.tis} >= {"wait_for_scans", SENSOR, "discover_series", "convert", "report"}
    assert {t["state"] for t in run.tis} == {"skipped"}, run.summary()
    assert run.reschedules.get("wait_for_scans"), "the sensor waited (rescheduled) before giving up"
    assert not stack.snapshot("work", D_EMPTY)


def test_a_backfill_maps_one_run_per_date(run_empty: Run, stack: Stack) -> None:
    """Scenario 4 (UI/CLI view): a backfill over D1..D2 creates one run per daily partition."""
    env = stack.env()
    airflow = str(Path(sys.executable).parent / "airflow")
    args = ["backfill", "create", "--dag-id", devenv.DAG_ID, "--from-date", D1, "--to-date", D2, "--dry-run"]
    # Runs of these dates may exist already (earlier tests): list them anyway.
    args += ["--reprocess-behavior", "completed"]
    proc = subprocess.run([airflow, *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = proc.stdout.split("Runs to be attempted:", 1)[1]
    dates = re.findall(r"^\|\s*(\d{4}-\d{2}-\d{2})[ T]00:00:00", table, flags=re.M)
    assert dates == [D1, D2], proc.stdout[-2000:]


def test_the_dag_pools_can_be_created(stack: Stack) -> None:
    """The pools the DAG's tasks use (``airflow dags test`` ignores them, a scheduler does not)."""
    from ctdenoise.orchestration.config import load_settings
    from ctdenoise.orchestration.pools import declared

    devenv.create_pools(stack.env(), stack.tmp / "pools.log")
    pools = {r["pool"]: r["slots"] for r in stack.query("select pool, slots from slot_pool")}
    expected = {p.name: p.slots for p in declared(load_settings(stack.env()))}
    assert len(expected) == 3 and expected.items() <= pools.items()
