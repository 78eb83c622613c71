"""What passes between the steps of a run, typed: one model per record, one XCom conversion each.

::

    discover_series -> Series -> convert -> Converted -> dssvd, plan_ranks -> Output
        -> reconstruct -> Reconstructed -> report -> SeriesReport
        -> plan_deliveries -> DeliveryItem -> deliver -> Delivered

Both runtimes hand these records over as JSON (``to_xcom`` / ``from_xcom``): the local runtime's
Python tasks return them, the pods of the kubernetes runtime write the same document to their
XCom file (:mod:`ctdenoise.orchestration.podrun`). Derived names (URLs, labels) are computed
from the stored fields by :mod:`ctdenoise.layout` and shown in the JSON for people reading XComs
or pod arguments; they are recomputed, not trusted, when a record is read back.

The rank rule stays typed from selection (:func:`ctdenoise.ranks.select_ranks`) to the report
(:class:`RankChoice`). Standard library and pydantic only: the DAG imports this at parse time.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, computed_field

from ctdenoise import layout
from ctdenoise.delivery.outcome import DeliveryRecord
from ctdenoise.errors import Failure, InputError, TransientError
from ctdenoise.params import Mode, RunParams, multiplier_label
from ctdenoise.uids import shown, uid_problem


def _valid_uid(value: str) -> str:
    problem = uid_problem(value)
    if problem:
        raise ValueError(f"{shown(value)} is not a valid DICOM UID: {problem}")
    return value


DicomUid = Annotated[str, AfterValidator(_valid_uid)]
"""A UID that names paths (``<uid>.zarr``, ``denoised/<uid>/``): a record never holds another."""


class Record(BaseModel):
    """A frozen record; derived fields in its JSON are ignored when it is read back."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_xcom(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    @classmethod
    def from_xcom(cls, value: Any) -> Self:
        return value if isinstance(value, cls) else cls.model_validate(value)


# ---------------------------------------------------------------------------------------------
# Rank rules (global mode)


class RankRule(StrEnum):
    """The rules that choose ranks of the global SVD (:mod:`ctdenoise.ranks`), in priority order."""

    EXPLICIT = "explicit"
    DROP_PERCENT = "drop_percent"
    GAVISH_DONOHO = "gavish_donoho"


class RuleDetail(Record):
    """One rule that chose a rank, with what it computed."""

    rule: RankRule
    percent: float | None = None  # drop_percent: p
    dropped: int | None = None  # drop_percent: singular values dropped
    threshold: float | None = None  # gavish_donoho: the hard threshold on singular values
    beta: float | None = None
    omega: float | None = None
    median: float | None = None
    lambda_star: float | None = None
    sigma: float | None = None
    noise: str | None = None  # gavish_donoho: where the noise level came from
    note: str | None = None

    @property
    def label(self) -> str:
        """Short text for the report: 'explicit', 'drop 10 %', 'Gavish–Donoho'."""
        if self.rule == RankRule.DROP_PERCENT and self.percent is not None:
            return f"drop {self.percent:g} %"
        return "Gavish–Donoho" if self.rule == RankRule.GAVISH_DONOHO else self.rule.value


class RankChoice(Record):
    """One rank to reconstruct and every rule that chose it (in :class:`RankRule` order)."""

    rank: int = Field(ge=1)
    rules: tuple[RuleDetail, ...] = Field(min_length=1)

    @property
    def auto_rule(self) -> RuleDetail | None:
        return next((r for r in self.rules if r.rule == RankRule.GAVISH_DONOHO), None)

    @property
    def is_auto(self) -> bool:
        return self.auto_rule is not None

    @property
    def labels(self) -> list[str]:
        return [r.label for r in self.rules]


# ---------------------------------------------------------------------------------------------
# discover_series -> convert


class Series(Record):
    """One series folder of a partition, as ``discover_series`` found it."""

    folder: str
    ds: str
    source_url: str
    files: int
    series_instance_uid: DicomUid
    work_url: str  # <work>/<ds>/<folder>: this folder's intermediate stores
    denoised_url: str  # <denoised>: published results, one folder per series UID
    params: RunParams

    @computed_field
    @property
    def label(self) -> str:
        """How task instances of this series are labelled in the UI."""
        return self.folder

    @computed_field
    @property
    def params_hash(self) -> str:
        return self.params.params_hash()

    @computed_field
    @property
    def matrix_dir(self) -> str:
        return layout.matrix_dir(self.work_url)

    @computed_field
    @property
    def matrix_url(self) -> str:
        return layout.matrix_url(self.work_url, self.series_instance_uid)

    @computed_field
    @property
    def svd_url(self) -> str | None:
        """The global mode's SVD group (None when the run leaves that mode out)."""
        return layout.svd_url(self.work_url, self.params.svd_key()) if self.params.svd else None

    @computed_field
    @property
    def local_url(self) -> str | None:
        """The local mode's group (None when the run leaves that mode out)."""
        local = self.params.local
        return layout.local_url(self.work_url, local.key()) if local else None

    @computed_field
    @property
    def series_url(self) -> str:
        return layout.series_url(self.denoised_url, self.series_instance_uid)

    @property
    def where(self) -> str:
        """How messages name this series."""
        return f"series folder {self.folder} ({self.series_instance_uid})"


class Skipped(Record):
    """A file that is not a CT slice we convert (DICOMDIR, scout, other modality...)."""

    status: Literal["skipped"] = "skipped"
    file: str
    reason: str


class Failed(Record):
    """A series that cannot be converted; nothing of it is published. ``kind``: why
    (:class:`ctdenoise.errors.Failure`): its input, a transient failure (retry), or a bug."""

    status: Literal["failed"] = "failed"
    series_instance_uid: str  # as read, possibly not a valid UID (the reason says so)
    file: str
    reason: str
    kind: Failure = Failure.INPUT


class Written(Record):
    """A published series matrix."""

    status: Literal["written"] = "written"
    series_instance_uid: DicomUid
    url: str
    rows: int
    columns: int
    slices: int
    ordering: str
    seconds: float


ConvertOutcome = Annotated[Skipped | Failed | Written, Field(discriminator="status")]


def parse_outcome(value: Any) -> Skipped | Failed | Written:
    """One outcome of ``ctdenoise convert`` from its JSON line."""
    return TypeAdapter(ConvertOutcome).validate_python(value)


class Converted(Record):
    """A series whose matrix is published: what ``dssvd`` and ``plan_ranks`` take."""

    series: Series
    matrix: Written
    outcomes: tuple[ConvertOutcome, ...] = ()

    @classmethod
    def from_outcomes(cls, series: Series, outcomes: list[Skipped | Failed | Written]) -> Self:
        """The folder's own series among what ``ctdenoise convert`` reported; when it was not
        written, the failure of its kind naming why (both runtimes decide here): :class:`InputError`
        (fails at once), :class:`TransientError` or, for a bug, ``RuntimeError`` (both retried).
        Other CT series found in the same folder are converted too, but only the one discover
        identified goes on."""
        mine = [o for o in outcomes if isinstance(o, Written) and o.series_instance_uid == series.series_instance_uid]
        if mine:
            return cls(series=series, matrix=mine[0], outcomes=tuple(outcomes))
        failed = [o for o in outcomes if isinstance(o, Failed) and o.series_instance_uid == series.series_instance_uid]
        reason = failed[0].reason if failed else "no matrix written"
        error = {Failure.TRANSIENT: TransientError, Failure.BUG: RuntimeError}.get(failed[0].kind if failed else None, InputError)
        raise error(f"{series.where}: conversion failed: {reason}")

    @property
    def others(self) -> list[str]:
        """Other CT series converted from the same folder (not processed further)."""
        return [o.series_instance_uid for o in self.outcomes if isinstance(o, Written) and o.series_instance_uid != self.series.series_instance_uid]

    @property
    def svd_rank(self) -> int:
        """The SVD rank of this series: the requested one, at most its number of slices."""
        return max(1, min(self.series.params.svd_rank, self.matrix.slices))


class SeriesBatch(Record):
    """The converted series one ``dssvd`` task decomposes in one Spark application (the session's
    start paid once); one series per batch unless ``CT_DENOISE_SPARK_BATCH_SERIES`` says more."""

    converted: tuple[Converted, ...] = Field(min_length=1)

    @classmethod
    def group(cls, converted: Sequence[Converted], size: int) -> list[Self]:
        """``converted`` in order, ``size`` at a time (the last batch may be smaller)."""
        return [cls(converted=tuple(converted[i : i + size])) for i in range(0, len(converted), max(1, size))]

    @property
    def label(self) -> str:
        """The series' label, or the first one's and how many more ("a +3")."""
        first = self.converted[0].series.label
        return first if len(self.converted) == 1 else f"{first} +{len(self.converted) - 1}"


# ---------------------------------------------------------------------------------------------
# plan_ranks -> reconstruct -> report


class TileSummary(Record):
    """The components the local mode's tiles kept at one multiplier (from the local group)."""

    mean_rank: float
    median_rank: float
    max_rank: int


class Output(Record):
    """One reconstruct task: a series at one global rank or one local multiplier."""

    series: Series
    mode: Mode
    rank: int | None = None
    multiplier: float | None = None
    choice: RankChoice | None = None  # global: the rules that chose the rank
    tiles: TileSummary | None = None  # local: the components its tiles kept

    @computed_field
    @property
    def label(self) -> str:
        if self.mode == Mode.LOCAL:
            return f"{self.series.folder} local {multiplier_label(self.multiplier)}"
        return f"{self.series.folder} rank={self.rank}"

    @computed_field
    @property
    def output_url(self) -> str:
        if self.mode == Mode.LOCAL:
            return layout.local_output(self.series.series_url, self.multiplier)
        return layout.rank_output(self.series.series_url, self.rank)

    @property
    def store_url(self) -> str:
        """The decomposition it reads: the SVD group or the local group."""
        return self.series.local_url if self.mode == Mode.LOCAL else self.series.svd_url

    def reconstruct_kwargs(self) -> dict[str, Any]:
        """:func:`ctdenoise.writer.reconstruct` arguments (the local runtime calls it)."""
        which = {"multiplier": self.multiplier} if self.mode == Mode.LOCAL else {"rank": self.rank}
        return {"matrix_url": self.series.matrix_url, "svd_url": self.store_url, "dest_url": self.output_url, **which}

    def reconstruct_arguments(self) -> list[str]:
        """The same as ``ctdenoise reconstruct`` arguments (the kubernetes runtime's pods)."""
        which = ["--multiplier", f"{self.multiplier:g}"] if self.mode == Mode.LOCAL else ["--rank", str(self.rank)]
        return ["reconstruct", self.series.matrix_url, self.store_url, self.output_url, *which]


class Omitted(Record):
    """An output the plan leaves out, and why (e.g. a rank that reproduces the input)."""

    series: Series
    label: str
    reason: str
    choice: RankChoice | None = None


class Reconstructed(Record):
    """A published output and its metrics (``metrics.json``, see :func:`ctdenoise.writer.reconstruct`)."""

    output: Output
    metrics: dict[str, Any]

    @classmethod
    def from_metrics(cls, output: Output, printed: list[dict[str, Any]]) -> Self:
        if not printed:
            raise InputError(f"{output.label}: ctdenoise reconstruct printed no metrics")
        return cls(output=output, metrics=printed[-1])


class SeriesReport(Record):
    """What ``report`` returns for a completed series."""

    folder: str
    series_instance_uid: str
    source_url: str
    report_json: str
    report_html: str
    outputs: list[str]  # output URLs, global ranks then local multipliers
    auto_rank: int | None = None
    params_hash: str


# ---------------------------------------------------------------------------------------------
# report -> plan_deliveries -> deliver


class DeliveryItem(Record):
    """One deliver task: a published output of a completed series, and the destinations still due."""

    folder: str
    series_instance_uid: str  # the source series
    series_url: str  # <denoised>/<uid>: where its report and delivery records live
    output: str  # the output's folder name: "rank-9", "local-x0.5"
    output_url: str
    output_series_uid: str | None = None  # the derived series (None for reports written before it was recorded)
    automatic: bool = False
    destinations: tuple[str, ...]  # Airflow connection ids

    @computed_field
    @property
    def label(self) -> str:
        return f"{self.folder} {self.output}"


class Delivered(Record):
    """What ``deliver`` returns: the item and one record per destination that answered."""

    item: DeliveryItem
    deliveries: tuple[DeliveryRecord, ...]

    @classmethod
    def from_xcom(cls, value: Any) -> Self:
        if isinstance(value, cls):
            return value
        return cls(item=DeliveryItem.from_xcom(value["item"]), deliveries=tuple(DeliveryRecord.from_json(d) for d in value["deliveries"]))

    def to_xcom(self) -> dict[str, Any]:
        return {"item": self.item.to_xcom(), "deliveries": [d.as_json() for d in self.deliveries]}
