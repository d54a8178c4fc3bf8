"""A real one-node Kubernetes cluster on this machine, without Docker.

etcd, kube-apiserver and kube-controller-manager (tests/support/kube's
ControlPlane, on the node address), kube-scheduler, kubelet, containerd with
Debian's runc and CNI plugins, kube-proxy (iptables), CoreDNS and a local
registry that containerd uses as the mirror of every registry. The binaries
come from `tools/controlplane/build.sh --node` (`make node-binaries`).

Machine-wide things (the node address, fixed ports, iptables rules, kubepods
cgroups) make it one node per machine: `node.py` holds a file lock while a node
runs. `python -m tests.support.node up|down|status|check` (behind `make
node-up` / `make node-down`) runs it in the background for contributors; the
e2e tier (tests/e2e) attaches to that node or starts its own.
"""
