"""Names, addresses and paths of the one node a machine runs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

NODE_NAME = "feedline-node"
# The node (and kube-apiserver) address. No `dummy` link type in this kernel:
# an empty bridge holds it.
NODE_IP = "172.31.255.1"
HOST_LINK = "feedline0"
# The CNI bridge plugin's bridge and network name (iptables comments carry it).
POD_BRIDGE = "feedline-cni0"
CNI_NETWORK = "feedline"
# Not podman's 10.88.0.0/16: both may run on one machine.
POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
DNS_SERVICE_IP = "10.96.0.10"
APISERVER_PORT = 6443
# Fixed ports the node's components listen on (checked free before a start).
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
KUBE_PROXY_METRICS_PORT = 10249
KUBE_PROXY_HEALTHZ_PORT = 10256
SCHEDULER_PORT = 10259
REGISTRY_HOST = "127.0.0.1"
REGISTRY_PORT = 5000
REGISTRY = f"{REGISTRY_HOST}:{REGISTRY_PORT}"
# Images made here from local files, never pulled.
PAUSE_IMAGE = "feedline.local/pause:1"

# Runtime state (sockets, runc state, netns bind mounts): a tmpfs.
RUN_DIR = Path("/run/feedline-node")
# Held by whoever runs the node (`python -m tests.support.node serve` or a
# pytest session): outside RUN_DIR so a teardown's rm -rf cannot drop it.
LOCK_PATH = Path("/run/feedline-node.lock")
DATA_DIR_ENV = "FEEDLINE_NODE_DIR"


@dataclass(frozen=True)
class Layout:
    """Where one node keeps its files; everything but `RUN_DIR` under `data`."""

    data: Path
    run: Path = RUN_DIR

    @classmethod
    def default(cls) -> Layout:
        return cls(Path(os.environ.get(DATA_DIR_ENV, "/var/lib/feedline-node")))

    # The control plane (tests/support/kube) keeps its PKI, etcd and logs here.
    @property
    def controlplane(self) -> Path:
        return self.data / "controlplane"

    @property
    def pki(self) -> Path:
        return self.controlplane / "pki"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig users and tests read (certs embedded)."""
        return self.data / "kubeconfig"

    @property
    def conf(self) -> Path:
        return self.data / "conf"

    @property
    def logs(self) -> Path:
        return self.data / "logs"

    @property
    def containerd_root(self) -> Path:
        return self.data / "containerd"

    @property
    def containerd_state(self) -> Path:
        return self.run / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        return self.run / "runc"

    @property
    def kubelet_root(self) -> Path:
        return self.data / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.data / "pod-logs"

    @property
    def cni_conf(self) -> Path:
        return self.data / "cni" / "net.d"

    @property
    def cni_ipam(self) -> Path:
        return self.data / "cni" / "ipam"

    @property
    def registry_storage(self) -> Path:
        return self.data / "registry"

    @property
    def state_file(self) -> Path:
        """JSON: pids of the components, the owner, readiness (see node.py)."""
        return self.data / "state.json"

    def state_dirs(self) -> list[Path]:
        """What a teardown removes (the PKI and logs stay for a post-mortem)."""
        return [
            self.run,
            self.containerd_root,
            self.kubelet_root,
            self.pod_logs,
            self.cni_conf.parent,
            self.registry_storage,
            self.controlplane / "etcd",
        ]
