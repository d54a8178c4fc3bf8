"""Start and stop the one node a machine runs (see __init__.py), under a file lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml

from feedline.dev.ports import port_in_use
from tests.support.kube.binaries import BUILD_SCRIPT, Binaries, find_binaries
from tests.support.kube.controlplane import (
    Component,
    ControlPlane,
    ControlPlaneError,
    ControlPlaneOptions,
    write_kubeconfig,
)
from tests.support.node import configs, host, images, layout
from tests.support.node.layout import Layout
from tests.support.wait import wait_for

NODE_BIN_ENV = "FEEDLINE_NODE_BIN"
HOW_TO_BUILD = "run `make node-binaries` (tools/controlplane/build.sh --node) to build them"
NODE_BINARIES = (
    "kubelet",
    "kube-scheduler",
    "kube-proxy",
    "kubectl",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "crictl",
    "coredns",
    "registry",
)
# Stop order: pods' clients first, the API server and etcd last.
STOP_ORDER = (
    "kubelet",
    "kube-proxy",
    "containerd",
    "kube-scheduler",
    "kube-controller-manager",
    "registry",
    "kube-apiserver",
    "etcd",
)


class NodeError(RuntimeError):
    """The node could not start, or is not there."""


@dataclass(frozen=True)
class NodeBinaries:
    directory: Path

    def __getitem__(self, name: str) -> Path:
        return self.directory / name


def find_node_binaries() -> NodeBinaries:
    override = os.environ.get(NODE_BIN_ENV)
    if override:
        directory = Path(override)
    else:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--node", "--check"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise NodeError(proc.stderr.strip() or f"node binaries are not built: {HOW_TO_BUILD}")
        directory = Path(proc.stdout.strip().splitlines()[-1])
    missing = [n for n in NODE_BINARIES if not os.access(directory / n, os.X_OK)]
    if missing:
        raise NodeError(f"missing {', '.join(missing)} in {directory}: {HOW_TO_BUILD}")
    return NodeBinaries(directory)


# --- state file ------------------------------------------------------------------


@dataclass
class NodeState:
    """What `down` needs when the process that started the node is gone."""

    owner: str = ""  # "serve" (make node-up) or "pytest"
    owner_pid: int = 0
    ready: bool = False
    pids: dict[str, int] = field(default_factory=dict)
    saved: dict[str, str] = field(default_factory=dict)
    node_bin: str = ""
    cp_bin: str = ""
    start_seconds: float = 0.0

    @classmethod
    def read(cls, lay: Layout) -> NodeState | None:
        try:
            data = json.loads(lay.state_file.read_text())
        except (OSError, ValueError):
            return None
        return cls(**data)

    def write(self, lay: Layout) -> None:
        lay.data.mkdir(parents=True, exist_ok=True)
        tmp = lay.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2))
        tmp.replace(lay.state_file)


class NodeLock:
    """One node per machine: an exclusive flock on LOCK_PATH while a node runs."""

    def __init__(self, path: Path = layout.LOCK_PATH) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True

    def acquire(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise NodeError(f"another node holds {self.path} for more than {timeout:.0f}s")
            time.sleep(1)

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


# --- the node ----------------------------------------------------------------------


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310 - our own loopback URL
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError, ssl.SSLError):
        return False


class Node:
    """A one-node cluster. `start()` then `stop()`; the caller holds the NodeLock."""

    def __init__(self, lay: Layout | None = None, *, owner: str = "pytest") -> None:
        self.layout = lay or Layout.default()
        self.cp_binaries: Binaries = find_binaries()
        self.binaries = find_node_binaries()
        self.state = NodeState(
            owner=owner,
            owner_pid=os.getpid(),
            node_bin=str(self.binaries.directory),
            cp_bin=str(self.cp_binaries.etcd.parent),
        )
        self.components: dict[str, Component] = {}
        self.plane: ControlPlane | None = None
        self.coredns_image = ""

    @property
    def kubeconfig(self) -> Path:
        return self.layout.kubeconfig

    # --- lifecycle ---------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> None:
        started = time.monotonic()
        try:
            self._preflight()
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        self.state.ready = True
        self.state.start_seconds = round(time.monotonic() - started, 1)
        self.state.write(self.layout)

    def stop(self) -> list[str]:
        """Stop everything and undo the host changes; what was left behind (empty)."""
        pids = list(self.state.pids.values())
        tables_before = self.state.saved.get("nft-tables:")
        teardown(self.layout, self.state, self.binaries)
        for component in self.components.values():
            component.stop(timeout=1)
        if self.plane is not None:
            self.plane.stop()
        return host.leftovers(self.layout, pids, tables_before)

    # --- steps ---------------------------------------------------------------------

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise NodeError("a real node needs root (iptables, mounts, cgroups, links)")
        needed = [configs.RUNC, configs.CNI_BIN_DIR / "bridge", configs.CNI_BIN_DIR / "host-local"]
        missing = [str(p) for p in needed if not p.exists()]
        missing += [t for t in ("iptables", "ip", "gcc") if shutil.which(t) is None]
        if missing:
            raise NodeError(
                f"missing {', '.join(missing)}: apt-get install -y runc "
                "containernetworking-plugins iptables iproute2 gcc libc6-dev"
            )
        stale = NodeState.read(self.layout)
        if stale is not None and (stale.pids or stale.saved):
            # A node that was not stopped (killed runner): undo it first.
            teardown(self.layout, stale, self.binaries)
        busy = [
            f"{addr}:{port}"
            for addr, port in (
                ("127.0.0.1", layout.REGISTRY_PORT),
                ("127.0.0.1", layout.KUBELET_HEALTHZ_PORT),
                ("127.0.0.1", layout.KUBE_PROXY_METRICS_PORT),
                ("127.0.0.1", layout.KUBE_PROXY_HEALTHZ_PORT),
                ("127.0.0.1", layout.SCHEDULER_PORT),
            )
            if port_in_use(addr, port)
        ]
        if busy:
            raise NodeError(f"ports in use, needed by the node: {', '.join(busy)}")

    def _launch(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        component = Component(
            name, argv, self.layout.logs / f"{name}.log", new_session=True, env=env
        )
        self.components[name] = component
        component.start()
        assert component.process is not None
        self.state.pids[name] = component.process.pid
        self.state.write(self.layout)

    def _wait(
        self, what: str, probe: Callable[[], object], timeout: float, names: tuple[str, ...] = ()
    ) -> None:
        def check() -> bool:
            for name in names:
                self.components[name].check_alive()
            return bool(probe())

        try:
            wait_for(check, timeout=timeout, interval=0.1, what=what)
        except TimeoutError as err:
            tails = "\n".join(self.components[n].tail() for n in names)
            raise NodeError(f"{err}\n{tails}") from err

    def _start(self, timeout: float) -> None:
        lay, nb = self.layout, self.binaries
        self.state.saved = host.prepare(lay)
        self.state.write(lay)
        plane = ControlPlane(
            self.cp_binaries,
            lay.controlplane,
            ControlPlaneOptions(
                address=layout.NODE_IP,
                apiserver_port=layout.APISERVER_PORT,
                service_cluster_ip_range=layout.SERVICE_CIDR,
                controllers=("*",),
                endpoint_reconciler=True,
                extra_sans=(
                    layout.NODE_IP,
                    layout.KUBERNETES_SERVICE_IP,
                    "kubernetes.default",
                    "kubernetes.default.svc.cluster.local",
                ),
                extra_apiserver_args=(
                    f"--kubelet-client-certificate={lay.pki / 'apiserver-kubelet-client.crt'}",
                    f"--kubelet-client-key={lay.pki / 'apiserver-kubelet-client.key'}",
                    "--kubelet-preferred-address-types=InternalIP",
                ),
                # Node Ready ~6 s instead of ~9.5 s (the notes' measurement).
                extra_controller_manager_args=("--kube-api-qps=200", "--kube-api-burst=400"),
            ),
        )
        self.plane = plane
        lay.controlplane.mkdir(parents=True, exist_ok=True)
        plane.write_pki()
        self._write_node_pki(plane)
        paths = configs.write_all(lay)

        # containerd and the registry do not need the control plane: start them first.
        path_env = {**os.environ, "PATH": f"{nb.directory}:{os.environ.get('PATH', '')}"}
        self._launch(
            "registry",
            [str(nb["registry"]), "serve", str(paths["registry"])],
            env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
        )
        self._launch(
            "containerd",
            [str(nb["containerd"]), "--config", str(paths["containerd"])],
            env=path_env,
        )
        try:
            plane.start(timeout=timeout)
        except ControlPlaneError as err:
            raise NodeError(str(err)) from err
        for component in plane.components:
            assert component.process is not None
            self.state.pids[component.name] = component.process.pid
        self.state.write(lay)
        shutil.copy(plane.kubeconfig, lay.kubeconfig)

        ctr = [str(nb["ctr"]), "--address", str(lay.containerd_socket)]
        self._wait(
            "containerd",
            lambda: (
                subprocess.run([*ctr, "version"], capture_output=True, check=False).returncode == 0
            ),
            timeout,
            ("containerd",),
        )
        images.ctr_import(nb["ctr"], lay.containerd_socket, images.pause_archive())
        self.coredns_image, coredns_tar = images.coredns_archive(nb["coredns"])
        images.ctr_import(nb["ctr"], lay.containerd_socket, coredns_tar)

        pki = lay.pki
        self._launch(
            "kube-scheduler",
            [
                str(nb["kube-scheduler"]),
                f"--kubeconfig={pki / 'scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={pki / 'scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={pki / 'scheduler.kubeconfig'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={layout.SCHEDULER_PORT}",
            ],
        )
        self._launch(
            "kubelet",
            [
                str(nb["kubelet"]),
                f"--config={paths['kubelet']}",
                f"--kubeconfig={pki / 'kubelet.kubeconfig'}",
                f"--root-dir={lay.kubelet_root}",
                f"--hostname-override={layout.NODE_NAME}",
                f"--node-ip={layout.NODE_IP}",
                "--v=1",
            ],
        )
        self._launch("kube-proxy", [str(nb["kube-proxy"]), f"--config={paths['kube-proxy']}"])
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._wait(
            "kube-scheduler",
            lambda: _http_ok(f"https://127.0.0.1:{layout.SCHEDULER_PORT}/healthz", insecure),
            timeout,
            ("kube-scheduler",),
        )
        self._wait(
            "kube-proxy",
            lambda: _http_ok(f"http://127.0.0.1:{layout.KUBE_PROXY_HEALTHZ_PORT}/healthz"),
            timeout,
            ("kube-proxy",),
        )
        self._wait("node Ready", self._node_ready, timeout, ("kubelet", "containerd"))
        self._start_coredns(timeout)

    def _write_node_pki(self, plane: ControlPlane) -> None:
        ca, pki = plane.certificate_authority, self.layout.pki
        ca.issue(
            pki,
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            organization="system:masters",
        )
        ca.issue(
            pki,
            "kubelet-server",
            layout.NODE_NAME,
            server=True,
            extra_sans=(layout.NODE_IP, layout.NODE_NAME),
        )
        clients = {
            "kubelet": (f"system:node:{layout.NODE_NAME}", "system:nodes"),
            "scheduler": ("system:kube-scheduler", None),
            "kube-proxy": ("system:kube-proxy", None),
        }
        for stem, (user, organization) in clients.items():
            pair = ca.issue(pki, stem, user, organization=organization)
            write_kubeconfig(pki / f"{stem}.kubeconfig", plane.server, ca.cert_pem, pair, user=user)

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        return kubectl(self.binaries, self.kubeconfig, *args, check=check, timeout=timeout)

    def _node_ready(self) -> bool:
        out = self.kubectl(
            "get",
            "node",
            layout.NODE_NAME,
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
            check=False,
        )
        return out.strip() == "True"

    def _start_coredns(self, timeout: float) -> None:
        manifests = configs.coredns_manifests(self.coredns_image)
        target = self.layout.conf / "coredns.yaml"
        target.write_text(yaml.safe_dump_all(manifests, sort_keys=False))
        self.kubectl("apply", "-f", str(target))
        self._wait(
            "CoreDNS ready",
            lambda: (
                self.kubectl(
                    "-n",
                    "kube-system",
                    "get",
                    "deploy",
                    "coredns",
                    "-o",
                    "jsonpath={.status.readyReplicas}",
                    check=False,
                ).strip()
                == "1"
            ),
            timeout,
            ("kubelet",),
        )


def kubectl(
    binaries: NodeBinaries, kubeconfig: Path, *args: str, check: bool = True, timeout: float = 60
) -> str:
    proc = subprocess.run(
        [str(binaries["kubectl"]), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise NodeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def teardown(lay: Layout, state: NodeState, binaries: NodeBinaries | None) -> None:
    """Stop a node's processes (by the pids it recorded) and undo its host
    changes. Idempotent: also the fallback when its owner died."""
    # Only processes still running one of our binaries: a pid recorded by a
    # node that died long ago may belong to something else by now.
    ours = tuple(d for d in (state.node_bin, state.cp_bin) if d)
    pids = {n: p for n, p in state.pids.items() if host.runs_binary_from(p, ours)}
    crictl = binaries["crictl"] if binaries else Path(state.node_bin) / "crictl"
    kube_proxy = binaries["kube-proxy"] if binaries else Path(state.node_bin) / "kube-proxy"
    lay.logs.mkdir(parents=True, exist_ok=True)
    with (lay.logs / "teardown.log").open("a") as log:
        began = time.monotonic()

        def step(what: str) -> None:
            log.write(f"[{time.monotonic() - began:6.2f}s] {what}\n")
            log.flush()

        step(f"teardown of {sorted(pids)}")
        for name in STOP_ORDER:
            pid = pids.get(name)
            if name == "containerd" and pid and host.pid_alive(pid) and crictl.exists():
                # Every sandbox through CRI, so CNI DEL runs (veth, IPAM, CNI-* rules).
                _remove_pods(crictl, lay)
                step("pods removed")
            if pid:
                host.stop_pid(pid)
                step(f"stopped {name}")
            if name == "kube-proxy" and kube_proxy.exists():
                subprocess.run(
                    [str(kube_proxy), "--cleanup"], capture_output=True, check=False, timeout=60
                )
                step("kube-proxy --cleanup")
            if name == "containerd":
                for shim in host.shim_pids(lay):
                    host.stop_pid(shim, timeout=2)
        for pid in pids.values():
            host.stop_pid(pid, timeout=2)
        host.unmount_all(lay)
        step("unmounted")
        host.remove_cgroups()
        step("cgroups removed")
        host.remove_links()
        host.clean_iptables()
        step("links and iptables rules removed")
        host.restore(state.saved)
        host.remove_state(lay)
        step("host restored")
    state.saved = {}
    state.pids = {}
    state.ready = False
    state.write(lay)


def _remove_pods(crictl: Path, lay: Layout) -> None:
    base = [
        str(crictl),
        "--runtime-endpoint",
        f"unix://{lay.containerd_socket}",
        "--timeout",
        "30s",
    ]
    pods = subprocess.run([*base, "pods", "-q"], capture_output=True, text=True, check=False)
    ids = pods.stdout.split()
    if ids:
        subprocess.run([*base, "stopp", *ids], capture_output=True, check=False, timeout=120)
        subprocess.run([*base, "rmp", "-f", *ids], capture_output=True, check=False, timeout=120)


# --- for the e2e tier -------------------------------------------------------------


@dataclass(frozen=True)
class RunningNode:
    kubeconfig: Path
    binaries: NodeBinaries
    node: Node | None  # None: attached to a node that `make node-up` runs


@contextlib.contextmanager
def node_for_tests(lock_timeout: float = 1800) -> Iterator[RunningNode]:
    """The machine's node: the one `make node-up` runs, else our own for the session."""
    lay = Layout.default()
    lock = NodeLock()
    if not lock.try_acquire():
        state = NodeState.read(lay)
        if state and state.ready and state.owner == "serve" and host.pid_alive(state.owner_pid):
            yield RunningNode(lay.kubeconfig, find_node_binaries(), None)
            return
        lock.acquire(lock_timeout)
    try:
        node = Node(lay, owner="pytest")
        node.start()
        try:
            yield RunningNode(node.kubeconfig, node.binaries, node)
        finally:
            left = node.stop()
            if left:
                raise NodeError("the node's teardown left:\n" + "\n".join(left))
    finally:
        lock.release()
