"""Records as the DAG makes them, on the local file system (no S3, no Airflow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctdenoise.params import RunParams
from ctdenoise.records import Series

DS = "2026-11-20"


def series_for(tmp_path: Path, conf: dict[str, Any] | None = None, uid: str = "1.2.3", folder: str = "scan-a", files: int = 3) -> Series:
    """A discovered series of ``folder`` with the run parameters ``conf``."""
    return Series(folder=folder, ds=DS, source_url=str(tmp_path / "incoming" / folder), files=files, series_instance_uid=uid,
                  work_url=str(tmp_path / "work" / folder), denoised_url=str(tmp_path / "denoised"),
                  params=RunParams.from_conf(conf))  # fmt: skip
