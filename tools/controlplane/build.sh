#!/usr/bin/env bash
# Build the test control plane (kube-apiserver, kube-controller-manager, etcd,
# helm) from Go modules at the versions pinned in versions.env, into a cache
# folder outside git:
#   ${FEEDLINE_CACHE_DIR:-$HOME/.cache/feedline}/controlplane/k8s-V_etcd-V_helm-V/bin/
# Reuses the binaries when all four exist. Progress goes to stderr; the bin
# dir is the last line on stdout (tests/support/kube reads it).
#
#   build.sh           build what is missing (or reuse), print the bin dir
#   build.sh --check   build nothing: print the bin dir if all binaries are
#                      there, else exit 3 (the test fixtures use this so a test
#                      run never starts a half-hour build by surprise)
#   build.sh --node    also the real node's parts (kubelet, kube-scheduler,
#                      kube-proxy, kubectl, containerd + shim + ctr, crictl,
#                      CoreDNS, registry) into their own cache folder
#                      .../controlplane/node-k8s-V_containerd-V_crictl-V_coredns-V_registry-V/bin
#                      (so the control-plane folder above stays valid); the
#                      node bin dir is then the last stdout line. With --check:
#                      report both, build nothing.
set -euo pipefail

check_only=false
with_node=false
for arg in "$@"; do
    case "$arg" in
        --check) check_only=true ;;
        --node) with_node=true ;;
        *) echo "usage: $0 [--check] [--node]" >&2; exit 2 ;;
    esac
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

# GOTOOLCHAIN=local: never fetch another toolchain behind our back.
export CGO_ENABLED=0 GOWORK=off GOFLAGS=-mod=mod GOTOOLCHAIN=local

cache_root="${FEEDLINE_CACHE_DIR:-$HOME/.cache/feedline}/controlplane"
dest="$cache_root/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}"
bin="$dest/bin"
binaries=(kube-apiserver kube-controller-manager etcd helm)
node_dest="$cache_root/node-k8s-${K8S_VERSION}_containerd-${CONTAINERD_VERSION}_crictl-${CRICTL_VERSION}_coredns-${COREDNS_VERSION}_registry-${REGISTRY_VERSION}"
node_bin="$node_dest/bin"
node_k8s_binaries=(kubelet kube-scheduler kube-proxy kubectl)
node_binaries=("${node_k8s_binaries[@]}" containerd containerd-shim-runc-v2 ctr crictl coredns registry)

cp_present() {
    local b
    for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
}
node_present() {
    local b
    for b in "${node_binaries[@]}"; do [[ -x "$node_bin/$b" ]] || return 1; done
}
all_present() {
    cp_present || return 1
    if $with_node; then node_present || return 1; fi
}
# The bin dir the caller asked for: the node's with --node.
result_dir() { if $with_node; then echo "$node_bin"; else echo "$bin"; fi; }

if $check_only; then
    if all_present; then result_dir; exit 0; fi
    if ! cp_present; then
        echo "control plane binaries missing in $bin: run 'make controlplane'" >&2
    else
        echo "node binaries missing in $node_bin: run 'make node-binaries' (tools/controlplane/build.sh --node)" >&2
    fi
    exit 3
fi

mkdir -p "$dest"
# Serialise concurrent builds (e.g. two test sessions starting at once).
exec 9>"$dest/.lock"
flock 9
if $with_node; then
    mkdir -p "$node_dest"
    exec 8>"$node_dest/.lock"
    flock 8
fi

if all_present; then
    echo "reusing $(result_dir)" >&2
    result_dir
    exit 0
fi

log() { echo "build.sh: $*" >&2; }

# A Go recent enough for the modules (fetched from the Go module proxy if none is).
# shellcheck source=../go.sh
source "$here/../go.sh"
use_go

# run LOGNAME CMD...: run quietly into a log, fail loudly with its tail.
run() {
    local name="$1"; shift
    local logfile="${log_dir:-$dest}/build-$name.log" start=$SECONDS
    log "building $name ..."
    if ! "$@" >"$logfile" 2>&1; then
        log "FAILED building $name: $*"
        log "last lines of $logfile:"
        tail -n 60 "$logfile" >&2
        exit 1
    fi
    log "built $name in $((SECONDS - start)) s"
}

tmp="$(mktemp -d "$dest/tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

k8s_minor="${K8S_VERSION#v1.}"; k8s_minor="${k8s_minor%%.*}"
# Without these, /version reports v0.0.0-master and charts with kubeVersion refuse to install.
k8s_ldflags="-s -w"
k8s_ldflags+=" -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
k8s_ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
k8s_ldflags+=" -X k8s.io/component-base/version.gitMinor=$k8s_minor"
k8s_ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"

# Every missing Kubernetes command in one invocation, so they share the compile work.
k8s_cmds=()
for b in kube-apiserver kube-controller-manager; do
    [[ -x "$bin/$b" ]] || k8s_cmds+=("k8s.io/kubernetes/cmd/$b")
done
if $with_node; then
    for b in "${node_k8s_binaries[@]}"; do
        [[ -x "$node_bin/$b" ]] || k8s_cmds+=("k8s.io/kubernetes/cmd/$b")
    done
fi
if ((${#k8s_cmds[@]})); then
    run kubernetes bash -c "cd '$here/kubernetes' && go build -trimpath -ldflags '$k8s_ldflags' -o '$tmp/' ${k8s_cmds[*]}"
fi
# Node binaries go to the node folder.
mkdir -p "$tmp/node"
for b in "${node_k8s_binaries[@]}"; do
    [[ -e "$tmp/$b" ]] && mv -f "$tmp/$b" "$tmp/node/"
done

if [[ ! -x "$bin/etcd" ]]; then
    run etcd bash -c "cd '$here/etcd' && go build -trimpath -ldflags '-s -w' -o '$tmp/etcd' go.etcd.io/etcd/server/v3"
fi

if [[ ! -x "$bin/helm" ]]; then
    # helm's go.mod has no replace directives, so `go install pkg@version` works
    # (and uses helm's own go.sum). -mod=mod is not allowed with pkg@version.
    run helm env GOFLAGS= GOBIN="$tmp" go install -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi

if $with_node; then
    log_dir=$node_dest
    # `go install pkg@version` uses each project's own go.mod and go.sum
    # (-mod=mod is not allowed there). CGO off: static binaries, no libseccomp
    # or btrfs headers needed (runc, from Debian, applies seccomp).
    if [[ ! -x "$node_bin/containerd" || ! -x "$node_bin/containerd-shim-runc-v2" || ! -x "$node_bin/ctr" ]]; then
        run containerd env GOFLAGS= GOBIN="$tmp/node" go install -trimpath \
            -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
            "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
            "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
            "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
    fi
    if [[ ! -x "$node_bin/crictl" ]]; then
        run crictl env GOFLAGS= GOBIN="$tmp/node" go install -trimpath \
            -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
            "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
    fi
    if [[ ! -x "$node_bin/coredns" ]]; then
        grep -q "github.com/coredns/coredns $COREDNS_VERSION" "$here/coredns/go.mod" || {
            log "coredns/go.mod does not require coredns $COREDNS_VERSION: run gen-replaces.sh coredns"
            exit 1
        }
        run coredns bash -c "cd '$here/coredns' && go build -trimpath -ldflags '-s -w' -o '$tmp/node/coredns' ."
    fi
    if [[ ! -x "$node_bin/registry" ]]; then
        run registry env GOFLAGS= GOBIN="$tmp/node" go install -trimpath \
            -ldflags "-s -w -X github.com/distribution/distribution/v3/version.version=$REGISTRY_VERSION" \
            "github.com/distribution/distribution/v3/cmd/registry@$REGISTRY_VERSION"
    fi
fi

# Move into place only after success, so an interrupted build leaves no half binary.
mkdir -p "$bin"
for f in "$tmp"/*; do
    [[ -f "$f" ]] && mv -f "$f" "$bin/"
done
if $with_node; then
    mkdir -p "$node_bin"
    for f in "$tmp/node"/*; do
        [[ -f "$f" ]] && mv -f "$f" "$node_bin/"
    done
fi
all_present || { log "build finished but binaries are missing in $bin or $node_bin"; exit 1; }
log "binaries in $(result_dir)"
result_dir
