"""A real Orthanc per test module (scripts/pacs.py), and small series to deliver to it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ENV_CLEAN = ("DICOMWEB_USERNAME", "DICOMWEB_PASSWORD", "DICOMWEB_TOKEN")


def start(tmp: Path, **options) -> Iterator:
    import pacs

    try:
        with pacs.orthanc_server(tmp, **options) as server:
            yield server
    except RuntimeError as exc:
        if pacs.MISSING in str(exc):
            pytest.skip(str(exc))
        raise


def phantom(out: Path, seed: int = 0, slices: int = 6) -> dict:
    from ctdenoise.phantom import write_phantom_series

    return write_phantom_series(str(out), size=32, slices=slices, seed=seed)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``ctdenoise <args>`` in a fresh interpreter (its real exit status and output)."""
    import os

    base = {k: v for k, v in os.environ.items() if k not in ENV_CLEAN}
    return subprocess.run([sys.executable, "-m", "ctdenoise.cli", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=180)  # fmt: skip
