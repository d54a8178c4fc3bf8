#!/usr/bin/env bash
# A podman base image from Debian bookworm packages, made with debootstrap where
# no container registry is reachable (used by build-local.sh and build-postgres.sh).
#
#   tools/image/debootstrap-base.sh --image NAME --include PKG[,PKG...] --rootfs KEY \
#       [--change INSTRUCTION]...
#
# debootstrap --variant=minbase from the mirror apt already uses, slimmed like the
# official images (no apt lists, caches, docs or locales); the rootfs tarball is
# cached as ${FEEDLINE_CACHE_DIR:-~/.cache/feedline}/images/KEY-rootfs.tar (once
# per machine) and imported as NAME (with the --change instructions) unless
# podman has NAME already. Needs root, podman and debootstrap. Prints NAME last.
set -euo pipefail
cd "$(dirname "$0")/../.."

image="" include="" key="" changes=()
while (($#)); do
    case $1 in
        --image) image=$2; shift 2 ;;
        --include) include=$2; shift 2 ;;
        --rootfs) key=$2; shift 2 ;;
        --change) changes+=(--change "$2"); shift 2 ;;
        *) echo "debootstrap-base.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ -n $image && -n $include && -n $key ]] || {
    echo "usage: debootstrap-base.sh --image NAME --include PKGS --rootfs KEY [--change INSTR]..." >&2
    exit 2
}

export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/tools/image/containers.conf}
cache=${FEEDLINE_CACHE_DIR:-$HOME/.cache/feedline}/images
rootfs_tar=$cache/$key-rootfs.tar

for tool in podman debootstrap; do
    command -v "$tool" >/dev/null || {
        echo "debootstrap-base.sh: $tool not found; install it: apt-get install -y podman runc debootstrap" >&2
        exit 3
    }
done

# The mirror apt uses here (deb822 or one-line sources), else deb.debian.org
# (Only `URIs:` and `deb` lines: comments may name mirrors that are not reachable.)
mirror=$(grep -h -E '^(URIs:|deb) ' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -o -E 'https?://[^ ]+/debian/?( |$)' | grep -v -- -security | head -n1 | tr -d ' ' || true)
mirror=${mirror:-http://deb.debian.org/debian}

if [[ ! -s $rootfs_tar ]]; then
    mkdir -p "$cache"
    exec 9>"$cache/.lock"
    flock 9
    if [[ ! -s $rootfs_tar ]]; then
        work=$(mktemp -d "$cache/rootfs.XXXXXX")
        trap 'rm -rf "$work"' EXIT
        log=$cache/debootstrap-$key.log
        echo "debootstrap-base.sh: debootstrap bookworm ($include) from $mirror (once; cached in $cache)" >&2
        debootstrap --variant=minbase --include="$include" \
            bookworm "$work/root" "$mirror" >"$log" 2>&1 || {
            tail -n 30 "$log" >&2
            echo "debootstrap-base.sh: debootstrap failed; full log: $log" >&2
            exit 1
        }
        # Slim it like the official image: no apt lists, caches, docs or locales.
        chroot "$work/root" apt-get clean
        rm -rf "$work/root"/var/lib/apt/lists/* "$work/root"/var/cache/* \
            "$work/root"/usr/share/doc/* "$work/root"/usr/share/man/* "$work/root"/usr/share/locale/*
        tar --numeric-owner -C "$work/root" -cf "$rootfs_tar.tmp" .
        mv "$rootfs_tar.tmp" "$rootfs_tar"
    fi
    flock -u 9
fi

if ! podman image exists "$image"; then
    echo "debootstrap-base.sh: importing $rootfs_tar as $image" >&2
    podman import "${changes[@]}" "$rootfs_tar" "$image" >/dev/null
fi
echo "$image"
