"""The transport benchmark's pure helpers: percentiles, stream checks, rates, the transports."""

from __future__ import annotations

import pytest
from bench.bench_transports import Published, broker_source_problems, pages, transport_list
from bench.checks import percentile, sequence_problems

pytestmark = pytest.mark.unit


def test_percentiles_are_nearest_rank_measured_values() -> None:
    values = [float(n) for n in range(20, 0, -1)]  # 20 samples, unsorted
    assert percentile(values, 50) == 10.0
    assert percentile(values, 95) == 19.0
    assert percentile(values, 99) == 20.0
    assert percentile([3.0], 99) == 3.0
    # 7 % of 100 is the 7th value, not the 8th (7 / 100 * 100 is 7.000000000000001 in floats).
    assert percentile([float(n) for n in range(1, 101)], 7) == 7.0


def test_a_percentile_of_nothing_or_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="percent"):
        percentile([1.0], 0)
    with pytest.raises(ValueError, match="percent"):
        percentile([1.0], 101)


def test_an_exact_stream_passes() -> None:
    assert sequence_problems([1, 2, 3, 4], 4) == []


def test_a_stream_with_a_gap_fails() -> None:
    problems = sequence_problems([1, 2, 4], 4)
    assert "messages: 3, expected 4" in problems
    assert "1 sequence numbers missing: 3" in problems


def test_a_duplicate_fails_even_when_the_count_is_right() -> None:
    problems = sequence_problems([1, 2, 2, 3], 4)
    assert not any(problem.startswith("messages:") for problem in problems)
    assert "1 sequence numbers more than once: 2" in problems
    assert "1 sequence numbers missing: 4" in problems
    assert "out of order at message 3: 2 after 2" in problems


def test_a_stream_out_of_order_fails() -> None:
    assert sequence_problems([1, 3, 2, 4], 4) == ["out of order at message 3: 2 after 3"]


def test_a_stream_with_more_than_expected_fails() -> None:
    problems = sequence_problems([1, 2, 3], 2)
    assert problems == ["messages: 3, expected 2", "1 unexpected sequence numbers: 3"]


def test_the_rate_after_the_first_page_leaves_the_set_up_out() -> None:
    # 10,000 events in 1.5 s, the first 1,000 confirmed after 0.6 s: 9,000 in 0.9 s.
    run = Published(seconds=1.5, first_seconds=0.6, first_events=1000)
    assert run.rate(10_000) == pytest.approx(6666.67, rel=1e-4)
    assert run.rate_after_first(10_000) == pytest.approx(10_000.0)


def test_pages_cut_the_messages_in_order() -> None:
    assert [list(page) for page in pages(list(range(7)), 3)] == [[0, 1, 2], [3, 4, 5], [6]]


def test_the_broker_is_one_more_transport_behind_the_http_feed() -> None:
    without = transport_list("http://127.0.0.1:8000", 9090, None, "feedline.events.special-offers")
    assert [(t.key, t.feed_url, dict(t.env)) for t in without] == [
        ("http", "http://127.0.0.1:8000/events", {}),
        ("grpc", "grpc://127.0.0.1:9090", {}),
    ]
    url = "rabbitmq-stream://guest:guest@127.0.0.1:5552/%2F"
    listed = transport_list("http://127.0.0.1:8000", 9090, url, "feedline.events.special-offers")
    broker = listed[-1]
    assert [t.key for t in listed] == ["http", "grpc", "rabbitmq"]
    assert broker.feed_url == "http://127.0.0.1:8000/events"  # the fallback for what it lacks
    assert broker.env == {
        "FEEDLINE_BROKER_URL": url,
        "FEEDLINE_BROKER_STREAM": "feedline.events.special-offers",
    }


def closed(stream: int, http: int) -> str:
    return (
        '{"event": "broker transport closed", "level": "info", '
        f'"events_from_stream": {stream}, "events_from_http": {http}, "subscriptions": 1}}'
    )


def test_a_broker_run_that_read_everything_from_the_stream_passes() -> None:
    stderr = "\n".join(['{"event": "reading from the stream"}', "not json", closed(500, 0)])
    assert broker_source_problems(stderr, 500) == []


def test_a_broker_run_that_fell_back_to_the_http_feed_fails_saying_why() -> None:
    warning = (
        '{"event": "cannot read the broker\'s stream; reading from the HTTP feed", '
        '"level": "warning", "error": "TimeoutError: ", "retry": "not in this run", '
        '"broker": "rabbitmq-stream://guest@127.0.0.1:5552/%2F"}'
    )
    later = '{"event": "reading from the HTTP feed", "level": "warning", "reason": "later"}'
    problems = broker_source_problems("\n".join([warning, later, closed(200, 300)]), 500)
    assert problems == [
        "events from the stream: 200, expected 500",
        "events from the HTTP feed: 300, expected 0",
        "its first warning: event=cannot read the broker's stream; reading from the HTTP feed, "
        "error=TimeoutError: , retry=not in this run",
    ]


def test_a_broker_run_without_its_closing_line_fails() -> None:
    problems = broker_source_problems('{"event": "reading from the stream"}\n', 500)
    assert problems == [
        "no 'broker transport closed' log line: where its events came from is unknown"
    ]
