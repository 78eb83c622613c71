"""The parameters of the local low-rank mode (see :mod:`ctdenoise.local_lowrank`).

Kept apart from the numerics, with the standard library only: the DAG file's run parameters
(``ctdenoise.orchestration.params``) take their defaults from here at parse time, where numpy
must not be imported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ctdenoise.errors import ParameterError

SHRINKAGES = ("frobenius", "hard")
DEFAULT_MULTIPLIERS = (0.5, 1.0, 1.5)

ALGORITHM = "exact-tile-spectra+slice-noise/2"
"""Recorded in every local group, part of the derived series UIDs and of the run parameters'
hash: the same parameters through a changed algorithm give different pixels, so they must not
reuse a series UID, nor let a re-run skip a series published by the old one. Version 1 used a
randomized sketch for tiles through more than 64 slices and no per-slice noise normalization."""


@dataclass(frozen=True)
class LocalParams:
    """Parameters of the local low-rank mode (all with automatic, volume-independent defaults)."""

    tile: int = 12
    stride: int = 6
    multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS
    shrinkage: str = "frobenius"
    weights: str = "inverse_rank"  # or "uniform"

    def validate(self, source: str = "local mode") -> "LocalParams":
        if not 2 <= self.tile <= 64:
            raise ParameterError(f"{source}: tile must be between 2 and 64 pixels, got {self.tile}")
        if not 1 <= self.stride <= self.tile:
            raise ParameterError(f"{source}: stride must be between 1 and the tile size {self.tile}, got {self.stride}")
        if not self.multipliers or any(not (0 < float(m) <= 10) for m in self.multipliers):
            raise ParameterError(f"{source}: multipliers must be a non-empty list of values in (0, 10], got {list(self.multipliers)}")
        if len(set(self.multipliers)) != len(self.multipliers):
            raise ParameterError(f"{source}: multipliers must be distinct, got {list(self.multipliers)}")
        if self.shrinkage not in SHRINKAGES:
            raise ParameterError(f"{source}: shrinkage must be one of {', '.join(SHRINKAGES)}, got {self.shrinkage!r}")
        if self.weights not in ("inverse_rank", "uniform"):
            raise ParameterError(f"{source}: weights must be inverse_rank or uniform, got {self.weights!r}")
        return self

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["multipliers"] = [float(m) for m in self.multipliers]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LocalParams":
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        if "multipliers" in values:
            values["multipliers"] = tuple(float(m) for m in values["multipliers"])
        return cls(**values)


def multiplier_label(multiplier: float) -> str:
    """``x1``, ``x0.5``: how a multiplier appears in output folder names and task labels."""
    return f"x{float(multiplier):g}"
