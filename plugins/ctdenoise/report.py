"""The per-series report: one self-contained HTML page and its JSON summary.

The report is what a person opens to judge a run: which ranks were reconstructed, why (the rank
rules), how much of the signal each keeps, what the middle slice looks like at each rank, and
exactly what produced it. It is written to ``<series_url>/report.html`` and
``<series_url>/report.json`` beside the ``rank-<r>/`` folders of the writer.

Why it is built this way:

- **Self-contained.** Every image is a base64 PNG ``data:`` URI and the CSS is inline, so the
  page opens from S3, a mail attachment or an air-gapped workstation without fetching anything.
- **Deterministic.** Nothing depends on the wall clock: the page shows the run's logical date,
  and figures carry no timestamp, so a rerun on the same inputs gives byte-identical files.
- **Cheap.** The previews need the middle slice only, and column ``j`` of ``A V_r V_r^T`` is
  ``A @ (V_r V_r[j, :])``: one pass over the matrix row blocks gives the original slice and the
  reconstructions at every rank at once, without reading the rank folders' DICOM files.
- **JSON last.** ``report.json`` is the completion marker of the series (the DAG and reruns
  check it), so it is written after ``report.html``, each in one PUT
  (:func:`ctdenoise.storage.write_bytes`). ``publish_dir`` is not used: it would replace the
  series folder and with it the ``rank-*`` outputs.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from typing import Any

import numpy as np

from ctdenoise import storage
from ctdenoise.errors import InputError, ParameterError

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
TEMPLATE = "report_template.html"

#: Lung window (width, level) in HU; the soft-tissue and difference windows are ctdenoise.preview's.
LUNG_WINDOW = (1500.0, -600.0)
#: Displayed size of a preview tile (CSS px); the PNG keeps the native matrix so zooming shows noise.
TILE_PX = 320

#: Distributions whose versions identify the software that produced a report.
VERSION_PACKAGES = ("ctdenoise", "numpy", "pydicom", "zarr", "pyspark", "apache-airflow")

AUTO_RULE = "gavish_donoho"
_AUTO_COLOUR = "#d95f02"
_RANK_COLOUR = "#4d4d4d"
_FAILED_COLOUR = "#b2182b"


@dataclass(frozen=True)
class RankEntry:
    """One requested rank as the report sees it (normalised from the DAG's dict).

    ``rules`` are ``{"rule": name, **detail}`` dicts as in :meth:`ctdenoise.ranks.RankChoice.as_dict`.
    """

    rank: int
    rules: tuple[dict[str, Any], ...]
    output_url: str | None
    metrics: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.metrics is not None

    @property
    def auto_rule(self) -> dict[str, Any] | None:
        """The Gavish-Donoho rule that chose this rank (with its threshold), if it did."""
        return next((r for r in self.rules if str(r.get("rule", "")).lower() == AUTO_RULE), None)

    @property
    def is_auto(self) -> bool:
        return self.auto_rule is not None

    @property
    def rule_labels(self) -> list[str]:
        return [rule_label(r) for r in self.rules]


def rule_label(rule: Mapping[str, Any]) -> str:
    """Short text for a rank rule: 'explicit', 'drop 10 %', 'Gavish–Donoho'."""
    name = str(rule.get("rule", "?"))
    if name == "drop_percent" and isinstance(rule.get("percent"), (int, float)):
        return f"drop {rule['percent']:g} %"
    if name == AUTO_RULE:
        return "Gavish–Donoho"
    return name


# --------------------------------------------------------------------------------------------
# Numbers


def installed_versions(packages: Iterable[str] = VERSION_PACKAGES) -> dict[str, str]:
    """Installed versions of the distributions that shape the result ('not installed' if absent)."""
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def retained_energy(s: np.ndarray, rank: int, frobenius_norm: float | None = None) -> float:
    """Fraction of ||A||_F^2 kept by the first ``rank`` singular values (0..1).

    Uses the SVD's ``frobenius_norm`` attribute when given: with a truncated spectrum the sum of
    the stored ``s**2`` is smaller than ||A||_F^2.
    """
    s = np.asarray(s, dtype=np.float64)
    total = float(frobenius_norm) ** 2 if frobenius_norm else float(np.sum(s**2))
    if total <= 0:
        return float("nan")
    return float(np.sum(s[: max(0, rank)] ** 2) / total)


def middle_slice_reconstructions(
    matrix: Any, V: np.ndarray, ranks: Sequence[int], column: int
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Column ``column`` of ``A`` and of ``A V_r V_r^T`` for every rank, in one pass over ``A``.

    ``matrix`` is a (voxels, slices) array (a Zarr array or numpy); it is read once, block of
    rows by block of rows (its chunk height), so the memory used is one block plus the outputs.
    Returns the original column and ``{rank: column}``, float64 HU, length rows*columns.
    """
    m, n = matrix.shape
    V = np.asarray(V, dtype=np.float64)
    if V.shape[0] != n:
        raise InputError(f"V has {V.shape[0]} rows but the matrix has {n} slices")
    if not 0 <= column < n:
        raise ParameterError(f"column {column} is outside 0..{n - 1}")
    bad = [r for r in ranks if not 1 <= r <= V.shape[1]]
    if bad:
        raise ParameterError(f"ranks {bad} are outside 1..{V.shape[1]} (the SVD's rank)")
    # w_r = V_r V_r[j, :]^T, one column per rank: A @ W gives every reconstruction's column j.
    W = np.stack([V[:, :r] @ V[column, :r] for r in ranks], axis=1) if ranks else np.zeros((n, 0))
    block = getattr(matrix, "chunks", None)
    step = int(block[0]) if block else 16384
    original = np.empty(m, dtype=np.float64)
    out = np.empty((m, len(ranks)), dtype=np.float64)
    for start in range(0, m, step):
        stop = min(m, start + step)
        rows = np.asarray(matrix[start:stop, :], dtype=np.float64)
        original[start:stop] = rows[:, column]
        out[start:stop] = rows @ W
    return original, {r: out[:, i] for i, r in enumerate(ranks)}


def gavish_donoho_threshold(entries: Sequence[RankEntry]) -> float | None:
    """The hard threshold on singular values reported by the Gavish-Donoho rule, if any."""
    for entry in entries:
        rule = entry.auto_rule
        value = rule.get("threshold") if rule else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


# --------------------------------------------------------------------------------------------
# Images


def window_to_uint8(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """HU to 0..255 for display, with the shared window definition of :mod:`ctdenoise.preview`."""
    from ctdenoise.preview import window

    return np.round(window(hu, width, level) * 255.0).astype(np.uint8)


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def grey_png(image: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG (Pillow writes no timestamp: same pixels, same bytes)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="L").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def scree_png(
    s: np.ndarray, entries: Sequence[RankEntry], frobenius_norm: float | None, threshold: float | None
) -> bytes:
    """Singular values (log scale) and retained energy, with the chosen ranks marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = np.asarray(s, dtype=np.float64)
    idx = np.arange(1, s.size + 1)
    total = float(frobenius_norm) ** 2 if frobenius_norm else float(np.sum(s**2))
    energy = 100.0 * np.cumsum(s**2) / total if total > 0 else np.full(s.size, np.nan)

    fig = Figure(figsize=(12.0, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # Agg without pyplot: no global figure state, no GUI backend
    ax_s, ax_e = fig.subplots(1, 2, width_ratios=(3, 2))
    ax_s.semilogy(idx, np.where(s > 0, s, np.nan), "o-", color="#1f3b73", ms=3, lw=1.2, label="singular values")
    ax_e.plot(idx, energy, "o-", color="#1f3b73", ms=3, lw=1.2)
    auto_drawn = chosen_drawn = False
    for entry in entries:
        if entry.is_auto:
            colour, lw, style, z = _AUTO_COLOUR, 2.4, "-", 3
            label = None if auto_drawn else f"Gavish–Donoho rank {entry.rank}"
            auto_drawn = True
        elif not entry.ok:
            colour, lw, style, z, label = _FAILED_COLOUR, 1.2, ":", 2, "failed rank"
        else:
            colour, lw, style, z = _RANK_COLOUR, 1.0, "--", 2
            label = None if chosen_drawn else "chosen rank"
            chosen_drawn = True
        for ax in (ax_s, ax_e):
            ax.axvline(entry.rank, color=colour, lw=lw, ls=style, zorder=z, label=label if ax is ax_s else None)
        ax_s.annotate(
            f"r={entry.rank}" + ("" if entry.ok else " (failed)"),
            xy=(entry.rank, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -3),
            textcoords="offset points",
            rotation=90,
            va="top",
            ha="left",
            fontsize=9,
            color=colour,
        )
    if threshold is not None and threshold > 0:
        ax_s.axhline(threshold, color=_AUTO_COLOUR, lw=1.2, ls="-.", label=f"Gavish–Donoho threshold {threshold:.5g}")
    ax_s.set_xlabel("component")
    ax_s.set_ylabel("singular value")
    ax_s.set_title("Scree plot (log scale)", fontsize=11)
    ax_s.grid(True, which="both", alpha=0.25)
    handles, labels = ax_s.get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # one legend entry per kind of line
    fig.legend(unique.values(), unique.keys(), loc="outside lower center", ncols=len(unique), fontsize=9, frameon=False)
    ax_e.set_xlabel("rank")
    ax_e.set_ylabel("retained energy (%)")
    ax_e.set_title("Retained energy", fontsize=11)
    ax_e.grid(True, alpha=0.25)
    for ax in (ax_s, ax_e):
        ax.set_xlim(0.5, max(s.size, max((e.rank for e in entries), default=1)) + 0.5)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Inputs


_DROP_KEYS = ("percent", "dropped")


def _rule_dicts(item: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rules of a rank entry as ``{"rule": name, **detail}`` dicts.

    Accepts the shapes callers use: ``rule_details`` or ``rules`` as dicts
    (:meth:`ctdenoise.ranks.RankChoice.as_dict`), ``rules`` as names with one merged ``detail``
    (the DAG's plan items: the drop percent goes to the ``drop_percent`` rule, the rest, e.g. the
    threshold, to ``gavish_donoho``), or a single ``rule`` with its ``detail``.
    """
    for key in ("rule_details", "rules"):
        value = item.get(key)
        if isinstance(value, Sequence) and not isinstance(value, str) and value and all(
            isinstance(r, Mapping) for r in value
        ):
            return [dict(r) for r in value]
    names = item.get("rules")
    if names is None:
        names = [item["rule"]] if item.get("rule") else []
    elif isinstance(names, (str, Mapping)):
        names = [names]
    detail = dict(item.get("detail") or {})
    out = []
    for name in names:
        if isinstance(name, Mapping):
            out.append(dict(name))
            continue
        rule: dict[str, Any] = {"rule": str(name)}
        if len(names) == 1:
            rule.update(detail)
        elif name == "drop_percent":
            rule.update({k: v for k, v in detail.items() if k in _DROP_KEYS})
        elif name == AUTO_RULE:
            rule.update({k: v for k, v in detail.items() if k not in _DROP_KEYS})
        out.append(rule)
    return out


def _normalise_ranks(ranks: Sequence[Mapping[str, Any]], allow_empty: bool = False) -> list[RankEntry]:
    """Rank entries sorted by rank; a rank listed twice becomes one entry with both rules."""
    if not ranks and not allow_empty:
        raise ParameterError("write_report needs at least one rank entry (got an empty list)")
    merged: dict[int, RankEntry] = {}
    for item in ranks:
        if "rank" not in item or isinstance(item["rank"], bool):
            raise ParameterError(f"rank entry without an integer 'rank': {dict(item)!r}")
        rank = int(item["rank"])
        entry = RankEntry(
            rank=rank,
            rules=tuple(_rule_dicts(item)),
            output_url=item.get("output_url"),
            metrics=dict(item["metrics"]) if item.get("metrics") is not None else None,
        )
        old = merged.get(rank)
        if old is not None:
            entry = RankEntry(
                rank=rank,
                rules=old.rules + tuple(r for r in entry.rules if r not in old.rules),
                output_url=old.output_url or entry.output_url,
                metrics=old.metrics if old.metrics is not None else entry.metrics,
            )
        merged[rank] = entry
    return [merged[r] for r in sorted(merged)]


def _header_value(header: Mapping[str, Any], tag: str) -> Any:
    """A value from the DICOM JSON header template (first value, person names as text)."""
    element = header.get(tag) if isinstance(header, Mapping) else None
    if not isinstance(element, Mapping):
        return None
    values = element.get("Value") or []
    if not values:
        return None
    value = values[0]
    if isinstance(value, Mapping):  # PN: {"Alphabetic": ...}
        value = value.get("Alphabetic")
    return value


def _json_safe(value: Any) -> Any:
    """Plain JSON: numpy scalars to Python, NaN/inf to null, tuples to lists."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------------------------
# Formatting for the page


def _fmt_number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "—" if not math.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


_PAIR_SUFFIXES = (("_input", "_denoised"), ("_before", "_after"))


def _before_after(metrics: Mapping[str, Any], key: str, digits: int = 4) -> str:
    """'input → denoised' for a metric stored as the writer does (``key_input``/``key_denoised``),
    as ``key_before``/``key_after``, as a ``{before, after}`` dict, or as one number."""
    value = metrics.get(key)
    if isinstance(value, Mapping):
        before, after = value.get("before", value.get("input")), value.get("after", value.get("denoised"))
    else:
        before = after = None
        for first, second in _PAIR_SUFFIXES:
            if f"{key}{first}" in metrics or f"{key}{second}" in metrics:
                before, after = metrics.get(f"{key}{first}"), metrics.get(f"{key}{second}")
                break
        else:
            return _fmt_number(value, digits)
    if before is None:
        return _fmt_number(after, digits)
    return f"{_fmt_number(before, digits)} → {_fmt_number(after, digits)}"


def _percent(value: Any) -> str:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{100.0 * value:.3f} %"
    return "—"


def _seconds(value: Any) -> str:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{value:.2f} s"
    return "—"


def _relative(url: str | None, base: str) -> str:
    """An output URL shown relative to the series folder ('rank-8/') when it lies inside it."""
    if not url:
        return "—"
    prefix = base.rstrip("/") + "/"
    return url[len(prefix):].rstrip("/") + "/" if url.startswith(prefix) else url


def _plain(value: Any) -> str:
    """Parameters and provenance values as readable text (JSON for structures)."""
    if isinstance(value, str):
        return value
    return json.dumps(_json_safe(value), sort_keys=True)


def _render(context: Mapping[str, Any]) -> str:
    import jinja2

    source = resources.files("ctdenoise").joinpath(TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(source).render(**context)


# --------------------------------------------------------------------------------------------
# The report


def _windows() -> list[tuple[str, float, float]]:
    """(caption, width HU, level HU) of the three preview columns."""
    from ctdenoise.preview import DIFFERENCE_HALF_RANGE_HU, SOFT_TISSUE_WINDOW

    return [
        ("Soft tissue", *SOFT_TISSUE_WINDOW),
        ("Lung", *LUNG_WINDOW),
        ("Original − denoised", 2.0 * DIFFERENCE_HALF_RANGE_HU, 0.0),
    ]


def _tiles(hu: np.ndarray, diff: np.ndarray | None, shape: tuple[int, int]) -> list[dict[str, str] | None]:
    """The three tiles of one preview row: two windows of ``hu`` and the difference map (or none)."""

    def tile(image: np.ndarray, name: str, width: float, level: float) -> dict[str, str]:
        png = grey_png(window_to_uint8(image.reshape(shape), width, level))
        return {"src": png_data_uri(png), "alt": f"{name} W{width:g}/L{level:g} HU"}

    soft, lung, difference = _windows()
    return [tile(hu, *soft), tile(hu, *lung), None if diff is None else tile(diff, *difference)]


def _metric_row(
    name: Any, rules: str, ok: bool, css: str, mt: Mapping[str, Any], energy: Any, output_url: str | None, series_url: str
) -> dict[str, Any]:
    """One row of the metrics table (a global rank or a local multiplier)."""
    return {
        "rank": name,
        "rules": rules,
        "status": "ok" if ok else "failed",
        "css": css,
        "energy": _percent(energy),
        "noise": _before_after(mt, "noise_std_hu", 3) if ok else "—",
        "psnr": _before_after(mt, "psnr_db", 4) if ok else "—",
        "ssim": _before_after(mt, "ssim", 4) if ok else "—",
        "seconds": _seconds(mt.get("seconds")),
        "output": _relative(output_url, series_url),
        "output_url": output_url or "",
    }


def _row_css(entry: RankEntry) -> str:
    return "auto" if entry.is_auto else ("failed" if not entry.ok else "")


def local_middle_slices(group: Any, column: int) -> list[np.ndarray]:
    """Column ``column`` of ``D[i]`` (the middle slice) for every multiplier of a local group.

    Read from the group's ``middle_slice`` copy when the job wrote one for this column (a few MB);
    groups written before it existed give it from ``D``, whose every chunk holds a part of it."""
    from ctdenoise import matrix_store

    if "middle_slice" in group and column == matrix_store.middle_column(group["D"].shape[2]):
        middle = np.asarray(group["middle_slice"][...], dtype=np.float64)
        return list(middle)
    D = group["D"]
    return [np.asarray(D[i, :, column], dtype=np.float64) for i in range(D.shape[0])]


def local_maps_png(ranks: np.ndarray, sigma: np.ndarray, multipliers: Sequence[float]) -> bytes:
    """Per-tile noise level (HU) and components kept at each multiplier, as maps over the slice."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 1 + len(multipliers)
    fig = Figure(figsize=(3.4 * panels, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    im = axes[0].imshow(sigma, cmap="magma", interpolation="nearest")
    axes[0].set_title("noise σ per tile (HU)", fontsize=10)
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    top = max(1, int(np.max(ranks)) if ranks.size else 1)
    for ax, r, m in zip(axes[1:], ranks, multipliers, strict=True):
        im = ax.imshow(r, cmap="viridis", vmin=0, vmax=top, interpolation="nearest")
        ax.set_title(f"components kept, x{float(m):g}", fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def write_report(
    *,
    matrix_url: str,
    svd_url: str,
    series_url: str,
    ranks: list[dict],
    run_info: dict,
    reference_url: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    local: list[dict] | None = None,
    local_url: str | None = None,
) -> dict:
    """Write ``<series_url>/report.html`` then ``<series_url>/report.json``; return the summary.

    Parameters
    ----------
    matrix_url, svd_url
        The series matrix (Zarr, HU) and its SVD group, as in ``docs/architecture.md``.
    series_url
        ``.../denoised/<SeriesInstanceUID>``, the folder holding the ``rank-<r>`` outputs.
    ranks
        One dict per requested rank: ``rank``, ``rules`` (dicts as in
        :meth:`ctdenoise.ranks.RankChoice.as_dict`, or rule names with a merged ``detail``),
        ``output_url`` and ``metrics`` (the rank's ``metrics.json``; ``None`` if that rank failed). The
        Gavish-Donoho rule's ``threshold`` is drawn on the scree plot.
    run_info
        ``dag_id``, ``run_id``, ``logical_date``, ``params``, optionally ``params_hash``,
        ``source_url`` (the DICOM folder) and ``versions`` (computed here with
        :func:`installed_versions` if absent).
    reference_url
        Optional reference matrix (e.g. the noise-free or full-dose series, same shape) whose
        middle slice is shown beside the original.
    local, local_url
        The local mode's outputs (one dict per multiplier: ``multiplier``, ``detail``,
        ``output_url``, ``metrics``) and its group (``ctdenoise.matrix_store.open_local``):
        their middle slices join the preview grid, their metrics the table, and the per-tile
        noise and rank maps get a figure. ``svd_url`` may then be None (a local-only run: no
        scree plot, no rank rows).

    Raises :class:`ParameterError` for an empty or malformed ``ranks`` list and
    :class:`InputError` when the matrix, the SVD and the reference do not fit together.
    """
    from ctdenoise import matrix_store

    local = list(local or [])
    if local and not local_url:
        raise ParameterError("write_report: local entries need the local group's local_url")
    entries = _normalise_ranks(ranks, allow_empty=bool(local) or svd_url is None)
    if not entries and not local:
        raise ParameterError("write_report needs at least one rank or local entry")
    matrix = matrix_store.open_matrix(matrix_url, storage_options=storage_options)
    attrs = dict(matrix.attrs)
    m, n = matrix.shape
    if svd_url is not None:
        s, V, svd_attrs = matrix_store.read_svd(svd_url, storage_options=storage_options)
    else:
        s, V, svd_attrs = np.zeros(0), np.zeros((n, 0)), {}
    rows, columns = int(attrs.get("rows", 0)), int(attrs.get("columns", 0))
    if rows * columns != m:
        raise InputError(f"{matrix_url}: attributes rows={rows} x columns={columns} do not match {m} voxel rows")
    if V.shape[0] != n:
        raise InputError(f"{svd_url}: V has {V.shape[0]} rows but {matrix_url} has {n} slices")
    k = int(s.size)
    frobenius = svd_attrs.get("frobenius_norm")
    threshold = gavish_donoho_threshold(entries)
    auto = next((e for e in entries if e.is_auto), None)
    series_uid = str(attrs.get("series_instance_uid") or storage.basename(series_url))
    description = str(_header_value(attrs.get("header") or {}, "0008103E") or "")

    # Middle slice (the writer's preview slice too): original, every computable rank, reference.
    column = matrix_store.middle_column(n)
    original, recon = middle_slice_reconstructions(matrix, V, [e.rank for e in entries if e.rank <= k], column)
    reference = None
    if reference_url:
        ref = matrix_store.open_matrix(reference_url, storage_options=storage_options)
        if tuple(ref.shape) != (m, n):
            raise InputError(f"{reference_url}: reference shape {tuple(ref.shape)} differs from {matrix_url} {(m, n)}")
        reference = np.asarray(ref[:, column], dtype=np.float64)

    shape = (rows, columns)
    preview_rows = [{"label": "Original", "note": "input series", "css": "", "tiles": _tiles(original, None, shape)}]
    if reference is not None:
        preview_rows.append(
            {"label": "Reference", "note": "difference: original − reference (the noise)", "css": "ref",
             "tiles": _tiles(reference, original - reference, shape)}
        )
    for entry in entries:
        if entry.rank in recon:
            preview_rows.append(
                {"label": f"Rank {entry.rank}",
                 "note": ", ".join(entry.rule_labels) + ("" if entry.ok else " — writer failed"),
                 "css": _row_css(entry),
                 "tiles": _tiles(recon[entry.rank], original - recon[entry.rank], shape)}
            )

    local_rows, local_metric_rows, local_summary, local_maps = [], [], [], None
    if local:
        from ctdenoise.local_params import LocalParams, multiplier_label

        group, local_attrs = matrix_store.open_local(local_url, storage_options)
        multipliers = [float(x) for x in local_attrs.get("multipliers") or []]
        inplane = local_attrs.get("inplane", "none")  # groups of version 2 have no in-plane stage
        automatic = LocalParams(inplane=inplane).automatic_multiplier
        columns_local = local_middle_slices(group, column)
        local_maps = png_data_uri(
            local_maps_png(np.asarray(group["tile_ranks"][...]), np.asarray(group["tile_sigma"][...]), multipliers)
        )
        for item in sorted(local, key=lambda x: float(x["multiplier"])):
            mult = float(item["multiplier"])
            label = f"Local {multiplier_label(mult)}"
            mt = dict(item.get("metrics") or {})
            ok = item.get("metrics") is not None
            css = "auto" if mult == automatic else ("failed" if not ok else "")
            stage = ", then non-local means per slice" if inplane == "nlm" else ""
            note = f"local low-rank, {mult:g} × optimal threshold{stage}" + (f", {mt['mean_tile_rank']:.2f} components per tile" if mt.get("mean_tile_rank") is not None else "")
            if mult in multipliers:
                col = columns_local[multipliers.index(mult)]
                local_rows.append({"label": label, "note": note, "css": css, "tiles": _tiles(col, original - col, shape)})
            local_metric_rows.append(
                _metric_row(label.lower(), note, ok, css, mt, mt.get("retained_energy"), item.get("output_url"), series_url)
            )
            local_summary.append({"multiplier": mult, "status": "ok" if ok else "failed", "output_url": item.get("output_url"),
                                  "detail": item.get("detail"), "metrics": item.get("metrics")})  # fmt: skip
        preview_rows += local_rows
        local_info = {
            "local_url": local_url,
            **{key: local_attrs.get(key) for key in ("tile", "stride", "shrinkage", "weights", "multipliers", "inplane")},
            "automatic_multiplier": automatic,
            "summary": local_attrs.get("summary"),
            "timings": local_attrs.get("timings"),
            "outputs": local_summary,
        }
    else:
        local_attrs, local_info = {}, None

    failed = [e.rank for e in entries if not e.ok]
    timings = dict(svd_attrs.get("timings") or {})
    versions = dict(run_info.get("versions") or installed_versions())
    params = dict(run_info.get("params") or {})
    positions = attrs.get("slice_positions") or []
    position = positions[column] if column < len(positions) else None

    summary = _json_safe(
        {
            "series_instance_uid": series_uid,
            "study_instance_uid": attrs.get("study_instance_uid"),
            "series_description": description,
            "source": {
                "source_url": run_info.get("source_url"),
                "matrix_url": matrix_url,
                "svd_url": svd_url,
                "reference_url": reference_url,
                "rows": rows,
                "columns": columns,
                "slices": n,
                "pixel_spacing_mm": attrs.get("pixel_spacing"),
                "slice_spacing_mm": attrs.get("slice_spacing"),
                "ordering": attrs.get("ordering"),
            },
            "run": {key: run_info.get(key) for key in ("dag_id", "run_id", "logical_date")},
            "params": params,
            "params_hash": run_info.get("params_hash"),
            "versions": versions,
            "svd": {
                "rank": k,
                "method": svd_attrs.get("method"),
                "method_reason": svd_attrs.get("method_reason"),
                "oversample": svd_attrs.get("oversample"),
                "power_iters": svd_attrs.get("power_iters"),
                "seed": svd_attrs.get("seed"),
                "matrix_shape": svd_attrs.get("matrix_shape"),
                "frobenius_norm": frobenius,
                "error_estimate": svd_attrs.get("error_estimate"),
                "timings": timings,
                "singular_values": s.tolist(),
            },
            "auto_rank": None if auto is None else auto.rank,
            "gavish_donoho": None if auto is None else auto.auto_rule,
            "middle_slice": {"column": column, "position_mm": position},
            "ranks": [
                {
                    "rank": e.rank,
                    "rules": list(e.rules),
                    "status": "ok" if e.ok else "failed",
                    "output_url": e.output_url,
                    "retained_energy": retained_energy(s, e.rank, frobenius) if e.rank <= k else None,
                    "metrics": e.metrics,
                }
                for e in entries
            ],
            "failed_ranks": failed,
            "local": local_info,
            "report_html": storage.join(series_url, REPORT_HTML),
        }
    )

    metric_rows = []
    for e, item in zip(entries, summary["ranks"]):
        mt = e.metrics or {}
        energy = mt.get("retained_energy", item["retained_energy"])
        rules = ", ".join(e.rule_labels) or "—"
        metric_rows.append(_metric_row(e.rank, rules, e.ok, _row_css(e), mt, energy, e.output_url, series_url))

    metric_rows += local_metric_rows
    gd = auto.auto_rule if auto is not None else {}
    context = {
        "series_uid": series_uid,
        "description": description,
        "logical_date": _plain(run_info.get("logical_date") or "—"),
        "run_id": _plain(run_info.get("run_id") or "—"),
        "facts": [
            ("Image size", f"{rows} × {columns} px, {n} slices"),
            ("SVD", f"{svd_attrs.get('method', '?')}, k = {k}" if svd_url else "not run (local mode only)"),
            ("Gavish–Donoho rank", "—" if auto is None else str(auto.rank)),
            ("Ranks", ", ".join(str(e.rank) for e in entries) or "—"),
            ("Local mode", "not run" if not local else
             f"tiles {local_attrs.get('tile')} px every {local_attrs.get('stride')} px, {local_attrs.get('shrinkage')} shrinkage, "
             f"multipliers {', '.join(f'{float(x):g}' for x in local_attrs.get('multipliers') or [])} "
             f"(automatic x{automatic:g}), in-plane stage: {'non-local means' if inplane == 'nlm' else 'none'}"),
            ("Failed ranks", ", ".join(map(str, failed)) or "none"),
        ],
        "scree": png_data_uri(scree_png(s, entries, frobenius, threshold)) if svd_url else None,
        "local_maps": local_maps,
        "local_automatic": None if not local else f"{automatic:g}",
        "threshold": None if threshold is None else f"{threshold:.6g}",
        "gd_noise": _plain(gd.get("noise")) if gd.get("noise") else None,
        "gd_note": _plain(gd.get("note")) if gd.get("note") else None,
        "slice_caption": f"slice {column + 1} of {n}"
        + ("" if position is None else f" at {_fmt_number(float(position))} mm"),
        "windows": [f"{name} W{w:g} / L{lvl:g} HU" for name, w, lvl in _windows()],
        "tile_w": round(TILE_PX * columns / max(rows, columns)),
        "tile_h": round(TILE_PX * rows / max(rows, columns)),
        "preview_rows": preview_rows,
        "metric_rows": metric_rows,
        "has_reference_metrics": any(r["psnr"] != "—" or r["ssim"] != "—" for r in metric_rows),
        "params": [(str(key), _plain(params[key])) for key in sorted(params)],
        "params_hash": run_info.get("params_hash"),
        "provenance": [
            ("Source series UID", series_uid),
            ("Study UID", _plain(attrs.get("study_instance_uid") or "—")),
            ("Source DICOM", _plain(run_info.get("source_url") or "—")),
            ("Series matrix", matrix_url),
            ("SVD group", svd_url or "—"),
            ("Local low-rank group", local_url or "—"),
            ("Local timings", ", ".join(f"{key} {_seconds(v)}" for key, v in sorted((local_attrs.get("timings") or {}).items())) or "—"),
            ("Reference", reference_url or "—"),
            ("DAG", _plain(run_info.get("dag_id") or "—")),
            ("Run id", _plain(run_info.get("run_id") or "—")),
            ("Logical date", _plain(run_info.get("logical_date") or "—")),
            ("Parameters hash", _plain(run_info.get("params_hash") or "—")),
            ("SVD method", _plain(svd_attrs.get("method") or "—")),
            ("Method reason", _plain(svd_attrs.get("method_reason") or "—")),
            (
                "SVD rank / oversample / power iterations / seed",
                " / ".join(_plain(svd_attrs.get(key, "—")) for key in ("rank", "oversample", "power_iters", "seed")),
            ),
            ("Relative error estimate", _fmt_number(svd_attrs.get("error_estimate"))),
            ("‖A‖_F", _fmt_number(frobenius, 6)),
            ("SVD timings", ", ".join(f"{key} {_seconds(timings[key])}" for key in sorted(timings)) or "—"),
            ("Slice ordering", _plain(attrs.get("ordering") or "—")),
        ],
        "versions": [(key, _plain(versions[key])) for key in sorted(versions)],
    }
    page = _render(context)

    storage.write_bytes(storage.join(series_url, REPORT_HTML), page.encode("utf-8"), storage_options)
    payload = json.dumps(summary, sort_keys=True, indent=2, allow_nan=False) + "\n"
    storage.write_bytes(storage.join(series_url, REPORT_JSON), payload.encode("utf-8"), storage_options)
    return summary


__all__ = [
    "RankEntry",
    "rule_label",
    "installed_versions",
    "retained_energy",
    "middle_slice_reconstructions",
    "gavish_donoho_threshold",
    "window_to_uint8",
    "scree_png",
    "write_report",
]
