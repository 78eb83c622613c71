"""Quality of denoised series against a reference series (the phantom's truth), from DICOM.

The pipeline itself never sees a reference: hospitals have none. The demo and the benchmarks do
(the phantom's noise-free truth), and measure the published DICOM exactly as a reader would
load it: through ``convert`` (same slice ordering, same HU rule), then PSNR/SSIM from
:mod:`ctdenoise.metrics`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ctdenoise import metrics, storage
from ctdenoise.errors import InputError


def load_volume(dicom_dir: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """``(volume (slices, rows, columns) in HU, matrix attributes)`` of the one CT series in a folder."""
    from ctdenoise.convert import convert
    from ctdenoise.matrix_store import open_matrix
    from ctdenoise.records import Written

    with storage.staging_dir("ctdenoise-eval-") as tmp:
        written = [r for r in convert(str(dicom_dir), str(tmp)) if isinstance(r, Written)]
        if len(written) != 1:
            raise InputError(f"{dicom_dir}: expected one CT series, found {len(written)}")
        arr = open_matrix(written[0].url)
        attrs = dict(arr.attrs)
        volume = np.asarray(arr[...]).T.reshape(attrs["slices"], attrs["rows"], attrs["columns"])
    return volume, attrs


def compare(volume: np.ndarray, reference: np.ndarray) -> dict[str, float | None]:
    """PSNR (dB, whole volume), SSIM (mean over slices) and noise (HU, middle slice) of ``volume``."""
    if volume.shape != reference.shape:
        raise InputError(f"volume shape {volume.shape} differs from the reference's {reference.shape}")
    middle = volume.shape[0] // 2
    return {
        "psnr_db": metrics.finite_or_none(metrics.psnr_db(volume, reference)),
        "ssim": metrics.finite_or_none(metrics.ssim(volume, reference)),
        "noise_std_hu": metrics.finite_or_none(metrics.noise_std_hu(volume[middle])),
    }
