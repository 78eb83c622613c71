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
INPLANE = ("nlm", "none")
DEFAULT_MULTIPLIERS = (0.5, 0.75, 1.0)

# The in-plane stage (``inplane="nlm"``): scikit-image's non-local means on each slice of the
# tile estimate. Patch 5 x 5 px, search +-4 px: the search of +-6 px gained 0.1 dB on the
# quality benchmark at twice the time.
NLM_PATCH = 5
NLM_DISTANCE = 4

ALGORITHM = "exact-tile-spectra+slice-noise+nlm/3"
"""Recorded in every local group, part of the derived series UIDs and of the run parameters'
hash: the same parameters through a changed algorithm give different pixels, so they must not
reuse a series UID, nor let a re-run skip a series published by the old one. Version 1 used a
randomized sketch for tiles through more than 64 slices and no per-slice noise normalization;
version 2 had no in-plane stage."""


@dataclass(frozen=True)
class LocalParams:
    """Parameters of the local low-rank mode (all with automatic, volume-independent defaults)."""

    tile: int = 12
    stride: int = 6
    multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS
    shrinkage: str = "frobenius"
    weights: str = "inverse_rank"  # or "uniform"
    inplane: str = "nlm"  # or "none": the tile estimate as it is
    # NLM filter strength h, in units of the tile estimate's noise as measured on the middle band
    # (which reads 4-9 % under the whole slice's). Measured on the quality benchmark, x0.5, 1.0 /
    # 1.2 / 1.4: 41.84 / 42.07 / 42.06 dB at 32 slices, 37.14 / 37.10 / 36.68 at 5e3 photons,
    # 42.02 / 42.34 / - at 301 slices.
    inplane_strength: float = 1.2

    @property
    def automatic_multiplier(self) -> float:
        """The multiplier whose output is the automatic result (the report marks it).

        Alone, the tile shrinkage is best at the optimal threshold (x1). Followed by the in-plane
        stage it is best at half of it (x0.5): the tiles then keep every structure that changes
        from slice to slice, and non-local means removes the noise they keep, which it tells
        from edges within the slice (measured on the quality benchmark: see the README).
        """
        return 0.5 if self.inplane == "nlm" else 1.0

    @property
    def inplane_halo(self) -> int:
        """Image rows the in-plane stage reads beyond a band on each side (0 without it): its
        output at a pixel depends on the pixels within ``NLM_DISTANCE + NLM_PATCH // 2``, so a
        band denoised with this many extra rows equals the whole slice's result on its rows."""
        return NLM_DISTANCE + NLM_PATCH // 2 if self.inplane == "nlm" else 0

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
        if self.inplane not in INPLANE:
            raise ParameterError(f"{source}: inplane must be one of {', '.join(INPLANE)}, got {self.inplane!r}")
        if not 0 < float(self.inplane_strength) <= 10:
            raise ParameterError(f"{source}: inplane_strength must be in (0, 10], got {self.inplane_strength}")
        return self

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["multipliers"] = [float(m) for m in self.multipliers]
        data["inplane_strength"] = float(self.inplane_strength)
        return data

    def job_arguments(self) -> list[str]:
        """The ``spark/dssvd.py`` options for these parameters, as far as run parameters set them
        (``weights`` and ``inplane_strength`` are not run parameters: the job's defaults)."""
        return ["--tile", str(self.tile), "--stride", str(self.stride),
                "--multipliers", ",".join(f"{float(m):g}" for m in self.multipliers), "--shrinkage", self.shrinkage,
                "--inplane", self.inplane]  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LocalParams":
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        if "multipliers" in values:
            values["multipliers"] = tuple(float(m) for m in values["multipliers"])
        if "inplane_strength" in values:
            values["inplane_strength"] = float(values["inplane_strength"])
        return cls(**values)


FAST = LocalParams(tile=8, stride=8, multipliers=(1.0,), inplane="none")
"""The fastest setting the benchmarks measure: 8 x 8 pixel tiles without overlap, one output
(x1), no in-plane stage. It meets the issue's speed target (within 3x of the global exact
compute on 512 x 512 x 301) where the default does not, and shows what that costs in quality
(both benchmarks print it beside the default: see the README). Run parameters: ``tile=8,
stride=8, multipliers=[1], inplane=none``."""

BENCH_SETTINGS = {"default": LocalParams(), "tiles": LocalParams(inplane="none"), "fast": FAST}
"""The settings both benchmarks compare, by name: the default, its tile stage alone, the fast one."""


def multiplier_label(multiplier: float) -> str:
    """``x1``, ``x0.5``: how a multiplier appears in output folder names and task labels."""
    return f"x{float(multiplier):g}"
