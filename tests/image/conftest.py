"""The image tier: builds the feedline image with podman (tools/image/build-local.sh)
and runs it as a restricted Kubernetes pod would.

`make test` runs it with every other tier; a cold build takes about three
minutes and needs root, podman, runc and debootstrap (`.ci/run` installs them).
"""

from __future__ import annotations

import shutil

import pytest

from tests.support.podman import build_image

IMAGE = "localhost/feedline:0.1.0"


@pytest.fixture(scope="session")
def feedline_image() -> str:
    """Build (or rebuild from podman's layer cache) the image; its name."""
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"the image tier needs {', '.join(missing)}: "
            "apt-get install -y podman runc debootstrap",
            pytrace=False,
        )
    build_image("build-local.sh", IMAGE)
    return IMAGE


POSTGRES_IMAGE = "localhost/feedline-postgres:15-bookworm"


@pytest.fixture(scope="session")
def postgres_image(feedline_image: str) -> str:
    """The stand-in for the official postgres image (tools/image/build-postgres.sh):
    no registry is reachable here. After the feedline image, which checks the tools."""
    build_image("build-postgres.sh", POSTGRES_IMAGE)
    return POSTGRES_IMAGE
