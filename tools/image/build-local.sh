#!/usr/bin/env bash
# Build the feedline image with podman where no container registry is reachable.
#
#   tools/image/build-local.sh [--tag feedline:0.1.0] [--base-only]
#
# 1. Makes a stand-in for python:3.11-slim-bookworm with debootstrap (Debian
#    bookworm ships python3.11) from the Debian mirror apt already uses, and
#    imports it into podman as feedline-base:bookworm-python3.11
#    (tools/image/debootstrap-base.sh). The rootfs
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

bash tools/image/debootstrap-base.sh --image "$base_image" --rootfs bookworm-python3.11 \
    --include python3,python3-venv,ca-certificates \
    --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' >/dev/null
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
