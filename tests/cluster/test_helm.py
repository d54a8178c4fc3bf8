"""helm install / upgrade / uninstall of a small chart against the cluster."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support.kube import apis
from tests.support.kube.node_agent import NodeAgent
from tests.support.wait import wait_for

pytestmark = pytest.mark.cluster

CHART = Path(__file__).parents[1] / "data" / "charts" / "hello"


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


def running_pods(core: Any, namespace: str) -> list[Any]:
    pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/instance=hi")
    return [
        p for p in pods.items if p.status.phase == "Running" and not p.metadata.deletion_timestamp
    ]


def test_helm_install_upgrade_uninstall(
    kube_api: client.ApiClient,
    namespace: str,
    helm: Path,
    kubeconfig: Path,
    node_agent: NodeAgent | None,
    tmp_path: Path,
) -> None:
    run = Helm(helm, kubeconfig, namespace, tmp_path)
    core, apps = apis.core(kube_api), apis.apps(kube_api)

    run("install", "hi", str(CHART), "--wait", "--timeout=90s")
    assert core.read_namespaced_config_map("hi-greeting", namespace).data == {"greeting": "hello"}
    assert apps.read_namespaced_deployment("hi", namespace).status.available_replicas == 1
    (first,) = running_pods(core, namespace)

    run("upgrade", "hi", str(CHART), "--set", "greeting=bonjour", "--wait", "--timeout=90s")
    assert core.read_namespaced_config_map("hi-greeting", namespace).data == {"greeting": "bonjour"}
    # The changed checksum annotation rolls the pod; the old one is stopped.
    second = wait_for(
        lambda: [p for p in running_pods(core, namespace) if p.metadata.uid != first.metadata.uid],
        timeout=60,
        what="the rolled pod",
    )[0]
    assert second.metadata.name != first.metadata.name
    releases = json.loads(run("list", "--output=json"))
    assert [(r["name"], r["revision"], r["status"]) for r in releases] == [("hi", "2", "deployed")]

    run("uninstall", "hi", "--wait", "--timeout=90s")

    def removed() -> bool:
        try:
            core.read_namespaced_config_map("hi-greeting", namespace)
        except apis.ApiException as err:
            return bool(err.status == 404)
        return False

    wait_for(removed, timeout=30, what="the chart's ConfigMap to be removed")
    assert json.loads(run("list", "--output=json")) == []
