"""bench.summary: every benchmark's headline figures in one table."""

from __future__ import annotations

import pytest
from bench.summary import figures_from, summary_line, table

pytestmark = pytest.mark.unit


def test_a_summary_line_is_read_back_as_it_was_written() -> None:
    line = summary_line(
        "bench_longpoll",
        [{"name": "longpoll grpc 1,000 p50 / floor", "value": 16.75, "unit": "ratio"}],
    )
    found = figures_from("longpoll", ["some output", line])
    assert [(f.source, f.name, f.value, f.unit) for f in found] == [
        ("longpoll", "longpoll grpc 1,000 p50 / floor", "16.75", "ratio")
    ]


def test_a_log_without_figures_is_listed_as_such_never_skipped() -> None:
    assert figures_from("fanout", ["filling the event store ...", "checks passed"]) == []
    assert table([], ["fanout"])[-1] == "fanout: no figure found in its output"


def test_a_long_unit_does_not_run_into_its_detail() -> None:
    line = summary_line(
        "bench_fanout",
        [{"name": "fanout 50 readers direct", "value": 3532289, "unit": "events/s",
          "detail": "service 0.2033 µs"}],
    )  # fmt: skip
    (row,) = table(figures_from("fanout", [line]), [])[1:]
    assert "events/s  service 0.2033 µs" in row
