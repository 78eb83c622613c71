"""What the fault-injection suite shares: the partition, the Airflow connection, the run's
parameters, a bucket behind the proxy, and Airflow's retry decision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy import FaultProxy

DS = "2026-11-20"
CONN_ID = "ct_faults"
# Small and quick: both modes, one global rank and one local multiplier.
# Small series from tests/convert_fixtures.py (no ImageType, a few slices): the selection takes every
# CT series, so that what is tested is the fault, not the deployment's selection policy.
CONF = {"ranks": [2], "drop_percents": [], "auto_rank": False, "multipliers": [1.0], "tile": 8, "stride": 8, "inplane": "none",
        "selection": {"selections": [{"name": "any CT", "conditions": {"Modality": "(?i)^CT$"}}]}}


@dataclass
class Bucket:
    """A fresh bucket reached through the proxy, with the proxy to inject faults."""

    name: str
    proxy: FaultProxy
    fs: Any

    def url(self, *parts: str) -> str:
        return "s3://" + "/".join([self.name, *parts])

    def keys(self, *prefix: str) -> list[str]:
        """Every object below a prefix (call it with no fault active)."""
        self.fs.invalidate_cache()
        root = "/".join([self.name, *prefix])
        return sorted(self.fs.find(root)) if self.fs.exists(root) else []


def retried(policy: Any, exc: BaseException) -> bool:
    """Whether Airflow retries a task that raised ``exc`` (with retries left)."""
    from airflow.sdk import RetryAction

    return policy.evaluate(exc, try_number=1, max_tries=3).action != RetryAction.FAIL
