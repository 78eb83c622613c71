"""The report's pictures: windowed greyscale tiles, the scree plot, the local mode's tile maps.

Every picture is a PNG embedded as a ``data:`` URI, made with Pillow or matplotlib's Agg canvas
(no pyplot state, no GUI backend) and saved without a timestamp, so the same pixels give the
same bytes.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from ctdenoise.report.entries import ReportEntry

#: Lung window (width, level) in HU; the soft-tissue and difference windows are ctdenoise.preview's.
LUNG_WINDOW = (1500.0, -600.0)
AUTO_COLOUR = "#d95f02"
RANK_COLOUR = "#4d4d4d"
FAILED_COLOUR = "#b2182b"


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
    s: np.ndarray, entries: Sequence[ReportEntry], frobenius_norm: float | None, threshold: float | None
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
    _mark_ranks(ax_s, ax_e, entries)
    if threshold is not None and threshold > 0:
        ax_s.axhline(threshold, color=AUTO_COLOUR, lw=1.2, ls="-.", label=f"Gavish–Donoho threshold {threshold:.5g}")
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


def _mark_ranks(ax_s: Any, ax_e: Any, entries: Sequence[ReportEntry]) -> None:
    """A vertical line per chosen rank on both panels: the Gavish-Donoho rank in colour, a failed
    rank dotted, each labelled once in the legend."""
    auto_drawn = chosen_drawn = False
    for entry in entries:
        if entry.is_auto:
            colour, lw, style, z = AUTO_COLOUR, 2.4, "-", 3
            label = None if auto_drawn else f"Gavish–Donoho rank {entry.rank}"
            auto_drawn = True
        elif not entry.ok:
            colour, lw, style, z, label = FAILED_COLOUR, 1.2, ":", 2, "failed rank"
        else:
            colour, lw, style, z = RANK_COLOUR, 1.0, "--", 2
            label = None if chosen_drawn else "chosen rank"
            chosen_drawn = True
        for ax in (ax_s, ax_e):
            ax.axvline(entry.rank, color=colour, lw=lw, ls=style, zorder=z, label=label if ax is ax_s else None)
        ax_s.annotate(f"r={entry.rank}" + ("" if entry.ok else " (failed)"), xy=(entry.rank, 1.0),
                      xycoords=("data", "axes fraction"), xytext=(2, -3), textcoords="offset points",
                      rotation=90, va="top", ha="left", fontsize=9, color=colour)  # fmt: skip


def windows() -> list[tuple[str, float, float]]:
    """(caption, width HU, level HU) of the three preview columns."""
    from ctdenoise.preview import DIFFERENCE_HALF_RANGE_HU, SOFT_TISSUE_WINDOW

    return [
        ("Soft tissue", *SOFT_TISSUE_WINDOW),
        ("Lung", *LUNG_WINDOW),
        ("Original − denoised", 2.0 * DIFFERENCE_HALF_RANGE_HU, 0.0),
    ]


def preview_tiles(hu: np.ndarray, diff: np.ndarray | None, shape: tuple[int, int]) -> list[dict[str, str] | None]:
    """The three tiles of one preview row: two windows of ``hu`` and the difference map (or none)."""

    def tile(image: np.ndarray, name: str, width: float, level: float) -> dict[str, str]:
        png = grey_png(window_to_uint8(image.reshape(shape), width, level))
        return {"src": png_data_uri(png), "alt": f"{name} W{width:g}/L{level:g} HU"}

    soft, lung, difference = windows()
    return [tile(hu, *soft), tile(hu, *lung), None if diff is None else tile(diff, *difference)]


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
