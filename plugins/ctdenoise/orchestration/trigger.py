"""The trigger form of ``ct_denoise``: Airflow ``Param``s derived from :class:`ctdenoise.params.RunParams`.

Airflow validates a trigger's ``conf`` against each param's JSON schema before the run is created
(the API answers 400 with the schema's message), so out-of-range values never reach a task. The
rules that span several fields (a rank rule with the global mode, ``stride <= tile``) are the
model's: :func:`check_params` runs them when the run starts, before ``wait_for_scans`` waits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ctdenoise.params import RunParams, param_schemas


def dag_params(defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{name: airflow.sdk.Param}`` for ``@dag(params=...)``: the trigger form. ``defaults``
    replaces the declared default of some (the deployment's ``CT_DENOISE_SELECTION``)."""
    from airflow.sdk import Param

    params = {}
    for name, schema in param_schemas(RunParams).items():
        schema = dict(schema)
        default, description = schema.pop("default"), schema.pop("description")
        default = (defaults or {}).get(name, default)
        params[name] = Param(default, description=description, **schema)
    return params


def check_params(context: Any) -> None:
    """The cross-field rules of the run's params (a ``pre_execute`` hook)."""
    RunParams.from_conf(context["params"])
