#!/usr/bin/env bash
# Regenerate tools/controlplane/{kubernetes,etcd}/go.mod and go.sum from the
# pinned upstream releases (versions.env). Never edit those go.mod files by hand.
#
# Why a module of our own: `go install k8s.io/kubernetes/cmd/...@vX` is refused
# because kubernetes' go.mod requires every staging module (k8s.io/api, ...) at
# v0.0.0 with a replace to ./staging/...; the proxy serves those modules as
# v0.MINOR.PATCH instead. So we require k8s.io/kubernetes and add, for every
# staging replace of the release's own go.mod, `replace k8s.io/X => k8s.io/X v0.M.P`.
# etcd's go.mod also replaces sibling modules, hence a second small module;
# it is kept apart so the apiserver's etcd client version is not changed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
export CGO_ENABLED=0 GOWORK=off GOFLAGS=-mod=mod GOTOOLCHAIN=local

gomod_of() { # module@version -> path of its go.mod in the module cache
    go mod download -json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])'
}

gen_kubernetes() {
    local dir="$here/kubernetes" upstream staging_version
    upstream="$(gomod_of "k8s.io/kubernetes@$K8S_VERSION")"
    staging_version="v0.${K8S_VERSION#v1.}"
    rm -f "$dir/go.mod" "$dir/go.sum"
    mkdir -p "$dir"
    (
        cd "$dir"
        go mod init feedline.local/controlplane/kubernetes >/dev/null 2>&1
        go mod edit -go="$(go mod edit -json "$upstream" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Go"])')"
        go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
        # Every replace upstream points into ./staging/ becomes a versioned replace.
        go mod edit -json "$upstream" | python3 -c '
import json, sys
for r in json.load(sys.stdin)["Replace"] or []:
    if r["New"]["Path"].startswith("./staging/"):
        print(r["Old"]["Path"])
' | while read -r mod; do
            go mod edit -replace="$mod=$mod@$staging_version"
        done
        # The control plane, and the real node's commands (build.sh --node).
        go mod edit -tool=k8s.io/kubernetes/cmd/kube-apiserver \
                    -tool=k8s.io/kubernetes/cmd/kube-controller-manager \
                    -tool=k8s.io/kubernetes/cmd/kubelet \
                    -tool=k8s.io/kubernetes/cmd/kube-scheduler \
                    -tool=k8s.io/kubernetes/cmd/kube-proxy \
                    -tool=k8s.io/kubernetes/cmd/kubectl
        go mod tidy
    )
    echo "generated $dir/go.mod ($(grep -c '=>' "$dir/go.mod") replaces)"
}

gen_etcd() {
    local dir="$here/etcd"
    rm -f "$dir/go.mod" "$dir/go.sum"
    mkdir -p "$dir"
    (
        cd "$dir"
        go mod init feedline.local/controlplane/etcd >/dev/null 2>&1
        go mod edit -go="$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1.0/')"
        go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
        # etcd's sibling modules (api, client, pkg) are normal proxy versions;
        # their versions come from server/v3's own requirements via MVS.
        go mod edit -tool=go.etcd.io/etcd/server/v3
        go mod tidy
    )
    echo "generated $dir/go.mod"
}

gen_coredns() {
    # A CoreDNS with the plugins of coredns/main.go only. client-go and its
    # siblings at the Kubernetes release's staging version, so the compiled
    # packages are shared with the kubernetes build.
    local dir="$here/coredns" staging_version="v0.${K8S_VERSION#v1.}"
    rm -f "$dir/go.mod" "$dir/go.sum"
    (
        cd "$dir"
        go mod init feedline.local/controlplane/coredns >/dev/null 2>&1
        go mod edit -go="$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1.0/')"
        go mod edit -require="github.com/coredns/coredns@$COREDNS_VERSION" \
                    -require="k8s.io/client-go@$staging_version" \
                    -require="k8s.io/api@$staging_version" \
                    -require="k8s.io/apimachinery@$staging_version"
        go mod tidy
    )
    echo "generated $dir/go.mod"
}

case "${1:-all}" in
    kubernetes) gen_kubernetes ;;
    etcd) gen_etcd ;;
    coredns) gen_coredns ;;
    all) gen_kubernetes; gen_etcd; gen_coredns ;;
    *) echo "usage: $0 [kubernetes|etcd|coredns|all]" >&2; exit 2 ;;
esac
