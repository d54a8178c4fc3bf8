"""Pod Security admission: a `restricted` namespace refuses a privileged pod."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.support.kube import apis
from tests.support.kube.cluster import create_namespace, delete_namespace, namespace_name

pytestmark = pytest.mark.cluster


@pytest.fixture
def restricted_namespace(kube_api: client.ApiClient) -> Iterator[str]:
    name = create_namespace(
        kube_api,
        namespace_name("restricted"),
        labels={
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        },
    )
    yield name
    delete_namespace(kube_api, name)


def pod(
    name: str, security_context: dict[str, Any], pod_security: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": pod_security,
            "containers": [
                {
                    "name": "main",
                    "image": "busybox:1.37",
                    "command": ["true"],
                    "securityContext": security_context,
                }
            ],
        },
    }


def test_privileged_pod_is_rejected(kube_api: client.ApiClient, restricted_namespace: str) -> None:
    with pytest.raises(apis.ApiException) as info:
        apis.core(kube_api).create_namespaced_pod(
            restricted_namespace, pod("privileged", {"privileged": True}, {})
        )

    assert info.value.status == 403
    message = json.loads(info.value.body or "{}")["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert 'privileged (container "main" must not set securityContext.privileged=true)' in message


def test_restricted_pod_is_admitted(kube_api: client.ApiClient, restricted_namespace: str) -> None:
    created = apis.core(kube_api).create_namespaced_pod(
        restricted_namespace,
        pod(
            "restricted",
            {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        ),
    )

    assert created.metadata.name == "restricted"
