"""A small dict-in, dict-out client for the Kubernetes API.

The reconcile step works on plain manifests (what the builders return), so it
talks to the API by path through the kubernetes package's ApiClient (its
configuration, TLS and credentials) instead of through generated models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from feedline_operator import names

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"

_PATHS = {
    ("batch/v1", "CronJob"): "/apis/batch/v1/namespaces/{ns}/cronjobs",
    ("batch/v1", "Job"): "/apis/batch/v1/namespaces/{ns}/jobs",
    ("apps/v1", "Deployment"): "/apis/apps/v1/namespaces/{ns}/deployments",
    ("v1", "Secret"): "/api/v1/namespaces/{ns}/secrets",
    ("v1", "Pod"): "/api/v1/namespaces/{ns}/pods",
    (names.API_VERSION, names.KIND): f"/apis/{names.API_VERSION}/namespaces/{{ns}}/{names.PLURAL}",
}


class ApiError(Exception):
    """A non-2xx answer; `status` is the HTTP status (404, 409, ...)."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        self.status = status
        self.body = body
        try:
            detail = json.loads(body).get("message", body)
        except ValueError:
            detail = body
        super().__init__(f"{method} {path}: {status} {detail}")


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    return _PATHS[(api_version, kind)].format(ns=namespace)


def object_path(api_version: str, kind: str, namespace: str, name: str) -> str:
    return f"{collection_path(api_version, kind, namespace)}/{name}"


def load_api_client(kubeconfig: str | None) -> k8s.ApiClient:
    """From a kubeconfig file, else in-cluster, else the default kubeconfig."""
    if kubeconfig:
        return cast(k8s.ApiClient, k8s_config.new_client_from_config(config_file=kubeconfig))  # type: ignore[no-untyped-call]
    try:
        configuration = k8s.Configuration()
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return k8s.ApiClient(configuration)
    except k8s_config.ConfigException:
        return cast(k8s.ApiClient, k8s_config.new_client_from_config())  # type: ignore[no-untyped-call]


class Kube:
    """Synchronous; the kopf handlers that use it run in kopf's thread pool."""

    def __init__(self, api: k8s.ApiClient, field_manager: str = names.MANAGED_BY) -> None:
        self.api = api
        self.field_manager = field_manager

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str = JSON,
    ) -> dict[str, Any]:
        params = dict(query or {})
        if method in ("POST", "PUT", "PATCH"):
            params.setdefault("fieldManager", self.field_manager)
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type
        m, url, hdrs, payload, _ = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(params.items()),
            header_params=headers,
            body=dict(body) if body is not None else None,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(m, url, header_params=hdrs, body=payload, _request_timeout=30)
        raw = response.read()  # type: ignore[no-untyped-call]
        text = raw.decode() if isinstance(raw, bytes) else str(raw or "")
        if not 200 <= response.status <= 299:
            raise ApiError(response.status, method, path, text)
        result: dict[str, Any] = json.loads(text) if text else {}
        return result

    def get(self, path: str, query: Mapping[str, str] | None = None) -> dict[str, Any] | None:
        """The object, or None on 404."""
        try:
            return self.request("GET", path, query=query)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        path = collection_path(manifest["apiVersion"], manifest["kind"], meta["namespace"])
        return self.request("POST", path, manifest)

    def replace(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        kind = (manifest["apiVersion"], manifest["kind"])
        path = object_path(*kind, meta["namespace"], meta["name"])
        return self.request("PUT", path, manifest)

    def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, patch, content_type=MERGE_PATCH)

    def delete(self, path: str, uid: str | None = None) -> bool:
        """Delete in the background; False if it was already gone (or replaced)."""
        options: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
        }
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", path, options)
        except ApiError as error:
            if error.status in (404, 409):
                return False
            raise
        return True

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]
