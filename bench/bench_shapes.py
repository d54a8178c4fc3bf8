"""Catch-up shapes: insert-only, update-heavy, mixed types behind a filter, each against its floor.

Run: ``.venv/bin/python -m bench.bench_shapes --events 200000 --keys 10000 --runs 3``

One throwaway PostgreSQL server (durable: fsync on, the defaults) holds one
special-offers event store per shape (the events COPied in, in the store's
exact format: ``bench.store_rows``) and every read model; the special-offers
service (``feedline serve``) serves each store's feed in turn. The
subscriber (``feedline subscribe``, pages of 10,000, the built-in loyalty
projection, as ``bench.bench_subscriber`` runs it) catches up from an empty
read model; its time is its summary's startTime to completionTime. Shapes:

1. **insert-only**: N ``SpecialOfferCreated`` events, distinct offers (the
   subscriber benchmark's feed). Floor: COPY of the N rows it ends with.
2. **update-heavy**: N events over K offers, round robin: event i writes
   offer ``(i - 1) % K + 1``; the first K create the offers, the rest are
   ``SpecialOfferUpdated`` with a new description each. With K = the page
   size every page holds each offer once, so the fold saves nothing: every
   event is one row written (an upsert), the worst case for the subscriber.
   Floors, for the K rows the read model ends with: COPY into a temporary
   staging table plus one ``INSERT ... ON CONFLICT DO UPDATE``, (a) into an
   empty table and (b) into a table already holding the K offers (older
   descriptions); the faster is the floor. Also timed, to say where the time
   goes: (c) the subscriber's own writes alone, the same staging + upsert per
   page of folded rows, one transaction per page, N rows in all.
3. **filtered**: N events of 4 types in turn (``SpecialOfferCreated``,
   ``SpecialOfferUpdated``, ``SpecialOfferViewed``, ``SpecialOfferShared``;
   each on its own offer), the subscription filters (``FEEDLINE_EVENT_TYPES``)
   1 type (keeps N/4) and 2 types (keeps N/2). Floor: COPY of the rows it keeps.

The ratio is the subscriber's events/s (events it applied, over its time)
over the floor's rows/s; the goal is >= 0.30 for every shape. With
``--runs R`` every subscriber run and floor is repeated R times,
alternating, each into a new database; medians are reported.

Checked, not assumed: each subscriber summary says how many events it
processed (N, or the kept ones), and every read model (each subscriber run's,
each floor's) holds exactly the rows its events must leave: each offer once,
none missing or extra, each with its last event's description and position
(``bench.checks.final_rows_problems``). The conditions are printed with the
figures, and a last line ``SUMMARY {json}`` for ``bench.summary``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import asyncpg
import orjson
from tests.support.postgres import throwaway_postgres
from tests.support.services import running_service

from bench.checks import (
    CheckError,
    cores,
    fail_and_exit,
    final_rows_problems,
    load_average,
    ratio,
    require,
)
from bench.harness import (
    DURABILITY_SETTINGS,
    LOYALTY_TABLE,
    SUBSCRIBER_PAGE,
    create_databases,
    description,
    run_subscriber_process,
    server_conditions,
    wait_connectable,
)
from bench.store_rows import copy_events

GOAL = 0.30
CREATED, UPDATED = "SpecialOfferCreated", "SpecialOfferUpdated"
MIXED_TYPES = (CREATED, UPDATED, "SpecialOfferViewed", "SpecialOfferShared")
FILTERS = ((CREATED,), (CREATED, UPDATED))

# offer -> (description, last_sequence_number): what a read model must end with.
FinalRows = dict[int, tuple[str, int]]
EventSource = Callable[[], Iterator[tuple[str, dict[str, Any]]]]


def insert_only_events(count: int) -> Iterator[tuple[str, dict[str, Any]]]:
    for n in range(1, count + 1):
        yield CREATED, {"offerId": n, "description": description(n)}


def update_description(offer: int, version: int) -> str:
    return f"special offer number {offer}, version {version}: {version % 50}% off"


def update_heavy_events(count: int, keys: int) -> Iterator[tuple[str, dict[str, Any]]]:
    for n in range(1, count + 1):
        offer, version = (n - 1) % keys + 1, (n - 1) // keys
        name = CREATED if version == 0 else UPDATED
        yield name, {"offerId": offer, "description": update_description(offer, version)}


def mixed_events(count: int) -> Iterator[tuple[str, dict[str, Any]]]:
    for n in range(1, count + 1):
        name = MIXED_TYPES[(n - 1) % len(MIXED_TYPES)]
        if name in (CREATED, UPDATED):
            yield name, {"offerId": n, "description": description(n)}
        else:
            yield name, {"offerId": n, "userId": n % 977, "channel": "web"}


def final_rows(
    events: Iterator[tuple[str, dict[str, Any]]], kept: Sequence[str] = (CREATED, UPDATED)
) -> FinalRows:
    """What the loyalty projection leaves after ``events`` (numbered 1..), of names ``kept``."""
    rows: FinalRows = {}
    for number, (name, content) in enumerate(events, 1):
        if name in kept:
            rows[content["offerId"]] = (content["description"], number)
    return rows


def page_rows(
    events: Iterator[tuple[str, dict[str, Any]]], page: int
) -> list[list[tuple[int, str, int]]]:
    """The rows the subscriber writes, per page of ``page`` events (folded: last per offer)."""
    pages: list[list[tuple[int, str, int]]] = []
    folded: dict[int, tuple[int, str, int]] = {}
    for number, (_, content) in enumerate(events, 1):
        folded[content["offerId"]] = (content["offerId"], content["description"], number)
        if number % page == 0:
            pages.append(list(folded.values()))
            folded = {}
    if folded:
        pages.append(list(folded.values()))
    return pages


def as_rows(final: FinalRows) -> list[tuple[int, str, int]]:
    return [(offer, text, position) for offer, (text, position) in final.items()]


async def read_model_rows(url: str) -> list[tuple[int, str, int]]:
    connection = await asyncpg.connect(url)
    try:
        found = await connection.fetch(
            "SELECT offer_id, description, last_sequence_number FROM loyalty_special_offers"
        )
    finally:
        await connection.close()
    return [(r[0], r[1], r[2]) for r in found]


async def check_final(what: str, url: str, expected: FinalRows) -> None:
    require(f"{what} read model", final_rows_problems(await read_model_rows(url), expected))


COLUMNS = ["offer_id", "description", "last_sequence_number"]
UPSERT = (
    "INSERT INTO loyalty_special_offers (offer_id, description, last_sequence_number) "
    "SELECT offer_id, description, last_sequence_number FROM staging "
    "ON CONFLICT (offer_id) DO UPDATE SET description = excluded.description, "
    "last_sequence_number = excluded.last_sequence_number"
)


async def copy_floor(url: str, rows: Sequence[tuple[int, str, int]]) -> float:
    """One COPY of ``rows`` into an empty loyalty table, one transaction (harness.run_copy's)."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(LOYALTY_TABLE)
        started = time.perf_counter()
        async with connection.transaction():
            await connection.copy_records_to_table(
                "loyalty_special_offers", records=rows, columns=COLUMNS
            )
        return time.perf_counter() - started
    finally:
        await connection.close()


async def upsert_floor(
    url: str,
    batches: Sequence[Sequence[tuple[int, str, int]]],
    before: Sequence[tuple[int, str, int]] = (),
) -> float:
    """COPY into a staging table + one INSERT ... ON CONFLICT DO UPDATE, per batch.

    Each batch is one transaction; ``before``: rows committed into the table
    before the clock starts.
    """
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(LOYALTY_TABLE)
        if before:
            await connection.copy_records_to_table(
                "loyalty_special_offers", records=before, columns=COLUMNS
            )
            await connection.execute("VACUUM ANALYZE loyalty_special_offers")
        started = time.perf_counter()
        for batch in batches:
            async with connection.transaction():
                await connection.execute(
                    "CREATE TEMPORARY TABLE IF NOT EXISTS staging "
                    "(LIKE loyalty_special_offers INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
                await connection.copy_records_to_table("staging", records=batch, columns=COLUMNS)
                await connection.execute(UPSERT)
        return time.perf_counter() - started
    finally:
        await connection.close()


@dataclass
class Measure:
    """One line of a shape's table: seconds per run, over ``items`` (events or rows)."""

    name: str
    items: int
    runs: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs)

    @property
    def rate(self) -> float:
        return self.items / self.seconds


@dataclass
class ShapeResult:
    shape: str
    subscriber: Measure
    floors: list[Measure]
    floor: Measure  # the one the ratio is taken against
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.subscriber.rate / self.floor.rate


@dataclass(frozen=True)
class Shape:
    key: str
    title: str
    events: EventSource
    count: int
    subscription_env: Mapping[str, str]
    expected: FinalRows
    floors: list[tuple[str, int, Callable[[str], Any]]]  # name, rows, url -> seconds (awaitable)
    floor_choice: str  # "fastest" or the name of the floor the ratio uses
    processed: int


def shapes(events: int, keys: int) -> list[Shape]:
    insert_final = final_rows(insert_only_events(events))
    insert_rows = as_rows(insert_final)
    update_final = final_rows(update_heavy_events(events, keys))
    update_rows = sorted(as_rows(update_final))
    first_versions = [
        (content["offerId"], content["description"], number)
        for number, (_, content) in enumerate(update_heavy_events(keys, keys), 1)
    ]
    pages = page_rows(update_heavy_events(events, keys), SUBSCRIBER_PAGE)
    written = sum(map(len, pages))
    result = [
        Shape(
            "insert",
            f"insert-only: {events:,} SpecialOfferCreated, distinct offers",
            lambda: insert_only_events(events),
            events,
            {},
            insert_final,
            [
                (
                    "COPY of the same rows",
                    len(insert_rows),
                    lambda url: copy_floor(url, insert_rows),
                )
            ],
            "COPY of the same rows",
            events,
        ),
        Shape(
            "update",
            f"update-heavy: {events:,} events over {keys:,} offers, round robin",
            lambda: update_heavy_events(events, keys),
            events,
            {},
            update_final,
            [
                (
                    "staging + upsert of the final rows, empty table",
                    len(update_rows),
                    lambda url: upsert_floor(url, [update_rows]),
                ),
                (
                    "staging + upsert of the final rows, offers there",
                    len(update_rows),
                    lambda url: upsert_floor(url, [update_rows], first_versions),
                ),
                (
                    f"the subscriber's writes alone ({len(pages)} pages)",
                    written,
                    lambda url: upsert_floor(url, pages),
                ),
            ],
            "fastest of the first two",
            events,
        ),
    ]
    for kept in FILTERS:
        final = final_rows(mixed_events(events), kept)
        rows = as_rows(final)
        result.append(
            Shape(
                f"filter{len(kept)}",
                f"filtered: {events:,} events of 4 types, the subscription keeps "
                f"{' and '.join(kept)}",
                lambda: mixed_events(events),
                events,
                {"FEEDLINE_EVENT_TYPES": ",".join(kept)},
                final,
                [
                    (
                        "COPY of the rows it keeps",
                        len(rows),
                        lambda url, rows=rows: copy_floor(url, rows),  # type: ignore[misc]
                    )
                ],
                "COPY of the rows it keeps",
                len(final),
            )
        )
    return result


async def measure_shape(
    server_url: str, feed_url: str, shape: Shape, runs: int, url: Callable[[str], str]
) -> ShapeResult:
    subscriber = Measure("subscriber (pages of 10,000)", shape.processed)
    floors = [Measure(name, rows) for name, rows, _ in shape.floors]
    for run in range(1, runs + 1):
        read_model = f"rm_{shape.key}_sub_{run}"
        floor_dbs = [f"rm_{shape.key}_floor{index}_{run}" for index in range(len(floors))]
        await create_databases(server_url, read_model, *floor_dbs)
        subscriber.runs.append(
            cast(Callable[..., float], run_subscriber_process)(
                feed_url,
                url(read_model),
                shape.processed,
                subscription=f"bench-{shape.key}",
                **shape.subscription_env,
            )
        )
        await check_final(f"{shape.key} subscriber run {run}", url(read_model), shape.expected)
        line = [f"subscriber {subscriber.runs[-1]:.3f} s"]
        for measure, (_, _, timed), database in zip(floors, shape.floors, floor_dbs, strict=True):
            measure.runs.append(await timed(url(database)))
            line.append(f"{measure.name} {measure.runs[-1]:.3f} s")
        # Every floor but the subscriber's-writes one ends with the final rows.
        for measure, database in zip(floors, floor_dbs, strict=True):
            if "writes alone" in measure.name:
                continue
            await check_final(
                f"{shape.key} {measure.name} run {run}", url(database), shape.expected
            )
        print(f"{shape.key} run {run}: " + ", ".join(line) + " (read models checked)", flush=True)
    if shape.floor_choice.startswith("fastest"):
        chosen = min(floors[:2], key=lambda m: m.seconds / m.items)
    else:
        chosen = next(m for m in floors if m.name == shape.floor_choice)
    return ShapeResult(shape.key, subscriber, floors, chosen)


async def main(events: int, keys: int, runs: int, only: Sequence[str]) -> None:
    with throwaway_postgres(durable=True) as server:
        server_url = server.url()
        await wait_connectable(server_url)
        postgres = await server_conditions(server_url)
        durability = ", ".join(f"{name}={postgres[name]}" for name in DURABILITY_SETTINGS)
        conditions = [
            f"PostgreSQL {postgres['server_version']}: one throwaway server holding each shape's "
            "event store and every read model",
            f"PostgreSQL durability: {durability}",
            f"PostgreSQL data directory: {postgres['data_directory']}",
            f"{events:,} events per shape, {keys:,} offers in the update-heavy one; "
            f"{runs} run(s) of each, alternating, each into a new database"
            + (", medians reported" if runs > 1 else ""),
            f"subscriber: feedline subscribe, pages of {SUBSCRIBER_PAGE:,}, the loyalty projection",
            f"machine: {cores()} cores shared by the service, the subscriber, PostgreSQL and "
            f"whatever else runs; Python {platform.python_version()}",
        ]
        print("conditions:")
        for line in conditions:
            print(f"  {line}")
        print(f"  load average at start: {load_average()}", flush=True)
        results: list[ShapeResult] = []
        loads: dict[str, str] = {}
        for shape in shapes(events, keys):
            if only and shape.key not in only:
                continue
            store = f"store_{shape.key}"
            await create_databases(server_url, store)
            store_url = server.url(store)
            with running_service("special-offers", store_url) as base_url:
                started = time.perf_counter()
                filled = await copy_events(store_url, shape.events())
                print(
                    f"{shape.key}: {filled:,} events COPied into the store in "
                    f"{time.perf_counter() - started:.1f} s",
                    flush=True,
                )
                results.append(
                    await measure_shape(server_url, f"{base_url}/events", shape, runs, server.url)
                )
                loads[shape.key] = load_average()
    report(events, keys, runs, conditions, results, loads)


def report(
    events: int,
    keys: int,
    runs: int,
    conditions: list[str],
    results: list[ShapeResult],
    loads: Mapping[str, str],
) -> None:
    print()
    print(f"Catch-up shapes, {events:,} events each")
    print("conditions:")
    for line in conditions:
        print(f"  {line}")
    median = f", median of {runs}" if runs > 1 else ""
    summary: dict[str, Any] = {"module": "bench_shapes", "events": events, "figures": []}
    for result in results:
        print()
        print(f"{result.shape} (load average after it: {loads.get(result.shape, '?')}){median}")
        print(f"  {'':56}{'items':>10}{'seconds':>10}{'items/s':>12}")
        for measure in (result.subscriber, *result.floors):
            print(
                f"  {measure.name[:56]:56}{measure.items:>10,}{measure.seconds:>10.3f}"
                f"{measure.rate:>12,.0f}"
            )
            if runs > 1:
                print("    each run, s: " + ", ".join(f"{s:.3f}" for s in measure.runs))
        met = "met" if result.ratio >= GOAL else "NOT met"
        print(
            f"  subscriber / floor ({result.floor.name}): "
            f"{ratio(result.subscriber.rate, result.floor.rate)} events/s over rows/s "
            f"(goal >= {GOAL:.2f}: {met})"
        )
        print(
            f"  wall time, floor / subscriber: "
            f"{ratio(result.floor.seconds, result.subscriber.seconds)} s"
        )
        summary["figures"].append(
            {
                "name": f"shape {result.shape}",
                "value": round(result.ratio, 4),
                "unit": "x floor",
                "detail": f"{result.subscriber.rate:,.0f} events/s / "
                f"{result.floor.rate:,.0f} rows/s ({result.floor.name})",
            }
        )
    print(
        "checks passed: every subscriber summary counted its events; every read model (each "
        "subscriber run's, each floor's) held exactly its final rows"
    )
    print("SUMMARY " + orjson.dumps(summary).decode())


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--only", action="append", default=[], help="insert, update, filter1, filter2"
    )
    args = parser.parse_args()
    if args.runs < 1 or args.keys < 1 or args.events < args.keys:
        parser.error("need --runs >= 1 and 1 <= --keys <= --events")
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    try:
        asyncio.run(main(args.events, args.keys, args.runs, args.only))
    except CheckError as failure:
        fail_and_exit(parser.prog, failure)


if __name__ == "__main__":
    cli()
