"""Small real inputs for the output-side tests: a phantom series, its matrix and its SVD.

The chain is the pipeline's own: ``write_phantom_series`` (DICOM) -> ``convert`` (series matrix)
-> ``numpy.linalg.svd`` (SVD group written with ``matrix_store.write_svd``), so the writer is
tested on matrices with the real attributes, header template and geometry.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from ctdenoise import matrix_store
from ctdenoise.convert import convert
from ctdenoise.phantom import write_phantom_series

DCIODVFY = shutil.which("dciodvfy")
DCIODVFY_MISSING = "dciodvfy (Debian package dicom3tools) is not installed: DICOM IOD validation not run"


@dataclass
class PhantomCase:
    """A phantom series with its ground truth, as DICOM folders, matrices and an exact SVD."""

    low_dir: Path
    truth_dir: Path
    matrix_url: str
    truth_url: str
    svd_url: str
    A: np.ndarray  # (voxels, slices) float64 HU, as converted
    U: np.ndarray
    s: np.ndarray
    V: np.ndarray
    record: dict


def _written_url(records: list[dict]) -> str:
    written = [r.to_xcom() for r in records if r.status == "written"]
    assert len(written) == 1, records
    return written[0]["url"]


def build_case(root: Path, size: int = 64, slices: int = 16, photons: float = 2e3, seed: int = 0) -> PhantomCase:
    """Write a phantom (with truth) under ``root``, convert both, decompose the low-dose matrix."""
    low_dir, truth_dir = root / "dicom-low", root / "dicom-truth"
    record = write_phantom_series(str(low_dir), size=size, slices=slices, photons=photons, seed=seed, truth=str(truth_dir))
    matrix_url = _written_url(list(convert(str(low_dir), str(root / "matrices"))))
    truth_url = _written_url(list(convert(str(truth_dir), str(root / "truth-matrices"))))
    A = np.asarray(matrix_store.open_matrix(matrix_url)[...], dtype=np.float64)
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    svd_url = str(root / "svd.zarr")
    attrs = {
        "rank": int(s.size),
        "method": "exact",
        "seed": 0,
        "oversample": 0,
        "power_iters": 0,
        "matrix_url": matrix_url,
        "matrix_shape": list(A.shape),
        "frobenius_norm": float(np.linalg.norm(A)),
    }
    matrix_store.write_svd(svd_url, s, Vt.T, attrs)
    return PhantomCase(low_dir, truth_dir, matrix_url, truth_url, svd_url, A, U, s, Vt.T, record)


def read_series(folder: Path) -> list[pydicom.Dataset]:
    """The DICOM files of a folder (not the _SUCCESS marker), in file-name order."""
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


def hu_of(ds: pydicom.Dataset) -> np.ndarray:
    """HU of a dataset through its modality LUT (float64)."""
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def dciodvfy_errors(path: Path) -> tuple[int, list[str]]:
    """dciodvfy's exit code and its "Error" lines for one file (warnings are allowed)."""
    done = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (done.stdout + done.stderr).splitlines()
    return done.returncode, [line for line in lines if line.startswith("Error")]
