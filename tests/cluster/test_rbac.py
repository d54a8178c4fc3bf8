"""RBAC is enforced: `kubectl auth can-i` as a ServiceAccount follows its Role."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from kubernetes import client

from tests.support.kube import apis

pytestmark = pytest.mark.cluster


def can_i(kubectl: Path, kubeconfig: Path, user: str, namespace: str, *request: str) -> str:
    proc = subprocess.run(
        [
            str(kubectl),
            f"--kubeconfig={kubeconfig}",
            f"--as={user}",
            "-n",
            namespace,
            "auth",
            "can-i",
            *request,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    # can-i exits 0 for yes and 1 for no; anything else is a real error.
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout.strip()


def test_service_account_can_do_what_its_role_allows(
    kube_api: client.ApiClient, namespace: str, kubectl: Path, kubeconfig: Path
) -> None:
    core, rbac = apis.core(kube_api), apis.rbac(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "pod-reader"},
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader-reads-pods"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    reader = f"system:serviceaccount:{namespace}:reader"

    assert can_i(kubectl, kubeconfig, reader, namespace, "list", "pods") == "yes"
    assert can_i(kubectl, kubeconfig, reader, namespace, "delete", "pods") == "no"
    assert can_i(kubectl, kubeconfig, reader, namespace, "get", "secrets") == "no"
    assert can_i(kubectl, kubeconfig, reader, "default", "list", "pods") == "no"
    # Someone without any binding may do nothing here.
    stranger = f"system:serviceaccount:{namespace}:default"
    assert can_i(kubectl, kubeconfig, stranger, namespace, "list", "pods") == "no"
