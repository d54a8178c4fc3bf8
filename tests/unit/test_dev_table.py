"""`feedline dev`'s table: every value that matters stays readable on an 80-column terminal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from feedline.dev.status import ServiceStatus, SubscriptionStatus
from feedline.dev.table import COMPACT_COLUMNS, WIDE_COLUMNS, render_table

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
LONG_MESSAGE = (
    "cannot reach the feed http://127.0.0.1:8001/events: connection refused "
    "(unreachable after 8 retries)"
)


def _statuses() -> list[SubscriptionStatus]:
    cron = SubscriptionStatus(
        "loyalty-special-offers", "CronJob", "http://x/events", "*/5 * * * *", False
    )
    cron.update(
        {
            "outcome": "CaughtUp",
            "position": 1234,
            "head": 1240,
            "lag": 6,
            "processed": 1234,
            "deadLettered": 0,
            "message": "caught up",
        }
    )
    cron.runs, cron.next_run = 17, NOW + timedelta(seconds=52)
    follow = SubscriptionStatus(
        "cart-follower", "Follow", "http://x/events", None, False, state="Restarting"
    )
    follow.update({"outcome": "Failed", "position": 88, "head": 90, "lag": 2})
    follow.message, follow.runs, follow.restarts = LONG_MESSAGE, 3, 2
    return [cron, follow]


def _services() -> list[ServiceStatus]:
    return [
        ServiceStatus(
            "special-offers",
            "http://127.0.0.1:8001",
            Path("/s/logs/special-offers.log"),
            "Ready",
            1,
            4242,
            "killed by SIGKILL",
            grpc_url="grpc://127.0.0.1:41001",
        ),
        ServiceStatus("loyalty-program", "http://127.0.0.1:8002", Path("/s/l.log"), "Ready"),
    ]


def _render(width: int) -> str:
    console = Console(width=width, record=True)
    console.print(render_table(_statuses(), _services(), NOW))
    return console.export_text()


def _words(text: str) -> str:
    return " ".join(text.split())


def test_at_80_columns_every_header_and_key_value_is_readable() -> None:
    text = _render(80)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    header = next(line for line in text.splitlines() if line.startswith("NAME"))
    assert header.split() == list(COMPACT_COLUMNS)
    lines = text.splitlines()
    cron = next(line for line in lines if line.startswith("loyalty-special-offers"))
    # name, state, position, head, lag, runs, next run and message on the row itself
    row = ["loyalty-special-offers", "Waiting", "1234", "1240", "6", "17", "52s", "caught", "up"]
    assert cron.split() == row
    follow = next(line for line in lines if line.startswith("cart-follower"))
    assert follow.split()[:7] == ["cart-follower", "Restarting", "88", "90", "2", "3", "-"]
    words = _words(text)
    for value in ("CronJob */5 * * * *", "CaughtUp", "Follow", "Failed", "restarts 2"):
        assert value in words, value
    # The message wraps in its column, not cut: read the column back.
    column = header.index("MESSAGE")
    start = lines.index(follow)
    end = next(i for i, line in enumerate(lines) if line.strip() == "services")
    message = _words(" ".join(line[column:] for line in lines[start:end]))
    assert message.replace("/ ", "/") == LONG_MESSAGE
    # The services: each with its state, restarts and last exit.
    for value in ("SERVICE", "URL", "STATE", "RESTARTS", "PID", "LAST EXIT"):
        assert value in text
    service = next(line for line in lines if line.startswith("special-offers"))
    assert service.split() == [
        "special-offers",
        "http://127.0.0.1:8001",
        "Ready",
        "1",
        "4242",
        "killed",
        "by",
        "SIGKILL",
    ]
    # Its gRPC feed's address under its HTTP URL, in the same column.
    under = lines[lines.index(service) + 1]
    assert under.split() == ["grpc://127.0.0.1:41001"]
    assert under.index("grpc://") == service.index("http://")


def test_a_wide_terminal_shows_every_column() -> None:
    text = _render(200)
    for header, _ in WIDE_COLUMNS:
        assert header in text
    assert "MESSAGE" in text
    row = next(line for line in text.splitlines() if "loyalty-special-offers" in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells == [
        "loyalty-special-offers",
        "CronJob",
        "*/5 * * * *",
        "Waiting",
        "CaughtUp",
        "1234",
        "1240",
        "6",
        "1234",
        "0",
        "17",
        "0",
        "in 52s",
        "caught up",
    ]
    follow = next(line for line in text.splitlines() if "cart-follower" in line)
    assert [cell.strip() for cell in follow.split("│")[1:-1]][10:12] == ["3", "2"]
    lines = text.splitlines()
    service = next(line for line in lines if "special-offers " in line and "http://" in line)
    under = [cell.strip() for cell in lines[lines.index(service) + 1].split("│")[1:-1]]
    assert under[:2] == ["", "grpc://127.0.0.1:41001"]


def test_the_status_line_and_json_carry_the_restarts() -> None:
    cron, follow = _statuses()
    assert "position=1234 head=1240 lag=6" in cron.line()
    assert (follow.to_dict()["restarts"], follow.to_dict()["pid"]) == (2, None)
    assert follow.down_after_crash
    assert not cron.down_after_crash
    special, loyalty = _services()
    assert special.to_dict() == {
        "url": "http://127.0.0.1:8001",
        "grpcUrl": "grpc://127.0.0.1:41001",
        "state": "Ready",
        "restarts": 1,
        "pid": 4242,
        "lastExit": "killed by SIGKILL",
        "log": "/s/logs/special-offers.log",
    }
    assert not special.down_after_crash
    special.state = "Restarting"
    assert special.down_after_crash
    loyalty.state = "Restarting"
    assert not loyalty.down_after_crash  # never crashed
