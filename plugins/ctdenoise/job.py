"""The decomposition job of one series matrix, whichever engine runs it.

One job computes what a run's modes ask for: the global SVD (``out``), the local low-rank group
(``local_out``), or both in one engine session. Its arguments are one model, :class:`DssvdJob`,
whose command line (``spark/dssvd.py``, ``ctdenoise svd``/``local``) and argument list (the
DAG's spark-submit and SparkApplication) are derived from the parameter declarations of
:mod:`ctdenoise.params`.

Where the work runs is an :class:`Engine`: :class:`LocalEngine` runs the block kernels and the
band tasks in this process; the Spark job (``spark/dssvd.py``) supplies an engine that runs the
same functions on executors. :func:`run_job` is the same code for both.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Self

from pydantic import Field, model_validator

from ctdenoise.errors import ParameterError
from ctdenoise.params import LocalParams, ParamModel, SvdParams, add_arguments, from_arguments, to_arguments

if TYPE_CHECKING:
    from ctdenoise.decomposition import BlockRunner
    from ctdenoise.records import Converted

log = logging.getLogger(__name__)


class DssvdJob(ParamModel):
    """What one decomposition job computes, from which matrix, into which stores."""

    matrix: str = Field(description="series matrix (Zarr URL: path, file://, s3://)")
    out: str | None = Field(None, description="global mode: where to publish the SVD group (Zarr URL)")
    rank: int | None = Field(None, ge=1, description="global mode: number of singular triplets k")
    local_out: str | None = Field(None, description="local mode: where to publish the local low-rank group (Zarr URL)")
    svd: SvdParams = SvdParams()
    local: LocalParams = LocalParams()
    with_u: bool = Field(False, description="also store U (rows x k, float32; gathered on the driver)")
    partitions: int | None = Field(None, ge=1, description="row-block partitions (default: from cores and size)")

    @model_validator(mode="after")
    def _something_to_do(self) -> Self:
        if not self.out and not self.local_out:
            raise ValueError("nothing to do: give --out (global SVD) and/or --local-out (local mode)")
        if self.out and self.rank is None:
            raise ValueError("--out (global SVD) needs --rank")
        return self

    @classmethod
    def for_series(cls, converted: Converted) -> Self:
        """The job of one converted series: the modes and parameters of its run."""
        series, params = converted.series, converted.series.params
        global_mode = {"out": series.svd_url, "rank": converted.svd_rank, "svd": params.svd} if params.svd else {}
        local_mode = {"local_out": series.local_url, "local": params.local} if params.local else {}
        return cls(matrix=series.matrix_url, **global_mode, **local_mode)

    def arguments(self) -> list[str]:
        """The command line that gives this job back through :meth:`parser` (each mode's
        parameters only when it runs)."""
        args = ["--matrix", self.matrix]
        if self.out:
            args += ["--out", self.out, "--rank", str(self.rank), *to_arguments(self.svd)]
        if self.local_out:
            args += ["--local-out", self.local_out, *to_arguments(self.local)]
        if self.with_u:
            args.append("--with-u")
        if self.partitions:
            args += ["--partitions", str(self.partitions)]
        return args

    @classmethod
    def parser(cls, prog: str, description: str) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=prog, description=description)
        for name in ("matrix", "out", "rank", "local_out", "partitions"):
            info = cls.model_fields[name]
            kind = int if name in ("rank", "partitions") else str
            parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, required=name == "matrix", help=info.description)
        parser.add_argument("--with-u", action="store_true", help=cls.model_fields["with_u"].description)
        add_arguments(parser.add_argument_group("global mode (SVD)"), SvdParams)
        add_arguments(parser.add_argument_group("local mode"), LocalParams)
        parser.add_argument("-v", "--verbose", action="store_true")
        return parser

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> Self:
        """The job of a parsed command line; :class:`ParameterError` naming the matrix otherwise."""
        values = {name: getattr(args, name) for name in ("matrix", "out", "rank", "local_out", "with_u", "partitions")}
        svd = from_arguments(SvdParams, args, args.matrix)
        local = from_arguments(LocalParams, args, args.matrix)
        return cls.parse({**values, "svd": svd, "local": local}, args.matrix)


BATCH_SEPARATOR = "--and"
"""Between the jobs of a batch on one command line: ``dssvd.py --matrix A ... --and --matrix B ...``."""


class DssvdBatch(ParamModel):
    """The jobs of several series in one engine session (one Spark application): the session's
    start, the JVM's and the Python workers', is paid once for all of them. Each job stays its
    own (:func:`run_batch`): a series whose input is refused does not stop the others."""

    jobs: tuple[DssvdJob, ...] = Field(min_length=1)

    @classmethod
    def for_series(cls, converted: Sequence[Converted]) -> Self:
        return cls(jobs=tuple(DssvdJob.for_series(one) for one in converted))

    def arguments(self) -> list[str]:
        out: list[str] = []
        for job in self.jobs:
            out += ([BATCH_SEPARATOR] if out else []) + job.arguments()
        return out

    @staticmethod
    def split(argv: Sequence[str]) -> list[list[str]]:
        """A batch's command line cut into each job's arguments."""
        groups: list[list[str]] = [[]]
        for arg in argv:
            if arg == BATCH_SEPARATOR:
                groups.append([])
            else:
                groups[-1].append(arg)
        return groups


class Engine(Protocol):
    """Where a job's passes run: this process, or Spark executors (``spark/dssvd.py``)."""

    name: str

    def start(self, matrix_url: str) -> None:
        """Get the workers ready (imports, I/O and BLAS set up), outside the timed compute."""

    def block_runner(self, matrix_url: str, shape: Sequence[int], chunk_rows: int, partitions: int | None) -> BlockRunner:
        """The global mode's passes over the matrix."""

    def map_partitions(self, task: Callable[[int, Iterable[Any]], Iterator[Any]], groups: Sequence[Any]) -> list[Any]:
        """``task(index, [group])`` for every group, wherever the engine runs it; the results in order."""

    def band_groups(self, bands: int) -> int:
        """Into how many partitions the local mode's ``bands`` go (each reads its rows at once)."""

    def describe(self) -> dict[str, Any]:
        """What the stores record about the engine (``spark_master``, ...)."""


LOCAL_GROUP_BANDS = 8


class LocalEngine:
    """The engine of ``ctdenoise svd``/``local`` and of the tests: everything in this process."""

    name = "numpy"

    def __init__(self, storage_options: Mapping[str, Any] | None = None) -> None:
        self.storage_options = storage_options

    def start(self, matrix_url: str) -> None:
        return None

    def block_runner(self, matrix_url: str, shape: Sequence[int], chunk_rows: int, partitions: int | None) -> BlockRunner:
        from ctdenoise.decomposition import LocalRunner
        from ctdenoise.matrix_store import open_matrix

        return LocalRunner(open_matrix(matrix_url, self.storage_options), chunk_rows)

    def map_partitions(self, task: Callable[[int, Iterable[Any]], Iterator[Any]], groups: Sequence[Any]) -> list[Any]:
        return [result for index, group in enumerate(groups) for result in task(index, [group])]

    def band_groups(self, bands: int) -> int:
        """Groups of about ``LOCAL_GROUP_BANDS`` bands: each group computes the in-plane halo
        once, and holds its rows of ``D`` in memory (bands of one at a time would recompute the
        halo's tiles for every band)."""
        return max(1, round(bands / LOCAL_GROUP_BANDS))

    def describe(self) -> dict[str, Any]:
        return {}


def check_job(job: DssvdJob, shape: Sequence[int]) -> None:
    """Every check that needs no engine work (:class:`ParameterError` naming the matrix)."""
    from ctdenoise.decomposition import validate_params

    if len(shape) != 2:
        raise ParameterError(f"{job.matrix}: a series matrix is 2-D (voxels, slices), got shape {tuple(shape)}")
    if job.out:
        validate_params(shape, job.rank, job.svd.oversample, job.svd.power_iters, job.svd.method.value, job.matrix)


def run_batch(jobs: Sequence[DssvdJob], engine: Engine, session_seconds: float | None = None,
              reason: Callable[[BaseException], str] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Every job of a batch on one engine, each isolated: ``{"matrix", "status": "done", "record"}``
    or ``{"matrix", "status": "failed", "kind", "reason"}`` per job, in order."""
    from ctdenoise.errors import Failure, classify, one_line

    reason = reason or one_line

    results = []
    for i, job in enumerate(jobs):
        try:
            record = run_job(job, engine, session_seconds if i == 0 else None)
            results.append({"matrix": job.matrix, "status": "done", "record": record})
        except Exception as exc:  # one series' failure, of any kind: the others go on
            kind = classify(exc)
            log.error("%s: %s failure: %s", job.matrix, kind.value, reason(exc), exc_info=kind != Failure.INPUT)
            results.append({"matrix": job.matrix, "status": "failed", "kind": kind.value, "reason": reason(exc)})
    return results


def batch_exit_code(results: Sequence[dict[str, Any]]) -> int:
    """The exit status of a batch: 0 when each job was done, or when the only failures are refused
    inputs and another series was done (they go on; the refused ones show at plan_ranks); the
    failure's own status when a job failed transiently or by a bug (the batch is retried, and
    recomputes its jobs), or when every job was refused (2)."""
    from ctdenoise.errors import EXIT_CODES, EXIT_OK, Failure

    failed = [Failure(r["kind"]) for r in results if r["status"] == "failed"]
    retried = [kind for kind in failed if kind != Failure.INPUT]
    if retried:
        return EXIT_CODES[retried[0]]
    if failed and len(failed) == len(results):
        return EXIT_CODES[Failure.INPUT]
    return EXIT_OK


def run_job(job: DssvdJob, engine: Engine, session_seconds: float | None = None) -> dict[str, Any]:
    """Compute and publish what ``job`` asks for with ``engine``; the summary record.

    Raises :class:`ctdenoise.errors.CtDenoiseError` / ``FileNotFoundError`` for bad input before
    any engine work, and lets engine errors propagate.
    """
    from ctdenoise.decomposition import Timings
    from ctdenoise.matrix_store import open_matrix

    arr = open_matrix(job.matrix, getattr(engine, "storage_options", None))  # metadata only
    check_job(job, arr.shape)
    timings = Timings()
    if session_seconds is not None:
        timings.stages["session_start"] = session_seconds
    with timings.stage("workers_start"):
        engine.start(job.matrix)
    if not job.out:
        return run_local(job, arr, engine, timings)
    record = run_global(job, arr, engine, timings)
    if job.local_out:
        record["local"] = run_local(job, arr, engine, Timings())
    return record


def run_global(job: DssvdJob, arr: Any, engine: Engine, timings: Any) -> dict[str, Any]:
    """The global mode: :func:`ctdenoise.decomposition.decompose` on the engine's block runner."""
    import numpy as np

    from ctdenoise.decomposition import decompose, publish_result

    with timings.stage("open"):
        runner = engine.block_runner(job.matrix, arr.shape, int(arr.chunks[0]), job.partitions)
    result = decompose(
        runner, arr.shape, job.rank, method=job.svd.method.value, oversample=job.svd.oversample,
        power_iters=job.svd.power_iters, seed=job.svd.seed, with_u=job.with_u,
        float32_data=arr.dtype != np.float64, source=job.matrix, timings=timings,
    )  # fmt: skip
    extra = {**engine.describe(), **({"partitions": runner.partitions} if hasattr(runner, "partitions") else {})}
    return publish_result(result, job.matrix, job.out, timings, engine=engine.name, extra_attrs=extra,
                          storage_options=getattr(engine, "storage_options", None))  # fmt: skip


def run_local(job: DssvdJob, arr: Any, engine: Engine, timings: Any) -> dict[str, Any]:
    """The local mode: the engine denoises contiguous groups of bands and writes them into the
    uncommitted local group, the driver commits it (:func:`ctdenoise.local_group.publish_bands`).
    The driver computes no pixels: every strength is measured where it is used, on the band."""
    from ctdenoise.local_group import BandPlan, publish_bands

    options = getattr(engine, "storage_options", None)
    plan = BandPlan.for_matrix(job.matrix, arr, job.local, options)
    groups = plan.partition(job.partitions or engine.band_groups(len(plan.bands)))
    attrs = {**plan.attrs(), "partitions": len(groups), "engine": engine.name, **engine.describe()}

    def run_bands(work_url: str) -> list[Any]:
        return engine.map_partitions(plan.task(work_url), groups)

    return publish_bands(job.local_out, run_bands, plan, attrs, timings, options)
