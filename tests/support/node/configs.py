"""The node's configuration files, written from `Layout` (no templates to render)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.support.node import layout
from tests.support.node.layout import Layout

RUNC = Path("/usr/sbin/runc")
CNI_BIN_DIR = Path("/usr/lib/cni")


def containerd_toml(lay: Layout, certs_d: Path) -> str:
    return f"""version = 3
root = "{lay.containerd_root}"
state = "{lay.containerd_state}"
[grpc]
  address = "{lay.containerd_socket}"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".registry]
    # certs.d/_default/hosts.toml sends every registry to the local one.
    config_path = "{certs_d}"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    # Built here from tools/node/pause.c and imported: never pulled.
    sandbox = "{layout.PAUSE_IMAGE}"
[plugins."io.containerd.cri.v1.runtime"]
  # No CAP_SYS_RESOURCE for root on these machines: runc cannot lower oom_score_adj.
  restrict_oom_score_adj = true
  # Pod netns bind mounts under our state dir, not /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{RUNC}"
        Root = "{lay.runc_root}"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{lay.cni_conf}"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
[plugins."io.containerd.nri.v1.nri"]
  disable = true
"""


def registry_mirror_hosts_toml() -> str:
    return f"""# Every registry (docker.io, ghcr.io, ...) is served from the node's registry
# first; images are pushed there as {layout.REGISTRY}/<repository path>:<tag>.
[host."http://{layout.REGISTRY}"]
  capabilities = ["pull", "resolve"]
"""


def cni_conflist(lay: Layout) -> dict[str, Any]:
    # No portmap plugin: no hostPorts here, and its CNI-HOSTPORT-* chains would
    # be shared with other CNI users of the machine.
    return {
        "cniVersion": "1.0.0",
        "name": layout.CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": layout.POD_BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": layout.POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(lay.cni_ipam),
                },
            }
        ],
    }


def kubelet_config(lay: Layout) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{lay.containerd_socket}",
        "address": layout.NODE_IP,
        "port": layout.KUBELET_PORT,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": layout.KUBELET_HEALTHZ_PORT,
        "readOnlyPort": 0,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(lay.pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(lay.pki / "kubelet-server.crt"),
        "tlsPrivateKeyFile": str(lay.pki / "kubelet-server.key"),
        "clusterDomain": "cluster.local",
        "clusterDNS": [layout.DNS_SERVICE_IP],
        "resolvConf": "/etc/resolv.conf",
        "podLogsDir": str(lay.pod_logs),
        # A small VM whose disk may be full-ish: no eviction or image GC in tests.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "maxPods": 110,
        "serializeImagePulls": False,
        # Faster feedback for tests.
        "syncFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
        "nodeStatusReportFrequency": "10s",
        "fileCheckFrequency": "5s",
        "runtimeRequestTimeout": "2m",
    }


def kube_proxy_config(lay: Layout) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(lay.pki / "kube-proxy.kubeconfig")},
        "hostnameOverride": layout.NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": layout.POD_CIDR,
        "bindAddress": layout.NODE_IP,
        "metricsBindAddress": f"127.0.0.1:{layout.KUBE_PROXY_METRICS_PORT}",
        "healthzBindAddress": f"127.0.0.1:{layout.KUBE_PROXY_HEALTHZ_PORT}",
        "conntrack": {"maxPerCore": 0},
        "nodePortAddresses": [f"{layout.NODE_IP}/32"],
        # Apply Service/endpoint changes at once (default: at most once a second),
        # or the host may dial a ClusterIP before its rules exist.
        "iptables": {"minSyncPeriod": "0s"},
    }


def registry_config(lay: Layout) -> dict[str, Any]:
    return {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {
            "filesystem": {"rootdirectory": str(lay.registry_storage)},
            "delete": {"enabled": True},
        },
        "http": {"addr": layout.REGISTRY},
    }


def coredns_manifests(image: str) -> list[dict[str, Any]]:
    labels = {"k8s-app": "kube-dns"}
    corefile = """.:53 {
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
}
"""
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "coredns", "namespace": "kube-system"},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": "kube-system"},
            "data": {"Corefile": corefile},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "dnsPolicy": "Default",
                        "priorityClassName": "system-cluster-critical",
                        "terminationGracePeriodSeconds": 1,
                        "containers": [
                            {
                                "name": "coredns",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "volumeMounts": [
                                    {
                                        "name": "config",
                                        "mountPath": "/etc/coredns",
                                        "readOnly": True,
                                    }
                                ],
                                "ports": [
                                    {"containerPort": 53, "name": "dns", "protocol": "UDP"},
                                    {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"},
                                ],
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                                    "readOnlyRootFilesystem": True,
                                },
                                "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                                "readinessProbe": {
                                    "httpGet": {"path": "/ready", "port": 8181},
                                    "periodSeconds": 1,
                                },
                                "resources": {
                                    "limits": {"memory": "170Mi"},
                                    "requests": {"cpu": "50m", "memory": "40Mi"},
                                },
                            }
                        ],
                        "volumes": [
                            {
                                "name": "config",
                                "configMap": {
                                    "name": "coredns",
                                    "items": [{"key": "Corefile", "path": "Corefile"}],
                                },
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "clusterIP": layout.DNS_SERVICE_IP,
                "selector": labels,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ],
            },
        },
    ]


def write_all(lay: Layout) -> dict[str, Path]:
    """Write every config file; their paths by name."""
    lay.conf.mkdir(parents=True, exist_ok=True)
    certs_d = lay.conf / "certs.d"
    (certs_d / "_default").mkdir(parents=True, exist_ok=True)
    (certs_d / "_default" / "hosts.toml").write_text(registry_mirror_hosts_toml())
    paths = {
        "containerd": lay.conf / "containerd.toml",
        "kubelet": lay.conf / "kubelet.yaml",
        "kube-proxy": lay.conf / "kube-proxy.yaml",
        "registry": lay.conf / "registry.yaml",
        "cni": lay.cni_conf / "10-feedline.conflist",
    }
    paths["containerd"].write_text(containerd_toml(lay, certs_d))
    paths["kubelet"].write_text(yaml.safe_dump(kubelet_config(lay), sort_keys=False))
    paths["kube-proxy"].write_text(yaml.safe_dump(kube_proxy_config(lay), sort_keys=False))
    paths["registry"].write_text(yaml.safe_dump(registry_config(lay), sort_keys=False))
    lay.cni_conf.mkdir(parents=True, exist_ok=True)
    paths["cni"].write_text(json.dumps(cni_conflist(lay), indent=2))
    return paths
