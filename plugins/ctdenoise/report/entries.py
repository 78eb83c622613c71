"""What a report is made of: the series' outputs with their metrics, and the run that made them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ctdenoise.params import Mode
from ctdenoise.records import Output, Record, RuleDetail


class RunInfo(Record):
    """The Airflow run (or the caller) that produced the outputs; ``versions`` default to the
    installed ones (:func:`ctdenoise.report.values.installed_versions`)."""

    dag_id: str | None = None
    run_id: str | None = None
    logical_date: str | None = None
    versions: dict[str, str] | None = None


@dataclass(frozen=True)
class ReportEntry:
    """One planned output and its metrics (None: its reconstruct failed)."""

    output: Output
    metrics: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.metrics is not None

    @property
    def is_global(self) -> bool:
        return self.output.mode == Mode.GLOBAL

    @property
    def rank(self) -> int:
        return int(self.output.rank or 0)

    @property
    def rules(self) -> tuple[RuleDetail, ...]:
        return self.output.choice.rules if self.output.choice else ()

    @property
    def auto_rule(self) -> RuleDetail | None:
        return self.output.choice.auto_rule if self.output.choice else None

    @property
    def is_auto(self) -> bool:
        return self.auto_rule is not None
