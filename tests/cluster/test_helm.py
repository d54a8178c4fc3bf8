"""helm install / upgrade / uninstall of a small chart against the cluster.

The cluster tier runs no kubelet and no scheduler: the chart's pods are created
(admitted) by the Deployment and ReplicaSet controllers but never run, so helm
never `--wait`s for them. Running pods are the e2e tier's (tests/e2e, a real node).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support.kube import apis
from tests.support.wait import wait_for

pytestmark = pytest.mark.cluster

CHART = Path(__file__).parents[1] / "data" / "charts" / "hello"
SELECTOR = "app.kubernetes.io/instance=hi"
CHECKSUM = "checksum/greeting"


class Helm:
    def __init__(self, binary: Path, kubeconfig: Path, namespace: str, home: Path) -> None:
        self.binary, self.kubeconfig, self.namespace = binary, kubeconfig, namespace
        # Keep helm's cache/config/data out of the developer's home.
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(self, *args: str) -> str:
        proc = subprocess.run(
            [
                str(self.binary),
                f"--kubeconfig={self.kubeconfig}",
                f"--namespace={self.namespace}",
                *args,
            ],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
            timeout=180,
        )
        assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout


def chart_pods(core: Any, namespace: str, checksum: str) -> list[Any]:
    """The release's pods (not being deleted) made from the template with `checksum`."""
    pods = core.list_namespaced_pod(namespace, label_selector=SELECTOR).items
    return [
        p
        for p in pods
        if not p.metadata.deletion_timestamp
        and (p.metadata.annotations or {}).get(CHECKSUM) == checksum
    ]


def test_helm_install_upgrade_uninstall(
    kube_api: client.ApiClient,
    namespace: str,
    helm: Path,
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    run = Helm(helm, kubeconfig, namespace, tmp_path)
    core, apps = apis.core(kube_api), apis.apps(kube_api)

    # No --wait: it would wait for a pod no kubelet runs here.
    run("install", "hi", str(CHART))
    assert core.read_namespaced_config_map("hi-greeting", namespace).data == {"greeting": "hello"}
    template = apps.read_namespaced_deployment("hi", namespace).spec.template
    (container,) = template.spec.containers
    assert container.command == ["sleep", "3600"]
    assert container.env[0].value_from.config_map_key_ref.name == "hi-greeting"
    first = template.metadata.annotations[CHECKSUM]
    # The Deployment and ReplicaSet controllers made the pod, and it was admitted.
    wait_for(lambda: chart_pods(core, namespace, first), timeout=30, what="the chart's pod")

    run("upgrade", "hi", str(CHART), "--set", "greeting=bonjour")
    assert core.read_namespaced_config_map("hi-greeting", namespace).data == {"greeting": "bonjour"}
    second = apps.read_namespaced_deployment("hi", namespace).spec.template.metadata.annotations[
        CHECKSUM
    ]
    assert second != first
    # The changed checksum annotation rolls the pods: a second ReplicaSet makes
    # a pod of the new template (stopping the old one needs a kubelet: e2e).
    wait_for(lambda: chart_pods(core, namespace, second), timeout=30, what="the rolled pod")
    revisions = sorted(
        rs.metadata.annotations["deployment.kubernetes.io/revision"]
        for rs in apps.list_namespaced_replica_set(namespace, label_selector=SELECTOR).items
    )
    assert revisions == ["1", "2"]
    releases = json.loads(run("list", "--output=json"))
    assert [(r["name"], r["revision"], r["status"]) for r in releases] == [("hi", "2", "deployed")]

    # --wait here waits for the release's objects (ConfigMap, Deployment) to be gone.
    run("uninstall", "hi", "--wait", "--timeout=90s")

    def removed() -> bool:
        try:
            core.read_namespaced_config_map("hi-greeting", namespace)
        except apis.ApiException as err:
            return bool(err.status == 404)
        return False

    wait_for(removed, timeout=30, what="the chart's ConfigMap to be removed")
    assert json.loads(run("list", "--output=json")) == []
    # The garbage collector removes the ReplicaSets and their pods.
    wait_for(
        lambda: (
            not apps.list_namespaced_replica_set(namespace, label_selector=SELECTOR).items
            and not core.list_namespaced_pod(namespace, label_selector=SELECTOR).items
        ),
        timeout=60,
        what="the chart's ReplicaSets and pods to be garbage-collected",
    )
