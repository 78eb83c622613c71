"""Every run parameter, declared once: type, default, bounds or choices, help, and the mode using it.

A parameter is one pydantic field of one of the models below, grouped by what uses it:

- :class:`RankRules` (global mode): which ranks of the whole-series SVD become outputs;
- :class:`SvdParams` (global mode): the SVD algorithm (``spark/dssvd.py``, ``ctdenoise svd``);
- :class:`LocalParams` (local mode): the local low-rank algorithm (``spark/dssvd.py --local-out``,
  ``ctdenoise local``);
- :class:`SeriesSelection` and :class:`DeliveryChoice`: which series a run takes and which of
  their outputs go to the PACS (neither changes an output, so neither is in the params hash);
- :class:`InputRules` (both modes): which series ``convert`` accepts (sizes, spacing, limits);
- :class:`RunParams`: all of them plus ``modes`` (:class:`ModeChoice`) and ``force``, what a DAG
  run takes.

Everything else is derived from these declarations: the DAG's trigger form and its JSON schema
(:func:`param_schemas`), the command-line flags of ``ctdenoise`` and of the Spark job
(:func:`add_arguments` / :func:`from_arguments`), the job's argument list (:func:`to_arguments`),
the params hash and the work-layout keys (:class:`RunParams`), and the parameter table of
``docs/configuration.md`` (:func:`markdown_table`, compared with the page by a test).

Adding a parameter: one field here, plus the code that uses it.

This module imports the standard library and pydantic only: the DAG file reads it at parse time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Annotated, Any, Self, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ctdenoise.errors import ParameterError
from ctdenoise.selection import DEFAULT_SELECTION, Selection, SelectionRules


class Mode(StrEnum):
    """The two ways of denoising a series (see docs/local-mode.md)."""

    GLOBAL = "global"
    LOCAL = "local"


class SvdMethod(StrEnum):
    """How the global mode's SVD is computed (:mod:`ctdenoise.decomposition`)."""

    AUTO = "auto"
    EXACT = "exact"
    STOCHASTIC = "stochastic"


class Shrinkage(StrEnum):
    """How a tile's singular values are shrunk in the local mode."""

    FROBENIUS = "frobenius"
    HARD = "hard"


class Weights(StrEnum):
    """How overlapping tile estimates are averaged in the local mode."""

    INVERSE_RANK = "inverse_rank"
    UNIFORM = "uniform"


class Inplane(StrEnum):
    """The local mode's stage after the tiles, on each slice."""

    NLM = "nlm"
    NONE = "none"


class UnevenSpacing(StrEnum):
    """What ``convert`` does with a series whose slices are not evenly spaced."""

    FAIL = "fail"
    WARN = "warn"


MAX_RANK = 4096  # a CT series has at most a few thousand slices: rank <= slices
MAX_RULE_VALUES = 32

ALGORITHM = "exact-tile-spectra+slice-noise+local-noise-nlm-guided/4"
"""The local mode's algorithm version, recorded in every local group, part of the derived series
UIDs and of the params hash: the same parameters through a changed algorithm give other pixels,
so they must neither reuse a series UID nor let a re-run skip a series the old one published."""

# The in-plane stage (ctdenoise.inplane), in pixels: non-local means' patch size and search
# distance, the guided filter's radius, and the noise map's blocks and variance window.
NLM_PATCH = 5
NLM_DISTANCE = 4
GUIDED_RADIUS = 2
NOISE_BLOCK = 32
NOISE_WINDOW = 3
FILTER_REACH = NLM_DISTANCE + NLM_PATCH // 2 + 2 * GUIDED_RADIUS
"""Rows of the image the filters read beyond a row they output (the noise map reads more)."""


def _unique(values: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(sorted(set(values)))


class ParamModel(BaseModel):
    """Frozen, strict about unknown names, JSON round trip through ``model_dump(mode="json")``."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    @classmethod
    def parse(cls, values: Mapping[str, Any], source: str) -> Self:
        """``cls`` from ``values``; a one-line :class:`ParameterError` naming ``source`` otherwise."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            raise ParameterError(f"{source}: {validation_message(exc)}") from None

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one line: ``name: what is wrong (got value)``."""
    parts: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        where = ".".join(str(x) for x in error["loc"] if not isinstance(x, int))
        message = error["msg"].removeprefix("Value error, ")
        given = "" if error["type"] in ("missing", "value_error") else f" (got {error['input']!r})"
        parts.setdefault(where, f"{where}: {message}{given}" if where else message)  # the first problem of each field
    return "; ".join(parts.values())


M = TypeVar("M", bound=ParamModel)

Rank = Annotated[int, Field(ge=1, le=MAX_RANK)]
DropPercent = Annotated[float, Field(gt=0, lt=100)]
Multiplier = Annotated[float, Field(gt=0, le=10)]


class RankRules(ParamModel):
    """Which ranks of the global SVD become outputs (see :mod:`ctdenoise.ranks`)."""

    ranks: tuple[Rank, ...] = Field(
        (),
        title="Explicit ranks",
        description="Ranks r to reconstruct for every series, e.g. [5, 10, 20] (each 1..4096; ranks above a "
        "series' slice count are dropped for that series).",
        max_length=MAX_RULE_VALUES,
        json_schema_extra={"uniqueItems": True},
    )
    drop_percents: tuple[DropPercent, ...] = Field(
        (0.1, 1.0, 5.0, 10.0, 30.0),
        title="Drop percents (seed rule)",
        description="The seed's rule: for each p, drop the smallest p % of the singular values of the full "
        "spectrum (301 slices: 0.1, 1, 5, 10, 30 keep ranks 301, 298, 286, 271, 211). Each 0 < p < 100.",
        max_length=MAX_RULE_VALUES,
        json_schema_extra={"uniqueItems": True},
    )
    auto_rank: bool = Field(
        True,
        title="Automatic rank (Gavish-Donoho)",
        description="Also reconstruct at the Gavish-Donoho optimal hard threshold rank.",
    )
    k: int = Field(
        50,
        ge=1,
        le=MAX_RANK,
        title="Singular triplets computed (k)",
        description="Rank of the distributed SVD (raised to the largest explicit rank, capped at the slice count).",
    )

    @field_validator("ranks", "drop_percents")
    @classmethod
    def _sorted_rules(cls, values: tuple[Any, ...]) -> tuple[Any, ...]:
        return _unique(values)

    @property
    def svd_rank(self) -> int:
        """The SVD rank asked of every series: ``k``, raised to the largest explicit rank."""
        return max(self.k, *self.ranks) if self.ranks else self.k


class SvdParams(ParamModel):
    """The global mode's SVD (Halko-Martinsson-Tropp, or exact through the Gram matrix)."""

    method: SvdMethod = Field(
        SvdMethod.AUTO,
        title="SVD method",
        description="auto: exact (one Gram pass, the full spectrum) up to 4096 slices, else stochastic; "
        "exact; stochastic (Halko et al., Mahout's dssvd).",
    )
    oversample: int = Field(
        15,
        ge=0,
        le=512,
        title="Oversampling",
        description="Extra random test vectors of the stochastic SVD (Halko et al.: 5-20 is typical).",
    )
    power_iters: int = Field(
        2,
        ge=0,
        le=10,
        title="Power iterations",
        description="Subspace iterations of the stochastic SVD (sharpen slowly decaying spectra).",
    )
    seed: int = Field(
        0,
        ge=0,
        le=2**31 - 1,
        title="Random seed",
        description="Seed of the random test matrix: the same seed gives the same SVD.",
    )


class LocalParams(ParamModel):
    """The local mode: tiles through all slices, each shrunk on its own, then the in-plane stage."""

    tile: int = Field(12, ge=2, le=64, title="Local mode: tile size (pixels)",
                      description="Tiles of tile x tile pixels followed through all slices.")  # fmt: skip
    stride: int = Field(
        6,
        ge=1,
        le=64,
        title="Local mode: tile stride (pixels)",
        description="Distance between tile starts (at most the tile size; smaller = more overlap, slower).",
    )
    multipliers: tuple[Multiplier, ...] = Field(
        (0.5, 0.75, 1.0),
        min_length=1,
        max_length=MAX_RULE_VALUES,
        title="Local mode: threshold multipliers",
        description="One output per multiplier of the tiles' optimal threshold (lower keeps more; with the "
        "in-plane stage 0.5 is the automatic one, without it 1).",
        json_schema_extra={"uniqueItems": True},
    )
    shrinkage: Shrinkage = Field(
        Shrinkage.FROBENIUS,
        title="Local mode: shrinkage",
        description="frobenius: optimal singular value shrinkage for Frobenius loss; hard: the Gavish-Donoho hard threshold.",
    )
    weights: Weights = Field(
        Weights.INVERSE_RANK,
        title="Local mode: tile weights",
        description="inverse_rank: overlapping tiles count 1 / (1 + components kept); uniform: all alike.",
    )
    inplane: Inplane = Field(
        Inplane.NLM,
        title="Local mode: in-plane stage",
        description="nlm: on each slice of the tile estimate, non-local means then a guided filter, both at the "
        "strength of the local noise; none: the tiles alone.",
    )
    inplane_strength: float = Field(
        1.5,
        gt=0,
        le=10,
        title="Local mode: in-plane strength",
        description="Strength h of the non-local means, in units of the local noise of the tile estimate (its noise map).",
    )
    inplane_smoothing: float = Field(
        0.6,
        ge=0,
        le=10,
        title="Local mode: in-plane smoothing",
        description="Regularization of the guided filter after the non-local means, in units of the local noise: it "
        "averages flat tissue whose variance is below about this many noise levels squared (0: no guided filter).",
    )

    @field_validator("multipliers")
    @classmethod
    def _sorted_multipliers(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        return _unique(values)

    @model_validator(mode="after")
    def _stride_within_tile(self) -> Self:
        if self.stride > self.tile:
            raise ValueError(f"stride must be between 1 and the tile size {self.tile}, got {self.stride}")
        return self

    @property
    def automatic_multiplier(self) -> float:
        """The multiplier whose output is the automatic result (the report marks it): the tiles'
        optimum alone, half of it before the in-plane stage (see docs/local-mode.md)."""
        return 0.5 if self.inplane == Inplane.NLM else 1.0

    @property
    def inplane_halo(self) -> int:
        """Image rows the in-plane stage reads beyond a band on each side (0 without it), so that a
        band denoised with them equals the whole slice's result on its rows: the filters' reach
        (non-local means' search and patch, the guided filter's two box passes) and the noise
        map's (the two blocks a row interpolates between, and each block's variance window)."""
        if self.inplane == Inplane.NONE:
            return 0
        return FILTER_REACH + 2 * NOISE_BLOCK + NOISE_WINDOW // 2

    def key(self) -> str:
        """Name of this setting in the work layout: ``t<tile>-s<stride>-<shrinkage>-m<...>[-<inplane>]``
        (deterministic: no seed; no suffix for the tiles alone; only the settings that changed
        from the first version's defaults are named beyond that)."""
        mults = "_".join(f"{m:g}" for m in self.multipliers)
        suffix = "" if self.inplane == Inplane.NONE else f"-{self.inplane.value}"
        extra = "".join(
            f"-{name}{value}" for name, value, default in
            (("w", self.weights.value, Weights.INVERSE_RANK.value), ("h", f"{self.inplane_strength:g}", "1.5"),
             ("g", f"{self.inplane_smoothing:g}", "0.6"))
            if value != default
        )  # fmt: skip
        return f"t{self.tile}-s{self.stride}-{self.shrinkage.value}-m{mults}{suffix}{extra}"


class InputRules(ParamModel):
    """Which series ``convert`` accepts, checked from the headers before any pixel is decoded
    (:mod:`ctdenoise.acceptance`). They decide whether a series is processed, not what its
    outputs hold, so they are not part of the params hash."""

    min_slices_global: int = Field(3, ge=1, le=MAX_RANK, title="Minimum slices (global mode)",
                                   description="A series with fewer slices is refused when the global mode runs.")  # fmt: skip
    min_slices_local: int = Field(3, ge=1, le=MAX_RANK, title="Minimum slices (local mode)",
                                  description="A series with fewer slices is refused when the local mode runs.")  # fmt: skip
    min_size_global: int = Field(16, ge=1, le=65535, title="Minimum rows and columns (global mode)",
                                 description="A series with fewer rows or columns is refused when the global mode runs.")  # fmt: skip
    min_size_local: int = Field(16, ge=1, le=65535, title="Minimum rows and columns (local mode)",
                                description="A series with fewer rows or columns is refused when the local mode runs.")  # fmt: skip
    max_pixels: int = Field(4096 * 4096, ge=1, title="Maximum pixels per slice",
                            description="Rows x Columns above this are refused before any pixel is decoded.")  # fmt: skip
    max_series_mib: int = Field(2048, ge=1, title="Maximum series matrix (MiB)",
                                description="A series whose matrix (rows x columns x slices float32) is larger is refused "
                                "before any pixel is decoded (convert holds it in memory).")  # fmt: skip
    spacing_tolerance: float = Field(0.05, gt=0, le=1, title="Slice spacing tolerance",
                                     description="Largest deviation of a distance between neighbouring slices from their "
                                     "median, as a fraction of the median.")  # fmt: skip
    uneven_spacing: UnevenSpacing = Field(UnevenSpacing.FAIL, title="Uneven slice spacing",
                                          description="fail: refuse a series with a gap or uneven spacing (or without slice "
                                          "positions); warn: convert it, log a warning and record it in the report.")  # fmt: skip

    def min_slices(self, mode: Mode) -> int:
        return self.min_slices_global if mode == Mode.GLOBAL else self.min_slices_local

    def min_size(self, mode: Mode) -> int:
        return self.min_size_global if mode == Mode.GLOBAL else self.min_size_local


def multiplier_label(multiplier: float) -> str:
    """``x1``, ``x0.5``: how a multiplier appears in output folder names and task labels."""
    return f"x{float(multiplier):g}"


class ModeChoice(ParamModel):
    """Which modes a run computes."""

    modes: tuple[Mode, ...] = Field(
        (Mode.GLOBAL, Mode.LOCAL),
        min_length=1,
        title="Modes",
        description="global: truncated SVD of the whole series at the chosen ranks (the seed's pipeline); local: "
        "local low-rank denoising (small tiles through all slices, each shrunk on its own) at each "
        "threshold multiplier. Both by default, so the report compares them.",
        json_schema_extra={"uniqueItems": True},
    )

    @field_validator("modes")
    @classmethod
    def _modes_in_order(cls, modes: tuple[Mode, ...]) -> tuple[Mode, ...]:
        return tuple(m for m in Mode if m in modes)


class DeliverChoice(StrEnum):
    """Keywords of the ``deliver`` parameter (besides output folder names such as ``rank-9``)."""

    AUTOMATIC = "automatic"  # the Gavish-Donoho rank and the local mode's automatic multiplier
    ALL = "all"


DELIVER_ITEM = rf"^({'|'.join(c.value for c in DeliverChoice)}|rank-[1-9][0-9]*|local-x[0-9]+(\.[0-9]+)?)$"


class DeliveryChoice(ParamModel):
    """Which outputs of a completed series go to the deployment's PACS destinations."""

    deliver: tuple[Annotated[str, Field(pattern=DELIVER_ITEM)], ...] = Field(
        (DeliverChoice.AUTOMATIC.value,),
        max_length=MAX_RULE_VALUES,
        title="Deliver to PACS",
        description="Outputs sent to the destinations of CT_DENOISE_DESTINATIONS once a series is published: "
        "automatic (the Gavish-Donoho rank and the local mode's automatic multiplier), all, or output names "
        "(rank-9, local-x0.75); [] turns delivery off. Not part of the params hash.",
        json_schema_extra={"uniqueItems": True},
    )


def _default_selection() -> SelectionRules:
    """The built-in selection, constructed without validation (whose keyword check imports
    pydicom, which the DAG file must not at parse time); a test validates it."""
    return SelectionRules.model_construct(selections=tuple(Selection.model_construct(**s) for s in DEFAULT_SELECTION["selections"]))


class SeriesSelection(ParamModel):
    """Which series of a partition a run takes (:mod:`ctdenoise.selection`)."""

    selection: SelectionRules = Field(
        _default_selection(),
        title="Series selection rules",
        description="Named selections of conditions on DICOM attributes of a series' first CT slice (regular "
        "expressions, lists of values that must be present, '!X' to exclude, numbers, [low, high] ranges, "
        "'>= n' comparisons) plus 'slices', the folder's file count; a series is taken when one selection "
        "holds. Default: CT_DENOISE_SELECTION, else axial original CT with at least 8 slices. Not part of the params hash.",
    )


NOT_HASHED = frozenset({"force", "deliver", "selection", *InputRules.model_fields})
"""Parameters that do not change what a series' outputs are (which series are taken, where
outputs go, which inputs are accepted): a change reprocesses nothing."""


class RunParams(DeliveryChoice, SeriesSelection, InputRules, LocalParams, SvdParams, RankRules, ModeChoice):
    """What one DAG run takes (the trigger form): the modes, every parameter above, ``selection``,
    ``deliver`` and ``force``."""

    force: bool = Field(
        False,
        title="Force",
        description="Process series even if they were already published with the same parameters.",
    )

    @model_validator(mode="after")
    def _a_rank_rule(self) -> Self:
        if Mode.GLOBAL in self.modes and not (self.ranks or self.drop_percents or self.auto_rank):
            raise ValueError("no rank rule selected: give explicit ranks, drop_percents, or set auto_rank (Gavish-Donoho)")
        return self

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any] | None) -> Self:
        """A run's parameters from its params (Airflow has validated each field's schema; the
        cross-field rules are checked here), unknown keys ignored."""
        known = {k: v for k, v in dict(conf or {}).items() if k in cls.model_fields}
        return cls.parse(known, "ct_denoise params")

    @property
    def local(self) -> LocalParams | None:
        return _subset(self, LocalParams) if Mode.LOCAL in self.modes else None

    @property
    def input_rules(self) -> InputRules:
        return _subset(self, InputRules)

    @property
    def svd(self) -> SvdParams | None:
        return _subset(self, SvdParams) if Mode.GLOBAL in self.modes else None

    def convert_arguments(self) -> list[str]:
        """The ``ctdenoise convert`` flags of this run: its modes and input rules."""
        return [*to_arguments(ModeChoice.model_validate({"modes": self.modes})), *to_arguments(self.input_rules)]

    def params_hash(self) -> str:
        """A short stable hash of what changes results (everything but :data:`NOT_HASHED`; the
        local algorithm's version when the local mode runs): ``report.json`` records it."""
        values = self.model_dump(mode="json", exclude=set(NOT_HASHED))
        if Mode.LOCAL in self.modes:
            values["local_algorithm"] = ALGORITHM
        canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def svd_key(self, svd_rank: int | None = None) -> str:
        """Name of an SVD parameter set in the work layout: ``k<k>-o<o>-q<q>-s<seed>[-<method>]``."""
        k = self.svd_rank if svd_rank is None else svd_rank
        method = "" if self.method == SvdMethod.AUTO else f"-{self.method.value}"
        return f"k{k}-o{self.oversample}-q{self.power_iters}-s{self.seed}{method}"


def _subset(params: ParamModel, model: type[M]) -> M:
    return model.model_validate(params.model_dump(include=set(model.model_fields)))


FAST = LocalParams(tile=8, stride=8, multipliers=(1.0,), inplane=Inplane.NONE)
"""The fastest local setting the benchmarks measure (docs/benchmarks.md): 8 x 8 pixel tiles
without overlap, one output (x1), no in-plane stage."""

BENCH_SETTINGS = {"default": LocalParams(), "tiles": LocalParams(inplane=Inplane.NONE), "fast": FAST}
"""The local settings both benchmarks compare, by name."""


# ---------------------------------------------------------------------------------------------
# Derived: JSON schemas (the trigger form), command-line flags, argument lists, docs


def param_schemas(model: type[ParamModel] = RunParams) -> dict[str, dict[str, Any]]:
    """``{name: JSON schema}`` of each field, self-contained (no ``$ref``), with its ``default``,
    ``title`` and ``description``: what an Airflow ``Param`` takes."""
    schema = model.model_json_schema(mode="serialization")
    defs = schema.get("$defs", {})
    return {name: _inline(prop, defs) for name, prop in schema["properties"].items()}


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = dict(defs[node["$ref"].rsplit("/", 1)[-1]])
            target.pop("title", None)
            target.pop("description", None)
            return _inline({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_kind(annotation: Any) -> tuple[str, Any]:
    """``(kind, item type)``: ``list``, ``enum``, ``bool`` or ``scalar``."""
    if get_origin(annotation) is tuple:
        item = get_args(annotation)[0]
        return "list", (get_args(item)[0] if get_origin(item) is Annotated else item)
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return "enum", annotation
    if annotation is bool:
        return "bool", bool
    return "scalar", annotation


def _comma_list(item: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            return [item(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item.__name__} values, got {text!r}") from None

    parse.__name__ = f"comma-separated {item.__name__}"
    return parse


def add_arguments(parser: argparse.ArgumentParser, model: type[ParamModel], exclude: Iterable[str] = ()) -> None:
    """One flag per field of ``model`` (``--power-iters``), typed and documented from the field;
    unset flags stay None so that :func:`from_arguments` takes the model's defaults."""
    for name, info in model.model_fields.items():
        if name in exclude:
            continue
        kind, item = _field_kind(info.annotation)
        default = info.default.value if isinstance(info.default, StrEnum) else info.default
        if kind == "list":
            default = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
        help_text = f"{info.description} (default: {default})"
        options: dict[str, Any] = {"default": None, "help": help_text.replace("%", "%%")}
        if kind == "list":
            options["type"] = _comma_list(item)
        elif kind == "enum":
            options["choices"] = [m.value for m in item]
        elif kind == "bool":
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = item
        parser.add_argument(flag(name), dest=name, **options)


def from_arguments(model: type[M], args: argparse.Namespace, source: str) -> M:
    """The model from the flags of :func:`add_arguments` (unset ones take their defaults)."""
    given = {name: getattr(args, name) for name in model.model_fields if getattr(args, name, None) is not None}
    return model.parse(given, source)


def to_arguments(params: ParamModel) -> list[str]:
    """The flags that give ``params`` back through :func:`add_arguments` (every field, explicitly,
    so a job never depends on defaults that may differ between the images)."""
    out: list[str] = []
    for name, value in params.model_dump(mode="json").items():
        kind, _ = _field_kind(type(params).model_fields[name].annotation)
        if kind == "bool":
            out.append(flag(name) if value else flag("no_" + name))
        elif kind == "list":
            out += [flag(name), ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)]
        else:
            out += [flag(name), str(value)]
    return out


def markdown_table(model: type[ParamModel] = RunParams) -> str:
    """The parameter table of docs/configuration.md: name, default, mode, meaning."""
    groups = {name: "both" for name in ("modes", "force", "selection", "deliver")}
    for group, label in ((RankRules, "global"), (SvdParams, "global"), (LocalParams, "local"), (InputRules, "both")):
        groups.update({name: label for name in group.model_fields})
    lines = ["| param | default | mode | meaning |", "|---|---|---|---|"]
    for name, schema in param_schemas(model).items():
        lines.append(f"| `{name}` | `{json.dumps(schema.get('default'))}` | {groups[name]} | {schema['description']} |")
    return "\n".join(lines) + "\n"
