"""`feedline dev` prints its processes' warning lines on its own terminal (--console-logs)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_dev_local_mode import (
    Dev,
    copy_example,
    dev_starter,
    services_ready,
)
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator[Callable[..., Dev]]:
    with dev_starter(tmp_path) as start:
        yield start


def test_a_services_warning_reaches_the_dev_terminal_and_info_does_not(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    dev = start_dev(copy_example(tmp_path), "--no-dashboard")
    wait_for(lambda: services_ready(dev), what="the services")
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{dev.url('special-offers')}/offers/4242").status_code == 404
        offer = {"description": "10% off"}
        assert http.post(f"{dev.url('special-offers')}/offers", json=offer).status_code == 201
    line = wait_for(
        lambda: next((x for x in dev.log().splitlines() if "/offers/4242" in x), None),
        what="the 404's access line on dev's terminal",
        timeout=15,
    )
    assert line.startswith("special-offers | warning feedline.access: request"), line
    assert "status=404" in line
    # The 201 is an info line: in the log file and the dashboard, not on the terminal.
    assert not [x for x in dev.log().splitlines() if x.startswith("special-offers | info")]


def test_console_logs_none_prints_no_process_line(
    tmp_path: Path, start_dev: Callable[..., Dev]
) -> None:
    dev = start_dev(copy_example(tmp_path), "--no-dashboard", "--console-logs", "none")
    wait_for(lambda: services_ready(dev), what="the services")
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{dev.url('special-offers')}/offers/4242").status_code == 404
    log = tmp_path / "examples-copy" / ".feedline-dev" / "logs" / "special-offers.log"
    wait_for(lambda: "/offers/4242" in log.read_text(), what="the 404 in the service's log")
    # The echo reads every 0.5 s: a few of its rounds after the line was written.
    time.sleep(2)
    assert "/offers/4242" not in dev.log()
