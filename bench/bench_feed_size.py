"""Feed size: page latency at the start, middle and head of a large feed, and bytes per event.

Run: ``.venv/bin/python -m bench.bench_feed_size --events 10000000 --samples 200``
(``make bench`` runs ``--events 200000 --samples 50``).

One throwaway PostgreSQL server (durable: fsync on, the defaults); the
special-offers service (``feedline serve``) creates its event store, then
PostgreSQL fills it with N ``SpecialOfferCreated`` events in the store's
exact format (``bench.store_rows.generate_offer_events``: ``generate_series``,
the primary key and the name index dropped during the load and built again,
then ``VACUUM (ANALYZE)``), some of them checked against the store's own
``render_event``. Then, over real HTTP (one keep-alive connection, one request
at a time), ``GET /events?start=S&limit=1000`` for pages at three places:

- **start**: S = 1, 1001, 2001, ... (the first ``--samples`` pages);
- **middle**: the same from S = N/2 + 1;
- **head**: the last ``--samples`` full pages, the last ending at N;

read in turn (start, middle, head, start, ...) so the machine's other work
falls on all three alike, after ``--warmup`` requests not counted. Each
answer must be a 200 with exactly ``limit`` events numbered S..S+999. Beside
each request the same page is read from PostgreSQL directly (asyncpg: the
head, then the store's own page query, ``string_agg`` of ``event_json``):
the database's share of the latency. p50 and p99 are nearest rank (each a
measured sample). Also printed: the generation time, and the event store's
size per event (``pg_total_relation_size('events')`` / count; heap, indexes).
A last line ``SUMMARY {json}`` feeds ``bench.summary``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from tests.support.postgres import throwaway_postgres
from tests.support.services import running_service

from bench.checks import (
    CheckError,
    cores,
    fail_and_exit,
    load_average,
    percentile,
    ratio,
    require,
    significant,
)
from bench.harness import DURABILITY_SETTINGS, create_databases, server_conditions, wait_connectable
from bench.store_rows import Generation, generate_offer_events, generated_format_problems

LIMIT = 1000
PLACES = ("start", "middle", "head")
# The store's page query (EventStore.read_page on PostgreSQL), for the database's share.
HEAD_QUERY = "SELECT coalesce(max(sequence_number), 0) FROM events"
PAGE_QUERY = """
SELECT count(*), coalesce(max(sequence_number), 0),
       convert_to('[' || coalesce(string_agg(event_json, ',' ORDER BY sequence_number), '')
                  || ']', 'UTF8')
FROM (SELECT sequence_number, event_json FROM events
      WHERE sequence_number >= $1 AND sequence_number < $2
      ORDER BY sequence_number LIMIT $3) AS page
"""


def page_starts(events: int, samples: int) -> dict[str, list[int]]:
    """Where each place's pages start (each a full page of LIMIT events within 1..events)."""
    last = events - LIMIT + 1
    middle = events // 2 + 1
    return {
        "start": [1 + k * LIMIT for k in range(samples)],
        "middle": [min(middle + k * LIMIT, last) for k in range(samples)],
        "head": [last - (samples - 1 - k) * LIMIT for k in range(samples)],
    }


def page_problems(body: bytes, start: int) -> list[str]:
    events = orjson.loads(body)
    numbers = [event["sequenceNumber"] for event in events]
    if numbers != list(range(start, start + LIMIT)):
        shown = f"{numbers[0]}..{numbers[-1]}" if numbers else "none"
        expected = f"{start}..{start + LIMIT - 1}"
        return [f"page at {start}: {len(numbers)} events ({shown}), expected {expected}"]
    return []


@dataclass
class Samples:
    http: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PLACES})
    database: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PLACES})


async def measure(base_url: str, store_url: str, events: int, samples: int, warmup: int) -> Samples:
    starts = page_starts(events, samples)
    measured = Samples()
    connection = await asyncpg.connect(store_url)
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            for number in range(warmup):
                start = starts[PLACES[number % 3]][number % samples]
                (
                    await client.get("/events", params={"start": start, "limit": LIMIT})
                ).raise_for_status()
            for index in range(samples):
                for place in PLACES:
                    start = starts[place][index]
                    sent = time.perf_counter()
                    answer = await client.get("/events", params={"start": start, "limit": LIMIT})
                    measured.http[place].append(time.perf_counter() - sent)
                    if answer.status_code != 200:
                        raise CheckError(f"GET /events?start={start}: {answer.status_code}")
                    require(f"{place} page", page_problems(answer.content, start))
                    sent = time.perf_counter()
                    head = await connection.fetchval(HEAD_QUERY)
                    count, _, body = await connection.fetchrow(PAGE_QUERY, start, head + 1, LIMIT)
                    measured.database[place].append(time.perf_counter() - sent)
                    if count != LIMIT or bytes(body) != answer.content:
                        raise CheckError(
                            f"page at {start}: PostgreSQL's page differs from the feed's"
                        )
    finally:
        await connection.close()
    return measured


@dataclass(frozen=True)
class Size:
    count: int
    total: int
    heap: int
    indexes: int


async def store_size(store_url: str) -> Size:
    connection = await asyncpg.connect(store_url)
    try:
        row = await connection.fetchrow(
            "SELECT (SELECT count(*) FROM events), pg_total_relation_size('events'), "
            "pg_relation_size('events'), pg_indexes_size('events')"
        )
    finally:
        await connection.close()
    return Size(*row)


async def main(events: int, samples: int, warmup: int) -> None:
    with throwaway_postgres(durable=True) as server:
        server_url = server.url()
        await wait_connectable(server_url)
        postgres = await server_conditions(server_url)
        durability = ", ".join(f"{name}={postgres[name]}" for name in DURABILITY_SETTINGS)
        conditions = [
            f"PostgreSQL {postgres['server_version']}, one throwaway server; {durability}",
            f"PostgreSQL data directory: {postgres['data_directory']}",
            f"{events:,} events; {samples} pages of {LIMIT:,} per place, {warmup} warm-up "
            "requests; one keep-alive HTTP connection, one request at a time",
            f"machine: {cores()} cores shared by PostgreSQL, the service, this process and "
            f"whatever else runs; Python {platform.python_version()}",
        ]
        print("conditions:")
        for line in conditions:
            print(f"  {line}")
        print(f"  load average at start: {load_average()}", flush=True)
        await create_databases(server_url, "feed")
        store_url = server.url("feed")
        with running_service("special-offers", store_url) as base_url:
            print(f"generating {events:,} events ...", flush=True)
            generation = await generate_offer_events(store_url, events)
            print(
                f"generated in {generation.seconds:.1f} s (rows {generation.insert_seconds:.1f} s, "
                f"indexes {generation.index_seconds:.1f} s, VACUUM ANALYZE "
                f"{generation.vacuum_seconds:.1f} s)",
                flush=True,
            )
            sampled = sorted({1, 2, events // 2, events // 2 + 1, events - 1, events} - {0})
            require("generated events", await generated_format_problems(store_url, sampled))
            size = await store_size(store_url)
            require("event store", [] if size.count == events else [f"{size.count:,} events"])
            load_before = load_average()
            measured = await measure(base_url, store_url, events, samples, warmup)
            load_after = load_average()
    report(events, samples, conditions, generation, size, measured, (load_before, load_after))


def milliseconds(seconds: float) -> str:
    return significant(seconds * 1000)


def report(
    events: int,
    samples: int,
    conditions: list[str],
    generation: Generation,
    size: Size,
    measured: Samples,
    loads: tuple[str, str],
) -> None:
    print()
    print(f"Feed size: {events:,} events")
    print("conditions:")
    for line in conditions:
        print(f"  {line}")
    print(f"  load average (1, 5, 15 min): {loads[0]} before the pages, {loads[1]} after")
    print(
        f"generation: {generation.seconds:.3f} s = rows {generation.insert_seconds:.3f} s + "
        f"primary key and name index {generation.index_seconds:.3f} s + VACUUM (ANALYZE) "
        f"{generation.vacuum_seconds:.3f} s; {events / generation.seconds:,.0f} events/s"
    )
    print(
        f"size: {size.total:,} bytes in all ({size.heap:,} heap, {size.indexes:,} indexes): "
        f"{significant(size.total / size.count)} bytes per event "
        f"({significant(size.heap / size.count)} heap, "
        f"{significant(size.indexes / size.count)} indexes)"
    )
    print(f"GET /events?start=S&limit={LIMIT}, ms ({samples} pages per place)")
    print(f"{'':10}{'HTTP p50':>12}{'HTTP p99':>12}{'PG p50':>12}{'PG p99':>12}")
    figures: dict[str, dict[str, float]] = {}
    for place in PLACES:
        http, database = measured.http[place], measured.database[place]
        figures[place] = {
            "p50": percentile(http, 50),
            "p99": percentile(http, 99),
            "pg50": percentile(database, 50),
            "pg99": percentile(database, 99),
        }
        print(
            f"{place:10}"
            + "".join(f"{milliseconds(figures[place][k]):>12}" for k in figures[place])
        )
    start = figures["start"]
    for place in ("middle", "head"):
        here = figures[place]
        print(
            f"{place} / start, HTTP p50: {ratio(here['p50'] * 1000, start['p50'] * 1000)} ms; "
            f"p99: {ratio(here['p99'] * 1000, start['p99'] * 1000)} ms"
        )
    print(
        f"checks passed: {events:,} events in the store, sampled rows identical to render_event's; "
        f"every page a 200 with exactly {LIMIT:,} events S..S+{LIMIT - 1}, identical to "
        "PostgreSQL's own page"
    )
    summary: dict[str, Any] = {
        "module": "bench_feed_size",
        "events": events,
        "figures": [
            {
                "name": f"feed {place} p50",
                "value": round(figures[place]["p50"] * 1000, 3),
                "unit": "ms",
            }
            for place in PLACES
        ]
        + [
            {
                "name": f"feed {place} p99",
                "value": round(figures[place]["p99"] * 1000, 3),
                "unit": "ms",
            }
            for place in PLACES
        ]
        + [
            {"name": "feed bytes/event", "value": round(size.total / size.count, 1), "unit": "B"},
            {"name": "feed generation", "value": round(generation.seconds, 3), "unit": "s"},
        ],
    }
    print("SUMMARY " + orjson.dumps(summary).decode())


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=15)
    args = parser.parse_args()
    if args.samples < 1 or args.events < 4 * LIMIT * args.samples:
        parser.error("--events must hold --samples pages at each of the three places")
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    try:
        asyncio.run(main(args.events, args.samples, args.warmup))
    except CheckError as failure:
        fail_and_exit(parser.prog, failure)


if __name__ == "__main__":
    cli()
