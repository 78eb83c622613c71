"""Which outputs of a completed series go to the PACS: the run's ``deliver`` parameter on ``report.json``.

A series is complete when its ``report.json`` exists, and that summary lists every output with
its folder URL, its status and whether it is an automatic one (the Gavish-Donoho rank of the
global mode, the local mode's automatic multiplier). ``deliver`` names what goes: ``automatic``,
``all``, or output folder names (``rank-9``, ``local-x0.75``); ``[]`` sends nothing. Only
outputs whose reconstruct succeeded are candidates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ctdenoise import storage
from ctdenoise.params import DeliverChoice


@dataclass(frozen=True)
class PublishedOutput:
    """One output of a completed series, as ``report.json`` lists it."""

    name: str  # its folder name: "rank-9", "local-x0.5"
    url: str
    series_instance_uid: str | None  # the derived series (from its metrics)
    automatic: bool


def published_outputs(summary: Mapping[str, Any]) -> list[PublishedOutput]:
    """The written outputs of a series from its ``report.json`` summary."""
    out = []
    for entry in summary.get("ranks") or []:
        if entry.get("status") == "ok":
            automatic = any(r.get("rule") == "gavish_donoho" for r in entry.get("rules") or [])
            out.append(_output(entry, automatic))
    local = summary.get("local") or {}
    for entry in local.get("outputs") or []:
        if entry.get("status") == "ok":
            out.append(_output(entry, entry.get("multiplier") == local.get("automatic_multiplier")))
    return out


def _output(entry: Mapping[str, Any], automatic: bool) -> PublishedOutput:
    url = str(entry["output_url"])
    uid = (entry.get("metrics") or {}).get("series_instance_uid")
    return PublishedOutput(name=storage.basename(url), url=url, series_instance_uid=uid, automatic=automatic)


def chosen(outputs: Iterable[PublishedOutput], deliver: Sequence[str]) -> list[PublishedOutput]:
    """The outputs ``deliver`` names (module docstring), in report order."""
    wanted = set(deliver)
    return [o for o in outputs if DeliverChoice.ALL in wanted or o.name in wanted or (o.automatic and DeliverChoice.AUTOMATIC in wanted)]
