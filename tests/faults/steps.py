"""The DAG's steps on one arrival partition, as the local runtime's tasks call them (the package
functions behind ``discover_series``, ``convert``, ``dssvd``, ``plan_ranks``, ``reconstruct``,
``report`` and ``clean_work``), with S3 through the fault proxy, and Airflow's retry rule.

``attempt`` runs one step like a task try: it returns the result, or the exception after
checking that the DAG's retry policy would retry it (a transient fault must never fail a task
at once: a run handles only its own date, and nobody re-runs dates by hand).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fault_env import CONF, CONN_ID, DS, Bucket, retried
from convert_fixtures import Slice, write_slices

from ctdenoise.errors import Failure, classify
from ctdenoise.params import RunParams
from ctdenoise.records import Converted, Output, Reconstructed, Series, SeriesReport


@dataclass
class Pipeline:
    bucket: Bucket
    policy: Any
    tmp: Path
    conf: dict[str, Any] = field(default_factory=lambda: dict(CONF))

    @property
    def options(self) -> dict[str, Any]:
        from ctdenoise.orchestration import aws

        return aws.storage_options(CONN_ID)

    @property
    def partition(self) -> str:
        return self.bucket.url("incoming", DS)

    def upload(self, folder: str, slices: Sequence[Slice]) -> str:
        """The slices as DICOM files in ``incoming/<ds>/<folder>/``; the series UID."""
        local = write_slices(self.tmp / folder, slices)
        self.bucket.fs.put([str(p) for p in local], [f"{self.bucket.name}/incoming/{DS}/{folder}/{p.name}" for p in local])
        return str(slices[0].dataset.SeriesInstanceUID)

    def attempt(self, step: Callable[..., Any], *args: Any) -> Any:
        """One task try: the result, or the exception after checking that it is retried."""
        try:
            return step(*args)
        except Exception as exc:  # noqa: BLE001 (examined below)
            assert classify(exc) == Failure.TRANSIENT, f"{step.__name__}: {exc!r} is not transient"
            assert retried(self.policy, exc), f"{step.__name__}: {exc!r} would not be retried"
            return exc

    # -- the steps -----------------------------------------------------------------------------

    def discover(self, force: bool = False) -> list[Series]:
        from ctdenoise.orchestration import discovery

        params = RunParams.from_conf({**self.conf, "force": force})
        series, _ = discovery.discover(self.partition, ds=DS, work_url=self.bucket.url("work", DS),
                                       denoised_url=self.bucket.url("denoised"), params=params,
                                       storage_options=self.options)  # fmt: skip
        return series

    def convert(self, series: Series) -> Converted:
        from ctdenoise.orchestration import local

        return Converted.from_xcom(local.convert_series(series.to_xcom(), CONN_ID))

    def dssvd(self, converted: Converted) -> dict[str, Any]:
        from ctdenoise.job import DssvdJob, LocalEngine, run_job

        return run_job(DssvdJob.for_series(converted), LocalEngine(self.options))

    def plan(self, converted: Converted) -> list[Output]:
        from ctdenoise.plan import plan

        planned = plan([converted], self.options)
        items, left_out = planned.items, planned.left_out
        assert not left_out, left_out
        return items

    def reconstruct(self, item: Output) -> Reconstructed:
        from ctdenoise.orchestration import local

        return Reconstructed.from_xcom(local.reconstruct_output(item.to_xcom(), CONN_ID))

    def report(self, series: Series, items: list[Output], results: list[Reconstructed]) -> SeriesReport:
        from ctdenoise.report import RunInfo, publish_report

        return publish_report(series, items, results, RunInfo(dag_id="ct_denoise", run_id="faults"), self.options)

    def clean_work(self, series: Series) -> dict[str, Any]:
        from ctdenoise.retention import clean_series_work

        return clean_series_work(series, True, self.options)

    def run(self, series: Series) -> tuple[list[Output], list[Reconstructed], SeriesReport]:
        """Every step after discover, without faults."""
        converted = self.convert(series)
        self.dssvd(converted)
        items = self.plan(converted)
        results = [self.reconstruct(i) for i in items]
        return items, results, self.report(series, items, results)

    def trusted(self, series: Series) -> str | None:
        """The params hash discover's already-published check finds for the series (None: redo it)."""
        from ctdenoise import layout
        from ctdenoise.orchestration.discovery import published_hash

        return published_hash(layout.report_json(series.series_url), self.options)
