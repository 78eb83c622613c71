"""PNG previews of CT slices in HU windows (matplotlib, Agg, no global pyplot state).

The standard soft-tissue window (width 400, level 40 HU) shows the noise that matters for
reading; the difference panel uses a symmetric window (default +-100 HU) so that structure
removed by denoising (anatomy, not only noise) would stand out as edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

SOFT_TISSUE_WINDOW = (400.0, 40.0)  # (width, level) in HU
DIFFERENCE_HALF_RANGE_HU = 100.0


def window(hu: np.ndarray, width: float = SOFT_TISSUE_WINDOW[0], level: float = SOFT_TISSUE_WINDOW[1]) -> np.ndarray:
    """HU mapped linearly to 0..1 over [level - width/2, level + width/2], clipped outside."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = level - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float64) - low) / width, 0.0, 1.0)


def write_preview(
    path: str | Path,
    original: np.ndarray,
    denoised: np.ndarray,
    *,
    title: str | None = None,
    labels: Sequence[str] = ("input", "denoised", "input - denoised"),
    window_hu: tuple[float, float] = SOFT_TISSUE_WINDOW,
    difference_hu: float = DIFFERENCE_HALF_RANGE_HU,
    pixel_spacing: Sequence[float] | None = None,
) -> Path:
    """Three panels side by side: original, denoised (both windowed) and their difference.

    ``pixel_spacing`` (mm, row then column) keeps the aspect ratio of non-square pixels.
    The PNG carries no timestamp, so the same inputs give the same file.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    original, denoised = np.asarray(original), np.asarray(denoised)
    if original.shape != denoised.shape or original.ndim != 2:
        raise ValueError(f"preview needs two 2-D slices of one shape, got {original.shape} and {denoised.shape}")
    aspect = float(pixel_spacing[0]) / float(pixel_spacing[1]) if pixel_spacing else 1.0
    width, level = window_hu
    panels = (
        (window(original, width, level), f"{labels[0]}\nW{width:g} L{level:g}"),
        (window(denoised, width, level), f"{labels[1]}\nW{width:g} L{level:g}"),
        (
            window(original.astype(np.float64) - denoised, 2.0 * difference_hu, 0.0),
            f"{labels[2]}\n-{difference_hu:g}..+{difference_hu:g} HU",
        ),
    )
    fig = Figure(figsize=(12, 4.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, (image, label) in zip(axes, panels, strict=True):
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect=aspect)
        ax.set_title(label, fontsize=10)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    return path
