"""Faults between the pipeline and S3 in each stage: nothing partial visible, nothing wrong
published, the completion marker true, and the series processed once the fault clears by the
task's own retry (the DAG's retry policy), without anyone re-running a date.

Each test injects connection resets, 503s or slow answers on chosen objects through the proxy
(:mod:`proxy`) while one step runs, checks what a reader can see, clears the fault, and retries
the step as Airflow would.
"""

from __future__ import annotations

import numpy as np
import pytest
from convert_fixtures import ct_series
from fault_env import DS

from ctdenoise import matrix_store, storage
from ctdenoise.errors import TransientError

SLICES = 6


def upload(pipeline, folder: str = "scan-a") -> str:
    return pipeline.upload(folder, ct_series(SLICES, series_uid=None, rows=32, columns=32, spacing=2.0))


def matrix_keys(pipeline) -> list[str]:
    return [k for k in pipeline.bucket.keys("work", DS) if "/matrix/" in k]


# ---------------------------------------------------------------------------------------------
# discover


@pytest.mark.parametrize("kind", ["503", "reset"])
def test_discover_retries_instead_of_dropping_a_folder(pipeline, kind: str) -> None:
    """A fault on the first slice's header must fail discover_series (retried), not leave the
    folder out of its own date's run as if it held no CT slice."""
    upload(pipeline)
    with pipeline.bucket.proxy.fault(kind, r"/incoming/.*/scan-a/IM0000\.dcm$", method="GET"):
        failed = pipeline.attempt(pipeline.discover)
    assert isinstance(failed, Exception), f"discover went on without the folder: {failed}"
    (series,) = pipeline.attempt(pipeline.discover)
    assert series.folder == "scan-a"


def test_an_unreadable_report_is_not_an_absent_one(pipeline) -> None:
    """A 503 on report.json fails discover (retried) rather than redoing or skipping blindly."""
    uid = upload(pipeline)
    (series,) = pipeline.discover()
    pipeline.run(series)
    with pipeline.bucket.proxy.fault("503", rf"/denoised/{uid}/report\.json$", method="GET"):
        assert isinstance(pipeline.attempt(pipeline.discover), Exception)
    assert pipeline.discover() == [], "published and trusted: skipped"


# ---------------------------------------------------------------------------------------------
# convert


def test_a_503_on_one_header_is_retried_and_loses_no_slice(pipeline) -> None:
    """The issue's case: one 503 on a slice's header read made it a skip and 5 of 6 slices were
    published. Read again, every slice is in the matrix."""
    upload(pipeline)
    (series,) = pipeline.discover()
    with pipeline.bucket.proxy.fault("503", r"/scan-a/IM0003\.dcm$", method="GET", times=1) as fault:
        converted = pipeline.convert(series)
    assert fault.hits == 1
    assert converted.matrix.slices == SLICES
    assert not [o for o in converted.outcomes if o.status == "skipped"]


@pytest.mark.parametrize(("kind", "after"), [("503", 0), ("reset", 0), ("truncate", 1)], ids=["503-header", "reset-header", "cut-pixels"])
def test_a_persistent_fault_on_a_slice_fails_the_series_as_transient(pipeline, kind: str, after: int) -> None:
    """Header read (after=0) or pixel read (after=1, the header passed): the series fails as
    transient (retried), nothing is published, and the retry converts every slice."""
    upload(pipeline)
    (series,) = pipeline.discover()
    with pipeline.bucket.proxy.fault(kind, r"/scan-a/IM0002\.dcm$", method="GET", after=after) as fault:
        failed = pipeline.attempt(pipeline.convert, series)
    assert fault.hits >= 1 and isinstance(failed, TransientError), repr(failed)
    assert "IM0002.dcm" in str(failed) and "\n" not in str(failed)
    assert not storage.is_published(series.matrix_url, pipeline.options)
    converted = pipeline.attempt(pipeline.convert, series)
    assert converted.matrix.slices == SLICES


def test_a_cut_upload_publishes_no_matrix(pipeline) -> None:
    upload(pipeline)
    (series,) = pipeline.discover()
    with pipeline.bucket.proxy.fault("reset", r"/matrix/.*\.zarr/c/", method="PUT"):
        failed = pipeline.attempt(pipeline.convert, series)
    assert isinstance(failed, Exception)
    assert not storage.is_published(series.matrix_url, pipeline.options)
    assert not [k for k in matrix_keys(pipeline) if k.endswith("zarr.json")]
    pipeline.attempt(pipeline.convert, series)
    assert storage.is_published(series.matrix_url, pipeline.options)


# ---------------------------------------------------------------------------------------------
# dssvd (the job's package code, on the in-process engine; spark/dssvd.py runs the same)


@pytest.mark.parametrize("where", ["read", "publish"])
def test_dssvd_faults_leave_no_decomposition(pipeline, where: str) -> None:
    upload(pipeline)
    (series,) = pipeline.discover()
    converted = pipeline.convert(series)
    fault = (("503", r"/matrix/.*\.zarr/c/", "GET") if where == "read" else ("reset", r"/(svd|local)-.*\.zarr/zarr\.json$", "PUT"))
    with pipeline.bucket.proxy.fault(fault[0], fault[1], method=fault[2]) as injected:
        failed = pipeline.attempt(pipeline.dssvd, converted)
    assert injected.hits and isinstance(failed, Exception)
    assert not storage.is_published(series.svd_url, pipeline.options) or not storage.is_published(series.local_url, pipeline.options)
    pipeline.attempt(pipeline.dssvd, converted)
    assert storage.is_published(series.svd_url, pipeline.options) and storage.is_published(series.local_url, pipeline.options)
    assert len(pipeline.plan(converted)) == 2


def test_an_executor_read_error_is_transient_not_input(pipeline) -> None:
    """What a Spark partition reads (decomposition.read_row_blocks): a 503 is transient; the old
    code called it a corrupt matrix (input: failed at once, never retried)."""
    from ctdenoise.decomposition import read_row_blocks

    upload(pipeline)
    (series,) = pipeline.discover()
    pipeline.convert(series)
    with pipeline.bucket.proxy.fault("503", r"/matrix/.*\.zarr/c/", method="GET"):
        failed = pipeline.attempt(lambda: list(read_row_blocks(series.matrix_url, [(0, 512)], pipeline.options)))
    assert isinstance(failed, Exception)
    (block,) = read_row_blocks(series.matrix_url, [(0, 512)], pipeline.options)
    assert block.shape == (512, SLICES)


# ---------------------------------------------------------------------------------------------
# reconstruct and report


def prepared(pipeline):
    upload(pipeline)
    (series,) = pipeline.discover()
    converted = pipeline.convert(series)
    pipeline.dssvd(converted)
    return series, pipeline.plan(converted)


def test_a_cut_output_upload_publishes_nothing(pipeline) -> None:
    series, items = prepared(pipeline)
    item = items[0]
    with pipeline.bucket.proxy.fault("reset", r"/dicom/IM0003\.dcm$", method="PUT"):
        failed = pipeline.attempt(pipeline.reconstruct, item)
    assert isinstance(failed, Exception)
    assert not storage.is_published(item.output_url, pipeline.options)
    result = pipeline.attempt(pipeline.reconstruct, item)
    assert storage.is_published(item.output_url, pipeline.options) and result.metrics["n_slices"] == SLICES


def test_slow_answers_are_only_slow(pipeline) -> None:
    """Delays on the matrix and the decomposition: the output is the same as without them."""
    series, items = prepared(pipeline)
    item = items[0]
    fast = pipeline.reconstruct(item)
    files = sorted(pipeline.bucket.fs.glob(f"{item.output_url[5:]}/dicom/*.dcm"))
    before = pipeline.bucket.fs.cat(files)
    with pipeline.bucket.proxy.fault("delay", r"/work/.*\.zarr/", method="GET", seconds=0.3) as fault:
        slow = pipeline.reconstruct(item)
    assert fault.hits >= 2
    assert pipeline.bucket.fs.cat(files) == before
    assert slow.metrics["series_instance_uid"] == fast.metrics["series_instance_uid"]


@pytest.mark.parametrize("which", ["report.html", "report.json"])
def test_a_failed_report_write_leaves_no_completion_marker(pipeline, which: str) -> None:
    series, items = prepared(pipeline)
    results = [pipeline.reconstruct(i) for i in items]
    with pipeline.bucket.proxy.fault("503", rf"/{which.replace('.', '[.]')}$", method="PUT"):
        failed = pipeline.attempt(pipeline.report, series, items, results)
    assert isinstance(failed, Exception)
    assert pipeline.trusted(series) is None and [s.folder for s in pipeline.discover()] == ["scan-a"]
    pipeline.attempt(pipeline.report, series, items, results)
    assert pipeline.trusted(series) == series.params_hash and pipeline.discover() == []


@pytest.mark.slow
def test_a_forced_rerun_cut_in_the_middle_keeps_a_complete_output_and_no_false_marker(pipeline) -> None:
    """The issue's case 2 on S3: a forced re-run replaces an output and its upload fails. The
    old output must stay complete until the new one is, and report.json must not survive (the
    next run, without force, processes the series again instead of trusting a broken output)."""
    uid = upload(pipeline)
    (series,) = pipeline.discover()
    items, _, _ = pipeline.run(series)
    assert pipeline.trusted(series) == series.params_hash
    item = items[0]
    (forced,) = pipeline.discover(force=True)
    converted = pipeline.convert(forced)
    pipeline.dssvd(converted)
    # the output is being replaced in place: cut the copy of one new file into the plain layout
    with pipeline.bucket.proxy.fault("reset", rf"/denoised/{uid}/rank-2/dicom/IM0004\.dcm$", method="PUT") as fault:
        failed = pipeline.attempt(pipeline.reconstruct, item)
    assert fault.hits and isinstance(failed, Exception)
    assert not storage.exists(series.series_url + "/report.json", pipeline.options), "report.json survived the change"
    assert [s.folder for s in pipeline.discover()] == ["scan-a"], "a run without force must redo the series"
    root = storage.published_root(item.output_url, pipeline.options)
    assert root is not None, "no complete output where one existed"
    assert len(pipeline.bucket.fs.glob(f"{root[5:]}/dicom/*.dcm")) == SLICES
    results = [pipeline.attempt(pipeline.reconstruct, i) for i in items]
    pipeline.attempt(pipeline.report, series, items, results)
    assert pipeline.trusted(series) == series.params_hash and pipeline.discover() == []
    assert storage.published_root(item.output_url, pipeline.options) == item.output_url
    assert not [k for k in pipeline.bucket.keys("denoised") if "/.gen-" in k], "the new version's staging retired"


def test_a_replaced_output_invalidates_the_report(pipeline) -> None:
    """An output changed after the report (by hand, or a run that crashed after its swap) makes
    report.json untrusted: the publication id it recorded is not the output's any more."""
    series, items = prepared(pipeline)
    results = [pipeline.reconstruct(i) for i in items]
    pipeline.report(series, items, results)
    assert pipeline.trusted(series) == series.params_hash
    with storage.staging_dir() as staged:
        (staged / "metrics.json").write_text("{}")
        storage.publish_dir(staged, items[0].output_url, pipeline.options)
    assert pipeline.trusted(series) is None
    storage.remove_tree(items[1].output_url, pipeline.options)
    assert pipeline.trusted(series) is None


def test_clean_work_retries_a_failed_delete(pipeline) -> None:
    series, items = prepared(pipeline)
    results = [pipeline.reconstruct(i) for i in items]
    pipeline.report(series, items, results)
    with pipeline.bucket.proxy.fault("503", rf"^/{pipeline.bucket.name}$", method="POST"):
        failed = pipeline.attempt(pipeline.clean_work, series)
    assert isinstance(failed, Exception)
    assert pipeline.attempt(pipeline.clean_work, series)["removed"] is True
    assert pipeline.bucket.keys("work", DS) == []
    assert pipeline.trusted(series) == series.params_hash, "the outputs stay published"
    np.testing.assert_equal(storage.is_published(items[0].output_url, pipeline.options), True)
    with pytest.raises(FileNotFoundError):
        matrix_store.open_matrix(series.matrix_url, pipeline.options)
