"""The e2e tier: the image and the charts as users deploy them (helm, kubectl).

By default on the real node of tests/support/node (the one `make node-up` runs,
else one started for the session); with FEEDLINE_TEST_KUBECONFIG on that
cluster instead (the kind workflow), where `make kind-up` loaded the images.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.clients import E2ECluster, PortForwards
from tests.support.kube.binaries import (
    MissingBinariesError,
    find_binaries,
    find_helm,
    find_kubectl,
)
from tests.support.kube.cluster import EXTERNAL_KUBECONFIG_ENV
from tests.support.node import images
from tests.support.node.node import NodeError, node_for_tests
from tests.support.podman import build_image

REPO_ROOT = Path(__file__).resolve().parents[2]
CHARTS = REPO_ROOT / "charts"
E2E_TIER = Path(__file__).resolve().parent
IMAGE = "feedline:0.1.0"  # the charts' default repository and appVersion
POSTGRES_IMAGE = "localhost/feedline-postgres:15-bookworm"  # values-node.yaml
# `make e2e` builds and pushes the images before pytest; set to skip it here.
IMAGES_PUSHED_ENV = "FEEDLINE_E2E_IMAGES_PUSHED"
OPERATOR_NAMESPACE = "e2e-feedline-system"
DEMO_NAMESPACE = "e2e-feedline-demo"
RESTRICTED = (
    "pod-security.kubernetes.io/enforce=restricted",
    "pod-security.kubernetes.io/enforce-version=latest",
)


_CLUSTER_KEY = pytest.StashKey[E2ECluster]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The node lifecycle test starts and stops a node of its own: before the
    # tier's node exists. helm uninstall ends the demo: after every other e2e
    # test. Reordered among the tier's own slots only, so the tier stays in
    # one block and its node (package-scoped) stops when the tier ends: the
    # other tiers' figures are not taken beside a node's pods and CronJobs.
    def order(item: pytest.Item) -> int:
        if "test_node_lifecycle" in item.nodeid:
            return 0
        return 2 if "test_uninstall" in item.nodeid else 1

    slots = [i for i, item in enumerate(items) if item.path.is_relative_to(E2E_TIER)]
    ordered = sorted((items[i] for i in slots), key=order)
    for slot, item in zip(slots, ordered, strict=True):
        items[slot] = item


@pytest.fixture(scope="package")
def e2e_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[E2ECluster]:
    helm_home = tmp_path_factory.mktemp("helm-home")
    external = os.environ.get(EXTERNAL_KUBECONFIG_ENV)
    try:
        if external:
            cluster = E2ECluster(
                Path(external), find_kubectl(), find_helm(), helm_home, on_node=False
            )
            request.config.stash[_CLUSTER_KEY] = cluster
            yield cluster
            return
        helm = find_binaries().helm
        with node_for_tests() as running:
            cluster = E2ECluster(
                running.kubeconfig, running.binaries["kubectl"], helm, helm_home, on_node=True
            )
            request.config.stash[_CLUSTER_KEY] = cluster
            yield cluster
    except (MissingBinariesError, NodeError) as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="package")
def node_images(e2e_cluster: E2ECluster) -> None:
    """On the node: the feedline and PostgreSQL images, built with podman and
    pushed to its registry (pods pull them under the charts' names)."""
    if not e2e_cluster.on_node or os.environ.get(IMAGES_PUSHED_ENV) == "1":
        return
    build_image("build-local.sh", IMAGE)
    build_image("build-postgres.sh", POSTGRES_IMAGE)
    images.push(f"localhost/{IMAGE}", IMAGE)
    images.push(POSTGRES_IMAGE, POSTGRES_IMAGE)


@dataclass(frozen=True)
class Demo:
    cluster: E2ECluster
    operator_namespace: str
    namespace: str
    install_seconds: dict[str, float]
    chart: Path  # the demo chart with its dependencies built (for helm upgrade)
    forwards: PortForwards

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return self.cluster.kubectl("-n", self.namespace, *args, check=check, timeout=timeout)

    def url(self, service: str) -> str:
        """A demo Service's base URL from the host: its ClusterIP on the node
        (kube-proxy's rules), else a port-forward (kind's ClusterIPs live in
        its containers)."""
        if self.cluster.on_node:
            ip = self.kubectl("get", "service", service, "-o", "jsonpath={.spec.clusterIP}")
            return f"http://{ip}"
        return self.forwards.url(self.namespace, service)


@pytest.fixture(scope="package")
def demo(
    e2e_cluster: E2ECluster, node_images: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Demo]:
    """feedline-operator and feedline-demo installed with helm, as a user does
    (`make kind-up`'s steps): namespaces enforcing the restricted profile, the
    operator watching the demo's namespace only."""
    run = e2e_cluster
    for namespace in (OPERATOR_NAMESPACE, DEMO_NAMESPACE):
        # Idempotent (apply, upgrade --install): the node of `make node-up`
        # keeps the releases of an earlier run.
        manifest = run.kubectl("create", "namespace", namespace, "--dry-run=client", "-o", "yaml")
        path = tmp_path_factory.mktemp("ns") / f"{namespace}.yaml"
        path.write_text(manifest)
        run.kubectl("apply", "-f", str(path))
        run.kubectl("label", "namespace", namespace, "--overwrite", *RESTRICTED)
    timings: dict[str, float] = {}
    began = time.monotonic()
    run.helm(
        "upgrade", "--install", "e2e-operator", str(CHARTS / "feedline-operator"),
        "--namespace", OPERATOR_NAMESPACE,
        "--set", f"watchNamespaces={{{DEMO_NAMESPACE}}}",
        "--wait", "--timeout", "5m",
    )  # fmt: skip
    timings["operator"] = time.monotonic() - began
    # A copy: `helm dependency build` writes the packaged subcharts next to the chart.
    charts = tmp_path_factory.mktemp("charts")
    for chart in ("feedline-demo", "feedline-service"):
        shutil.copytree(CHARTS / chart, charts / chart)
    run.helm("dependency", "build", str(charts / "feedline-demo"))
    values = ["--values", str(CHARTS / "feedline-demo" / "values-node.yaml")] if run.on_node else []
    # The demo from scratch, as `helm install` makes it (a node of `make
    # node-up` may hold one from an earlier run, faults and all).
    run.helm("uninstall", "e2e-demo", "--namespace", DEMO_NAMESPACE, "--ignore-not-found", "--wait")
    # Its pods too: a StatefulSet of the new release would adopt the old
    # PostgreSQL pod, data and all, while the garbage collector is at it.
    run.kubectl(
        "-n", DEMO_NAMESPACE, "wait", "--for=delete", "pod", "--all", "--timeout=180s",
        timeout=200,
    )  # fmt: skip
    began = time.monotonic()
    run.helm(
        "upgrade", "--install", "e2e-demo", str(charts / "feedline-demo"),
        "--namespace", DEMO_NAMESPACE, *values,
        "--wait", "--timeout", "10m",
    )  # fmt: skip
    timings["demo"] = time.monotonic() - began
    forwards = PortForwards(run)
    yield Demo(run, OPERATOR_NAMESPACE, DEMO_NAMESPACE, timings, charts / "feedline-demo", forwards)
    forwards.close()
    if not run.on_node:  # the node goes away with the session; another cluster stays
        # (test_uninstall.py may have done it already)
        for release, namespace in (
            ("e2e-demo", DEMO_NAMESPACE),
            ("e2e-operator", OPERATOR_NAMESPACE),
        ):
            run.helm("uninstall", release, "--namespace", namespace, "--wait", "--ignore-not-found")
        run.kubectl("delete", "namespace", DEMO_NAMESPACE, OPERATOR_NAMESPACE, "--wait=false")


def _dump(cluster: E2ECluster) -> str:
    """What the operator said, events, and the subscriptions' and pods' state."""
    commands = [
        ("operator log", ["-n", OPERATOR_NAMESPACE, "logs", "-l",
                          "app.kubernetes.io/name=feedline-operator", "--tail=80", "--prefix"]),
        ("events", ["-n", DEMO_NAMESPACE, "get", "events", "--sort-by=.lastTimestamp"]),
        ("objects", ["-n", DEMO_NAMESPACE, "get", "evsub,pods,jobs,services", "-o", "wide"]),
        ("describe evsub", ["-n", DEMO_NAMESPACE, "describe", "evsub"]),
    ]  # fmt: skip
    parts = []
    for title, args in commands:
        try:
            out = cluster.kubectl(*args, check=False, timeout=30)
        except subprocess.TimeoutExpired:
            out = "(timed out)"
        parts.append(f"--- {title}: kubectl {' '.join(args)}\n{out[-6000:]}")
    return "\n".join(parts)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    cluster = item.config.stash.get(_CLUSTER_KEY, None)
    if report.failed and cluster is not None:
        report.sections.append(("cluster state", _dump(cluster)))
    return report
