"""Catch-up throughput of the subscriber, PostgreSQL feed -> PostgreSQL read model.

Run: ``.venv/bin/python -m bench.bench_subscriber --events 200000 --baseline-events 20000``
(add ``--runs 3`` to repeat the subscriber and the COPY and report medians).

One throwaway PostgreSQL server (durable: fsync on, the defaults) holds the
special-offers service's database and three read-model databases. The
special-offers service runs as a real process (``feedline serve``); its event
store gets N ``SpecialOfferCreated`` events (distinct offers, so every event is
one read-model row). Then, in the same run:

1. the subscriber (``feedline subscribe`` as a process, pages of 10,000, the
   built-in loyalty projection) catches up from the feed into an empty read
   model; timed from its summary's startTime to completionTime (interpreter
   start excluded);
2. COPY of the same rows (offer_id, description, last_sequence_number: what
   the read model ends with) into an identical, empty table (same columns,
   same primary key), one COPY in one transaction, rows already in memory;
   the floor for getting those rows into PostgreSQL;
3. the book-faithful baseline: pages of 100 from the same feed, one INSERT and
   one commit per event.

With ``--runs R`` steps 1 and 2 are repeated R times, alternating, each into a
new database, and the medians are reported (the machine is shared: the load
average is printed with the figures).

Also measured: follow-mode latency, from a command's 201 to its row in the
read model, with a ``--follow`` subscriber long-polling the feed.

Correctness is checked, not assumed: the subscriber's summary must say it
processed N events, and each read model (the subscriber's after every run, the
COPY's, the baseline's) must hold exactly its events' rows: one per offer, no
offer twice, none missing, each with its own description and position; every
follow-mode sample must reach the read model within FOLLOW_TIMEOUT_SECONDS.
When a check fails the benchmark stops, says which check on stderr and exits
with status 1 (``bench.checks``). The conditions (PostgreSQL's durability
settings and version, the file system holding its data, cores, load average,
event counts, runs) are printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

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
    ratio,
    significant,
)
from bench.harness import (
    DURABILITY_SETTINGS,
    LOYALTY_TABLE,
    SUBSCRIBER_PAGE,
    check_read_model,
    create_databases,
    fill_event_store,
    follow_samples,
    run_copy,
    run_subscriber_process,
    server_conditions,
    wait_connectable,
)

BASELINE_PAGE = 100


async def run_baseline(feed_url: str, read_model: str, count: int) -> float:
    """The book's subscriber: pages of 100; one INSERT, one commit, per event."""
    connection = await asyncpg.connect(read_model)
    try:
        await connection.execute(LOYALTY_TABLE)
        await connection.execute(
            "CREATE TABLE checkpoint (subscription TEXT PRIMARY KEY, position BIGINT NOT NULL)"
        )
        await connection.execute("INSERT INTO checkpoint VALUES ('baseline', 0)")
        started = time.perf_counter()
        async with httpx.AsyncClient(timeout=30) as client:
            start = 1
            while start <= count:
                answer = await client.get(feed_url, params={"start": start, "limit": BASELINE_PAGE})
                answer.raise_for_status()
                events = orjson.loads(answer.content)
                if not events:
                    break
                for event in events:
                    if event["sequenceNumber"] > count:
                        break
                    content = event["content"]
                    async with connection.transaction():
                        await connection.execute(
                            "INSERT INTO loyalty_special_offers VALUES ($1, $2, $3) "
                            "ON CONFLICT (offer_id) DO UPDATE SET "
                            "description = EXCLUDED.description, "
                            "last_sequence_number = EXCLUDED.last_sequence_number",
                            content["offerId"],
                            content["description"],
                            event["sequenceNumber"],
                        )
                        await connection.execute(
                            "UPDATE checkpoint SET position = $1 WHERE subscription = 'baseline'",
                            event["sequenceNumber"],
                        )
                start = events[-1]["sequenceNumber"] + 1
        return time.perf_counter() - started
    finally:
        await connection.close()


def conditions(
    postgres: dict[str, str], events: int, baseline_events: int, runs: int, samples: int
) -> list[str]:
    durability = ", ".join(f"{name}={postgres[name]}" for name in DURABILITY_SETTINGS)
    return [
        f"PostgreSQL {postgres['server_version']}: one throwaway server holding the service's "
        "database and every read model",
        f"PostgreSQL durability: {durability}",
        f"PostgreSQL data directory: {postgres['data_directory']}",
        f"subscriber and COPY: {events:,} events, {runs} run(s) each, alternating, "
        f"each into a new database{', medians reported' if runs > 1 else ''}",
        f"baseline: the first {baseline_events:,} events, 1 run, pages of {BASELINE_PAGE}, "
        "one INSERT and one commit per event",
        f"subscriber pages: {SUBSCRIBER_PAGE:,}; follow-mode samples: {samples}",
        f"machine: {cores()} cores shared by the service, the subscriber, PostgreSQL and "
        f"whatever else runs; Python {platform.python_version()}",
    ]


async def main(events: int, baseline_events: int, latency_samples: int, runs: int) -> None:
    with throwaway_postgres(durable=True) as server:
        server_url = server.url()
        await wait_connectable(server_url)
        postgres = await server_conditions(server_url)
        conditions_lines = conditions(postgres, events, baseline_events, runs, latency_samples)
        print("conditions:")
        for line in conditions_lines:
            print(f"  {line}")
        print(f"  load average at start: {load_average()}", flush=True)
        read_models = [f"rm_subscriber_{run}" for run in range(runs)]
        copies = [f"rm_copy_{run}" for run in range(runs)]
        await create_databases(
            server_url, "offers", *read_models, *copies, "rm_baseline", "rm_follow"
        )
        service_url = server.url("offers")
        with running_service("special-offers", service_url) as base_url:
            feed_url = f"{base_url}/events"
            print(f"filling the special-offers event store with {events:,} events ...", flush=True)
            await fill_event_store(service_url, events)
            load_before = load_average()

            subscriber_runs: list[float] = []
            copy_runs: list[float] = []
            for run, (read_model, copy) in enumerate(zip(read_models, copies, strict=True), 1):
                subscriber_runs.append(
                    run_subscriber_process(feed_url, server.url(read_model), events)
                )
                await check_read_model(f"subscriber run {run}", server.url(read_model), events)
                copy_runs.append(await run_copy(server.url(copy), events))
                await check_read_model(f"COPY run {run}", server.url(copy), events)
                print(
                    f"run {run}: subscriber {subscriber_runs[-1]:.3f} s, "
                    f"COPY {copy_runs[-1]:.3f} s (both read models checked: "
                    f"{events:,} rows, one per offer, none missing or wrong)",
                    flush=True,
                )
            load_after = load_average()
            baseline_seconds = await run_baseline(
                feed_url, server.url("rm_baseline"), baseline_events
            )
            await check_read_model("baseline", server.url("rm_baseline"), baseline_events)
            follow = await follow_samples(
                base_url, feed_url, server.url("rm_follow"), latency_samples
            )
            latencies = follow.latencies

    report(
        Figures(
            events,
            baseline_events,
            latency_samples,
            runs,
            conditions_lines,
            load_before,
            load_after,
            subscriber_runs,
            copy_runs,
            baseline_seconds,
            latencies,
        )
    )


@dataclass(frozen=True)
class Figures:
    events: int
    baseline_events: int
    latency_samples: int
    runs: int
    conditions: list[str]
    load_before: str
    load_after: str
    subscriber_runs: list[float]
    copy_runs: list[float]
    baseline_seconds: float
    latencies: list[float]


def report(figures: Figures) -> None:
    events, baseline_events, runs = figures.events, figures.baseline_events, figures.runs
    subscriber_runs, copy_runs = figures.subscriber_runs, figures.copy_runs
    latencies, latency_samples = figures.latencies, figures.latency_samples
    subscriber_seconds = statistics.median(subscriber_runs)
    copy_seconds = statistics.median(copy_runs)
    baseline_seconds = figures.baseline_seconds
    subscriber_rate = events / subscriber_seconds
    copy_rate = events / copy_seconds
    baseline_rate = baseline_events / baseline_seconds
    print()
    print(f"PostgreSQL feed -> PostgreSQL read model, {events:,} events")
    print("conditions:")
    for line in figures.conditions:
        print(f"  {line}")
    print(
        f"  load average (1, 5, 15 min): {figures.load_before} before the runs, "
        f"{figures.load_after} after"
    )
    median = f", median of {runs}" if runs > 1 else ""
    print(f"{'':44}{'events':>10}{'seconds':>10}{'events/s':>12}")
    for name, count, seconds in (
        (f"subscriber (pages of {SUBSCRIBER_PAGE:,}{median})", events, subscriber_seconds),
        (f"COPY of the same rows{median}", events, copy_seconds),
        (f"baseline (pages of {BASELINE_PAGE}, commit/event)", baseline_events, baseline_seconds),
    ):
        print(f"{name[:44]:44}{count:>10,}{seconds:>10.3f}{count / seconds:>12,.0f}")
    if runs > 1:
        print(
            "  each run, subscriber s: "
            + ", ".join(f"{seconds:.3f}" for seconds in subscriber_runs)
            + "; COPY s: "
            + ", ".join(f"{seconds:.3f}" for seconds in copy_runs)
        )
    to_copy = subscriber_rate / copy_rate
    to_baseline = subscriber_rate / baseline_rate
    print(
        f"subscriber / COPY:      {ratio(subscriber_rate, copy_rate)} events/s over rows/s "
        f"(target >= 0.2500: {'met' if to_copy >= 0.25 else 'NOT met'})"
    )
    print(
        f"subscriber / baseline:  {ratio(subscriber_rate, baseline_rate)} events/s "
        f"(target >= 20.00: {'met' if to_baseline >= 20 else 'NOT met'})"
    )
    if latencies:
        ordered = sorted(latencies)
        p95 = ordered[max(int(len(ordered) * 0.95) - 1, 0)]
        print(
            "follow-mode latency, command answered -> row in read model "
            f"({len(latencies)} samples): "
            f"median {significant(statistics.median(latencies) * 1000, 3)} ms, "
            f"p95 {significant(p95 * 1000, 3)} ms, max {significant(max(latencies) * 1000, 3)} ms"
        )
    print(
        f"checks passed: subscriber summaries said {events:,} processed; each subscriber and "
        f"COPY read model ({runs} of each) held exactly rows 1..{events:,}, the baseline's "
        f"1..{baseline_events:,} (no offer twice, none missing, none wrong); "
        f"{len(latencies)} of {latency_samples} follow-mode samples arrived"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument(
        "--baseline-events",
        type=int,
        default=None,
        help="events for the per-event-commit baseline (default: the same as --events)",
    )
    parser.add_argument("--latency-samples", type=int, default=20)
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="subscriber and COPY runs (alternating, each into a new database); medians reported",
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    baseline_events = args.baseline_events or args.events
    if not 1 <= baseline_events <= args.events:
        parser.error("--baseline-events must be between 1 and --events")
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    try:
        asyncio.run(main(args.events, baseline_events, args.latency_samples, args.runs))
    except CheckError as failure:
        fail_and_exit(parser.prog, failure)


if __name__ == "__main__":
    cli()
