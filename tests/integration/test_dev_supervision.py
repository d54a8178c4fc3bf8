"""`feedline dev` supervises what it starts, as Compose and Aspire users expect.

Real `feedline dev` subprocesses on a copy of examples/local (on a free port
offset): a service or a follower killed with SIGKILL is reported at once
(naming it, the signal and its log), restarted, counted in status.json, and
`feedline dev` exits 1 when one could not be kept up; a feed no service
serves is said before the first run; `feedline dev run-now NAME` asks the
running `feedline dev` for a run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from feedline.services.registry import DEFAULT_PORTS
from tests.integration.test_dev_local_mode import (
    SUBSCRIPTION,
    Dev,
    copy_example,
    dev_starter,
    services_ready,
)
from tests.support.services import FEEDLINE
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

TWO_SERVICES = ("--service", "special-offers", "--service", "loyalty-program")


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator[Callable[..., Dev]]:
    with dev_starter(tmp_path) as start:
        yield start


def _document(dev: Dev) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads(
            (dev.folder / ".feedline-dev" / "status.json").read_text()
        )
    except (OSError, ValueError):
        return None
    return document


def _service(dev: Dev, name: str) -> dict[str, Any]:
    document = _document(dev)
    assert document is not None
    service: dict[str, Any] = document["services"][name]
    return service


def _stop(dev: Dev) -> int:
    dev.process.send_signal(signal.SIGTERM)
    return dev.process.wait(timeout=30)


def _started(start_dev: Callable[..., Dev], folder: Path, *args: str) -> Dev:
    dev = start_dev(folder, *args)
    wait_for(lambda: services_ready(dev), what="the services")
    return dev


def test_a_killed_service_is_reported_restarted_and_counted(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    dev = _started(start_dev, copy_example(tmp_path), *TWO_SERVICES)
    before = wait_for(lambda: _service(dev, "special-offers")["pid"], what="the service's pid")
    os.kill(before, signal.SIGKILL)
    log = dev.folder / ".feedline-dev" / "logs" / "special-offers.log"
    line = wait_for(
        lambda: next((x for x in dev.log().splitlines() if "crashed" in x), None),
        what="the crash line",
        timeout=10,
    )
    assert f"service special-offers crashed (killed by SIGKILL); log: {log}; restart 1 in" in line

    def ready_again() -> dict[str, Any] | None:
        service = _service(dev, "special-offers")
        return service if service["state"] == "Ready" and service["pid"] != before else None

    service = wait_for(ready_again, what="the restarted service", timeout=30)
    assert (service["restarts"], service["lastExit"]) == (1, "killed by SIGKILL")
    response = httpx.get(f"{dev.url('special-offers')}/health/ready", timeout=5)
    assert response.status_code == 200
    assert "service special-offers is up again" in dev.log()
    assert _stop(dev) == 0, dev.log()  # it crashed, but was kept up


def test_a_service_that_cannot_be_kept_up_makes_dev_exit_1(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    dev = _started(start_dev, copy_example(tmp_path), *TWO_SERVICES)
    pid = wait_for(lambda: _service(dev, "special-offers")["pid"], what="the service's pid")
    port = DEFAULT_PORTS["special-offers"] + dev.offset
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        os.kill(pid, signal.SIGKILL)

        def take_the_port() -> bool:
            try:
                squatter.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

        wait_for(take_the_port, what="the service's port", timeout=10, interval=0.01)
        squatter.listen()
        # Each restart fails (the port is taken): it exits, and is restarted after 2 s.
        wait_for(
            lambda: _service(dev, "special-offers")["restarts"] >= 2,
            what="a failed restart",
            timeout=30,
        )
        assert "service special-offers crashed (exit code " in dev.log()
        assert _stop(dev) == 1, dev.log()
    assert "service special-offers crashed and is not back up" in dev.log()


def test_a_killed_follower_is_reported_restarted_and_counted(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    dev = _started(start_dev, copy_example(tmp_path, mode="Follow"), *TWO_SERVICES)
    following = wait_for(
        lambda: (s := dev.status()) and s["state"] == "Following" and s["pid"] and s,
        what="the follower",
    )
    os.kill(following["pid"], signal.SIGKILL)
    log = dev.folder / ".feedline-dev" / "logs" / f"{SUBSCRIPTION}.log"
    wait_for(
        lambda: (
            (
                f"subscription {SUBSCRIPTION} (follower) crashed (killed by SIGKILL); log: {log}; "
                "restart 1 in 1s"
            )
            in dev.log()
        ),
        what="the crash line",
        timeout=10,
    )
    status = wait_for(
        lambda: (
            (s := dev.status())
            and s["state"] == "Following"
            and s["pid"] not in (None, following["pid"])
            and s
        ),
        what="the restarted follower",
        timeout=15,
    )
    assert status["restarts"] == 1
    with httpx.Client(timeout=10) as http:  # the new follower does its job
        user = http.post(f"{dev.url('loyalty-program')}/users", json={"name": "Ada"}).json()["id"]
        http.post(f"{dev.url('special-offers')}/offers", json={"description": "10% off"})
        wait_for(
            lambda: http.get(f"{dev.url('loyalty-program')}/users/{user}/offers").json(),
            what="the read model",
            timeout=15,
        )
    assert _stop(dev) == 0, dev.log()


def test_a_feed_no_service_serves_is_said_before_the_first_run(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    dev = _started(start_dev, copy_example(tmp_path), "--service", "loyalty-program", "--run-now")
    feed = f"http://127.0.0.1:{DEFAULT_PORTS['special-offers'] + dev.offset}/events"
    wait_for(lambda: "no service feedline dev runs serves it" in dev.log(), what="the warning")
    lines = dev.log().splitlines()
    (warning,) = [line for line in lines if "no service feedline dev runs serves it" in line]
    assert f"subscription {SUBSCRIPTION}: feed {feed}: " in warning
    assert "(it runs loyalty-program) and nothing answers there" in warning
    assert "special-offers is left out by --service: add --service special-offers" in warning
    assert not any("(run finished)" in line for line in lines[: lines.index(warning)])
    assert _stop(dev) == 0, dev.log()


def _run_now(folder: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FEEDLINE, "dev", "run-now", name, str(folder)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "250"},
    )


def test_run_now_asks_the_running_dev_for_a_run(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    folder = copy_example(tmp_path)
    dev = _started(start_dev, folder, *TWO_SERVICES)
    # At start: how to ask for a run, and the pid for SIGUSR1.
    wait_for(lambda: "run a CronJob subscription now" in dev.log(), what="the hint")
    assert f"feedline dev run-now NAME {folder}" in dev.log()
    assert f"kill -USR1 {dev.process.pid}" in dev.log()
    runs = (dev.status() or {"runs": 0})["runs"]

    asked = _run_now(folder, SUBSCRIPTION)
    assert asked.returncode == 0, asked
    assert SUBSCRIPTION in asked.stdout
    wait_for(lambda: (s := dev.status()) and s["runs"] > runs, what="the run", timeout=30)

    unknown = _run_now(folder, "nope")
    assert unknown.returncode == 1
    assert "no subscription 'nope'" in unknown.stderr
    assert f"known: {SUBSCRIPTION}" in unknown.stderr

    assert _stop(dev) == 0, dev.log()
    gone = _run_now(folder, SUBSCRIPTION)
    assert gone.returncode == 1
    assert "no feedline dev is running" in gone.stderr


def test_run_now_says_a_killed_dev_is_not_running(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    folder = copy_example(tmp_path)
    dev = _started(start_dev, folder, "--service", "special-offers")
    control = folder / ".feedline-dev" / "control.json"
    wait_for(control.exists, what="control.json")
    assert control.stat().st_mode & 0o777 == 0o600  # it holds the token
    dev.process.kill()
    dev.process.wait()
    stale = _run_now(folder, SUBSCRIPTION)
    assert stale.returncode == 1
    assert f"(pid {dev.process.pid})" in stale.stderr
    assert "it is not running any more" in stale.stderr
