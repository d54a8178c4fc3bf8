"""The cluster the tests talk to: our own control plane, or an external one.

With FEEDLINE_TEST_KUBECONFIG set (e.g. a kind cluster's kubeconfig), nothing
is started and the same tests run against that cluster (its own kubelets and
scheduler may run the pods the tests create; the tests do not rely on it).
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from tests.support.kube import apis
from tests.support.kube.binaries import find_binaries
from tests.support.kube.controlplane import ControlPlane
from tests.support.wait import wait_for

EXTERNAL_KUBECONFIG_ENV = "FEEDLINE_TEST_KUBECONFIG"


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    control_plane: ControlPlane | None  # None: an external cluster

    @property
    def external(self) -> bool:
        return self.control_plane is None


@contextlib.contextmanager
def open_cluster(workdir: Path) -> Iterator[Cluster]:
    external = os.environ.get(EXTERNAL_KUBECONFIG_ENV)
    if external:
        yield Cluster(kubeconfig=Path(external), control_plane=None)
        return
    binaries = find_binaries()  # fails (with how to build) before starting anything
    with ControlPlane(binaries, workdir) as plane:
        yield Cluster(kubeconfig=plane.kubeconfig, control_plane=plane)


def api_client(kubeconfig: Path) -> client.ApiClient:
    return apis.new_api_client(kubeconfig)


def namespace_name(hint: str) -> str:
    """A DNS-1123 label from a test name, unique per call."""
    base = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")[:40].strip("-") or "t"
    return f"{base}-{uuid.uuid4().hex[:6]}"


def create_namespace(api: client.ApiClient, name: str, labels: dict[str, str] | None = None) -> str:
    core = apis.core(api)
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels or {}))
    )

    # The ServiceAccount admission plugin rejects pods until the serviceaccount
    # controller has created `default`; wait so tests don't race it.
    def default_sa() -> bool:
        return any(
            sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items
        )

    wait_for(default_sa, timeout=30, what=f"ServiceAccount {name}/default")
    return name


def delete_namespace(api: client.ApiClient, name: str) -> None:
    # Not waited for: the namespace controller finishes in the background.
    with contextlib.suppress(client.ApiException):
        apis.core(api).delete_namespace(name, propagation_policy="Background")
