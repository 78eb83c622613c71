"""Offline validation of what the kubernetes runtime and deploy/ send to a cluster.

- :func:`validate_object`: a built-in Kubernetes object (Pod, Role, Namespace...) with
  ``kubernetes-validate`` at the newest Kubernetes version it knows, strict (unknown fields fail).
- :func:`sparkapplication_schema`: the Kubeflow spark-operator CRD's schema (``../shared/schemas``)
  with unknown fields rejected: the API server would silently prune them, so a misspelt field in
  the template would be lost without this.
- :func:`restricted_violations`: the ``restricted`` Pod Security Standard, checked on a pod spec
  (what the namespace label ``pod-security.kubernetes.io/enforce: restricted`` admits).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

CRD = Path(__file__).resolve().parents[1].parent / "shared" / "schemas" / "sparkoperator.k8s.io_sparkapplications.yaml"


def kubernetes_version() -> str:
    from kubernetes_validate.utils import latest_version

    return latest_version()


def validate_object(manifest: dict[str, Any]) -> None:
    """Raise if ``manifest`` is not a valid object of the newest Kubernetes version (strict)."""
    import kubernetes_validate

    kubernetes_validate.validate(manifest, kubernetes_version(), strict=True)


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with ``additionalProperties: false`` on every object that lists its properties."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def sparkapplication_schema() -> dict[str, Any]:
    """The strict v1beta2 SparkApplication schema (skips where ../shared is absent)."""
    if not CRD.exists():
        pytest.skip(f"SparkApplication CRD not found at {CRD} (the shared/ folder beside the repo is absent)")
    import yaml

    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta2")
    return strict(version["schema"]["openAPIV3Schema"])


_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
_SECCOMP = {"RuntimeDefault", "Localhost"}


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What in a pod ``spec`` (API field names) the ``restricted`` Pod Security level refuses."""
    pod = spec.get("securityContext") or {}
    containers = [*spec.get("initContainers", []), *spec.get("containers", [])]
    out = [f"volume {v.get('name')}: type not allowed" for v in spec.get("volumes", [])
           if not set(v) - {"name"} <= _RESTRICTED_VOLUMES]  # fmt: skip
    out += [f"host namespace {key}" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    for c in containers:
        sc, name = c.get("securityContext") or {}, c.get("name")
        caps = sc.get("capabilities") or {}
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        if "ALL" not in (caps.get("drop") or []) or set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities must drop ALL (and add at most NET_BIND_SERVICE)")
        if sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
            out.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser", pod.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser 0")
        if (sc.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type") not in _SECCOMP:
            out.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{name}: hostPort")
    return out
