"""S3 access of Airflow-side tasks, from the Airflow AWS connection (never from the DAG file).

Tasks that run in the Airflow worker (sensors, ``discover_series``, ``plan_ranks``, ``report``,
and in the local runtime ``convert``, ``dssvd`` and ``reconstruct``) resolve the connection
``CT_DENOISE_AWS_CONN_ID`` (default ``aws_default``) when they run: key, secret, optional
session token, and the ``endpoint_url`` / ``region_name`` extras (MinIO, moto). Pods of the
kubernetes runtime get theirs from a Kubernetes secret instead (:mod:`.pods`).
"""

from __future__ import annotations

from typing import Any


def _hook(conn_id: str) -> Any:
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=conn_id, client_type="s3")


def connection_settings(conn_id: str) -> dict[str, str | None]:
    """Credentials, endpoint and region of an AWS connection (values may be None)."""
    hook = _hook(conn_id)
    creds = hook.get_credentials()
    wrapper = hook.conn_config
    endpoint = wrapper.get_service_endpoint_url("s3") if hasattr(wrapper, "get_service_endpoint_url") else None
    return {
        "key": creds.access_key,
        "secret": creds.secret_key,
        "token": creds.token,
        "endpoint_url": endpoint or wrapper.endpoint_url,
        "region_name": wrapper.region_name,
    }


def storage_options(conn_id: str) -> dict[str, Any]:
    """fsspec/s3fs ``storage_options`` for :mod:`ctdenoise.storage` and the package functions."""
    from ctdenoise.storage import storage_options_from_env

    return storage_options_from_env("s3", environment(conn_id))


def environment(conn_id: str) -> dict[str, str]:
    """The same as ``AWS_*`` environment variables (for spark-submit and its Python workers)."""
    cfg = connection_settings(conn_id)
    env: dict[str, str] = {}
    if cfg["key"] and cfg["secret"]:
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = cfg["key"], cfg["secret"]
        if cfg["token"]:
            env["AWS_SESSION_TOKEN"] = cfg["token"]
    if cfg["endpoint_url"]:
        env["AWS_ENDPOINT_URL"] = cfg["endpoint_url"]
    if cfg["region_name"]:
        env["AWS_DEFAULT_REGION"] = cfg["region_name"]
    return env
