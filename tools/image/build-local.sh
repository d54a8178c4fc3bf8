#!/usr/bin/env bash
# Build the feedline image with podman where no container registry is reachable.
#
#   tools/image/build-local.sh [--tag feedline:0.1.0] [--base-only]
#
# 1. Makes a stand-in for python:3.11-slim-bookworm with debootstrap (Debian
#    bookworm ships python3.11) from the Debian mirror apt already uses, and
#    imports it into podman as feedline-base:bookworm-python3.11. The rootfs
#    tarball is cached in ${FEEDLINE_CACHE_DIR:-~/.cache/feedline}/images, so
#    this step runs once per machine.
# 2. Builds ./Dockerfile with BASE_IMAGE set to that stand-in, on the host's
#    network (podman's default network cannot resolve names here), so pip
#    inside the build reaches PyPI; a CA bundle for a TLS-intercepting proxy is
#    passed as the build secret `pip-cert` (never stored in the image).
#
# Needs: root, podman, runc and debootstrap (apt-get install podman debootstrap).
# Prints the image name as its last stdout line.
set -euo pipefail
cd "$(dirname "$0")/../.."

tag=feedline:0.1.0
base_only=false
while (($#)); do
    case $1 in
        --tag) tag=$2; shift 2 ;;
        --base-only) base_only=true; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "build-local.sh: unknown argument $1 (accepted: --tag IMAGE, --base-only)" >&2; exit 2 ;;
    esac
done

export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/tools/image/containers.conf}
base_image=localhost/feedline-base:bookworm-python3.11
cache=${FEEDLINE_CACHE_DIR:-$HOME/.cache/feedline}/images
rootfs_tar=$cache/bookworm-python3.11-rootfs.tar

for tool in podman debootstrap; do
    command -v "$tool" >/dev/null || {
        echo "build-local.sh: $tool not found; install it: apt-get install -y podman runc debootstrap" >&2
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
        echo "build-local.sh: debootstrap bookworm from $mirror (once; cached in $cache)" >&2
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$work/root" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
            tail -n 30 "$cache/debootstrap.log" >&2
            echo "build-local.sh: debootstrap failed; full log: $cache/debootstrap.log" >&2
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

if ! podman image exists "$base_image"; then
    echo "build-local.sh: importing $rootfs_tar as $base_image" >&2
    podman import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' \
        "$rootfs_tar" "$base_image" >/dev/null
fi
$base_only && { echo "$base_image"; exit 0; }

# pip inside the build needs the CA bundle of this machine's egress proxy, if any.
secret=()
ca_bundle=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[[ -s $ca_bundle ]] && secret=(--secret "id=pip-cert,src=$ca_bundle")

# --network=host: on these machines a container on podman's default network
# cannot resolve names, so pip inside the build would not reach PyPI.
podman build --network=host --file Dockerfile --build-arg "BASE_IMAGE=$base_image" \
    "${secret[@]}" --tag "$tag" . >&2
echo "$tag"
