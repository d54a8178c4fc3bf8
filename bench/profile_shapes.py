"""Where a catch-up shape's time goes: CPU seconds by process, and PostgreSQL's plan.

Run: ``.venv/bin/python -m bench.profile_shapes --events 200000``

For the shapes whose ratio misses the goal in ``bench.bench_shapes``
(insert-only, and the two filtered ones), one subscriber run each on the
same stores and floors as that benchmark, with the CPU time each part spent
during the run: the service (``feedline serve``), PostgreSQL (the postmaster
and its backends, living and exited), the subscriber (the child that
exited) and the COPY floor's own run beside it. For a filtered shape, also
``EXPLAIN (ANALYZE, BUFFERS)`` of the feed's page query at the start of the
feed (the statement the event store runs, as the service renders it). A
profile, not a benchmark: no ratio is checked; the figures say which part
would have to shrink for the shape to reach its goal.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import resource
from collections.abc import Callable, Sequence
from typing import cast

import asyncpg
from tests.support.postgres import PostgresServer, throwaway_postgres
from tests.support.services import running_service

from bench.bench_shapes import FILTERS, Shape, as_rows, copy_floor, shapes
from bench.checks import cores, load_average
from bench.harness import SUBSCRIBER_PAGE, create_databases, run_subscriber_process
from bench.serving import cpu_seconds, postgres_process, service_process
from bench.store_rows import copy_events

# The event store's page query for a filtered page (eventstore.read_page), as
# PostgreSQL receives it: the rows in the range with a kept name, joined.
PAGE_QUERY = """
SELECT count(*), coalesce(max(page.sequence_number), 0),
       convert_to('[' || coalesce(string_agg(event_json, ',' ORDER BY sequence_number), '')
                  || ']', 'UTF8')
FROM (SELECT sequence_number, event_json FROM events
      WHERE sequence_number >= 1 AND sequence_number < $1 AND name = ANY($2::text[])
      ORDER BY sequence_number LIMIT $3) AS page
"""


def children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


async def explain(store_url: str, head: int, kept: Sequence[str]) -> list[str]:
    connection = await asyncpg.connect(store_url)
    try:
        rows = await connection.fetch(
            "EXPLAIN (ANALYZE, BUFFERS) " + PAGE_QUERY, head + 1, list(kept), SUBSCRIBER_PAGE
        )
    finally:
        await connection.close()
    return [str(row[0]) for row in rows]


async def startup_cpu(server: PostgresServer) -> float:
    """CPU seconds of a subscriber run on an empty feed: its start-up (imports, the read
    model's tables, the checkpoint) and one empty page, counted in every run's CPU."""
    await create_databases(server.url(), "store_empty", "rm_empty")
    with running_service("special-offers", server.url("store_empty")) as base_url:
        before = children_cpu()
        run_subscriber_process(f"{base_url}/events", server.url("rm_empty"), 0, "profile-empty")
        return children_cpu() - before


async def profile(shape: Shape, server: PostgresServer, startup: float) -> None:
    store = f"store_{shape.key}"
    await create_databases(server.url(), store, f"rm_{shape.key}", f"floor_{shape.key}")
    store_url = server.url(store)
    postgres = postgres_process(server.port)
    with running_service("special-offers", store_url) as base_url:  # it makes the tables
        filled = await copy_events(store_url, shape.events())
        service = service_process(base_url)
        before = (cpu_seconds(service), cpu_seconds(postgres, tree=True), children_cpu())
        seconds = cast(Callable[..., float], run_subscriber_process)(
            f"{base_url}/events",
            server.url(f"rm_{shape.key}"),
            shape.processed,
            subscription=f"profile-{shape.key}",
            **shape.subscription_env,
        )
        after = (cpu_seconds(service), cpu_seconds(postgres, tree=True), children_cpu())
    service_s, postgres_s, subscriber_s = (b - a for a, b in zip(before, after, strict=True))
    floor_before = cpu_seconds(postgres, tree=True)
    floor_seconds = await copy_floor(server.url(f"floor_{shape.key}"), as_rows(shape.expected))
    floor_postgres = cpu_seconds(postgres, tree=True) - floor_before
    print(
        f"{shape.key}: {filled:,} events in the feed, {shape.processed:,} applied; "
        f"subscriber run {seconds:.3f} s wall; CPU s during it: subscriber {subscriber_s:.3f} "
        f"({subscriber_s - startup:.3f} past its start-up), "
        f"service {service_s:.3f}, PostgreSQL {postgres_s:.3f} "
        f"(all {subscriber_s + service_s + postgres_s:.3f} on {cores()} cores); "
        f"the floor (COPY of {len(shape.expected):,} rows) {floor_seconds:.3f} s wall, "
        f"PostgreSQL {floor_postgres:.3f} s CPU",
        flush=True,
    )
    kept = shape.subscription_env.get("FEEDLINE_EVENT_TYPES")
    if kept:
        for line in await explain(store_url, filled, kept.split(",")):
            print(f"    {line}")


async def main(events: int, only: Sequence[str]) -> None:
    print("conditions:")
    print(
        f"  {events:,} events per shape, pages of {SUBSCRIBER_PAGE:,}; one throwaway PostgreSQL "
        f"(durable); {cores()} cores; Python {platform.python_version()}"
    )
    print(f"  load average at start: {load_average()}", flush=True)
    wanted = set(only) or {"insert", *(f"filter{len(kept)}" for kept in FILTERS)}
    with throwaway_postgres(durable=True) as server:
        startup = await startup_cpu(server)
        print(f"subscriber start-up, on an empty feed: {startup:.3f} s CPU", flush=True)
        for shape in shapes(events, keys=10_000):
            if shape.key in wanted:
                await profile(shape, server, startup)
    print(f"  load average at end: {load_average()}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--only", action="append", default=[], help="insert, filter1, filter2")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.only))


if __name__ == "__main__":
    cli()
