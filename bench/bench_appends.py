"""Appends: commands/s with 1, 4, 16 and 64 concurrent writers, against plain INSERTs.

Run: ``.venv/bin/python -m bench.bench_appends --seconds 5``

One throwaway PostgreSQL server (durable: fsync on, the defaults); one
database per way of writing, each with the special-offers service's tables
(``offers``, and the event store's ``events``). A command is what the
service's ``POST /offers`` does: in one transaction, INSERT the offer and
append one ``SpecialOfferCreated`` event. For each number of concurrent
writers W (each writer a loop, one command after the other, for ``--seconds``
seconds; commands/s = commands completed / time until the last writer
stopped), in turn:

1. **floor: plain INSERTs** (asyncpg, W connections): BEGIN; INSERT the
   offer (RETURNING its id); INSERT the event row (the same columns and
   rendering as the store's; its sequence number the offer's id, from the
   offers table's sequence); COMMIT. No lock: concurrent commits share WAL
   flushes (group commit).
2. **plain INSERTs + the advisory lock** (asyncpg): the same, with the
   store's ``pg_advisory_xact_lock`` taken before the event's INSERT. The
   difference from (1) is the lock: it is held until the commit's WAL flush
   is done, so commits cannot share a flush.
3. **event store API** (in this process): the service's own code path,
   ``EventStore.transaction()`` + SQLAlchemy INSERT of the offer +
   ``EventStore.append`` (lock, ``max(sequence_number)``, INSERT,
   ``pg_notify``), on a pool of W connections.
4. **HTTP API**: ``POST /offers`` to the real service (``feedline serve
   special-offers``, one process, its default pool of 10 + 10 connections),
   W concurrent requests from one httpx client in this process.

Checked: every database ends with exactly as many offers and events as
commands were counted; (3) and (4) have sequence numbers exactly 1..M (gap
free) and each event's offer is the one its command inserted. A last line
``SUMMARY {json}`` feeds ``bench.summary``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from sqlalchemy import insert
from tests.support.postgres import throwaway_postgres
from tests.support.services import running_service

from bench.checks import (
    CheckError,
    cores,
    count_problems,
    fail_and_exit,
    load_average,
    ratio,
    require,
)
from bench.harness import DURABILITY_SETTINGS, create_databases, server_conditions, wait_connectable
from feedline.chassis.eventstore import (
    APPEND_LOCK_KEY,
    EventStore,
    NewEvent,
    event_store_metadata,
    render_event,
)
from feedline.services.special_offers import metadata as offers_metadata
from feedline.services.special_offers import offers
from feedline_contracts.database import connect_database

WRITERS = (1, 4, 16, 64)
CREATED = "SpecialOfferCreated"
INSERT_OFFER = "INSERT INTO offers (description) VALUES ($1) RETURNING id"
INSERT_EVENT = (
    "INSERT INTO events (sequence_number, occurred_at, name, event_json) VALUES ($1, $2, $3, $4)"
)
LOCK = "SELECT pg_advisory_xact_lock($1)"

# One command of one writer; returns when it committed.
Command = Callable[[str], Awaitable[None]]


def event_row(offer: int, text: str) -> tuple[int, datetime, str, str]:
    now = datetime.now(UTC)
    content = {"offerId": offer, "description": text}
    rendered = render_event(
        offer, now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), NewEvent(CREATED, content)
    )
    return offer, now, CREATED, rendered


async def create_tables(url: str) -> None:
    database = connect_database(url)
    try:
        async with database.engine.begin() as connection:
            for metadata in (event_store_metadata, offers_metadata):
                await connection.run_sync(metadata.create_all)
    finally:
        await database.dispose()


@dataclass
class Level:
    writers: int
    commands: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.commands / self.seconds


async def drive(writers: int, seconds: float, commands: Sequence[Command]) -> Level:
    """``writers`` loops of ``commands[i]`` for ``seconds``; all started together."""
    done = [0] * writers
    start = asyncio.Event()

    async def loop(index: int) -> None:
        await start.wait()
        deadline = time.perf_counter() + seconds
        number = 0
        while time.perf_counter() < deadline:
            await commands[index](f"bench offer {index}-{number}")
            number += 1
        done[index] = number

    tasks = [asyncio.create_task(loop(index)) for index in range(writers)]
    await asyncio.sleep(0)
    started = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    return Level(writers, sum(done), time.perf_counter() - started)


class Way:
    """One way of writing commands, into its own database."""

    name = ""
    key = ""

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self, writers: int) -> list[Command]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class PlainInserts(Way):
    name = "floor: plain INSERTs (asyncpg)"
    key = "floor"
    locked = False

    async def open(self, writers: int) -> list[Command]:
        self.connections = [await asyncpg.connect(self.url) for _ in range(writers)]
        return [self._command(connection) for connection in self.connections]

    def _command(self, connection: Any) -> Command:
        locked = self.locked

        async def command(text: str) -> None:
            async with connection.transaction():
                offer = await connection.fetchval(INSERT_OFFER, text)
                if locked:
                    await connection.execute(LOCK, APPEND_LOCK_KEY)
                await connection.execute(INSERT_EVENT, *event_row(offer, text))

        return command

    async def close(self) -> None:
        for connection in self.connections:
            await connection.close()


class LockedInserts(PlainInserts):
    name = "plain INSERTs + the advisory lock"
    key = "locked"
    locked = True


class StoreApi(Way):
    name = "event store API (in-process)"
    key = "store"

    async def open(self, writers: int) -> list[Command]:
        self.database = connect_database(self.url, pool_size=writers)
        store = EventStore(self.database)
        # Open the pool's connections before the clock starts.
        async with asyncio.TaskGroup() as group:
            held = asyncio.Event()
            opened = 0

            async def hold() -> None:
                nonlocal opened
                async with self.database.engine.connect():
                    opened += 1
                    if opened == writers:
                        held.set()
                    await held.wait()

            for _ in range(writers):
                group.create_task(hold())

        async def command(text: str) -> None:
            async with store.transaction() as connection:
                result = await connection.execute(
                    insert(offers).values(description=text).returning(offers.c.id)
                )
                offer = int(result.scalar_one())
                await store.append(
                    connection, [NewEvent(CREATED, {"offerId": offer, "description": text})]
                )

        return [command] * writers

    async def close(self) -> None:
        await self.database.dispose()


class HttpApi(Way):
    name = "HTTP API: POST /offers"
    key = "http"
    base_url = ""

    async def open(self, writers: int) -> list[Command]:
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=60,
            limits=httpx.Limits(max_connections=writers, max_keepalive_connections=writers),
        )
        await asyncio.gather(*(self.client.get("/health/ready") for _ in range(writers)))

        async def command(text: str) -> None:
            answer = await self.client.post("/offers", json={"description": text})
            if answer.status_code != 201:
                raise CheckError(f"POST /offers answered {answer.status_code}: {answer.text[:200]}")

        return [command] * writers

    async def close(self) -> None:
        await self.client.aclose()


async def store_problems(url: str, commands: int, *, gap_free: bool) -> list[str]:
    connection = await asyncpg.connect(url)
    try:
        offers_count = await connection.fetchval("SELECT count(*) FROM offers")
        events_count, low, high = await connection.fetchrow(
            "SELECT count(*), min(sequence_number), max(sequence_number) FROM events"
        )
        mismatched = await connection.fetchval(
            "SELECT count(*) FROM events e LEFT JOIN offers o "
            "ON o.id = (e.event_json::jsonb -> 'content' ->> 'offerId')::bigint "
            "AND o.description = e.event_json::jsonb -> 'content' ->> 'description' "
            "WHERE o.id IS NULL"
        )
    finally:
        await connection.close()
    problems = count_problems("offers", offers_count, commands)
    problems += count_problems("events", events_count, commands)
    if mismatched:
        problems.append(f"{mismatched:,} events whose offer is not the one their command wrote")
    if gap_free and events_count and (low, high) != (1, events_count):
        problems.append(f"sequence numbers {low}..{high} for {events_count:,} events: not 1..N")
    return problems


@dataclass
class Results:
    levels: dict[str, list[Level]] = field(default_factory=dict)
    loads: list[str] = field(default_factory=list)


async def main(seconds: float, writer_counts: Sequence[int], ways: Sequence[str]) -> None:
    with throwaway_postgres(durable=True) as server:
        server_url = server.url()
        await wait_connectable(server_url)
        postgres = await server_conditions(server_url)
        durability = ", ".join(f"{name}={postgres[name]}" for name in DURABILITY_SETTINGS)
        conditions = [
            f"PostgreSQL {postgres['server_version']}, one throwaway server; {durability}",
            f"PostgreSQL data directory: {postgres['data_directory']}",
            f"writers: {', '.join(map(str, writer_counts))}; {seconds:g} s per way and writer "
            "count, the ways in turn at each count, one database per way (its rows accumulate "
            "over the counts)",
            f"machine: {cores()} cores shared by PostgreSQL, the service, this process (the "
            f"writers) and whatever else runs; Python {platform.python_version()}",
        ]
        print("conditions:")
        for line in conditions:
            print(f"  {line}")
        print(f"  load average at start: {load_average()}", flush=True)
        classes = [c for c in (PlainInserts, LockedInserts, StoreApi, HttpApi) if c.key in ways]
        await create_databases(server_url, *(f"appends_{c.key}" for c in classes))
        instances: list[Way] = []
        for cls in classes:
            url = server.url(f"appends_{cls.key}")
            if cls is not HttpApi:
                await create_tables(url)
            instances.append(cls(url))
        results = Results({way.key: [] for way in instances})
        totals = dict.fromkeys(results.levels, 0)
        service = (
            running_service("special-offers", server.url("appends_http"))
            if "http" in ways
            else contextlib.nullcontext("")
        )
        with service as base_url:
            HttpApi.base_url = base_url
            for writers in writer_counts:
                results.loads.append(load_average())
                for way in instances:
                    commands = await way.open(writers)
                    try:
                        level = await drive(writers, seconds, commands)
                    finally:
                        await way.close()
                    totals[way.key] += level.commands
                    results.levels[way.key].append(level)
                    print(
                        f"{writers:>3} writers, {way.name}: {level.commands:,} commands in "
                        f"{level.seconds:.3f} s = {level.rate:,.1f}/s",
                        flush=True,
                    )
            results.loads.append(load_average())
        for way in instances:
            require(
                f"{way.name} database",
                await store_problems(
                    way.url, totals[way.key], gap_free=way.key in ("store", "http")
                ),
            )
    report(seconds, writer_counts, conditions, instances, results)


def report(
    seconds: float,
    writer_counts: Sequence[int],
    conditions: list[str],
    ways: Sequence[Way],
    results: Results,
) -> None:
    print()
    print("Appends: commands/s (one offer INSERT + one event per command, one commit each)")
    print("conditions:")
    for line in conditions:
        print(f"  {line}")
    print("  load average before each writer count, and at the end: " + " | ".join(results.loads))
    print(f"{'':40}" + "".join(f"{f'{w} writers':>14}" for w in writer_counts))
    for way in ways:
        print(
            f"{way.name[:40]:40}" + "".join(f"{lv.rate:>14,.1f}" for lv in results.levels[way.key])
        )
    summary: dict[str, Any] = {"module": "bench_appends", "figures": []}
    floor = results.levels.get("floor")
    if floor:
        for way in ways:
            if way.key == "floor":
                continue
            print(f"{way.name} / floor:")
            for level, base in zip(results.levels[way.key], floor, strict=True):
                print(f"  {level.writers:>3} writers: {ratio(level.rate, base.rate)} commands/s")
                summary["figures"].append(
                    {
                        "name": f"appends {way.key} {level.writers}w",
                        "value": round(level.rate / base.rate, 4),
                        "unit": "x floor",
                        "detail": f"{level.rate:,.1f} / {base.rate:,.1f} commands/s",
                    }
                )
    print(
        "checks passed: every database held as many offers and events as commands counted, "
        "each event naming its command's offer; the store's and the service's sequence "
        "numbers exactly 1..N"
    )
    print("SUMMARY " + orjson.dumps(summary).decode())


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per way and writer count")
    parser.add_argument("--writers", type=int, action="append", default=[])
    parser.add_argument(
        "--way",
        action="append",
        default=[],
        choices=["floor", "locked", "store", "http"],
        help="default: all four",
    )
    args = parser.parse_args()
    writer_counts = args.writers or list(WRITERS)
    ways = args.way or ["floor", "locked", "store", "http"]
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    try:
        asyncio.run(main(args.seconds, writer_counts, ways))
    except CheckError as failure:
        fail_and_exit(parser.prog, failure)


if __name__ == "__main__":
    cli()
