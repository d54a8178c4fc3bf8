# Sourced by the build scripts (tools/controlplane/build.sh, tools/toxiproxy/build.sh):
# `use_go` puts first on PATH a Go that can build the modules under tools/, that
# is at least the highest `go` line of their go.mod files. In this order:
#   1. the `go` already on PATH, if it is recent enough;
#   2. /usr/local/go/bin/go (where Go's own installer puts it, and often not on
#      a CI job's PATH), if it is recent enough;
#   3. the toolchain pinned below, from the Go module proxy: the module
#      golang.org/toolchain, which Go's own toolchain switching downloads,
#      checked against the SHA-256 pinned here and unpacked into the cache
#      (${FEEDLINE_CACHE_DIR:-$HOME/.cache/feedline}/go/).
# Debian's golang-go is too old for these modules (1.19 on bookworm), so
# .ci/run never installs it: an old `go` first on PATH would only fail later.

GO_TOOLCHAIN_VERSION=go1.26.8
GO_TOOLCHAIN_SHA256_linux_amd64=30c2b1bf7dcc88d3eb0a1364e47ddd9128edb3110a30e8a0ef61cd5856b31de7
GO_TOOLCHAIN_SHA256_linux_arm64=02b36b6787b3ac767668f630e2998df45a3b1f9ffee08d1bf3ef6487cd658d99

_go_tools_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

go_minimum() {
    sed -n 's/^go \([0-9][0-9.]*\)$/\1/p' "$_go_tools_dir"/controlplane/*/go.mod | sort -V | tail -n 1
}

# go_recent_enough GO: whether the binary GO is at least go_minimum.
go_recent_enough() {
    local have minimum
    # GOTOOLCHAIN=local: report this binary's own version, never switch.
    have="$(GOTOOLCHAIN=local "$1" env GOVERSION 2>/dev/null)" || return 1
    have="${have#go}"
    minimum="$(go_minimum)"
    [[ "$(printf '%s\n%s\n' "$minimum" "$have" | sort -V | head -n 1)" == "$minimum" ]]
}

# The pinned toolchain, fetched once into the cache; prints its bin dir.
go_fetch_toolchain() {
    local arch checksum_var checksum module dir proxy tmp
    case "$(uname -m)" in
        x86_64) arch=amd64 ;;
        aarch64 | arm64) arch=arm64 ;;
        *) arch="$(uname -m)" ;;
    esac
    checksum_var="GO_TOOLCHAIN_SHA256_linux_${arch}"
    checksum="${!checksum_var:-}"
    if [[ -z "$checksum" || "$(uname -s)" != Linux ]]; then
        echo "go.sh: no Go >= $(go_minimum) on PATH or in /usr/local/go, and no toolchain" \
            "is pinned for $(uname -s)/$(uname -m): install Go >= $(go_minimum)" >&2
        return 1
    fi
    module="v0.0.1-$GO_TOOLCHAIN_VERSION.linux-$arch"
    dir="${FEEDLINE_CACHE_DIR:-$HOME/.cache/feedline}/go/$GO_TOOLCHAIN_VERSION.linux-$arch"
    mkdir -p "$(dirname "$dir")"
    (
        exec 7>"$dir.lock"
        flock 7  # two build scripts starting at once fetch it once
        [[ -x "$dir/bin/go" ]] && exit 0
        # The first proxy of GOPROXY when it names one, else Go's default.
        proxy="${GOPROXY:-}"
        proxy="${proxy%%[,|]*}"
        [[ "$proxy" == http* ]] || proxy=https://proxy.golang.org
        tmp="$(mktemp -d "$dir.tmp.XXXXXX")"
        trap 'rm -rf "$tmp"' EXIT
        echo "go.sh: fetching $GO_TOOLCHAIN_VERSION (no Go >= $(go_minimum) here)" \
            "from $proxy ..." >&2
        curl -fsSL --retry 3 -o "$tmp/toolchain.zip" \
            "$proxy/golang.org/toolchain/@v/$module.zip"
        if ! echo "$checksum  $tmp/toolchain.zip" | sha256sum --check --quiet --status; then
            echo "go.sh: $proxy served golang.org/toolchain@$module with a SHA-256 other" \
                "than the one pinned in tools/go.sh ($checksum)" >&2
            exit 1
        fi
        unzip -q "$tmp/toolchain.zip" -d "$tmp/unpacked"
        # Module zips need not keep file modes: the commands must run.
        chmod +x "$tmp/unpacked/golang.org/toolchain@$module"/bin/* \
            "$tmp/unpacked/golang.org/toolchain@$module"/pkg/tool/*/*
        mv "$tmp/unpacked/golang.org/toolchain@$module" "$dir"
    ) || return 1
    echo "$dir/bin"
}

use_go() {
    local candidate bin_dir
    for candidate in "$(command -v go || true)" /usr/local/go/bin/go; do
        if [[ -n "$candidate" && -x "$candidate" ]] && go_recent_enough "$candidate"; then
            PATH="$(dirname "$candidate"):$PATH"
            return 0
        fi
    done
    bin_dir="$(go_fetch_toolchain)" || return 1
    PATH="$bin_dir:$PATH"
}
