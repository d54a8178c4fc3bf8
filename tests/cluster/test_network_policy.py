"""The service chart's NetworkPolicy with feedAuth.mode=ServiceAccountToken:
restricted egress must also allow the API server (TokenReviews), exactly its
endpoints as the `kubernetes` Service's EndpointSlice publishes them.

The tier's shared control plane publishes no endpoint for `kubernetes` (it
serves on 127.0.0.1, which cannot be one), so these tests start one of their
own that does: bound to this machine's address, with the endpoint reconciler
on, as a real control plane is. On FEEDLINE_TEST_KUBECONFIG (kind) they use
that cluster, which publishes its API server's endpoints itself.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.cluster.test_charts import KUBE_VERSION, SERVICE_CHART, helm_env, run
from tests.support.kube import apis
from tests.support.kube.binaries import MissingBinariesError, find_binaries
from tests.support.kube.cluster import (
    EXTERNAL_KUBECONFIG_ENV,
    Cluster,
    create_namespace,
    delete_namespace,
    namespace_name,
)
from tests.support.kube.controlplane import ControlPlane, ControlPlaneOptions
from tests.support.wait import wait_for

pytestmark = pytest.mark.cluster

# The database rule of the demo's services: what "restricted egress" looks like.
DATABASE_RULE: dict[str, Any] = {
    "to": [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/component": "database",
                    "app.kubernetes.io/part-of": "feedline",
                }
            }
        }
    ],
    "ports": [{"port": 5432, "protocol": "TCP"}],
}
DNS_RULE = {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
MISSING_VALUE = "networkPolicy.apiServer is required"
HOW_TO_FIND = "kubectl get endpointslices -n default -l kubernetes.io/service-name=kubernetes"


@dataclass(frozen=True)
class Published:
    """A cluster whose `kubernetes` Service has endpoints, and a namespace in it."""

    kubeconfig: Path
    api: client.ApiClient
    namespace: str


def service_values(
    mode: str, *, egress: bool = True, api_server: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """special-offers with feedAuth.mode `mode`, its egress restricted to the database."""
    policy: dict[str, Any] = {"egress": [DATABASE_RULE] if egress else []}
    if api_server is not None:
        policy["apiServer"] = api_server
    return {
        "feedlineService": "special-offers",
        "feedAuth": {"mode": mode, "tokenSecret": {"name": "feed-tokens", "key": "token"}},
        "networkPolicy": policy,
    }


def api_server_rule(cidr: str, port: int, protocol: str = "TCP") -> dict[str, Any]:
    return {"to": [{"ipBlock": {"cidr": cidr}}], "ports": [{"port": port, "protocol": protocol}]}


def host_address() -> str:
    """This machine's IPv4 address on its default route: what kube-apiserver
    itself advertises when it is given none (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("203.0.113.1", 9))  # TEST-NET-3: any routed address
        except OSError as err:
            pytest.fail(
                f"no IPv4 default route, so no address for a control plane that publishes "
                f"its endpoint (127.0.0.1 cannot be one): {err}",
                pytrace=False,
            )
        address = str(probe.getsockname()[0])
    ip = ipaddress.ip_address(address)
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified:
        pytest.fail(f"the default route's address {address} cannot be an endpoint", pytrace=False)
    return address


@pytest.fixture(scope="module")
def published(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Published]:
    if os.environ.get(EXTERNAL_KUBECONFIG_ENV):
        cluster: Cluster = request.getfixturevalue("cluster")
        api: client.ApiClient = request.getfixturevalue("kube_api")
        namespace = create_namespace(api, namespace_name("network-policy"))
        yield Published(cluster.kubeconfig, api, namespace)
        delete_namespace(api, namespace)
        return
    try:
        binaries = find_binaries()
    except MissingBinariesError as err:
        pytest.fail(str(err), pytrace=False)
    address = host_address()
    options = ControlPlaneOptions(address=address, endpoint_reconciler=True, extra_sans=(address,))
    with ControlPlane(binaries, tmp_path_factory.mktemp("published"), options) as plane:
        api = apis.new_api_client(plane.kubeconfig)
        try:
            namespace = create_namespace(api, namespace_name("network-policy"))
            yield Published(plane.kubeconfig, api, namespace)
        finally:
            apis.close(api)


def api_server_endpoints(api: client.ApiClient) -> list[dict[str, Any]]:
    """The egress rules the chart must render: one per address and port of the
    `kubernetes` Service's EndpointSlices, read here with the client."""
    discovery: Any = client.DiscoveryV1Api(api)

    def slices() -> list[Any]:
        found = discovery.list_namespaced_endpoint_slice(
            "default", label_selector="kubernetes.io/service-name=kubernetes"
        ).items
        return [s for s in found if s.endpoints and s.ports]

    rules = []
    for endpoint_slice in wait_for(slices, timeout=30, what="the kubernetes EndpointSlice"):
        bits = 32 if endpoint_slice.address_type == "IPv4" else 128
        for endpoint in endpoint_slice.endpoints:
            for address in endpoint.addresses:
                rules += [
                    api_server_rule(f"{address}/{bits}", port.port, port.protocol or "TCP")
                    for port in endpoint_slice.ports
                ]
    return rules


def render(
    helm: Path,
    tmp_path: Path,
    values: dict[str, Any],
    *,
    cluster: Published | None = None,
    ok: bool = True,
) -> str:
    """`helm template` of the service chart: with `cluster`, `--dry-run=server`
    (lookup reads that cluster); without, no cluster at all."""
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    argv: list[str | Path] = [
        helm, "template", "special-offers", SERVICE_CHART, "-f", values_file,
        # The chart's kubeVersion check: `helm template` assumes v1.20 even with a cluster.
        "--kube-version", KUBE_VERSION,
    ]  # fmt: skip
    if cluster is not None:
        argv += [
            "--dry-run=server",
            f"--kubeconfig={cluster.kubeconfig}",
            f"--namespace={cluster.namespace}",
        ]
    # No KUBECONFIG from the environment: "no cluster" must mean none.
    env = {k: v for k, v in helm_env(tmp_path / ".helm").items() if k != "KUBECONFIG"}
    return run(argv, env=env, ok=ok)


def network_policy(rendered: str) -> dict[str, Any]:
    (policy,) = [
        doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "NetworkPolicy"
    ]
    return dict(policy)


def test_service_account_token_allows_exactly_the_api_server(
    published: Published, helm: Path, tmp_path: Path
) -> None:
    expected = api_server_endpoints(published.api)
    assert expected, "the cluster publishes no endpoint for the kubernetes Service"
    values = service_values("ServiceAccountToken")
    policy = network_policy(render(helm, tmp_path, values, cluster=published))

    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    # DNS, the API server's endpoints as its EndpointSlice has them, the
    # database: nothing else, nothing broader.
    assert policy["spec"]["egress"] == [DNS_RULE, *expected, DATABASE_RULE]
    cidrs = [rule["to"][0]["ipBlock"]["cidr"] for rule in expected]
    for cidr in cidrs:
        assert ipaddress.ip_network(cidr).num_addresses == 1, cidr
    # The endpoint, not the Service's ClusterIP (policies match after DNAT).
    service = apis.core(published.api).read_namespaced_service("kubernetes", "default")
    assert f"{service.spec.cluster_ip}/32" not in cidrs

    # The API server accepts the policy.
    networking: Any = client.NetworkingV1Api(published.api)
    accepted = networking.create_namespaced_network_policy(
        published.namespace, policy, dry_run="All"
    )
    assert [rule.to[0].ip_block.cidr for rule in accepted.spec.egress[1:-1]] == cidrs

    # networkPolicy.apiServer, when set, is used instead of the lookup.
    given = service_values(
        "ServiceAccountToken", api_server=[{"cidr": "192.0.2.10/32", "port": 6443}]
    )
    policy = network_policy(render(helm, tmp_path, given, cluster=published))
    assert policy["spec"]["egress"] == [
        DNS_RULE,
        api_server_rule("192.0.2.10/32", 6443),
        DATABASE_RULE,
    ]


@pytest.mark.parametrize("mode", ["None", "Token"])
def test_other_modes_do_not_allow_the_api_server(
    published: Published, helm: Path, tmp_path: Path, mode: str
) -> None:
    policy = network_policy(render(helm, tmp_path, service_values(mode), cluster=published))
    assert policy["spec"]["egress"] == [DNS_RULE, DATABASE_RULE]


def test_unrestricted_egress_needs_no_api_server_rule(
    published: Published, helm: Path, tmp_path: Path
) -> None:
    values = service_values("ServiceAccountToken", egress=False)
    policy = network_policy(render(helm, tmp_path, values, cluster=published))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert "egress" not in policy["spec"]
    # Nor any lookup: without a cluster it renders as well.
    assert network_policy(render(helm, tmp_path, values))["spec"]["policyTypes"] == ["Ingress"]


def test_without_a_cluster_the_api_server_must_be_given(helm: Path, tmp_path: Path) -> None:
    error = render(helm, tmp_path, service_values("ServiceAccountToken"), ok=False)
    assert MISSING_VALUE in error
    assert HOW_TO_FIND in error

    given = [{"cidr": "192.0.2.10/32", "port": 6443}, {"cidr": "2001:db8::a/128", "port": 6443}]
    values = service_values("ServiceAccountToken", api_server=given)
    assert network_policy(render(helm, tmp_path, values))["spec"]["egress"] == [
        DNS_RULE,
        api_server_rule("192.0.2.10/32", 6443),
        api_server_rule("2001:db8::a/128", 6443),
        DATABASE_RULE,
    ]

    # The schema refuses an address without its prefix length.
    values = service_values(
        "ServiceAccountToken", api_server=[{"cidr": "192.0.2.10", "port": 6443}]
    )
    error = render(helm, tmp_path, values, ok=False)
    assert "/networkPolicy/apiServer/0/cidr" in error
