"""Which series a run takes: selection rules on DICOM attributes, in the style of MONAI Deploy's.

A run's ``selection`` parameter (default: the deployment's ``CT_DENOISE_SELECTION``, else
:data:`DEFAULT_SELECTION`) holds named selections; a series is taken when every condition of
at least one selection holds for the header of its first CT slice (and for its file count)::

    {"selections": [{"name": "axial original CT",
                     "conditions": {"Modality": "(?i)^CT$", "ImageType": ["ORIGINAL", "AXIAL", "!LOCALIZER"],
                                    "SliceThickness": [0.5, 5], "slices": ">=8"}}]}

Conditions, by the type of their value:

- a string is a regular expression searched in the attribute's value (in any of its values when
  it has several); ``"!X"`` holds when ``X`` matches none of them (and when the attribute is absent);
- a string ``"<= 5"``, ``"> 0.5"``, ``"== 1"``, ``"!= 3"`` compares the value as a number;
- a number equals the value; a list of two numbers ``[lo, hi]`` is an inclusive range;
- a list of strings names values that must all be present (``ImageType``), each ``"!X"`` one
  that must be absent; values compare without regard to case;
- ``slices`` (not a DICOM keyword) is the number of files in the series folder.

A malformed rule (bad regular expression, unknown keyword, wrong type) is refused when the run
starts, in one line naming the selection and the condition. A series that no selection takes is
skipped by ``discover_series``, named with the condition that excluded it, and never converted.

Standard library and pydantic; pydicom's data dictionary is imported only to check keywords,
when a run's parameters are validated (never while the DAG file is parsed).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

SLICES = "slices"
NUMBER_TEXT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"  # a DS or IS value
NUMBER = re.compile(rf"^\s*{NUMBER_TEXT}\s*$")
COMPARISON = re.compile(rf"^\s*(<=|>=|==|!=|<|>)\s*({NUMBER_TEXT})\s*$")
KEYWORD = re.compile(r"^[A-Z][A-Za-z0-9]*$")
ConditionValue = str | int | float | list[str] | list[int | float]

DEFAULT_SELECTION: dict[str, Any] = {
    "selections": [
        {
            "name": "axial original CT",
            "conditions": {"Modality": "(?i)^CT$", "ImageType": ["ORIGINAL", "AXIAL", "!LOCALIZER"], SLICES: ">=8"},
        }
    ]
}
"""Axial CT as reconstructed by the scanner (not a localizer, not a derived series such as our own
outputs or an MPR), with at least 8 slices: fewer give the local mode's tiles, followed through
all slices, too short a spectrum to tell structure from noise."""


def _number(text: str) -> float | None:
    """The attribute value as a number, None unless it is written as one (DS, IS)."""
    return float(text) if NUMBER.match(text) else None


def _compare(op: str, a: float, b: float) -> bool:
    close = math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return {"<=": a <= b or close, ">=": a >= b or close, "==": close, "!=": not close, "<": a < b and not close,
            ">": a > b and not close}[op]  # fmt: skip


def holds(value: ConditionValue, observed: Sequence[str]) -> bool:
    """Whether the condition ``value`` holds for the attribute's ``observed`` values (module docstring)."""
    if isinstance(value, str):
        comparison = COMPARISON.match(value)
        if comparison:
            op, bound = comparison.group(1), float(comparison.group(2))
            numbers = [_number(v) for v in observed]
            return bool(numbers) and all(n is not None and _compare(op, n, bound) for n in numbers)
        negated = value.startswith("!")
        found = any(re.search(value[1:] if negated else value, v) for v in observed)
        return not found if negated else found
    if isinstance(value, int | float):
        return any((n := _number(v)) is not None and _compare("==", n, float(value)) for v in observed)
    if value and all(isinstance(v, int | float) for v in value):
        lo, hi = value
        numbers = [_number(v) for v in observed]
        return bool(numbers) and all(n is not None and _compare(">=", n, lo) and _compare("<=", n, hi) for n in numbers)
    present = {v.strip().upper() for v in observed}
    return all((v[1:].upper() not in present) if v.startswith("!") else (v.upper() in present) for v in value)


def _check_value(key: str, value: Any) -> None:
    """ValueError naming what is wrong with one condition's value."""
    if isinstance(value, bool):
        raise ValueError(f"{key}: true/false is not a condition (use a string, a number or a list)")
    if isinstance(value, str):
        if COMPARISON.match(value):
            return
        try:
            re.compile(value[1:] if value.startswith("!") else value)
        except re.error as exc:
            raise ValueError(f"{key}: bad regular expression {value!r}: {exc}") from None
        return
    if isinstance(value, int | float):
        return
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        if value[0] > value[1]:
            raise ValueError(f"{key}: range {value} has its bounds the wrong way round")
        return
    raise ValueError(f"{key}: expected a string, a number, [low, high] or a list of strings, got {json.dumps(value)}")


def unknown_keywords(keys: Sequence[str]) -> list[str]:
    """The keys that are neither ``slices`` nor a keyword of pydicom's DICOM data dictionary."""
    from pydicom.datadict import tag_for_keyword

    return [k for k in keys if k != SLICES and tag_for_keyword(k) is None]


class Selection(BaseModel):
    """One named set of conditions, all of which must hold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    conditions: dict[str, ConditionValue] = Field(min_length=1)

    @field_validator("conditions", mode="before")
    @classmethod
    def _well_formed(cls, conditions: Any, info: ValidationInfo) -> Any:
        """The values as given (before pydantic would read ``true`` as 1), one line per problem."""
        name = info.data.get("name", "?")
        for key, value in dict(conditions or {}).items() if isinstance(conditions, Mapping) else ():
            if key != SLICES and not KEYWORD.match(str(key)):
                raise ValueError(f"selection {name!r}: {key!r} is not a DICOM keyword (e.g. ImageType) or 'slices'")
            try:
                _check_value(key, value)
            except ValueError as exc:
                raise ValueError(f"selection {name!r}: {exc}") from None
        return conditions

    @model_validator(mode="after")
    def _known_keywords(self) -> Self:
        unknown = unknown_keywords(list(self.conditions))
        if unknown:
            raise ValueError(f"selection {self.name!r}: {', '.join(unknown)}: not a DICOM keyword (pydicom's data dictionary)")
        return self

    def failed_condition(self, header: Any, slices: int) -> str | None:
        """The first condition that does not hold, with what the series has; None if all hold."""
        for key, value in self.conditions.items():
            observed = [str(slices)] if key == SLICES else attribute_values(header, key)
            if not holds(value, observed):
                seen = "absent" if not observed else "\\".join(observed)
                return f"{key} {json.dumps(value)} (series has {seen})"
        return None


class SelectionRules(BaseModel):
    """Named selections; a series is taken when one of them holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    selections: tuple[Selection, ...] = Field(min_length=1)

    @field_validator("selections")
    @classmethod
    def _unique_names(cls, value: tuple[Selection, ...]) -> tuple[Selection, ...]:
        names = [s.name for s in value]
        if len(set(names)) != len(names):
            raise ValueError(f"selection names must differ: {names}")
        return value

    def excluded_by(self, header: Any, slices: int) -> str | None:
        """None when a selection takes the series; else why none does (each selection's failed condition)."""
        failed = []
        for selection in self.selections:
            condition = selection.failed_condition(header, slices)
            if condition is None:
                return None
            failed.append(f"{selection.name}: {condition}")
        return "not selected: " + "; ".join(failed)


def attribute_values(header: Any, keyword: str) -> list[str]:
    """The values of ``keyword`` in a pydicom header as strings ([] when absent or empty)."""
    element = header.get(keyword) if isinstance(header, Mapping) or hasattr(header, "get") else None
    if element is None or element == "":
        return []
    if isinstance(element, str | bytes | int | float):
        return [str(element).strip()]
    try:
        return [str(v).strip() for v in element]
    except TypeError:
        return [str(element).strip()]
