"""Render the SparkApplication manifest of the distributed SVD job (``spark/sparkapplication.yaml``).

The template is Jinja with every variable in one dict, ``dssvd`` (see the template's header).
:func:`render_spark_application` fills :data:`DEFAULTS`, checks the required values and returns the
manifest as a dict, ready for ``SparkKubernetesOperator(template_spec=...)`` or for a schema check.
jinja2 and PyYAML come with Airflow; they are imported inside the function.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctdenoise.errors import ParameterError
from ctdenoise.local_params import LocalParams

#: ``spark/sparkapplication.yaml`` of the source tree (the package lives in ``<repo>/plugins``);
#: ``CTDENOISE_SPARK_TEMPLATE`` overrides it (e.g. in an image that installs the package elsewhere).
TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "spark" / "sparkapplication.yaml"

REQUIRED = ("name", "matrix_url")
#: Global mode needs ``out_url`` and ``rank``, local mode ``local_out_url``; at least one mode.
MODE_KEYS = {"global": ("out_url", "rank"), "local": ("local_out_url",)}

_LOCAL = LocalParams()
DEFAULTS: dict[str, Any] = {
    "namespace": "default",
    "image": "ctdenoise:0.1.0",
    "image_pull_policy": "IfNotPresent",
    "main_application_file": "local:///opt/ctdenoise/spark/dssvd.py",
    "spark_version": "4.2.0",
    "service_account": "spark",
    "s3_secret": "ctdenoise-s3",
    "oversample": 15,
    "power_iters": 2,
    "seed": 0,
    "method": "auto",
    "with_u": False,
    "out_url": None,
    "rank": None,
    "local_out_url": None,
    "tile": _LOCAL.tile,
    "stride": _LOCAL.stride,
    "multipliers": list(_LOCAL.multipliers),
    "shrinkage": _LOCAL.shrinkage,
    "inplane": _LOCAL.inplane,
    "driver_cores": 1,
    "driver_memory": "2g",
    "executor_cores": 2,
    "executor_instances": 2,
    "executor_memory": "2g",
    "retries": 2,
    "retry_interval_seconds": 30,
    "ttl_seconds": 3600,
    "run_as_user": 185,  # the spark user of the Apache Spark images
    "labels": {},
    "spark_conf": {},
}

# Kubernetes object names (DNS-1123 subdomain); the operator derives pod and service names from
# it, so keep it short enough for the "-driver" / "-ui-svc" suffixes.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MAX_NAME = 54


def template_path() -> Path:
    return Path(os.environ.get("CTDENOISE_SPARK_TEMPLATE", TEMPLATE_PATH))


def spark_application_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """``DEFAULTS`` updated with ``values``, checked (required keys, name, method, sizes)."""
    merged = {**DEFAULTS, **dict(values)}
    missing = [key for key in REQUIRED if merged.get(key) in (None, "")]
    modes = [mode for mode, keys in MODE_KEYS.items() if any(merged.get(k) not in (None, "") for k in keys)]
    for mode in modes:
        missing += [key for key in MODE_KEYS[mode] if merged.get(key) in (None, "")]
    if not modes:
        missing.append("out_url and rank (global mode) or local_out_url (local mode)")
    if missing:
        raise ParameterError(f"SparkApplication values: missing {', '.join(missing)}")
    unknown = sorted(set(merged) - set(DEFAULTS) - set(REQUIRED))
    if unknown:
        raise ParameterError(f"SparkApplication values: unknown key(s) {', '.join(unknown)}")
    name = str(merged["name"])
    if len(name) > _MAX_NAME or not _NAME.match(name):
        raise ParameterError(
            f"SparkApplication name {name!r}: lowercase letters, digits and '-', at most {_MAX_NAME} characters"
        )
    if merged["method"] not in ("auto", "exact", "stochastic"):
        raise ParameterError(f"SparkApplication values: method must be auto, exact or stochastic, got {merged['method']!r}")
    for key in ("driver_cores", "executor_cores", "executor_instances"):
        if int(merged[key]) < 1:
            raise ParameterError(f"SparkApplication values: {key} must be >= 1, got {merged[key]!r}")
    return merged


def render_spark_application(values: Mapping[str, Any], template: str | os.PathLike | None = None) -> dict[str, Any]:
    """The SparkApplication manifest (a dict) for these values; see :data:`DEFAULTS` for the keys."""
    import jinja2
    import yaml

    merged = spark_application_values(values)
    path = Path(template) if template is not None else template_path()
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    text = env.from_string(path.read_text()).render(dssvd=merged)
    return yaml.safe_load(text)
