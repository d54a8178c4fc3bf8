"""Resolve a container's environment from its pod spec, as the kubelet does.

Supported: env[].value (with $(VAR) references), valueFrom secretKeyRef /
configMapKeyRef / fieldRef / resourceFieldRef, and envFrom configMapRef /
secretRef. Runner-independent: a container runner only receives the result.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from kubernetes import client

from tests.support.kube import apis

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class EnvConfigError(RuntimeError):
    """A referenced Secret/ConfigMap key is missing (kubelet: CreateContainerConfigError)."""


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: unknown references stay as written, `$$` escapes."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(replace, value)


def _field(pod: Any, path: str, host_ip: str) -> str:
    meta = pod.metadata
    simple = {
        "metadata.name": meta.name,
        "metadata.namespace": meta.namespace,
        "metadata.uid": meta.uid,
        "spec.nodeName": pod.spec.node_name,
        "spec.serviceAccountName": pod.spec.service_account_name,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
        "status.podIP": host_ip,
        "status.podIPs": host_ip,
    }
    if path in simple:
        return str(simple[path] or "")
    subscript = _FIELD_SUBSCRIPT.match(path)
    if subscript:
        mapping = (meta.labels if subscript.group(1) == "labels" else meta.annotations) or {}
        return str(mapping.get(subscript.group(2), ""))
    raise EnvConfigError(f"unsupported fieldRef {path!r}")


class EnvResolver:
    """Reads Secrets and ConfigMaps through the API, once per pod start."""

    def __init__(self, api: client.ApiClient, host_ip: str = "127.0.0.1") -> None:
        self._core = apis.core(api)
        self._host_ip = host_ip

    def _data(self, kind: str, namespace: str, name: str, optional: bool) -> dict[str, str] | None:
        try:
            if kind == "secret":
                secret = self._core.read_namespaced_secret(name, namespace)
                return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
            config_map = self._core.read_namespaced_config_map(name, namespace)
            return dict(config_map.data or {})
        except apis.ApiException as err:
            if err.status == 404:
                if optional:
                    return None
                raise EnvConfigError(f'{kind} "{name}" not found') from err
            raise

    def _key(self, kind: str, namespace: str, ref: Any) -> str | None:
        optional = bool(ref.optional)
        data = self._data(kind, namespace, ref.name, optional)
        if data is None:
            return None
        if ref.key not in data:
            if optional:
                return None
            raise EnvConfigError(f"couldn't find key {ref.key} in {kind} {namespace}/{ref.name}")
        return data[ref.key]

    def resolve(self, pod: Any, container: Any) -> dict[str, str]:
        namespace = pod.metadata.namespace
        env: dict[str, str] = {}
        for source in container.env_from or []:
            kind, ref = (
                ("configmap", source.config_map_ref)
                if source.config_map_ref
                else ("secret", source.secret_ref)
            )
            data = self._data(kind, namespace, ref.name, bool(ref.optional)) or {}
            for key, value in data.items():
                env[f"{source.prefix or ''}{key}"] = value
        for var in container.env or []:
            if var.value_from is None:
                # References resolve against the variables defined before this one.
                env[var.name] = expand(var.value or "", env)
                continue
            resolved = self._value_from(pod, container, var)
            if resolved is not None:
                env[var.name] = resolved
        return env

    def _value_from(self, pod: Any, container: Any, var: Any) -> str | None:
        source = var.value_from
        if source.secret_key_ref:
            return self._key("secret", pod.metadata.namespace, source.secret_key_ref)
        if source.config_map_key_ref:
            return self._key("configmap", pod.metadata.namespace, source.config_map_key_ref)
        if source.field_ref:
            return _field(pod, source.field_ref.field_path, self._host_ip)
        if source.resource_field_ref:
            resources = container.resources
            limits = (resources.limits if resources else None) or {}
            return str(limits.get(source.resource_field_ref.resource.split(".", 1)[-1], "0"))
        raise EnvConfigError(f"unsupported valueFrom for {var.name}")
