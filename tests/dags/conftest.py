"""Fixtures shared by the DAG test modules."""

from __future__ import annotations

from typing import Any

import pytest
from dag_fixtures import load_dag


@pytest.fixture(scope="module")
def dag() -> Any:
    """The ct_denoise DAG parsed with the local runtime (environment restored afterwards)."""
    mp = pytest.MonkeyPatch()
    try:
        yield load_dag("local", mp)
    finally:
        mp.undo()
