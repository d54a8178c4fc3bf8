# syntax=docker/dockerfile:1
# The feedline image: one image for every part. Its entry point is `feedline`
# (`feedline serve SERVICE`, `feedline subscribe`, `feedline operator`).
#
#   docker build -t feedline:0.1.0 .
#
# BASE_IMAGE must be a Debian-based image with python3.11 and the venv module on
# PATH as `python3`. The default is the official slim image; where no registry
# is reachable, tools/image/build-local.sh makes a stand-in with debootstrap.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------
# build: a virtualenv in /opt/feedline with feedline and its pinned dependencies.
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/feedline
WORKDIR /src
# Dependencies first (exact pins from pyproject.toml), so a source change does
# not reinstall them: pip resolves the project's metadata from pyproject alone
# and installs everything it needs; the project itself is installed next.
COPY pyproject.toml README.md ./
# An optional build secret `pip-cert` (a CA bundle) is for builds behind a
# TLS-intercepting proxy; it never ends up in a layer.
RUN --mount=type=secret,id=pip-cert \
    if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi; \
    /opt/feedline/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/requirements.txt \
 && /opt/feedline/bin/pip install --only-binary=:all: -r /tmp/requirements.txt
COPY contracts ./contracts
COPY services ./services
COPY cronjobs ./cronjobs
COPY operator ./operator
RUN --mount=type=secret,id=pip-cert \
    if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi; \
    /opt/feedline/bin/pip install --no-deps . \
 && /opt/feedline/bin/pip check \
 && /opt/feedline/bin/python -m compileall -q /opt/feedline/lib \
 && /opt/feedline/bin/pip uninstall -y pip

# ---------------------------------------------------------------------------
# runtime: the base plus the virtualenv; no compilers, no pip, no source tree.
FROM ${BASE_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="feedline" \
      org.opencontainers.image.description="Event feeds between microservices: services, subscriber, operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# A numeric, unprivileged user (Kubernetes' runAsNonRoot can only check a
# numeric USER). The charts and the operator run pods as 10001 too.
RUN groupadd --system --gid 10001 feedline \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin feedline
COPY --from=build /opt/feedline /opt/feedline
# Read-only root friendly: everything writable lives under /tmp (an emptyDir
# in the charts): HOME, TMPDIR, and the default SQLite database.
ENV PATH=/opt/feedline/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FEEDLINE_DATABASE_URL=sqlite:////tmp/feedline.db
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["feedline"]
CMD ["--help"]
