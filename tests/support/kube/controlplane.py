"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and
kube-controller-manager, started from the binaries `make controlplane` builds.

No kubelet and no scheduler run: pods are created and admitted, never run (the
e2e tier runs them on a real node).
`ControlPlaneOptions` adapt it for a real node beside it (tests/support/node):
another address, a fixed port, every controller, a real `kubernetes` endpoint.
"""

from __future__ import annotations

import base64
import contextlib
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml

from tests.support.kube.binaries import Binaries
from tests.support.kube.pki import CertificateAuthority, CertPair, write_service_account_keys
from tests.support.ports import free_port

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"

# The controllers the tests rely on. serviceaccount-controller creates the
# `default` ServiceAccount in each namespace, which the (default-on)
# ServiceAccount admission plugin requires before it admits a pod; with
# --use-service-account-credentials each controller also runs as its own
# ServiceAccount under the bootstrap RBAC roles, as in a real cluster.
CONTROLLERS = (
    "cronjob-controller",
    "job-controller",
    "ttl-after-finished-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    # Fills the aggregated ClusterRoles admin/edit/view that RoleBindings use.
    "clusterrole-aggregation-controller",
    "deployment-controller",
    "replicaset-controller",
)


@dataclass(frozen=True)
class ControlPlaneOptions:
    """What differs between the loopback control plane and a real node's."""

    # kube-apiserver's bind and advertise address.
    address: str = "127.0.0.1"
    # None: a free port.
    apiserver_port: int | None = None
    service_cluster_ip_range: str = SERVICE_CLUSTER_IP_RANGE
    controllers: tuple[str, ...] = CONTROLLERS
    # False: no endpoint for the `kubernetes` Service (127.0.0.1 cannot be one).
    endpoint_reconciler: bool = False
    # More SANs on the apiserver's serving certificate (IPs or DNS names).
    extra_sans: tuple[str, ...] = ()
    extra_apiserver_args: tuple[str, ...] = ()
    extra_controller_manager_args: tuple[str, ...] = ()
    # False: etcd runs with --unsafe-no-fsync=true (test data is thrown away,
    # writes are much faster); True: etcd's default, its WAL fsynced on every
    # commit as in production (e.g. for a benchmark's figures).
    etcd_fsync: bool = False


class ControlPlaneError(RuntimeError):
    """A component did not start or did not become ready."""


@dataclass
class Component:
    """One child process whose output goes to a log file."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    # True: its own session, so a Ctrl-C meant for pytest does not reach it
    # and the fixture's teardown can stop it in order.
    new_session: bool = False
    env: dict[str, str] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=self.new_session,
            env=self.env,
        )

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ControlPlaneError(
                f"{self.name} exited with {self.process.returncode}\n{self.tail()}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"--- {self.name}: no log ---"
        last = "\n".join(text.splitlines()[-lines:])
        return f"--- {self.name} ({self.log_path}) last {lines} lines ---\n{last}"


def write_kubeconfig(
    path: Path, server: str, ca_pem: bytes, client: CertPair, user: str = "admin"
) -> Path:
    """A self-contained kubeconfig (certs embedded, so it can be copied around)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "feedline-test",
                "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert.read_bytes()),
                    "client-key-data": b64(client.key.read_bytes()),
                },
            }
        ],
        "contexts": [
            {"name": "feedline-test", "context": {"cluster": "feedline-test", "user": user}}
        ],
        "current-context": "feedline-test",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class ControlPlane:
    """Start with `start()` (or use as a context manager), stop with `stop()`."""

    def __init__(
        self, binaries: Binaries, workdir: Path, options: ControlPlaneOptions | None = None
    ) -> None:
        self.binaries = binaries
        self.workdir = workdir
        self.options = options or ControlPlaneOptions()
        self.pki_dir = workdir / "pki"
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.apiserver_port = self.options.apiserver_port or free_port()
        self.server = f"https://{self.options.address}:{self.apiserver_port}"
        self.components: list[Component] = []
        self.kubeconfig = workdir / "admin.kubeconfig"
        self._ca: CertificateAuthority | None = None
        self._admin: CertPair | None = None

    # --- lifecycle -------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 90.0) -> None:
        try:
            self.write_pki()
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
            self._start_controller_manager(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        # Reverse order: clients before the servers they talk to.
        for component in reversed(self.components):
            component.stop()

    def kill_apiserver(self) -> None:
        """SIGKILL kube-apiserver (a crash: no graceful shutdown); etcd keeps the data."""
        apiserver = self._component("kube-apiserver")
        if apiserver.process is not None:
            apiserver.process.kill()
            apiserver.process.wait()
        apiserver.stop()  # closes its log

    def start_apiserver(self, timeout: float = 90.0) -> None:
        """Start the killed kube-apiserver again, same port, certificates and etcd."""
        apiserver = self._component("kube-apiserver")
        apiserver.start()
        self._wait(apiserver, f"{self.server}/readyz", timeout, tls=True)

    def _component(self, name: str) -> Component:
        for component in self.components:
            if component.name == name:
                return component
        raise ControlPlaneError(f"no {name} in this control plane")

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(c.tail(lines) for c in self.components)

    @property
    def certificate_authority(self) -> CertificateAuthority:
        """The CA that signed everything (to issue more certificates)."""
        if self._ca is None:
            raise ControlPlaneError("the PKI is written by start()")
        return self._ca

    # --- setup -----------------------------------------------------------

    def _write_pki(self) -> None:
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority()
        self._ca = ca
        ca.write_ca(self.pki_dir / "ca.crt")
        ca.issue(
            self.pki_dir,
            "apiserver",
            "kube-apiserver",
            server=True,
            extra_sans=self.options.extra_sans,
        )
        self._admin = ca.issue(
            self.pki_dir, "admin", "feedline-test-admin", organization="system:masters"
        )
        # The bootstrap RBAC policy binds this user name to its ClusterRole.
        kcm = ca.issue(self.pki_dir, "controller-manager", "system:kube-controller-manager")
        write_service_account_keys(self.pki_dir)
        write_kubeconfig(self.kubeconfig, self.server, ca.cert_pem, self._admin)
        write_kubeconfig(
            self.workdir / "controller-manager.kubeconfig",
            self.server,
            ca.cert_pem,
            kcm,
            user="system:kube-controller-manager",
        )

    def write_pki(self) -> None:
        """Write the PKI now (before `start`, which then keeps it), e.g. so a
        caller can issue its own certificates from `certificate_authority`."""
        if self._ca is None:
            self._write_pki()

    def _launch(self, name: str, argv: list[str]) -> Component:
        component = Component(name, argv, self.workdir / f"{name}.log")
        self.components.append(component)
        component.start()
        return component

    def _start_etcd(self, timeout: float) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        etcd = self._launch(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=feedline-test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=feedline-test={peer}",
                # Test data is thrown away: skipping fsync makes writes much faster.
                *([] if self.options.etcd_fsync else ["--unsafe-no-fsync=true"]),
                "--log-level=warn",
            ],
        )
        self._wait(etcd, f"{client}/health", timeout, tls=False)

    def _start_apiserver(self, timeout: float) -> None:
        pki = self.pki_dir
        options = self.options
        apiserver = self._launch(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                f"--bind-address={options.address}",
                f"--advertise-address={options.address}",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-cluster-ip-range={options.service_cluster_ip_range}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--authorization-mode=Node,RBAC",
                # PodSecurity and ServiceAccount admission are on by default;
                # NodeRestriction is what real clusters add for kubelets.
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                # No real endpoint for the `kubernetes` Service: nothing in the
                # tests dials it, and 127.0.0.1 is not a valid endpoint IP.
                *([] if options.endpoint_reconciler else ["--endpoint-reconciler-type=none"]),
                "--profiling=false",
                *options.extra_apiserver_args,
            ],
        )
        self._wait(apiserver, f"{self.server}/readyz", timeout, tls=True)

    def _start_controller_manager(self, timeout: float) -> None:
        pki = self.pki_dir
        kcm = self._launch(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                f"--kubeconfig={self.workdir / 'controller-manager.kubeconfig'}",
                f"--controllers={','.join(self.options.controllers)}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                # No metrics/health endpoint needed; readiness is checked below.
                "--secure-port=0",
                *self.options.extra_controller_manager_args,
            ],
        )
        # Ready once the serviceaccount controller made `default` in `default`.
        self._wait(
            kcm,
            f"{self.server}/api/v1/namespaces/default/serviceaccounts/default",
            timeout,
            tls=True,
        )

    # --- readiness -------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        assert self._admin is not None
        context = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        context.load_cert_chain(str(self._admin.cert), str(self._admin.key))
        return context

    def _wait(self, component: Component, url: str, timeout: float, *, tls: bool) -> None:
        context = self.ssl_context() if tls else None
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            component.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=5, context=context) as response:  # noqa: S310 - our own loopback URL
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}: {err.read()[:500]!r}"
            except (OSError, ssl.SSLError) as err:
                last = repr(err)
            time.sleep(0.25)
        raise ControlPlaneError(
            f"{component.name} not ready after {timeout:.0f}s at {url}: {last}\n{component.tail()}"
        )


@contextlib.contextmanager
def running_control_plane(binaries: Binaries, workdir: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(binaries, workdir)
    with plane:
        yield plane
