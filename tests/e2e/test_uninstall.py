"""`helm uninstall` of both charts (the last e2e test: conftest orders it so)
leaves only what the charts document: the CRD (charts/feedline-operator/crds,
never deleted by helm, docs/operator.md) and the namespaces the user made."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Demo
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

# Made by Kubernetes itself in every namespace, not by the charts.
BUILT_IN = {"configmap/kube-root-ca.crt", "serviceaccount/default"}
KINDS = "all,configmaps,secrets,serviceaccounts,roles,rolebindings,networkpolicies,evsub,pvc"


def leftover(demo: Demo, namespace: str, but_release: str = "") -> set[str]:
    """What is in the namespace besides Kubernetes' own objects (and, with
    `but_release`, that helm release's objects)."""
    items = demo.cluster.kubectl_json("-n", namespace, "get", KINDS)["items"]
    names = set()
    for item in items:
        labels = item["metadata"].get("labels") or {}
        if but_release and labels.get("app.kubernetes.io/instance") == but_release:
            continue
        names.add(f"{item['kind'].lower()}/{item['metadata']['name']}")
    return names - BUILT_IN


def assert_emptied(demo: Demo, namespace: str, timeout: float, but_release: str = "") -> None:
    def empty() -> bool:
        return not leftover(demo, namespace, but_release)

    try:
        wait_for(empty, timeout=timeout, interval=1, what=namespace)
    except TimeoutError:
        left = sorted(leftover(demo, namespace, but_release))
        pytest.fail(f"left in {namespace} after helm uninstall: {left}")


def test_helm_uninstall_leaves_only_documented(demo: Demo) -> None:
    run = demo.cluster
    run.helm("uninstall", "e2e-demo", "--namespace", demo.namespace, "--wait", "--timeout", "3m")
    # The subscriptions' children go with them (owner references, garbage
    # collector); the operator release's RoleBinding stays until its uninstall.
    assert_emptied(demo, demo.namespace, timeout=120, but_release="e2e-operator")
    run.helm(
        "uninstall", "e2e-operator", "--namespace", demo.operator_namespace,
        "--wait", "--timeout", "3m",
    )  # fmt: skip
    assert_emptied(demo, demo.operator_namespace, timeout=60)
    assert_emptied(demo, demo.namespace, timeout=30)
    cluster_scoped = run.kubectl("get", "clusterroles,clusterrolebindings", "-o", "name")
    assert "e2e-operator" not in cluster_scoped
    # Documented to stay: the CRD (helm never deletes crds/).
    run.kubectl("get", "crd", "eventsubscriptions.feedline.dev")
