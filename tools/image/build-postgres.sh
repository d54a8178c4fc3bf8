#!/usr/bin/env bash
# Build a PostgreSQL image from Debian packages with podman, where no registry
# is reachable (the demo chart on the node of `make node-up`).
#
#   tools/image/build-postgres.sh [--tag localhost/feedline-postgres:15-bookworm]
#
# 1. tools/image/debootstrap-base.sh: postgresql-15 from Debian bookworm
#    (debootstrap, cached once per machine), imported as
#    localhost/feedline-postgres-base:bookworm.
# 2. podman build of tools/image/postgres/Containerfile (uid 70, entry point).
#
# Needs: root, podman, runc and debootstrap. Prints the image name last.
set -euo pipefail
cd "$(dirname "$0")/../.."

tag=localhost/feedline-postgres:15-bookworm
while (($#)); do
    case $1 in
        --tag) tag=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "build-postgres.sh: unknown argument $1 (accepted: --tag IMAGE)" >&2; exit 2 ;;
    esac
done

export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/tools/image/containers.conf}
base_image=localhost/feedline-postgres-base:bookworm
bash tools/image/debootstrap-base.sh --image "$base_image" --rootfs bookworm-postgresql-15 \
    --include postgresql-15 --change 'ENV LANG=C.UTF-8' >/dev/null

# --network=host: podman's default network cannot resolve names here.
podman build --network=host --file tools/image/postgres/Containerfile \
    --build-arg "BASE_IMAGE=$base_image" --tag "$tag" tools/image/postgres >&2
echo "$tag"
