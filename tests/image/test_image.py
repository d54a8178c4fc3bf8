"""The feedline image: one entry point, a numeric non-root user, and it works
with a read-only root, no capabilities and no privilege escalation (what the
charts' restricted security contexts ask of it)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support.podman import podman_env
from tests.support.ports import free_port
from tests.support.wait import wait_for

pytestmark = pytest.mark.image

# What a restricted pod's securityContext amounts to, plus the chart's /tmp emptyDir.
RESTRICTED = [
    "--read-only",
    "--tmpfs=/tmp:rw,size=64m,mode=1777",
    "--user=10001",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
]


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        env=podman_env(),
        check=False,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, f"podman {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def served(feedline_image: str) -> Iterator[tuple[str, int]]:
    """special-offers running in the image; (container name, published loopback port)."""
    name, port = f"feedline-test-{uuid.uuid4().hex[:8]}", free_port()
    podman(
        "run", "--detach", f"--name={name}", *RESTRICTED, f"--publish=127.0.0.1:{port}:8080",
        feedline_image, "serve", "special-offers", "--host=0.0.0.0", "--port=8080",
        "--database-url=sqlite:////tmp/offers.db",
    )  # fmt: skip
    try:
        yield name, port
    finally:
        logs = podman("logs", name, check=False)
        podman("rm", "--force", "--time=2", name, check=False)
        print(f"container {name} log:\n{logs.stdout}{logs.stderr}")


def test_image_config(feedline_image: str) -> None:
    (config,) = json.loads(podman("image", "inspect", feedline_image).stdout)
    assert config["Config"]["Entrypoint"] == ["feedline"]
    # Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert config["Config"]["User"] == "10001:10001"
    env = dict(item.split("=", 1) for item in config["Config"]["Env"])
    assert env["HOME"] == "/tmp"
    assert env["TMPDIR"] == "/tmp"


@pytest.mark.parametrize("argv", [[], ["serve"], ["subscribe"], ["operator"]])
def test_help_under_restricted_flags(feedline_image: str, argv: list[str]) -> None:
    proc = podman("run", "--rm", *RESTRICTED, feedline_image, *argv, "--help")
    assert "Usage: feedline" in proc.stdout


def test_serve_answers_ready_and_the_subscriber_reads_its_feed(served: tuple[str, int]) -> None:
    name, port = served
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, timeout=60, what="/health/ready of special-offers in the image")
    created = httpx.post(f"{base}/offers", json={"description": "10% off"}, timeout=5)
    assert created.status_code == 201

    # The same image runs the subscriber (in the same container: it reads the
    # feed on loopback and writes its read model under /tmp).
    proc = podman(
        "exec", "--env=FEEDLINE_TERMINATION_LOG=/tmp/termination-log", name,
        "feedline", "subscribe", "--subscription=loyalty", "--feed-url=http://127.0.0.1:8080/events",
        "--database-url=sqlite:////tmp/read-model.db",
        "--projection=feedline.services.loyalty_program.projection:project_special_offers",
    )  # fmt: skip
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["outcome"], summary["position"], summary["lag"]) == ("CaughtUp", 1, 0)

    # The root filesystem is read-only and the process is not root.
    touch = podman("exec", name, "touch", "/opt/feedline/x", check=False)
    assert touch.returncode != 0
    assert "Read-only file system" in touch.stderr
    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
