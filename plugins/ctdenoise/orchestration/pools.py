"""The DAG's Airflow pools: declared by the settings, created by ``ctdenoise pools``, checked when a run starts.

A pool is deployment state in Airflow's database. A task in a pool that does not exist is never
scheduled (the scheduler only logs "will not be scheduled"), so a run would wait until its
dagrun_timeout. Creating the pools is the deployment's job: ``ctdenoise pools``, run where the
database is reachable (the Helm values run it in the migrate-database job, docker-compose in
``airflow-init``, ``make ui`` by itself), creates or updates each pool from the settings, counting
deferred tasks (a deferred convert pod or Spark application still runs and must hold its slot),
and records what it created in the Airflow Variable :data:`RECEIPT`.

Airflow 3 tasks cannot read pools (the Task SDK has no pool route and blocks the ORM), so the
run-start check (:func:`check`, ``CT_DENOISE_CHECK_POOLS``) reads that record and fails the run
at once, naming the pool, when the DAG uses a pool ``ctdenoise pools`` has not created (a renamed
``CT_DENOISE_SPARK_POOL``, or a deployment without the init step). A pool deleted by hand later
is not seen: run ``ctdenoise pools`` again.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ctdenoise.errors import EXIT_INPUT, ParameterError
from ctdenoise.orchestration.config import Settings, load_settings

RECEIPT = "ct_denoise_pools"
"""Airflow Variable written by :func:`ensure`: ``{pool name: slots}`` of the pools it created."""


@dataclass(frozen=True)
class PoolSpec:
    name: str
    slots: int
    description: str


def declared(settings: Settings) -> list[PoolSpec]:
    """The pools the DAG's tasks use, with the slots the settings give them."""
    return [
        PoolSpec(settings.spark_pool, settings.spark_pool_slots, "ct_denoise dssvd: Spark applications in flight"),
        PoolSpec(settings.pod_pool, settings.pod_pool_slots, "ct_denoise convert and reconstruct in flight"),
        PoolSpec(settings.delivery_pool, settings.delivery_pool_slots, "ct_denoise deliver: deliveries to the PACS in flight"),
    ]


def missing(settings: Settings, receipt: Mapping[str, Any] | None) -> list[str]:
    """The declared pools ``receipt`` (the :data:`RECEIPT` variable's value) does not record."""
    return [p.name for p in declared(settings) if p.name not in (receipt or {})]


def ensure(settings: Settings) -> list[dict[str, Any]]:
    """Create or update every declared pool (idempotent) and record them; needs Airflow's database."""
    from airflow.models.pool import Pool
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session

    done = []
    with create_session() as session:
        existing = {p.pool: p.slots for p in session.query(Pool)}
        for spec in declared(settings):
            Pool.create_or_update_pool(spec.name, spec.slots, spec.description, include_deferred=True, session=session)
            action = "created" if spec.name not in existing else "unchanged" if existing[spec.name] == spec.slots else "updated"
            done.append({"pool": spec.name, "slots": spec.slots, "include_deferred": True, "action": action})
        receipt = {p.name: p.slots for p in declared(settings)}
        Variable.set(RECEIPT, receipt, description="pools created by `ctdenoise pools`", serialize_json=True, session=session)
    return done


def check(settings: Settings) -> None:
    """At a run's start: fail with one line naming a pool ``ctdenoise pools`` has not created."""
    if not settings.pools_checked():
        return
    from airflow.sdk import Variable

    absent = missing(settings, Variable.get(RECEIPT, default=None, deserialize_json=True))
    if absent:
        raise ParameterError(
            f"Airflow pool {', '.join(repr(n) for n in absent)} was not created by `ctdenoise pools`: its tasks would never "
            "be scheduled; run `ctdenoise pools` where Airflow's database is reachable (the Helm values' migrate job does)"
        )


def main(check_only: bool = False) -> int:
    """``ctdenoise pools [--check]``: one JSON line per pool; exit 2 if ``--check`` finds one missing."""
    settings = load_settings()
    if check_only:
        from airflow.models.pool import Pool

        names = {p.name for p in declared(settings)}
        absent = sorted(n for n in names if Pool.get_pool(n) is None)
        for name in sorted(names):
            print(json.dumps({"pool": name, "exists": name not in absent}))
        if absent:
            print(f"error: missing Airflow pool(s): {', '.join(absent)} (run `ctdenoise pools`)", file=sys.stderr)
            return EXIT_INPUT
        return 0
    for record in ensure(settings):
        print(json.dumps(record, sort_keys=True))
    return 0
