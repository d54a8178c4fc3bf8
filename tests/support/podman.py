"""podman as the image and e2e tiers use it: this repo's containers.conf, tools/image scripts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_TOOLS = REPO_ROOT / "tools" / "image"
CONTAINERS_CONF = IMAGE_TOOLS / "containers.conf"


def podman_env() -> dict[str, str]:
    """The environment for podman here (tools/image/containers.conf unless one is set)."""
    return {
        **os.environ,
        "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF)),
    }


def build_image(script: str, tag: str) -> None:
    """Run ``tools/image/SCRIPT --tag TAG``; the test fails with the script's stderr if it fails."""
    proc = subprocess.run(
        ["bash", str(IMAGE_TOOLS / script), "--tag", tag],
        capture_output=True,
        text=True,
        env=podman_env(),
        check=False,
        timeout=1800,
    )
    if proc.returncode != 0:
        pytest.fail(f"tools/image/{script} failed:\n{proc.stderr[-4000:]}", pytrace=False)
