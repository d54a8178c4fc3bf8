"""The kubernetes client's API groups, typed as Any.

The `kubernetes` package ships type hints in which every model field is
Optional and request bodies are models, while tests send plain dicts and read
fields the server always sets. Going through Any here keeps `mypy --strict`
useful everywhere else instead of asserting on each Optional.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

__all__ = [
    "ApiException",
    "apiextensions",
    "apps",
    "batch",
    "close",
    "core",
    "custom",
    "new_api_client",
    "rbac",
    "to_dict",
]


def new_api_client(kubeconfig: Path) -> client.ApiClient:
    new_client = cast(Any, config).new_client_from_config
    return cast(client.ApiClient, new_client(config_file=str(kubeconfig)))


def close(api: client.ApiClient) -> None:
    cast(Any, api).close()


def to_dict(api: client.ApiClient, model: Any) -> Any:
    """A model as the JSON-ready dict the server would send (camelCase keys)."""
    return cast(Any, api).sanitize_for_serialization(model)


def core(api: client.ApiClient) -> Any:
    return client.CoreV1Api(api)


def apps(api: client.ApiClient) -> Any:
    return client.AppsV1Api(api)


def batch(api: client.ApiClient) -> Any:
    return client.BatchV1Api(api)


def rbac(api: client.ApiClient) -> Any:
    return client.RbacAuthorizationV1Api(api)


def apiextensions(api: client.ApiClient) -> Any:
    return client.ApiextensionsV1Api(api)


def custom(api: client.ApiClient) -> Any:
    return client.CustomObjectsApi(api)
