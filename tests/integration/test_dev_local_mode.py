"""`feedline dev` end to end: real services, real subscriber runs, on loopback.

The example folder (examples/local) is copied and run as a user would: offers
posted to special-offers show up in the loyalty program's read model through
the subscription, in CronJob mode (run now: --run-now and SIGUSR1) and in
Follow mode; the status shows position and lag; SIGTERM leaves no process.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from feedline.dev.main import DASHBOARD_PORT
from feedline.services.registry import DEFAULT_PORTS
from tests.support.ports import PORT_OFFSET_MAX, pickable
from tests.support.services import FEEDLINE
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "local"
SUBSCRIPTION = "loyalty-special-offers"


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_offset() -> int:
    """An offset that puts every service's default port (and the dashboard's) on a free
    port outside the ephemeral range, where no outgoing connection can take it."""
    ports = [*DEFAULT_PORTS.values(), DASHBOARD_PORT]
    for _ in range(2000):
        offset = random.randrange(2000, PORT_OFFSET_MAX + 1, 10)
        if all(pickable(p + offset) and _free(p + offset) for p in ports):
            return offset
    raise RuntimeError("no free port offset found")


@dataclass
class Dev:
    folder: Path
    offset: int
    process: subprocess.Popen[bytes]
    output: Path

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{DEFAULT_PORTS[service] + self.offset}"

    def status(self) -> dict[str, Any] | None:
        try:
            document: dict[str, Any] = json.loads(
                (self.folder / ".feedline-dev" / "status.json").read_text()
            )
        except (OSError, ValueError):
            return None
        (subscription,) = document["subscriptions"]
        result: dict[str, Any] = subscription
        return result

    def log(self) -> str:
        return self.output.read_text(errors="replace")


def copy_example(tmp_path: Path, mode: str = "CronJob") -> Path:
    folder = tmp_path / "examples-copy"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns(".feedline-dev"))
    if mode == "Follow":
        manifest = folder / f"{SUBSCRIPTION}.yaml"
        text = manifest.read_text().replace("mode: CronJob", "mode: Follow")
        manifest.write_text(text.replace('  schedule: "* * * * *"\n', ""))
    return folder


@contextlib.contextmanager
def dev_starter(tmp_path: Path) -> Iterator[Callable[..., Dev]]:
    """``start(folder, *args) -> Dev``: `feedline dev` as a subprocess; killed at the end."""
    started: list[Dev] = []

    def start(folder: Path, *args: str) -> Dev:
        offset = free_port_offset()
        output = tmp_path / f"dev-{len(started)}.out"
        with open(output, "wb") as out:
            process = subprocess.Popen(
                [FEEDLINE, "dev", str(folder), "--port-offset", str(offset), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "COLUMNS": "250"},
            )
        dev = Dev(folder, offset, process, output)
        started.append(dev)
        return dev

    try:
        yield start
    finally:
        for dev in started:
            if dev.process.poll() is None:
                dev.process.kill()
                dev.process.wait()


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator[Callable[..., Dev]]:
    with dev_starter(tmp_path) as start:
        yield start


def _descendants(pid: int) -> list[psutil.Process]:
    return list(psutil.Process(pid).children(recursive=True))


def _stop_and_check_nothing_is_left(dev: Dev, expected_children: int) -> None:
    children = _descendants(dev.process.pid)
    assert len(children) >= expected_children, children
    dev.process.send_signal(signal.SIGTERM)
    assert dev.process.wait(timeout=30) == 0, dev.log()
    _gone, alive = psutil.wait_procs(children, timeout=5)
    assert alive == [], alive
    assert "stopping: subscribers, then services" in dev.log()


def _offers(http: httpx.Client, dev: Dev, user: int) -> list[dict[str, Any]]:
    response = http.get(f"{dev.url('loyalty-program')}/users/{user}/offers")
    response.raise_for_status()
    offers: list[dict[str, Any]] = response.json()
    return offers


def _post_offers(http: httpx.Client, dev: Dev, *descriptions: str) -> None:
    for description in descriptions:
        response = http.post(
            f"{dev.url('special-offers')}/offers", json={"description": description}
        )
        assert response.status_code == 201, response.text


def _register_user(http: httpx.Client, dev: Dev) -> int:
    response = http.post(f"{dev.url('loyalty-program')}/users", json={"name": "Ada"})
    assert response.status_code == 201, response.text
    user_id: int = response.json()["id"]
    return user_id


def services_ready(dev: Dev) -> bool:
    if dev.process.poll() is not None:
        raise AssertionError(f"feedline dev exited with {dev.process.returncode}:\n{dev.log()}")
    return "services ready" in dev.log()


def test_cronjob_mode_run_now_then_status_and_once(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    folder = copy_example(tmp_path)
    dev = start_dev(folder, "--run-now")
    wait_for(lambda: services_ready(dev), what="the services")
    # --run-now: the first run starts at once (the schedule is every minute), on an empty feed.
    first = wait_for(
        lambda: (s := dev.status()) and s["runs"] >= 1 and s, what="the run-now run", timeout=30
    )
    assert first["outcome"] == "CaughtUp", first
    assert (first["position"], first["lag"]) == (0, 0)
    assert first["state"] == "Waiting"
    assert first["schedule"] == "* * * * *"
    assert first["nextRun"] is not None
    with httpx.Client(timeout=10) as http:
        user = _register_user(http, dev)
        _post_offers(http, dev, "10% off books", "2 for 1 coffee", "free shipping")
        assert _offers(http, dev, user) == []  # nothing until the subscription runs
        dev.process.send_signal(signal.SIGUSR1)  # run now, without waiting for the minute
        offers = wait_for(lambda: _offers(http, dev, user), what="the read model", timeout=30)
    assert [o["description"] for o in offers] == [
        "10% off books",
        "2 for 1 coffee",
        "free shipping",
    ]
    status = wait_for(lambda: (s := dev.status()) and s["runs"] >= 2 and s, what="the second run")
    assert (status["position"], status["head"], status["lag"]) == (3, 3, 0), status
    assert status["processed"] == 3
    assert "position=3 head=3 lag=0" in dev.log()
    # The summary came from the run's termination log, mapped to a local file.
    termination_log = folder / ".feedline-dev" / "subscriptions" / SUBSCRIPTION / "termination-log"
    assert json.loads(termination_log.read_text())["position"] == 3
    _stop_and_check_nothing_is_left(dev, expected_children=4)  # the four services

    # --once on the same state: services start on their databases, one run each, a table.
    once = subprocess.run(
        [FEEDLINE, "dev", str(folder), "--once", "--port-offset", str(free_port_offset())],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert once.returncode == 0, once.stderr
    for column in ("NAME", "MODE", "POSITION", "HEAD", "LAG"):
        assert column in once.stdout
    row = next(line for line in once.stdout.splitlines() if SUBSCRIPTION in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells[:2] == [SUBSCRIPTION, "CronJob"]
    assert cells[4:8] == ["CaughtUp", "3", "3", "0"]


def test_follow_mode_fills_the_read_model_continuously(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    folder = copy_example(tmp_path, mode="Follow")
    dev = start_dev(folder, "--service", "special-offers", "--service", "loyalty-program")
    wait_for(lambda: services_ready(dev), what="the services")
    wait_for(lambda: (s := dev.status()) and s["state"] == "Following", what="the follower")
    with httpx.Client(timeout=10) as http:
        user = _register_user(http, dev)
        _post_offers(http, dev, "10% off books")
        wait_for(lambda: len(_offers(http, dev, user)) == 1, what="the first offer", timeout=15)
        _post_offers(http, dev, "2 for 1 coffee", "free shipping")

        def three_offers() -> list[dict[str, Any]] | None:
            offers = _offers(http, dev, user)
            return offers if len(offers) == 3 else None

        offers = wait_for(three_offers, what="three offers")
    assert offers[-1]["description"] == "free shipping"
    status = wait_for(
        lambda: (s := dev.status()) and s["position"] == 3 and s, what="the follower's summary"
    )
    assert (status["mode"], status["state"], status["head"], status["lag"]) == (
        "Follow",
        "Following",
        3,
        0,
    )
    assert status["schedule"] is None
    _stop_and_check_nothing_is_left(dev, expected_children=3)  # two services and the follower
    final = dev.status()
    assert final is not None
    assert final["state"] == "Stopped"
    assert final["position"] == 3


def test_once_reports_a_failed_run_and_exits_1(tmp_path: Path) -> None:
    folder = copy_example(tmp_path)
    manifest = folder / f"{SUBSCRIPTION}.yaml"
    manifest.write_text(
        manifest.read_text().replace(
            "loyalty_program.projection:project_special_offers", "nope:missing"
        )
    )
    result = subprocess.run(
        [
            FEEDLINE,
            "dev",
            str(folder),
            "--once",
            "--output",
            "json",
            "--service",
            "special-offers",
            "--service",
            "loyalty-program",
            "--port-offset",
            str(free_port_offset()),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result
    document = json.loads(result.stdout)
    assert list(document["services"]) == ["special-offers", "loyalty-program"]
    (status,) = document["subscriptions"]
    assert status["outcome"] == "Failed"
    assert status["exitCode"] == 1
    assert "nope" in status["message"]
