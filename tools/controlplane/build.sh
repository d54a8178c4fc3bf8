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
set -euo pipefail

check_only=false
case "${1:-}" in
    --check) check_only=true ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

# GOTOOLCHAIN=local: never fetch another toolchain behind our back.
export CGO_ENABLED=0 GOWORK=off GOFLAGS=-mod=mod GOTOOLCHAIN=local

cache_root="${FEEDLINE_CACHE_DIR:-$HOME/.cache/feedline}/controlplane"
dest="$cache_root/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}"
bin="$dest/bin"
binaries=(kube-apiserver kube-controller-manager etcd helm)

all_present() {
    local b
    for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
}

if $check_only; then
    if all_present; then echo "$bin"; exit 0; fi
    echo "control plane binaries missing in $bin: run 'make controlplane'" >&2
    exit 3
fi

mkdir -p "$dest"
# Serialise concurrent builds (e.g. two test sessions starting at once).
exec 9>"$dest/.lock"
flock 9

if all_present; then
    echo "reusing $bin" >&2
    echo "$bin"
    exit 0
fi

log() { echo "build.sh: $*" >&2; }

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null 2>&1 || { echo "build.sh: no 'go' on PATH (need Go >= 1.26)" >&2; exit 1; }

# run LOGNAME CMD...: run quietly into a log, fail loudly with its tail.
run() {
    local name="$1"; shift
    local logfile="$dest/build-$name.log" start=$SECONDS
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

if [[ ! -x "$bin/kube-apiserver" || ! -x "$bin/kube-controller-manager" ]]; then
    # One invocation so both commands share the compile work.
    run kubernetes bash -c "cd '$here/kubernetes' && go build -trimpath -ldflags '$k8s_ldflags' -o '$tmp/' \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager"
fi

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

# Move into place only after success, so an interrupted build leaves no half binary.
mkdir -p "$bin"
for f in "$tmp"/*; do
    [[ -e "$f" ]] && mv -f "$f" "$bin/"
done
all_present || { log "build finished but binaries are missing in $bin"; exit 1; }
log "binaries in $bin"
echo "$bin"
