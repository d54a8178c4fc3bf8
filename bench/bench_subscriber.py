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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import time
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx
import orjson
from tests.support.postgres import throwaway_postgres
from tests.support.services import running_service
from tests.support.subscriber_process import LOYALTY, finish, start_subscriber, subscriber_env

from feedline.chassis.database import connect_database
from feedline.chassis.eventstore import EventStore, NewEvent

LOYALTY_TABLE = """
CREATE TABLE loyalty_special_offers (
    offer_id BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    last_sequence_number BIGINT NOT NULL
)
"""


async def wait_connectable(url: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            connection = await asyncpg.connect(url)
        except (OSError, asyncpg.CannotConnectNowError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        await connection.close()
        return


async def create_databases(server_url: str, *names: str) -> None:
    admin = await asyncpg.connect(server_url)
    try:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


def description(offer: int) -> str:
    return f"special offer number {offer}: 10% off"


async def fill_event_store(service_url: str, count: int) -> None:
    database = connect_database(service_url)
    store = EventStore(database)
    try:
        for offset in range(0, count, 10_000):
            batch = [
                NewEvent("SpecialOfferCreated", {"offerId": n, "description": description(n)})
                for n in range(offset + 1, min(offset + 10_000, count) + 1)
            ]
            async with store.transaction() as connection:
                await store.append(connection, batch)
    finally:
        await database.dispose()


def seconds_between(start: str, end: str) -> float:
    def parse(moment: str) -> datetime:
        return datetime.fromisoformat(moment.replace("Z", "+00:00"))

    return (parse(end) - parse(start)).total_seconds()


def run_subscriber_process(feed_url: str, read_model: str, count: int) -> float:
    environment = subscriber_env(
        "bench", feed_url, read_model, LOYALTY, FEEDLINE_BATCH_SIZE="10000"
    )
    done = finish(start_subscriber(environment), timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"subscriber failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    summary = done.summary
    assert summary["processed"] == count, summary
    return seconds_between(summary["startTime"], summary["completionTime"])


async def run_copy(read_model: str, count: int) -> float:
    rows = [(n, description(n), n) for n in range(1, count + 1)]
    connection = await asyncpg.connect(read_model)
    try:
        await connection.execute(LOYALTY_TABLE)
        started = time.perf_counter()
        async with connection.transaction():
            await connection.copy_records_to_table(
                "loyalty_special_offers",
                records=rows,
                columns=["offer_id", "description", "last_sequence_number"],
            )
        return time.perf_counter() - started
    finally:
        await connection.close()


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
                answer = await client.get(feed_url, params={"start": start, "limit": 100})
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


async def count_rows(read_model: str) -> int:
    connection = await asyncpg.connect(read_model)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM loyalty_special_offers"))
    finally:
        await connection.close()


async def follow_latency(base_url: str, read_model: str, samples: int) -> list[float]:
    """Seconds from a command's answer to its row in a follower's read model."""
    environment = subscriber_env(
        "bench-follow",
        f"{base_url}/events",
        read_model,
        LOYALTY,
        FEEDLINE_FOLLOW="true",
        FEEDLINE_START_POSITION="Head",
        FEEDLINE_FEED_WAIT_SECONDS="20",
    )
    follower = start_subscriber(environment)
    connection = await asyncpg.connect(read_model)
    latencies: list[float] = []
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            while not await connection.fetchval(  # noqa: ASYNC110 - polling another process
                "SELECT to_regclass('feedline_subscriber_checkpoints') IS NOT NULL"
            ):
                await asyncio.sleep(0.05)
            await asyncio.sleep(1)  # let it settle into its long poll
            for number in range(samples):
                answer = await client.post("/offers", json={"description": f"flash sale {number}"})
                answer.raise_for_status()
                answered = time.perf_counter()
                offer = answer.json()["id"]
                while not await connection.fetchval(  # noqa: ASYNC110 - another process writes
                    "SELECT 1 FROM loyalty_special_offers WHERE offer_id = $1", offer
                ):
                    await asyncio.sleep(0.001)
                latencies.append(time.perf_counter() - answered)
                await asyncio.sleep(0.2)
    finally:
        await connection.close()
        follower.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            finish(follower, timeout=30)
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    return latencies


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


async def main(events: int, baseline_events: int, latency_samples: int, runs: int) -> None:
    with throwaway_postgres(durable=True) as server:
        server_url = server.url()
        await wait_connectable(server_url)
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
            for read_model, copy in zip(read_models, copies, strict=True):
                subscriber_runs.append(
                    run_subscriber_process(feed_url, server.url(read_model), events)
                )
                assert await count_rows(server.url(read_model)) == events
                copy_runs.append(await run_copy(server.url(copy), events))
                print(
                    f"run {len(subscriber_runs)}: subscriber {subscriber_runs[-1]:.2f} s, "
                    f"COPY {copy_runs[-1]:.2f} s",
                    flush=True,
                )
            load_after = load_average()
            subscriber_seconds = statistics.median(subscriber_runs)
            copy_seconds = statistics.median(copy_runs)
            baseline_seconds = await run_baseline(
                feed_url, server.url("rm_baseline"), baseline_events
            )
            assert await count_rows(server.url("rm_baseline")) == baseline_events
            latencies = await follow_latency(base_url, server.url("rm_follow"), latency_samples)

    subscriber_rate = events / subscriber_seconds
    copy_rate = events / copy_seconds
    baseline_rate = baseline_events / baseline_seconds
    print()
    print(
        f"PostgreSQL feed -> PostgreSQL read model, {events:,} events "
        f"(durable server, {os.cpu_count()} cores shared by service, subscriber and PostgreSQL; "
        f"load average {load_before} before, {load_after} after)"
    )
    median = f", median of {runs}" if runs > 1 else ""
    print(f"{'':44}{'events':>10}{'seconds':>10}{'events/s':>12}")
    for name, count, seconds in (
        (f"subscriber (pages of 10,000{median})", events, subscriber_seconds),
        (f"COPY of the same rows{median}", events, copy_seconds),
        ("baseline (pages of 100, commit/event)", baseline_events, baseline_seconds),
    ):
        print(f"{name[:44]:44}{count:>10,}{seconds:>10.2f}{count / seconds:>12,.0f}")
    if runs > 1:
        print(
            "  each run, subscriber s: "
            + ", ".join(f"{seconds:.2f}" for seconds in subscriber_runs)
            + "; COPY s: "
            + ", ".join(f"{seconds:.2f}" for seconds in copy_runs)
        )
    print(f"subscriber / COPY:      {subscriber_rate / copy_rate:.2f}  (target >= 0.25)")
    print(f"subscriber / baseline:  {subscriber_rate / baseline_rate:.1f}x (target >= 20x)")
    if latencies:
        ordered = sorted(latencies)
        p95 = ordered[max(int(len(ordered) * 0.95) - 1, 0)]
        print(
            "follow-mode latency, command answered -> row in read model "
            f"({len(latencies)} samples): "
            f"median {statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
            f"max {max(latencies) * 1000:.0f} ms"
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
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    asyncio.run(
        main(args.events, args.baseline_events or args.events, args.latency_samples, args.runs)
    )


if __name__ == "__main__":
    cli()
