"""The new benchmarks' pure parts: expected read models, page places, the summary table."""

from __future__ import annotations

import pytest
from bench.bench_feed_size import LIMIT, page_problems, page_starts
from bench.bench_shapes import (
    CREATED,
    UPDATED,
    final_rows,
    mixed_events,
    page_rows,
    update_description,
    update_heavy_events,
)
from bench.checks import final_rows_problems
from bench.summary import figures_from

pytestmark = pytest.mark.unit


def test_update_heavy_ends_with_each_offers_last_version() -> None:
    final = final_rows(update_heavy_events(10, 3))
    # events 1..10 over offers 1,2,3,1,2,3,1,2,3,1: the last writes of each offer.
    assert final == {
        1: (update_description(1, 3), 10),
        2: (update_description(2, 2), 8),
        3: (update_description(3, 2), 9),
    }
    names = [name for name, _ in update_heavy_events(10, 3)]
    assert names[:3] == [CREATED] * 3
    assert set(names[3:]) == {UPDATED}


def test_pages_of_the_key_count_fold_nothing_away() -> None:
    pages = page_rows(update_heavy_events(12, 4), 4)
    assert [len(page) for page in pages] == [4, 4, 4]
    assert pages[-1][0] == (1, update_description(1, 2), 9)


def test_a_filter_keeps_only_its_types() -> None:
    kept = final_rows(mixed_events(8), (CREATED,))
    assert sorted(kept) == [1, 5]
    both = final_rows(mixed_events(8), (CREATED, UPDATED))
    assert sorted(both) == [1, 2, 5, 6]


def test_final_rows_problems() -> None:
    expected = {1: ("a", 1), 2: ("b", 5)}
    assert final_rows_problems([(1, "a", 1), (2, "b", 5)], expected) == []
    problems = final_rows_problems([(1, "a", 1), (1, "a", 1), (3, "c", 3)], expected)
    assert "rows: 3, expected 2" in problems
    assert "1 offers in more than one row: 1" in problems
    assert "1 offers missing: 2" in problems
    assert "1 unexpected offers: 3" in problems
    stale = final_rows_problems([(1, "a", 1), (2, "old", 2)], expected)
    assert stale == ["1 rows with the wrong description or last_sequence_number: 2"]


def test_page_places_are_full_pages_inside_the_feed() -> None:
    starts = page_starts(200_000, 50)
    assert starts["start"][:2] == [1, 1 + LIMIT]
    assert starts["middle"][0] == 100_001
    assert starts["head"][-1] == 200_000 - LIMIT + 1
    for place in starts.values():
        assert len(set(place)) == len(place) == 50
        assert min(place) >= 1
        assert max(place) + LIMIT - 1 <= 200_000


def test_a_page_must_hold_exactly_its_numbers() -> None:
    body = b"[" + b",".join(b'{"sequenceNumber":%d}' % n for n in range(5, 5 + LIMIT)) + b"]"
    assert page_problems(body, 5) == []
    assert page_problems(body, 6) != []
    assert page_problems(b"[]", 1) == [f"page at 1: 0 events (none), expected 1..{LIMIT}"]


def test_the_summary_reads_every_kind_of_output() -> None:
    newer = figures_from(
        "shapes",
        ['SUMMARY {"figures":[{"name":"shape update","value":0.3155,"unit":"x floor"}]}'],
    )
    assert [(f.name, f.value) for f in newer] == [("shape update", "0.3155")]
    older = figures_from(
        "subscriber",
        ["subscriber / COPY:      0.2458 = 206,612 / 840,492 events/s over rows/s (target ...)"],
    )
    assert [(f.name, f.value) for f in older] == [("subscriber / COPY", "0.2458")]
    transports = figures_from(
        "transports", ["HTTP                         1.965     101,781  0.2850 = 101,781 / 357,119"]
    )
    assert [(f.name, f.value) for f in transports] == [("catch-up HTTP / COPY", "0.2850")]
    operator = figures_from(
        "operator", ["{", '  "all_ready_seconds": 14.7,', '  "count": 500', "}"]
    )
    assert [(f.name, f.value) for f in operator] == [("all_ready_seconds", "14.7")]
    assert figures_from("nothing", ["no figures here"]) == []
