#!/usr/bin/env bash
# Build toxiproxy-server (the fault proxy of the `faults` test tier) from the Go
# module proxy at a pinned version, into a cache folder outside git:
#   ${FEEDLINE_CACHE_DIR:-$HOME/.cache/feedline}/toxiproxy/VERSION/bin/toxiproxy-server
# Reuses the binary when it exists. Progress goes to stderr; the bin dir is the
# last line on stdout (tests/support/toxiproxy.py reads it).
#
#   build.sh           build it if missing (or reuse), print the bin dir
#   build.sh --check   build nothing: print the bin dir if the binary is there,
#                      else exit 3 (the fixture uses this, so a test run never
#                      starts a build by surprise)
set -euo pipefail

# The newest release on the Go module proxy (go.mod: go 1.23.0; no replace
# directives, so `go install pkg@version` works with toxiproxy's own go.sum).
TOXIPROXY_VERSION=v2.12.0

check_only=false
for arg in "$@"; do
    case "$arg" in
        --check) check_only=true ;;
        *) echo "usage: $0 [--check]" >&2; exit 2 ;;
    esac
done

dest="${FEEDLINE_CACHE_DIR:-$HOME/.cache/feedline}/toxiproxy/$TOXIPROXY_VERSION"
bin="$dest/bin"
present() { [[ -x "$bin/toxiproxy-server" ]]; }

if $check_only; then
    if present; then echo "$bin"; exit 0; fi
    echo "toxiproxy-server missing in $bin: run 'make toxiproxy' (tools/toxiproxy/build.sh)" >&2
    exit 3
fi

mkdir -p "$dest"
# Serialise concurrent builds (e.g. two test sessions starting at once).
exec 9>"$dest/.lock"
flock 9
if present; then
    echo "reusing $bin" >&2
    echo "$bin"
    exit 0
fi

# A Go recent enough for the modules (fetched from the Go module proxy if none is).
# shellcheck source=../go.sh
source "$(dirname "${BASH_SOURCE[0]}")/../go.sh"
use_go

# GOTOOLCHAIN=local: never fetch another toolchain behind our back. GOFLAGS is
# cleared: -mod=mod is not allowed with pkg@version.
export CGO_ENABLED=0 GOWORK=off GOFLAGS= GOTOOLCHAIN=local

tmp="$(mktemp -d "$dest/tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
logfile="$dest/build.log"
start=$SECONDS
echo "toxiproxy/build.sh: building toxiproxy-server $TOXIPROXY_VERSION ..." >&2
if ! GOBIN="$tmp" go install -trimpath \
    -ldflags "-s -w -X github.com/Shopify/toxiproxy/v2.Version=$TOXIPROXY_VERSION" \
    "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" >"$logfile" 2>&1; then
    echo "toxiproxy/build.sh: FAILED; last lines of $logfile:" >&2
    tail -n 40 "$logfile" >&2
    exit 1
fi
# The command's package is cmd/server: go install names the binary "server".
mkdir -p "$bin"
mv -f "$tmp/server" "$bin/toxiproxy-server"
echo "toxiproxy/build.sh: built in $((SECONDS - start)) s" >&2
echo "$bin"
