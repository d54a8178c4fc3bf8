"""What the subscriber and transport benchmarks share: the database, the rows, the runs.

One throwaway PostgreSQL server holds the special-offers service's database
and the read models; the service's event store gets N ``SpecialOfferCreated``
events (distinct offers: one read-model row each); ``feedline subscribe``
catches up (or follows) into a read model, and COPY of the same rows into an
identical table is the floor. Each read model is checked (``bench.checks``):
a figure from a run that did not do what it claims is not a figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx
from tests.support.subscriber_process import LOYALTY, finish, start_subscriber, subscriber_env

from bench.checks import CheckError, count_problems, filesystem_of, read_model_problems, require
from feedline.chassis.eventstore import EventStore, NewEvent
from feedline_contracts.database import connect_database

SUBSCRIBER_PAGE = 10_000
# A follow-mode sample whose row has not appeared by then fails the benchmark.
FOLLOW_TIMEOUT_SECONDS = 30.0
# PostgreSQL settings that decide what a commit costs; printed with the figures.
DURABILITY_SETTINGS = (
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_sync_method",
    "wal_level",
)

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


# What a run's stderr (its JSON logs) shows wrong, given how many events it applied.
LogCheck = Callable[[str, int], Sequence[str]]


def run_subscriber_process(
    feed_url: str,
    read_model: str,
    count: int,
    subscription: str = "bench",
    log_check: LogCheck | None = None,
    **env: str,
) -> float:
    """Seconds of one catch-up run of ``feedline subscribe`` (its summary's start to end).

    ``env``: more ``FEEDLINE_...`` variables (a transport's, e.g. the broker's);
    ``log_check``: problems in its logs (e.g. events read from another source).
    """
    environment = subscriber_env(
        subscription,
        feed_url,
        read_model,
        LOYALTY,
        FEEDLINE_BATCH_SIZE=str(SUBSCRIBER_PAGE),
        **env,
    )
    done = finish(start_subscriber(environment), timeout=3600)
    if done.returncode != 0:
        raise CheckError(
            f"subscriber exited with {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}"
        )
    summary = done.summary
    require(
        "subscriber summary",
        count_problems("events processed", int(summary.get("processed", -1)), count),
    )
    if log_check is not None:
        require(f"subscriber logs ({feed_url})", log_check(done.stderr, count))
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


async def check_read_model(what: str, read_model: str, count: int) -> None:
    """Fail unless the read model holds exactly the rows of events 1..count."""
    connection = await asyncpg.connect(read_model)
    try:
        rows = await connection.fetch(
            "SELECT offer_id, description, last_sequence_number FROM loyalty_special_offers"
        )
    finally:
        await connection.close()
    require(
        f"{what} read model",
        read_model_problems(((r[0], r[1], r[2]) for r in rows), count, description),
    )


async def server_conditions(server_url: str) -> dict[str, str]:
    """The server's version and durability settings, and where its data lives."""
    connection = await asyncpg.connect(server_url)
    try:
        settings = {
            name: str(await connection.fetchval(f"SHOW {name}")) for name in DURABILITY_SETTINGS
        }
        settings["server_version"] = str(await connection.fetchval("SHOW server_version"))
        data = Path(str(await connection.fetchval("SHOW data_directory")))
    finally:
        await connection.close()
    settings["data_directory"] = f"{data} on {filesystem_of(data)}"
    return settings


@dataclass
class FollowSamples:
    """Seconds per sample: a command's answer to its row in the follower's read model
    (``latencies``), and the command's own round trip, request to answer (``commands``)."""

    latencies: list[float] = field(default_factory=list)
    commands: list[float] = field(default_factory=list)


async def follow_samples(
    base_url: str,
    feed_url: str,
    read_model: str,
    samples: int,
    *,
    subscription: str = "bench-follow",
    warmup: int = 0,
    interval: float = 0.2,
    log_check: LogCheck | None = None,
    **env: str,
) -> FollowSamples:
    """A ``--follow`` subscriber of ``feed_url``; ``samples`` commands, one at a time.

    Each command (``POST /offers``) is timed from its request to its 201, then
    from its 201 until its row is in the read model; then ``interval`` seconds
    of quiet before the next. The first ``warmup`` commands are not counted.
    ``log_check``: problems in the follower's logs once it stopped (SIGTERM).
    """
    environment = subscriber_env(
        subscription,
        feed_url,
        read_model,
        LOYALTY,
        FEEDLINE_FOLLOW="true",
        FEEDLINE_START_POSITION="Head",
        FEEDLINE_FEED_WAIT_SECONDS="20",
        **env,
    )
    follower = start_subscriber(environment)
    connection = await asyncpg.connect(read_model)
    measured = FollowSamples()
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            while not await connection.fetchval(
                "SELECT to_regclass('feedline_subscriber_checkpoints') IS NOT NULL"
            ):
                if follower.poll() is not None:
                    done = finish(follower)
                    raise CheckError(
                        f"follower ({feed_url}) exited with {done.returncode}:\n"
                        f"{done.stderr[-3000:]}"
                    )
                await asyncio.sleep(0.05)
            await asyncio.sleep(1)  # let it settle into its long poll (or stream)
            for number in range(warmup + samples):
                sent = time.perf_counter()
                answer = await client.post("/offers", json={"description": f"flash sale {number}"})
                answer.raise_for_status()
                answered = time.perf_counter()
                offer = answer.json()["id"]
                while not await connection.fetchval(
                    "SELECT 1 FROM loyalty_special_offers WHERE offer_id = $1", offer
                ):
                    if time.perf_counter() - answered > FOLLOW_TIMEOUT_SECONDS:
                        raise CheckError(
                            f"follow mode ({feed_url}): offer {offer} (sample {number + 1}) not "
                            f"in the read model {FOLLOW_TIMEOUT_SECONDS:.0f} s after its 201"
                        )
                    await asyncio.sleep(0.001)
                if number >= warmup:
                    measured.latencies.append(time.perf_counter() - answered)
                    measured.commands.append(answered - sent)
                await asyncio.sleep(interval)
    finally:
        await connection.close()
        follower.send_signal(signal.SIGTERM)
        stopped = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            stopped = finish(follower, timeout=30)
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    if log_check is not None:
        logs = stopped.stderr if stopped is not None else ""
        require(f"follower logs ({feed_url})", log_check(logs, warmup + samples))
    return measured
