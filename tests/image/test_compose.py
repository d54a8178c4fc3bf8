"""compose.yaml: the demo under podman-compose reaches a caught-up read model.

`podman-compose up` of the repo's compose.yaml with the locally built images
(no registry is reachable here): PostgreSQL, the four services and the two
Follow-mode subscribers on the project's own network (names resolve through
aardvark-dns; nothing needs outside DNS). An offer posted to special-offers
reaches loyalty-program's read model and the read-models database, and a second
one follows within seconds (the followers long-poll). `podman-compose down -v`
leaves no container, pod, network or volume behind.

podman 4.3 has no `podman wait --condition=healthy`, so podman-compose starts
the containers without waiting for `condition: service_healthy` (it warns),
and without systemd podman never runs a healthcheck on its own: the test runs
each container's healthcheck (compose.yaml's own test) with `podman
healthcheck run` until it passes; the containers' restart policies and the
services' database retries cover the start order meanwhile.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import pytest

from tests.support.podman import REPO_ROOT, podman_env
from tests.support.ports import free_port
from tests.support.wait import wait_for

pytestmark = pytest.mark.image

COMPOSE_FILE = REPO_ROOT / "compose.yaml"
PROJECT_LABEL = "io.podman.compose.project"
SERVICES = ("special-offers", "loyalty-program", "shopping-cart", "product-catalog")
SUBSCRIBERS = ("loyalty-special-offers", "offer-documents")
PORT_VARIABLES = {
    "special-offers": "FEEDLINE_SPECIAL_OFFERS_PORT",
    "loyalty-program": "FEEDLINE_LOYALTY_PROGRAM_PORT",
    "shopping-cart": "FEEDLINE_SHOPPING_CART_PORT",
    "product-catalog": "FEEDLINE_PRODUCT_CATALOG_PORT",
}
# A second offer reaches the read model within this many seconds of its POST.
FOLLOW_LATENCY_LIMIT = 10.0
LOG_TAIL = 30
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def run(
    argv: list[str], env: dict[str, str], *, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, check=False, timeout=timeout
    )


@dataclass
class ComposeStack:
    """One podman-compose project of compose.yaml, on loopback ports of its own."""

    project: str
    env: dict[str, str]
    ports: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "podman_compose", "-p", self.project]
        return run([*argv, "-f", str(COMPOSE_FILE), *args], self.env, timeout=timeout)

    def podman(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run(["podman", *args], self.env, timeout=timeout)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def up(self) -> None:
        began = time.monotonic()
        proc = self.compose("up", "-d")
        self.timings["up -d"] = time.monotonic() - began
        assert proc.returncode == 0, f"podman-compose up -d:\n{proc.stdout}\n{proc.stderr[-4000:]}"

    def logs_tail(self) -> str:
        proc = self.compose("logs", "--no-color", f"--tail={LOG_TAIL}", timeout=120)
        text = ANSI_ESCAPE.sub("", proc.stdout)  # --no-color still leaves resets
        return f"podman-compose logs --tail={LOG_TAIL}:\n{text}{proc.stderr[-4000:]}"

    def containers(self) -> dict[str, str]:
        """The project's containers: service name -> container name."""
        proc = self.podman(
            "ps", "--all", f"--filter=label={PROJECT_LABEL}={self.project}",
            "--format={{.Names}} {{index .Labels \"io.podman.compose.service\"}}",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        pairs = (line.split() for line in proc.stdout.splitlines() if line.strip())
        return {service: name for name, service in pairs}

    def healthy(self, container: str) -> bool:
        """Runs the container's healthcheck once (compose.yaml's test); True if it passed."""
        return self.podman("healthcheck", "run", container, timeout=30).returncode == 0

    def summary(self, subscriber: str) -> dict[str, Any]:
        """A follower's latest run summary, from its status port inside its container."""
        proc = self.podman(
            "exec", self.container(subscriber), "python3", "-c",
            "import urllib.request as u; "
            "print(u.urlopen('http://127.0.0.1:8080/summary', timeout=5).read().decode())",
        )  # fmt: skip
        assert proc.returncode == 0, f"{subscriber} /summary:\n{proc.stdout}{proc.stderr}"
        document: dict[str, Any] = json.loads(proc.stdout)
        return document

    def psql(self, database: str, query: str) -> str:
        proc = self.podman(
            "exec", self.container("postgresql"), "psql", "-h", "/var/run/postgresql",
            "-U", "feedline", "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", query,
        )  # fmt: skip
        assert proc.returncode == 0, f"psql {database}:\n{proc.stdout}{proc.stderr}"
        return proc.stdout.strip()

    def leftovers(self) -> dict[str, list[str]]:
        """What the project left behind: containers, pods, networks, volumes."""
        label = f"--filter=label={PROJECT_LABEL}={self.project}"
        found: dict[str, list[str]] = {}
        for kind, argv in {
            "containers": ["ps", "--all", label, "--format={{.Names}}"],
            "pods": ["pod", "ps", f"--filter=name={self.project}", "--format={{.Name}}"],
            "networks": ["network", "ls", "--format={{.Name}}"],
            "volumes": ["volume", "ls", "--format={{.Name}}"],
        }.items():
            proc = self.podman(*argv)
            names = [n for n in proc.stdout.split() if self.project in n]
            if proc.returncode != 0 or names:
                found[kind] = names or [proc.stderr.strip()]
        return found

    def down(self) -> dict[str, list[str]]:
        """`podman-compose down -v`; what it left behind (then removed by force)."""
        began = time.monotonic()
        proc = self.compose("down", "-v", timeout=300)
        self.timings["down -v"] = time.monotonic() - began
        left = self.leftovers()
        if proc.returncode != 0:
            left["down -v"] = [proc.stderr[-2000:]]
        # Never leave the machine dirty, whatever happened.
        for name in left.get("containers", []):
            self.podman("rm", "--force", "--time=1", name)
        for name in left.get("pods", []):
            self.podman("pod", "rm", "--force", name)
        for name in left.get("networks", []):
            self.podman("network", "rm", "--force", name)
        for name in left.get("volumes", []):
            self.podman("volume", "rm", "--force", name)
        return left


def _answers(probe: Callable[[], httpx.Response]) -> httpx.Response | None:
    try:
        return probe()
    except httpx.TransportError:
        return None


def _offers_for(stack: ComposeStack, user_id: int) -> list[dict[str, Any]]:
    response = _answers(
        lambda: httpx.get(f"{stack.url('loyalty-program')}/users/{user_id}/offers", timeout=5)
    )
    if response is None or response.status_code != 200:
        return []
    offers: list[dict[str, Any]] = response.json()
    return offers


def _offers_with(stack: ComposeStack, user_id: int, offer_id: int) -> list[dict[str, Any]] | None:
    """The user's offers once they include OFFER_ID, else None."""
    offers = _offers_for(stack, user_id)
    return offers if any(offer["offerId"] == offer_id for offer in offers) else None


def _post_offer(stack: ComposeStack, description: str) -> int:
    response = httpx.post(
        f"{stack.url('special-offers')}/offers", json={"description": description}, timeout=10
    )
    assert response.status_code == 201, response.text
    offer_id: int = response.json()["id"]
    return offer_id


def _caught_up(stack: ComposeStack, subscriber: str, position: int) -> dict[str, Any] | None:
    summary = stack.summary(subscriber)
    return summary if summary["outcome"] == "CaughtUp" and summary["position"] >= position else None


def exercise(stack: ComposeStack) -> None:
    began = time.monotonic()
    containers = stack.containers()
    assert set(containers) == {"postgresql", *SERVICES, *SUBSCRIBERS}, containers
    for service, name in containers.items():
        wait_for(
            partial(stack.healthy, name),
            timeout=180,
            interval=1,
            what=f"the healthcheck of {service} ({name})",
        )
    stack.timings["all healthy"] = time.monotonic() - began

    # Every service answers on its published loopback port.
    for service in SERVICES:
        ready = httpx.get(f"{stack.url(service)}/health/ready", timeout=5)
        assert ready.status_code == 200, f"{service}: {ready.status_code} {ready.text}"

    # A user with no interests: every offer interests them.
    user = httpx.post(f"{stack.url('loyalty-program')}/users", json={"name": "Ada"}, timeout=10)
    assert user.status_code == 201, user.text
    user_id: int = user.json()["id"]

    began = time.monotonic()
    first = _post_offer(stack, "10% off")
    wait_for(
        partial(_offers_with, stack, user_id, first),
        timeout=60,
        interval=0.2,
        what="the first offer in loyalty-program's read model (GET /users/ID/offers)",
    )
    stack.timings["first offer in the read model"] = time.monotonic() - began

    # Both followers caught up with the feed's head.
    for subscriber in SUBSCRIBERS:
        summary = wait_for(
            partial(_caught_up, stack, subscriber, 1),
            timeout=30,
            interval=0.5,
            what=f"{subscriber}'s /summary CaughtUp at position 1",
        )
        assert summary["lag"] == 0, summary
        assert summary["head"] == summary["position"], summary

    # The second offer arrives within seconds: the followers long-poll the feed.
    began = time.monotonic()
    second = _post_offer(stack, "20% off books")
    offers = wait_for(
        partial(_offers_with, stack, user_id, second),
        timeout=FOLLOW_LATENCY_LIMIT,
        interval=0.1,
        what="the second offer in loyalty-program's read model",
    )
    stack.timings["second offer in the read model"] = time.monotonic() - began
    assert offers == [
        {"offerId": first, "description": "10% off"},
        {"offerId": second, "description": "20% off books"},
    ]

    # offer-documents: the latest version of every offer in the read-models database.
    documents = wait_for(
        lambda: (
            stack.psql(
                "read_models",
                "SELECT count(*) FROM feedline_documents WHERE subscription = 'offer-documents'",
            )
            == "2"
        ),
        timeout=FOLLOW_LATENCY_LIMIT,
        interval=0.2,
        what="two offer documents in the read-models database",
    )
    assert documents


def test_podman_compose_up_reaches_a_caught_up_read_model(
    feedline_image: str, postgres_image: str
) -> None:
    if run([sys.executable, "-m", "podman_compose", "--version"], podman_env()).returncode != 0:
        pytest.fail("podman-compose is missing: make install (pyproject's dev extras)")
    ports = {service: free_port() for service in SERVICES}
    env = {
        **podman_env(),
        "FEEDLINE_IMAGE": feedline_image,
        "FEEDLINE_POSTGRES_IMAGE": postgres_image,
        **{PORT_VARIABLES[service]: str(port) for service, port in ports.items()},
    }
    stack = ComposeStack(f"feedline-compose-{uuid.uuid4().hex[:8]}", env, ports)
    began = time.monotonic()
    try:
        stack.up()
        exercise(stack)
    except Exception as exc:
        raise AssertionError(f"{exc}\n\n{stack.logs_tail()}") from exc
    finally:
        left = stack.down()
        stack.timings["total"] = time.monotonic() - began
        print("compose timings (s):", {k: round(v, 1) for k, v in stack.timings.items()})
    assert left == {}, f"podman-compose down -v left {left}"
