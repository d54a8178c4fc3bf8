"""The node itself: it runs a pod behind a Service, and its teardown leaves no
links, iptables rules, mounts, cgroups or processes behind."""

from __future__ import annotations

import os

import pytest
import yaml

from tests.support.kube.cluster import EXTERNAL_KUBECONFIG_ENV
from tests.support.node import host, layout
from tests.support.node.node import Node, NodeLock
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "sleeper", "namespace": "default", "labels": {"app": "sleeper"}},
    "spec": {
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {
                "name": "pause",
                "image": layout.PAUSE_IMAGE,
                "imagePullPolicy": "Never",
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            }
        ],
        "volumes": [{"name": "scratch", "emptyDir": {}}],
    },
}
SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "sleeper", "namespace": "default"},
    "spec": {"selector": {"app": "sleeper"}, "ports": [{"port": 80}]},
}


def test_node_teardown_leaves_nothing(tmp_path_factory: pytest.TempPathFactory) -> None:
    if os.environ.get(EXTERNAL_KUBECONFIG_ENV):
        pytest.skip("FEEDLINE_TEST_KUBECONFIG: the tier runs on that cluster, not on a node here")
    lock = NodeLock()
    if not lock.try_acquire():
        pytest.skip(
            "a node runs on this machine (make node-up): `make node-down` checks its teardown"
        )
    try:
        node = Node()
        try:
            node.start()
            manifest = tmp_path_factory.mktemp("lifecycle") / "sleeper.yaml"
            manifest.write_text(yaml.safe_dump_all([POD, SERVICE]))
            node.kubectl("apply", "-f", str(manifest))
            node.kubectl(
                "wait", "--for=condition=Ready", "pod/sleeper", "--timeout=60s", timeout=70
            )
            running = host.leftovers(node.layout, node.state.pids.values())
            # The check sees a running node's traces (else its silence proves nothing).
            for trace in ("link feedline0", "mount ", "cgroup ", "iptables: "):
                assert any(item.startswith(trace) for item in running), (trace, running)
        finally:
            left = node.stop()
        assert left == []
        wait_for(lambda: not host.shim_pids(node.layout), timeout=5, what="no shims")
    finally:
        lock.release()
