"""The image tier: builds the feedline image with podman (tools/image/build-local.sh)
and runs it as a restricted Kubernetes pod would.

`make test` runs it with every other tier; a cold build takes about three
minutes and needs root, podman, runc and debootstrap (`.ci/run` installs them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
BUILD_SCRIPT = ROOT / "tools" / "image" / "build-local.sh"
CONTAINERS_CONF = ROOT / "tools" / "image" / "containers.conf"
IMAGE = "localhost/feedline:0.1.0"


def podman_env() -> dict[str, str]:
    return {
        **os.environ,
        "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF)),
    }


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
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--tag", IMAGE],
        capture_output=True,
        text=True,
        env=podman_env(),
        check=False,
        timeout=1800,
    )
    if proc.returncode != 0:
        pytest.fail(f"{BUILD_SCRIPT} failed:\n{proc.stderr[-4000:]}", pytrace=False)
    return IMAGE
