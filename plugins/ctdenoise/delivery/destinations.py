"""Where derived series go: a DICOMweb service or a DIMSE storage SCP, without credentials in sight.

A destination is declared by the deployment (an Airflow connection per PACS, see
:mod:`ctdenoise.orchestration.delivery`) or on the command line (``ctdenoise deliver``), whose
credentials come from the environment (:func:`dicomweb_from_cli`). Credentials are
:class:`~pydantic.SecretStr`: they never appear in a repr, a log line, a record or an error;
:attr:`where` is what messages and records show.

Standard library and pydantic only: the DAG reads these at parse time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from ctdenoise.delivery.outcome import Protocol
from ctdenoise.errors import ParameterError

DEFAULT_CALLING_AE = "CTDENOISE"
AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5: 16 characters, no backslash or control characters
ENV_USERNAME, ENV_PASSWORD, ENV_TOKEN = "DICOMWEB_USERNAME", "DICOMWEB_PASSWORD", "DICOMWEB_TOKEN"


class DicomWebDestination(BaseModel):
    """A DICOMweb service: STOW-RS to send, QIDO-RS to verify (``url`` is the service root, e.g.
    ``http://pacs:8042/dicom-web``); HTTP basic credentials or a bearer token."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    protocol: Literal[Protocol.DICOMWEB] = Protocol.DICOMWEB
    name: str
    url: str
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    timeout_seconds: float = Field(60.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_without_credentials(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"a DICOMweb service root is an http(s) URL, got {url!r}")
        if parts.username or parts.password:
            raise ValueError("credentials in the URL: give them in the connection's login/password "
                             f"(or {ENV_USERNAME}/{ENV_PASSWORD} for the CLI)")  # fmt: skip
        return url.rstrip("/")

    @property
    def where(self) -> str:
        return f"DICOMweb {self.url}"


class DimseDestination(BaseModel):
    """A DICOM storage SCP: C-STORE to send, C-FIND (Study Root, where allowed) to verify."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    protocol: Literal[Protocol.DIMSE] = Protocol.DIMSE
    name: str
    host: str
    port: int = Field(ge=1, le=65535)
    called_ae: str
    calling_ae: str = DEFAULT_CALLING_AE
    timeout_seconds: float = Field(30.0, gt=0)

    @field_validator("called_ae", "calling_ae")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        if not AE_TITLE.match(value) or not value.strip():
            raise ValueError(f"an AE title is 1 to 16 printable characters without backslash, got {value!r}")
        return value.strip()

    @property
    def where(self) -> str:
        return f"DIMSE {self.called_ae}@{self.host}:{self.port} (calling AE {self.calling_ae})"


Destination = Annotated[DicomWebDestination | DimseDestination, Field(discriminator="protocol")]


def _validated(model: type[BaseModel], values: dict, source: str):  # noqa: ANN202 (the model's instance)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(x) for x in error["loc"])
        raise ParameterError(f"{source}: {where}: {error['msg'].removeprefix('Value error, ')}") from None


def dicomweb_from_cli(url: str, env: Mapping[str, str] | None = None, timeout_seconds: float = 60.0) -> DicomWebDestination:
    """``--dicomweb URL`` with credentials from ``DICOMWEB_USERNAME``/``DICOMWEB_PASSWORD`` or
    ``DICOMWEB_TOKEN`` (never from the command line, where ``ps`` and shell histories show them)."""
    env = os.environ if env is None else env
    values = {"name": "cli", "url": url, "timeout_seconds": timeout_seconds, "username": env.get(ENV_USERNAME) or None,
              "password": env.get(ENV_PASSWORD) or None, "token": env.get(ENV_TOKEN) or None}  # fmt: skip
    return _validated(DicomWebDestination, values, "--dicomweb")


def dimse_from_cli(address: str, called_ae: str, calling_ae: str | None, timeout_seconds: float = 30.0) -> DimseDestination:
    """``--dimse HOST:PORT --called-ae AE [--calling-ae AE]``."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ParameterError(f"--dimse: expected HOST:PORT, got {address!r}")
    values = {"name": "cli", "host": host.strip("[]"), "port": int(port), "called_ae": called_ae,
              "calling_ae": calling_ae or DEFAULT_CALLING_AE, "timeout_seconds": timeout_seconds}  # fmt: skip
    return _validated(DimseDestination, values, "--dimse")


def from_connection_fields(name: str, conn_type: str, host: str | None, port: int | None, schema: str | None,
                           login: str | None, password: str | None, extra: Mapping[str, object]) -> DicomWebDestination | DimseDestination:  # fmt: skip
    """A destination from the fields of an Airflow connection (the DAG's side; no Airflow import here).

    - DIMSE: conn type ``dimse`` (or any type whose extra has ``called_ae``): host, port (104 by
      default), extra ``called_ae`` and optionally ``calling_ae`` (default ``CTDENOISE``).
    - DICOMweb: any other type (``http``, ``https``, ``dicomweb``...): host is the service root
      URL, or a host name with ``schema`` (http/https), port and extra ``path``; login/password
      are HTTP basic credentials, or extra ``token`` a bearer token.
    """
    source = f"Airflow connection {name!r}"
    extra = dict(extra or {})
    if conn_type == "dimse" or "called_ae" in extra:
        values = {"name": name, "host": host or "", "port": port or 104, "called_ae": extra.get("called_ae") or "",
                  "calling_ae": extra.get("calling_ae") or DEFAULT_CALLING_AE}  # fmt: skip
        if extra.get("timeout_seconds"):
            values["timeout_seconds"] = extra["timeout_seconds"]
        return _validated(DimseDestination, values, source)
    host = host or ""
    if "://" in host:
        url = host
    else:
        scheme = schema if schema in ("http", "https") else ("http" if conn_type == "http" else "https")
        url = f"{scheme}://{host}{f':{port}' if port else ''}/{str(extra.get('path') or '').strip('/')}"
    values = {"name": name, "url": url, "username": login or None, "password": password or None,
              "token": extra.get("token") or None}  # fmt: skip
    if extra.get("timeout_seconds"):
        values["timeout_seconds"] = extra["timeout_seconds"]
    return _validated(DicomWebDestination, values, source)
