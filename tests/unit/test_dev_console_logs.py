"""The console's log lines: one line per record, and the CLI's levels are the module's."""

from __future__ import annotations

import pytest

from feedline.cli import ConsoleLevel
from feedline.dev.console_logs import CONSOLE_LEVELS, console_line
from feedline.dev.dashboard.logs import parse_line

pytestmark = pytest.mark.unit


def test_the_cli_offers_exactly_the_console_levels() -> None:
    assert [level.value for level in ConsoleLevel] == list(CONSOLE_LEVELS)


def test_a_record_is_one_line_named_by_its_process() -> None:
    record = parse_line(
        "special-offers",
        '{"timestamp": "t", "level": "warning", "logger": "feedline.access", '
        '"event": "request", "status": 404, "path": "/offers/9"}',
    )
    assert record is not None
    assert console_line(record) == (
        "special-offers | warning feedline.access: request status=404 path=/offers/9"
    )


def test_a_traceback_is_cut_to_its_last_line() -> None:
    record = parse_line(
        "loyalty-program",
        '{"timestamp": "t", "level": "error", "logger": "feedline.chassis", '
        '"event": "boom", "exception": "Traceback (most recent call last):\\n  File x\\n'
        'ValueError: bad"}',
    )
    assert record is not None
    assert console_line(record) == (
        "loyalty-program | error feedline.chassis: boom exception=ValueError: bad"
    )
