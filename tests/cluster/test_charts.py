"""The service and demo charts: lint, install under the restricted Pod Security
profile, and rendered objects (EventSubscriptions included) the API server accepts.

The cluster tier has no kubelet and no scheduler: these tests check what the
control plane alone shows (objects and their specs, server-side dry runs, Pod
Security admission of the pods the controllers make or of each pod template).
The charts' pods running and Ready is the e2e tier's (tests/e2e/test_demo.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from feedline.services.registry import SERVICES
from tests.support.kube import apis
from tests.support.kube.cluster import create_namespace, delete_namespace, namespace_name
from tests.support.operator_fixtures import install_crd
from tests.support.wait import wait_for

pytestmark = pytest.mark.cluster

CHARTS = Path(__file__).parents[2] / "charts"
SERVICE_CHART = CHARTS / "feedline-service"
DEMO_CHART = CHARTS / "feedline-demo"
KUBE_VERSION = "v1.37.2"  # tools/controlplane/versions.env
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def run(argv: list[str | Path], *, env: dict[str, str] | None = None, ok: bool = True) -> str:
    proc = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=180,
    )
    if ok:
        assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout}\n{proc.stderr}"
    else:
        assert proc.returncode != 0, f"{argv} should have failed:\n{proc.stdout}"
    return proc.stdout if ok else proc.stderr


def helm_env(home: Path) -> dict[str, str]:
    """Keep helm's cache/config/data out of the developer's home."""
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


@pytest.fixture(scope="module")
def demo_chart(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of both charts with the demo's dependencies built (`helm dependency
    build` writes into the chart; the source tree stays untouched)."""
    root = tmp_path_factory.mktemp("charts")
    for chart in (SERVICE_CHART, DEMO_CHART):
        shutil.copytree(chart, root / chart.name, ignore=shutil.ignore_patterns("charts"))
    run([helm, "dependency", "build", root / DEMO_CHART.name], env=helm_env(root / ".helm"))
    return root / DEMO_CHART.name


@pytest.fixture
def restricted_namespace(
    kube_api: client.ApiClient, request: pytest.FixtureRequest
) -> Iterator[str]:
    name = create_namespace(kube_api, namespace_name(request.node.name), labels=RESTRICTED)
    yield name
    delete_namespace(kube_api, name)


def render(
    helm: Path, chart: Path, namespace: str, *values: str, values_file: Path | None = None
) -> list[dict[str, Any]]:
    argv: list[str | Path] = [
        helm, "template", "feedline-demo", chart, "--namespace", namespace,
        "--kube-version", KUBE_VERSION,
    ]  # fmt: skip
    if values_file is not None:
        argv += ["-f", values_file]
    for value in values:
        argv += ["--set", value]
    return [doc for doc in yaml.safe_load_all(run(argv)) if doc]


def pod_templates(docs: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """Pod template and volume claim template names, by workload."""
    return {
        f"{doc['kind']}/{doc['metadata']['name']}": (
            doc["spec"]["template"],
            [c["metadata"]["name"] for c in doc["spec"].get("volumeClaimTemplates", [])],
        )
        for doc in docs
        if doc["kind"] in {"Deployment", "StatefulSet"}
    }


def test_charts_lint(helm: Path, demo_chart: Path, tmp_path: Path) -> None:
    env = helm_env(tmp_path)
    for service in ("special-offers", "loyalty-program", "shopping-cart", "product-catalog"):
        run(
            [helm, "lint", "--strict", SERVICE_CHART, "--set", f"feedlineService={service}"],
            env=env,
        )
    run([helm, "lint", "--strict", demo_chart], env=env)

    # Which service runs is required, and named in the error.
    error = run([helm, "template", "x", SERVICE_CHART, "--kube-version", KUBE_VERSION], ok=False)
    assert "feedlineService is required" in error
    # The schema refuses values the chart does not know (additionalProperties: false).
    error = run(
        [helm, "template", "x", SERVICE_CHART, "--kube-version", KUBE_VERSION,
         "--set", "feedlineService=special-offers", "--set", "replicas=2"],
        ok=False,
    )  # fmt: skip
    assert "replicas" in error
    assert "additional properties" in error.lower() or "not allowed" in error.lower()


def test_service_chart_installs_under_restricted_profile(
    kube_api: client.ApiClient,
    restricted_namespace: str,
    helm: Path,
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    namespace, port = restricted_namespace, 8181
    # No --wait: it would wait for a pod no kubelet runs here.
    notes = run(
        [helm, "install", "special-offers", SERVICE_CHART, f"--kubeconfig={kubeconfig}",
         f"--namespace={namespace}", "--set", "feedlineService=special-offers",
         "--set", f"containerPort={port}"],
        env=helm_env(tmp_path),
    )  # fmt: skip
    assert f"http://special-offers.{namespace}.svc:80/events" in notes

    core, apps = apis.core(kube_api), apis.apps(kube_api)
    assert apps.read_namespaced_deployment("special-offers", namespace).spec.replicas == 1
    service = core.read_namespaced_service("special-offers", namespace)
    assert (service.spec.ports[0].port, service.spec.ports[0].target_port) == (80, "http")
    account = core.read_namespaced_service_account("special-offers", namespace)
    assert account.automount_service_account_token is False
    networking: Any = client.NetworkingV1Api(kube_api)
    policy = networking.read_namespaced_network_policy("special-offers", namespace)
    assert policy.spec.policy_types == ["Ingress"]

    # The restricted profile admitted the pod the ReplicaSet made (a refused
    # pod is never stored: the ReplicaSet would only record FailedCreate).
    (pod,) = wait_for(
        lambda: (
            core.list_namespaced_pod(
                namespace, label_selector="app.kubernetes.io/instance=special-offers"
            ).items
        ),
        timeout=30,
        what="the pod the ReplicaSet made",
    )
    container = pod.spec.containers[0]
    assert container.command == ["feedline", "serve"]
    assert container.args == ["special-offers", "--host=0.0.0.0", f"--port={port}"]
    assert container.ports[0].container_port == port
    assert container.readiness_probe.http_get.path == "/health/ready"
    assert container.security_context.read_only_root_filesystem is True
    assert pod.spec.security_context.run_as_user == 10001

    run(
        [helm, "uninstall", "special-offers", f"--kubeconfig={kubeconfig}",
         f"--namespace={namespace}", "--wait", "--timeout=60s"],
        env=helm_env(tmp_path),
    )  # fmt: skip


def test_demo_chart_objects_are_accepted(
    kube_api: client.ApiClient,
    restricted_namespace: str,
    helm: Path,
    kubectl: Path,
    kubeconfig: Path,
    demo_chart: Path,
    tmp_path: Path,
) -> None:
    """Every object of `helm template` passes a server-side dry run (schema, CRD
    validation and CEL rules, admission), and every pod template is admitted
    under the restricted profile."""
    install_crd(kube_api)
    namespace = restricted_namespace
    docs = render(helm, demo_chart, namespace)

    kinds = sorted(f"{doc['kind']}/{doc['metadata']['name']}" for doc in docs)
    assert "StatefulSet/feedline-demo-postgresql" in kinds
    for service in ("special-offers", "loyalty-program", "shopping-cart", "product-catalog"):
        assert f"Deployment/{service}" in kinds
        assert f"Service/{service}" in kinds
        assert f"NetworkPolicy/{service}" in kinds
    subscriptions = {d["metadata"]["name"]: d for d in docs if d["kind"] == "EventSubscription"}
    assert set(subscriptions) == {"loyalty-special-offers", "offer-documents"}

    # The subscriptions point at what the chart made: the feed's Service and the
    # Secret keys that exist.
    secrets = {d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"}
    loyalty = subscriptions["loyalty-special-offers"]["spec"]
    assert loyalty["feed"]["url"] == "http://special-offers/events"
    assert loyalty["readModel"]["projection"] == (
        "feedline.services.loyalty_program.projection:project_special_offers"
    )
    for spec in (s["spec"] for s in subscriptions.values()):
        database = spec["readModel"]["databaseSecretRef"]
        assert spec["readModel"]["databaseSecretRef"]["key"] in secrets[database["name"]]
        token = spec["feed"]["auth"]["secretRef"]
        assert token["key"] in secrets[token["name"]]
    assert secrets["feedline-demo-databases"]["loyalty-program"].startswith(
        "postgresql://feedline:"
    )

    kubectl_create: list[str | Path] = [
        kubectl,
        f"--kubeconfig={kubeconfig}",
        f"--namespace={namespace}",
        "create",
    ]
    everything = tmp_path / "demo.yaml"
    everything.write_text(yaml.safe_dump_all(docs))
    created = run([*kubectl_create, "--dry-run=server", "--validate=strict", "-f", everything,
                   "-o", "name"])  # fmt: skip
    assert len(created.split()) == len(docs)

    # Really create all but the workloads (their pods would run here), so the
    # pods' ServiceAccounts exist for the dry runs below; the subscriptions
    # come back with the CRD's defaults.
    objects = tmp_path / "objects.yaml"
    objects.write_text(
        yaml.safe_dump_all([d for d in docs if d["kind"] not in {"Deployment", "StatefulSet"}])
    )
    run([*kubectl_create, "-f", objects])
    custom = apis.custom(kube_api)
    for name in subscriptions:
        stored = custom.get_namespaced_custom_object(
            "feedline.dev", "v1alpha1", namespace, "eventsubscriptions", name
        )
        assert stored["spec"]["batchSize"] == 1000

    # Pod Security is enforced on pods, not on their controllers: dry-run each
    # pod template as a Pod in the restricted namespace.
    core = apis.core(kube_api)
    templates = pod_templates(docs)
    assert len(templates) == 5
    for owner, (template, claims) in templates.items():
        spec = dict(template["spec"])
        # A StatefulSet adds its claims' volumes to the pods it makes.
        spec["volumes"] = [
            *spec.get("volumes", []),
            *({"name": c, "persistentVolumeClaim": {"claimName": f"{c}-0"}} for c in claims),
        ]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {**template["metadata"], "name": "dry-run"},
            "spec": spec,
        }
        try:
            core.create_namespaced_pod(namespace, pod, dry_run="All")
        except apis.ApiException as err:
            pytest.fail(f"{owner}'s pod is refused in a restricted namespace: {err.body}")


def test_demo_postgresql_needs_no_storage_class_by_default(helm: Path, demo_chart: Path) -> None:
    """A bare cluster (no default StorageClass) must run the demo as installed:
    by default PostgreSQL claims no volume (a claim would stay Pending); its
    data lives in an emptyDir. Persistence stays one value away."""

    def postgresql(*values: str) -> tuple[dict[str, Any], list[str]]:
        docs = render(helm, demo_chart, "demo", *values)
        return pod_templates(docs)["StatefulSet/feedline-demo-postgresql"]

    template, claims = postgresql()
    assert claims == []
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in template["spec"]["containers"][0]["volumeMounts"]}
    data = next(name for path, name in mounts.items() if path.startswith("/var/lib/postgresql"))
    assert "emptyDir" in volumes[data]

    _, claims = postgresql(
        "postgresql.persistence.enabled=true", "postgresql.persistence.storageClassName=local"
    )
    assert claims == [data]


def test_service_chart_serves_the_grpc_feed_when_asked(helm: Path) -> None:
    """grpc.enabled: FEEDLINE_GRPC_PORT, a container port and a Service port named grpc,
    and NetworkPolicy ingress to it (from the same peers as HTTP); off by default."""

    def objects(*values: str) -> dict[str, dict[str, Any]]:
        docs = render(helm, SERVICE_CHART, "shop", "feedlineService=special-offers", *values)
        return {doc["kind"]: doc for doc in docs if doc["kind"] != "ServiceAccount"}

    def grpc_parts(found: dict[str, dict[str, Any]]) -> dict[str, Any]:
        (container,) = found["Deployment"]["spec"]["template"]["spec"]["containers"]
        (ingress,) = found["NetworkPolicy"]["spec"]["ingress"]
        return {
            "env": [e["value"] for e in container["env"] if e["name"] == "FEEDLINE_GRPC_PORT"],
            "container": [p for p in container["ports"] if p["name"] == "grpc"],
            "service": [p for p in found["Service"]["spec"]["ports"] if p["name"] == "grpc"],
            "ingress": [p["port"] for p in ingress["ports"]],
        }

    assert grpc_parts(objects()) == {
        "env": [],
        "container": [],
        "service": [],
        "ingress": ["http"],
    }
    assert grpc_parts(objects("grpc.enabled=true")) == {
        "env": ["9090"],
        "container": [{"name": "grpc", "containerPort": 9090, "protocol": "TCP"}],
        "service": [
            {
                "name": "grpc",
                "port": 9090,
                "targetPort": "grpc",
                "protocol": "TCP",
                "appProtocol": "kubernetes.io/h2c",
            }
        ],
        "ingress": ["http", "grpc"],
    }
    moved = grpc_parts(objects("grpc.enabled=true", "grpc.port=9443"))
    assert moved["env"] == ["9443"]
    assert moved["service"][0]["port"] == moved["container"][0]["containerPort"] == 9443
    # HTTP keeps its port and its Service port either way.
    (http,) = [p for p in objects("grpc.enabled=true")["Service"]["spec"]["ports"]
               if p["name"] == "http"]  # fmt: skip
    assert (http["port"], http["targetPort"]) == (80, "http")

    # One port cannot serve both; the schema bounds the port.
    same = run(
        [helm, "template", "x", SERVICE_CHART, "--kube-version", KUBE_VERSION,
         "--set", "feedlineService=special-offers", "--set", "grpc.enabled=true",
         "--set", "grpc.port=8080"],
        ok=False,
    )  # fmt: skip
    assert "grpc.port (8080) must differ from containerPort (8080)" in same
    wide = run(
        [helm, "template", "x", SERVICE_CHART, "--kube-version", KUBE_VERSION,
         "--set", "feedlineService=special-offers", "--set", "grpc.port=70000"],
        ok=False,
    )  # fmt: skip
    assert "/grpc/port" in wide


def test_service_chart_grpc_objects_are_accepted(
    namespace: str, helm: Path, kubectl: Path, kubeconfig: Path, tmp_path: Path
) -> None:
    """With grpc.enabled, every object passes a strict server-side dry run (the port
    names, the Service's appProtocol, the NetworkPolicy's named port)."""
    docs = render(
        helm, SERVICE_CHART, namespace, "feedlineService=special-offers", "grpc.enabled=true"
    )
    objects = tmp_path / "service.yaml"
    objects.write_text(yaml.safe_dump_all(docs))
    created = run([kubectl, f"--kubeconfig={kubeconfig}", f"--namespace={namespace}", "create",
                   "--dry-run=server", "--validate=strict", "-f", objects])  # fmt: skip
    assert created.count("created (server dry run)") == len(docs), created


BROKER_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "rabbitmq"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "rabbitmq"}},
}
DATABASE_EGRESS = (
    "networkPolicy.egress[0].to[0].podSelector.matchLabels.app=db",
    "networkPolicy.egress[0].ports[0].port=5432",
)


def broker_values(*extra: str) -> tuple[str, ...]:
    return (
        "feedlineService=special-offers",
        "broker.enabled=true",
        "broker.urlSecret.name=rabbitmq",
        *extra,
    )


def test_service_chart_relays_to_a_broker_when_asked(helm: Path, tmp_path: Path) -> None:
    """broker.enabled: FEEDLINE_BROKER_URL from the Secret key (never a value), retention
    settings only when set, and with restricted egress a rule to the broker; off by default."""

    def objects(*values: str) -> dict[str, dict[str, Any]]:
        docs = render(helm, SERVICE_CHART, "shop", *values)
        return {doc["kind"]: doc for doc in docs if doc["kind"] != "ServiceAccount"}

    def broker_env(found: dict[str, dict[str, Any]]) -> dict[str, Any]:
        (container,) = found["Deployment"]["spec"]["template"]["spec"]["containers"]
        return {
            e["name"]: e.get("value", e.get("valueFrom"))
            for e in container["env"]
            if e["name"].startswith("FEEDLINE_BROKER_")
        }

    def egress(found: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        return list(found["NetworkPolicy"]["spec"].get("egress", []))

    # Off by default: no variable, no rule (restricted egress or not).
    assert broker_env(objects("feedlineService=special-offers")) == {}
    plain = egress(objects("feedlineService=special-offers", *DATABASE_EGRESS))
    assert all(5552 not in [p["port"] for p in rule.get("ports", [])] for rule in plain)

    found = objects(*broker_values())
    assert broker_env(found) == {
        "FEEDLINE_BROKER_URL": {"secretKeyRef": {"name": "rabbitmq", "key": "url"}}
    }
    # Unrestricted egress needs no rule.
    assert found["NetworkPolicy"]["spec"]["policyTypes"] == ["Ingress"]
    assert egress(found) == []

    retention = objects(
        *broker_values(
            "broker.urlSecret.key=uri",
            "broker.stream.maxAge=2D",
            "broker.stream.maxLengthBytes=20000000000",
            "broker.stream.maxSegmentSizeBytes=100000000",
        )
    )
    assert broker_env(retention) == {
        "FEEDLINE_BROKER_URL": {"secretKeyRef": {"name": "rabbitmq", "key": "uri"}},
        "FEEDLINE_BROKER_STREAM_MAX_AGE": "2D",
        "FEEDLINE_BROKER_STREAM_MAX_LENGTH_BYTES": "20000000000",
        "FEEDLINE_BROKER_STREAM_MAX_SEGMENT_SIZE_BYTES": "100000000",
    }

    # Restricted egress: DNS, then the broker (its port on any address, or its peers), then
    # the chart user's rules.
    restricted = egress(objects(*broker_values(*DATABASE_EGRESS)))
    assert restricted[1] == {"ports": [{"port": 5552, "protocol": "TCP"}]}
    assert restricted[2]["ports"] == [{"port": 5432}]
    values_file = tmp_path / "broker.yaml"
    values_file.write_text(
        yaml.safe_dump({"broker": {"networkPolicy": {"to": [BROKER_PEER], "port": 5551}}})
    )
    peers = render(
        helm, SERVICE_CHART, "shop", *broker_values(*DATABASE_EGRESS), values_file=values_file
    )
    (policy,) = [doc for doc in peers if doc["kind"] == "NetworkPolicy"]
    assert policy["spec"]["egress"][1] == {
        "ports": [{"port": 5551, "protocol": "TCP"}],
        "to": [BROKER_PEER],
    }

    # The Secret is required; the schema checks the retention and the port.
    def refused(*values: str) -> str:
        argv: list[str | Path] = [
            helm, "template", "x", SERVICE_CHART, "--kube-version", KUBE_VERSION,
        ]  # fmt: skip
        for value in values:
            argv += ["--set", value]
        return run(argv, ok=False)

    assert "broker.urlSecret.name is required when broker.enabled" in refused(
        "feedlineService=special-offers", "broker.enabled=true"
    )
    assert "/broker/stream/maxAge" in refused(*broker_values("broker.stream.maxAge=7 days"))
    assert "/broker/networkPolicy/port" in refused(
        *broker_values("broker.networkPolicy.port=70000")
    )
    misspelt = refused(*broker_values("broker.streams.maxAge=7D")).lower()
    assert "streams" in misspelt
    assert "additional properties" in misspelt or "not allowed" in misspelt

    env = helm_env(tmp_path / ".helm")
    run([helm, "lint", "--strict", SERVICE_CHART, "-f", values_file,
         *(a for v in broker_values(*DATABASE_EGRESS) for a in ("--set", v))], env=env)  # fmt: skip


def test_service_chart_broker_objects_are_accepted(
    namespace: str, helm: Path, kubectl: Path, kubeconfig: Path, tmp_path: Path
) -> None:
    """With broker.enabled (retention set, egress restricted to a database and the broker's
    peers), every object passes a strict server-side dry run, and so does the install
    (its notes name the stream)."""
    values_file = tmp_path / "values.yaml"
    values_file.write_text(
        yaml.safe_dump(
            {
                "feedlineService": "special-offers",
                "broker": {
                    "enabled": True,
                    "urlSecret": {"name": "rabbitmq-credentials", "key": "url"},
                    "stream": {"maxAge": "2D", "maxLengthBytes": 20_000_000_000},
                    "networkPolicy": {"to": [BROKER_PEER]},
                },
                "networkPolicy": {
                    "egress": [
                        {
                            "to": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                            "ports": [{"port": 5432, "protocol": "TCP"}],
                        }
                    ]
                },
            }
        )
    )
    rendered = run(
        [helm, "template", "special-offers", SERVICE_CHART, "--namespace", namespace,
         "--kube-version", KUBE_VERSION, "-f", values_file]
    )  # fmt: skip
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    objects = tmp_path / "service.yaml"
    objects.write_text(yaml.safe_dump_all(docs))
    created = run([kubectl, f"--kubeconfig={kubeconfig}", f"--namespace={namespace}", "create",
                   "--dry-run=server", "--validate=strict", "-f", objects])  # fmt: skip
    assert created.count("created (server dry run)") == len(docs), created

    notes = run(
        [helm, "install", "special-offers", SERVICE_CHART, f"--kubeconfig={kubeconfig}",
         f"--namespace={namespace}", "-f", values_file, "--dry-run=server"],
        env=helm_env(tmp_path / ".helm"),
    )  # fmt: skip
    assert "feedline.events.special-offers" in notes
    assert "spec.feed.broker: {urlSecretRef: {name: ..., key: ...}" in notes


def test_demo_subscribers_may_reach_grpc_and_the_broker_the_services_offer(
    helm: Path,
    kubectl: Path,
    kubeconfig: Path,
    namespace: str,
    demo_chart: Path,
    tmp_path: Path,
) -> None:
    """The subscribers' NetworkPolicy: HTTP (8080) to every service; the gRPC port of each
    service with grpc.enabled; the broker of each service with broker.enabled."""

    def subscriber_egress(*values: str, values_file: Path | None = None) -> list[dict[str, Any]]:
        docs = render(helm, demo_chart, namespace, *values, values_file=values_file)
        (policy,) = [
            d for d in docs
            if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "feedline-demo-subscribers"
        ]  # fmt: skip
        return list(policy["spec"]["egress"])

    def feed_ports(egress: list[dict[str, Any]]) -> list[int]:
        services = {
            "app.kubernetes.io/component": "service",
            "app.kubernetes.io/part-of": "feedline",
        }
        (feeds,) = [
            r for r in egress if r.get("to") == [{"podSelector": {"matchLabels": services}}]
        ]
        return [p["port"] for p in feeds["ports"]]

    default = subscriber_egress()
    assert feed_ports(default) == [8080]
    assert len(default) == 3  # DNS, the feeds, the read-model databases

    grpc = subscriber_egress(
        "specialOffers.grpc.enabled=true",
        "loyaltyProgram.grpc.enabled=true",
        "loyaltyProgram.grpc.port=9443",
        "shoppingCart.grpc.enabled=true",  # 9090 again: once
    )
    assert feed_ports(grpc) == [8080, 9090, 9443]

    values_file = tmp_path / "broker.yaml"
    broker = {
        "enabled": True,
        "urlSecret": {"name": "rabbitmq-credentials"},
        "networkPolicy": {"to": [BROKER_PEER]},
    }
    # Two services on one broker: one rule.
    values_file.write_text(
        yaml.safe_dump({"specialOffers": {"broker": broker}, "productCatalog": {"broker": broker}})
    )
    with_broker = subscriber_egress(values_file=values_file)
    broker_rules = [r for r in with_broker if r.get("to") == [BROKER_PEER]]
    assert broker_rules == [{"ports": [{"port": 5552, "protocol": "TCP"}], "to": [BROKER_PEER]}]
    assert feed_ports(with_broker) == [8080]

    # The policies (the subscribers' and the services') pass a strict server-side dry run.
    docs = render(
        helm, demo_chart, namespace, "specialOffers.grpc.enabled=true", values_file=values_file
    )
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    special_offers = next(p for p in policies if p["metadata"]["name"] == "special-offers")
    assert {"ports": [{"port": 5552, "protocol": "TCP"}], "to": [BROKER_PEER]} in (
        special_offers["spec"]["egress"]
    )
    objects = tmp_path / "policies.yaml"
    objects.write_text(yaml.safe_dump_all(policies))
    created = run([kubectl, f"--kubeconfig={kubeconfig}", f"--namespace={namespace}", "create",
                   "--dry-run=server", "--validate=strict", "-f", objects])  # fmt: skip
    assert created.count("created (server dry run)") == len(policies), created


SAT = "feedAuth.mode=ServiceAccountToken"


def test_service_chart_names_the_feed_readers_when_asked(
    helm: Path, demo_chart: Path, tmp_path: Path
) -> None:
    """feedAuth.readers: FEEDLINE_FEED_READERS, comma-joined, only when non-empty; readers
    without feedAuth.mode ServiceAccountToken fail the render naming both values; the
    schema refuses what is not a reader (READER_PATTERN; tests/unit/test_chassis.py keeps
    the two equal). Through the demo: only the instance given readers gets them."""

    def readers_env(*values: str) -> list[str]:
        docs = render(helm, SERVICE_CHART, "shop", "feedlineService=special-offers", *values)
        (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        return [e["value"] for e in container["env"] if e["name"] == "FEEDLINE_FEED_READERS"]

    assert readers_env() == []
    assert readers_env(SAT) == []
    assert readers_env(SAT, "feedAuth.readers={system:serviceaccount:shop:loyalty}") == [
        "system:serviceaccount:shop:loyalty"
    ]
    assert readers_env(
        SAT,
        "feedAuth.readers={system:serviceaccount:shop:loyalty,system:serviceaccounts:billing}",
    ) == ["system:serviceaccount:shop:loyalty,system:serviceaccounts:billing"]

    def refused(*values: str) -> str:
        argv: list[str | Path] = [
            helm, "template", "x", SERVICE_CHART, "--kube-version", KUBE_VERSION,
            "--set", "feedlineService=special-offers",
        ]  # fmt: skip
        for value in values:
            argv += ["--set", value]
        return run(argv, ok=False)

    one = "feedAuth.readers={system:serviceaccount:shop:loyalty}"
    for mode, extra in (("None", ()), ("Token", ("feedAuth.tokenSecret.name=feed-token",))):
        failed = refused(f"feedAuth.mode={mode}", *extra, one)
        assert (
            f"feedAuth.readers needs feedAuth.mode ServiceAccountToken (feedAuth.mode is {mode})"
        ) in failed
    for entry in (
        "loyalty",
        "system:serviceaccount:shop",  # a ServiceAccount needs its namespace and name
        "system:serviceaccounts:shop:loyalty",  # a namespace's group has no name
        "system:serviceaccount:Shop:loyalty",
        "system:masters",
        "xsystem:serviceaccounts:shop",
    ):
        assert "/feedAuth/readers/0" in refused(SAT, f"feedAuth.readers={{{entry}}}"), entry
    twice = refused(
        SAT, "feedAuth.readers={system:serviceaccounts:shop,system:serviceaccounts:shop}"
    )
    assert "/feedAuth/readers" in twice

    # The demo: product-catalog switched to ServiceAccountToken, with its readers.
    docs = render(
        helm, demo_chart, "shop",
        f"productCatalog.{SAT}",
        "productCatalog.feedAuth.readers={system:serviceaccount:shop:default}",
        "productCatalog.networkPolicy.apiServer[0].cidr=192.0.2.10/32",
        "productCatalog.networkPolicy.apiServer[0].port=6443",
    )  # fmt: skip
    found = {
        doc["metadata"]["name"]: [
            e.get("value")
            for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]
            if e["name"] == "FEEDLINE_FEED_READERS"
        ]
        for doc in docs
        if doc["kind"] == "Deployment"
    }
    assert found == {
        "special-offers": [],
        "loyalty-program": [],
        "shopping-cart": [],
        "product-catalog": ["system:serviceaccount:shop:default"],
    }

    env = helm_env(tmp_path / ".helm")
    run([helm, "lint", "--strict", SERVICE_CHART, "--set", "feedlineService=special-offers",
         "--set", SAT, "--set", one], env=env)  # fmt: skip


def test_service_chart_with_readers_is_accepted(
    namespace: str, helm: Path, kubectl: Path, kubeconfig: Path, tmp_path: Path
) -> None:
    """With feedAuth.readers, every object passes a strict server-side dry run, and the
    install's notes list the readers (and, without them, say that anyone authenticated reads)."""
    values = ("feedlineService=special-offers", SAT,
              f"feedAuth.readers={{system:serviceaccount:{namespace}:loyalty}}")  # fmt: skip
    docs = render(helm, SERVICE_CHART, namespace, *values)
    objects = tmp_path / "service.yaml"
    objects.write_text(yaml.safe_dump_all(docs))
    created = run([kubectl, f"--kubeconfig={kubeconfig}", f"--namespace={namespace}", "create",
                   "--dry-run=server", "--validate=strict", "-f", objects])  # fmt: skip
    assert created.count("created (server dry run)") == len(docs), created

    def notes(*values: str) -> str:
        argv: list[str | Path] = [
            helm, "install", "special-offers", SERVICE_CHART, f"--kubeconfig={kubeconfig}",
            f"--namespace={namespace}", "--dry-run=server",
        ]  # fmt: skip
        for value in values:
            argv += ["--set", value]
        return run(argv, env=helm_env(tmp_path / ".helm"))

    named = notes(*values)
    assert "only these may read it (feedAuth.readers; others get 403):" in named
    assert f"  system:serviceaccount:{namespace}:loyalty\n" in named
    anyone = notes(*values[:2])
    assert "Every ServiceAccount the API server authenticates may read it" in anyone


def test_service_chart_serves_a_service_of_your_own(helm: Path, tmp_path: Path) -> None:
    """A `feedline new-service` service: its generated values render a pod that serves its
    import path, with its own name on every object; an unknown name alone is refused."""
    created = subprocess.run(
        [str(Path(sys.executable).with_name("feedline")), "new-service", "gift-cards",
         "--directory", str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    values = tmp_path / "gift-cards" / "deploy" / "values.yaml"
    docs = render(helm, SERVICE_CHART, "shop", values_file=values)
    [deployment] = [doc for doc in docs if doc["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "gift_cards.service:definition"
    assert deployment["metadata"]["labels"]["feedline.dev/service"] == "gift-cards"
    assert all("gift-cards" in doc["metadata"]["name"] for doc in docs)
    run([helm, "lint", "--strict", SERVICE_CHART, "-f", values])

    error = run(
        [helm, "template", "x", SERVICE_CHART, "--kube-version", KUBE_VERSION,
         "--set", "feedlineService=gift-cards"],
        ok=False,
    )  # fmt: skip
    assert 'feedlineService "gift-cards" is not an example service' in error
    assert "set serviceApp to its ServiceDefinition's import path" in error
    error = run(
        [helm, "template", "x", SERVICE_CHART, "--kube-version", KUBE_VERSION,
         "--set", "feedlineService=gift-cards", "--set", "serviceApp=gift_cards.service"],
        ok=False,
    )  # fmt: skip
    assert "/serviceApp" in error


def test_the_chart_knows_the_same_example_services_as_feedline_serve() -> None:
    helpers = (SERVICE_CHART / "templates" / "_helpers.tpl").read_text()
    listed = re.search(r'define "feedline-service.examples" -}}\n(.*)\n', helpers)
    assert listed is not None
    assert listed.group(1).split() == list(SERVICES)
