"""Fixtures for the cluster tier: a real control plane (or FEEDLINE_TEST_KUBECONFIG),
an API client and a fresh namespace per test. Our control plane runs no kubelet
and no scheduler: pods are created and admitted but never run (the e2e tier, on
a real node, runs them)."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.support.kube import apis
from tests.support.kube.binaries import MissingBinariesError, find_helm, find_kubectl
from tests.support.kube.cluster import (
    Cluster,
    api_client,
    create_namespace,
    delete_namespace,
    namespace_name,
    open_cluster,
)
from tests.support.operator_fixtures import (
    apply_chart_rbac,
    install_crd,
    service_account_kubeconfig,
)

_CLUSTER_KEY = pytest.StashKey[Cluster]()


@pytest.fixture(scope="session")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    try:
        with open_cluster(tmp_path_factory.mktemp("controlplane")) as found:
            request.config.stash[_CLUSTER_KEY] = found
            yield found
    except MissingBinariesError as err:
        # Fail, never skip: a missing binary must not hide the whole tier.
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def kubeconfig(cluster: Cluster) -> Path:
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def kube_api(kubeconfig: Path) -> Iterator[client.ApiClient]:
    api = api_client(kubeconfig)
    yield api
    apis.close(api)


@pytest.fixture
def namespace(kube_api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    name = create_namespace(kube_api, namespace_name(request.node.name))
    yield name
    delete_namespace(kube_api, name)


@pytest.fixture(scope="module")
def operator_kubeconfig(
    kube_api: client.ApiClient,
    kubeconfig: Path,
    helm: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The CRD installed and a kubeconfig with only the operator chart's permissions
    (its ServiceAccount's TokenRequest token, not admin)."""
    install_crd(kube_api)
    account = apply_chart_rbac(kube_api, helm)
    path = tmp_path_factory.mktemp("operator") / "operator.kubeconfig"
    return service_account_kubeconfig(kube_api, kubeconfig, account, path)


@pytest.fixture(scope="session")
def helm() -> Path:
    try:
        return find_helm()
    except MissingBinariesError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def kubectl() -> Path:
    try:
        return find_kubectl()
    except MissingBinariesError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # On failure, show what the components said: most cluster-test failures
    # are explained by an apiserver or controller-manager log line.
    plane = item.config.stash.get(_CLUSTER_KEY, None)
    if report.failed and plane is not None and plane.control_plane is not None:
        report.sections.append(("control plane log tails", plane.control_plane.log_tails(lines=30)))
    return report
