"""Helpers for the operator's tests: the CRD, golden manifests, sample subscriptions."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "feedline-operator"
CRD_PATH = CHART / "crds" / "eventsubscriptions.feedline.dev.yaml"
DATA = REPO_ROOT / "tests" / "data" / "operator"
UPDATE_GOLDEN_ENV = "FEEDLINE_UPDATE_GOLDEN"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def crd() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(CRD_PATH)
    return loaded


def crd_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def sample(name: str) -> dict[str, Any]:
    """A sample EventSubscription from tests/data/operator (a fresh copy)."""
    loaded: dict[str, Any] = load_yaml(DATA / f"{name}.yaml")
    return copy.deepcopy(loaded)


def assert_golden(name: str, manifest: Any) -> None:
    """Compare with tests/data/operator/NAME.golden.yaml; FEEDLINE_UPDATE_GOLDEN=1 rewrites it."""
    path = DATA / f"{name}.golden.yaml"
    rendered = yaml.safe_dump(manifest, sort_keys=True, default_flow_style=False, width=100)
    if os.environ.get(UPDATE_GOLDEN_ENV) == "1":
        path.write_text(f"# Golden manifest: {UPDATE_GOLDEN_ENV}=1 rewrites it.\n{rendered}")
    assert path.exists(), f"{path} is missing: run with {UPDATE_GOLDEN_ENV}=1 to write it"
    assert load_yaml(path) == yaml.safe_load(rendered), f"{name} differs from {path}"


# --- cluster helpers -------------------------------------------------------------

GROUP, VERSION, PLURAL = "feedline.dev", "v1alpha1", "eventsubscriptions"
OPERATOR_NAMESPACE = "feedline-system"
OPERATOR_RELEASE = "feedline"


def install_crd(api: Any) -> None:
    """Create or update the CRD from the chart, and wait until it is served."""
    from tests.support.kube import apis
    from tests.support.wait import wait_for

    extensions = apis.apiextensions(api)
    body = crd()
    name = body["metadata"]["name"]
    try:
        extensions.create_custom_resource_definition(body)
    except apis.ApiException as err:
        if err.status != 409:
            raise
        live = extensions.read_custom_resource_definition(name)
        body["metadata"]["resourceVersion"] = live.metadata.resource_version
        extensions.replace_custom_resource_definition(name, body)

    def established() -> bool:
        found = extensions.read_custom_resource_definition(name)
        conditions = found.status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(established, timeout=30, what=f"CRD {name} Established")


def render_chart(helm: Path, *values: str) -> list[dict[str, Any]]:
    """`helm template` of the operator chart (what `helm install` would create)."""
    import subprocess

    argv = [
        str(helm), "template", OPERATOR_RELEASE, str(CHART),
        "--namespace", OPERATOR_NAMESPACE, "--kube-version", "v1.37.2",
    ]  # fmt: skip
    for value in values:
        argv += ["--set", value]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def apply_chart_rbac(api: Any, helm: Path) -> str:
    """Create the chart's ServiceAccount, ClusterRole and binding; return the SA name."""
    from kubernetes import utils

    from tests.support.kube import apis

    core = apis.core(api)
    try:
        core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
    except apis.ApiException as err:
        if err.status != 409:
            raise
    kinds = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    docs = [doc for doc in render_chart(helm) if doc["kind"] in kinds]
    assert {doc["kind"] for doc in docs} == kinds
    for doc in docs:
        try:
            utils.create_from_dict(api, doc, namespace=OPERATOR_NAMESPACE)  # type: ignore[no-untyped-call]
        except utils.FailToCreateError as err:
            if any(e.status != 409 for e in err.api_exceptions):
                raise
    return str(next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"])


def service_account_kubeconfig(
    api: Any, admin_kubeconfig: Path, service_account: str, path: Path
) -> Path:
    """A kubeconfig that authenticates with a TokenRequest token of the ServiceAccount only."""
    from tests.support.kube import apis

    token = apis.core(api).create_namespaced_service_account_token(
        service_account,
        OPERATOR_NAMESPACE,
        {"spec": {"expirationSeconds": 4 * 3600}},
    )
    admin = load_yaml(admin_kubeconfig)
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": service_account, "user": {"token": token.status.token}}],
        "contexts": [
            {"name": "operator", "context": {"cluster": cluster["name"], "user": service_account}}
        ],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class OperatorThread:
    """The operator in-process: kopf's loop in a thread, stopped through its stop flag."""

    def __init__(self, config: Any) -> None:
        import threading

        self.config = config
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feedline-operator", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        import asyncio

        from feedline_operator.runtime import run_operator

        try:
            asyncio.run(run_operator(self.config, stop_flag=self._stop, ready_flag=self._ready))
        except BaseException as error:  # reported by stop() and the fixture
            self.error = error

    def start(self, timeout: float = 30) -> OperatorThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"operator not ready after {timeout}s (error: {self.error!r})")
        return self

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("operator thread did not stop")

    def __enter__(self) -> OperatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def subscription(name: str, **spec: Any) -> dict[str, Any]:
    """A minimal valid EventSubscription; keyword arguments replace spec fields."""
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EventSubscription",
        "metadata": {"name": name},
        "spec": {
            "feed": {"url": "http://special-offers.example/events"},
            "schedule": "0 0 1 1 *",
            "readModel": {
                "databaseSecretRef": {"name": "read-model", "key": "dsn"},
                "projection": "feedline.services.loyalty_program.projection:project_special_offers",
            },
        },
    }
    body["spec"].update(spec)
    return body
