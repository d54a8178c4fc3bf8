"""`feedline dev`'s restarts: the back-off, and how an exit is said."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedline.dev.restarts import (
    FIRST_DELAY_SECONDS,
    MAX_DELAY_SECONDS,
    STABLE_SECONDS,
    Backoff,
    crash_line,
    describe_exit,
)

pytestmark = pytest.mark.unit


def test_the_delay_doubles_from_one_second_up_to_thirty() -> None:
    backoff = Backoff()
    delays = [backoff.delay(uptime=0.5) for _ in range(8)]
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert (FIRST_DELAY_SECONDS, MAX_DELAY_SECONDS) == (1, 30)


def test_a_process_that_stayed_up_starts_the_back_off_again() -> None:
    backoff = Backoff()
    assert [backoff.delay(0.1) for _ in range(4)] == [1, 2, 4, 8]
    assert backoff.delay(STABLE_SECONDS) == 1
    assert backoff.delay(STABLE_SECONDS - 1) == 2


@pytest.mark.parametrize(
    ("returncode", "said"),
    [
        (0, "exit code 0"),
        (2, "exit code 2"),
        (-9, "killed by SIGKILL"),
        (-15, "killed by SIGTERM"),
        (-99, "killed by signal 99"),
    ],
)
def test_describe_exit(returncode: int, said: str) -> None:
    assert describe_exit(returncode) == said


def test_the_crash_line_names_the_process_the_exit_and_the_log() -> None:
    log = Path("/state/logs/special-offers.log")
    assert crash_line("service", "special-offers", -9, log, 1, 1) == (
        "service special-offers crashed (killed by SIGKILL); "
        "log: /state/logs/special-offers.log; restart 1 in 1s"
    )
    assert crash_line("service", "x", 0, log, 4, 3).startswith("service x exited (exit code 0)")
