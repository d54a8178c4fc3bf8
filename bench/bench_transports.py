"""Transports: catch-up and follow latency per transport, and the relay's publish rate.

Run (full sizes): ``.venv/bin/python -m bench.bench_transports --events 200000 --runs 3
--latency-samples 100 --relay-runs 2``; ``make bench`` runs a fast subset
(``--events 10000 --latency-samples 10 --interval 0.1``).

One throwaway PostgreSQL server (durable: fsync on, as bench_subscriber's)
holds the special-offers service's database and every read model; one
throwaway RabbitMQ node (``tests/support/rabbitmq.py``) serves streams. The
special-offers service runs as a real process (``feedline serve``) serving its
feed over HTTP and over gRPC (``FEEDLINE_GRPC_PORT``), and, when the RabbitMQ
transport is measured, relaying to its stream (``FEEDLINE_BROKER_URL``). Its
event store gets N ``SpecialOfferCreated`` events (distinct offers: one
read-model row each). Then, in the same run:

1. **catch-up per transport**: ``feedline subscribe`` (pages of 10,000, the
   loyalty projection) from the empty read model to the head, once per
   transport (``transport_list``: HTTP, gRPC, and the RabbitMQ stream when the
   subscriber has that transport), each into a new database, timed from its
   summary's startTime to completionTime; then COPY of the same rows into an
   identical empty table (``bench.harness.run_copy``), the floor. With
   ``--runs R`` this is repeated R times (the transports, then the COPY) and
   the medians are reported; each transport's rate as a ratio of the COPY's.
2. **the relay against the broker**: the chassis's ``BrokerRelay`` (the
   service's relay, in this process, on the service's event store) publishing
   the N events to a new stream, timed from its start (connect, create the
   stream, ask the broker where to resume) until the broker has confirmed the
   last; the floor, first in each run: an rstream ``Producer`` publishing the
   same messages (the relay's own encoding of the same stored events, encoded
   before timing) the same way: pages of ``PAGE_SIZE`` split into the same
   frames, under the relay's publisher reference (deduplication on), each page
   confirmed before the next, from connect to the last confirm. Also printed,
   as information: the same messages with every page sent at once
   (``pipelined``), then every confirm awaited.
3. **follow latency per transport**: a ``--follow`` subscriber per transport
   (HTTP long poll, gRPC stream, RabbitMQ stream); ``POST /offers`` one at a
   time, ``--interval`` seconds of quiet after each row arrived; timed from
   the POST's 201 until the row is in the read model (polled every ms). The
   floors: the same commands' own round trip (request to 201: a PostgreSQL
   commit inside), and a PostgreSQL round trip of INSERT (one commit) + SELECT
   into the same kind of table on the same server, at the same pace. p50, p95
   and p99 (nearest rank: each a measured sample) and their ratios.

Checks (``bench.checks``; a failure stops the benchmark with exit status 1):
every catch-up summary says N processed and every read model holds exactly
rows 1..N; every stream, the floor's and the relay's, read back from its start
holds exactly sequence numbers 1..N in order, each body's sequenceNumber its
message's; the relay resumed once, from 1 (one connection, no retry); every
follow sample arrives within 30 s. A RabbitMQ run must have read its events
from the stream (its ``broker transport closed`` log line): one that read any
over the HTTP fallback measured HTTP, so it is left out of the figures and
printed as LEFT OUT with its first warning, rather than failing the run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import asyncpg
import httpx
import orjson
import structlog
from rstream import ConfirmationStatus, Producer, RawMessage
from rstream.recovery import BackOffRecoveryStrategy
from sqlalchemy import select
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer, throwaway_postgres
from tests.support.rabbitmq import (
    PASSWORD,
    USER,
    RabbitMQNode,
    StreamReader,
    throwaway_rabbitmq,
)
from tests.support.services import running_service

from bench.checks import (
    CheckError,
    cores,
    count_problems,
    fail_and_exit,
    filesystem_of,
    load_average,
    percentile,
    ratio,
    require,
    sequence_problems,
    significant,
)
from bench.harness import (
    DURABILITY_SETTINGS,
    LOYALTY_TABLE,
    SUBSCRIBER_PAGE,
    FollowSamples,
    LogCheck,
    check_read_model,
    create_databases,
    fill_event_store,
    follow_samples,
    run_copy,
    run_subscriber_process,
    server_conditions,
    wait_connectable,
)
from feedline.chassis.broker_relay import (
    FRAME_MAX,
    PAGE_SIZE,
    BrokerRelay,
    StoredEvent,
    amqp_message,
    frames,
)
from feedline.chassis.eventstore import EventStore, events
from feedline_contracts.broker import PUBLISHER_REFERENCE, parse_stream_url, stream_name
from feedline_contracts.database import connect_database

Item = TypeVar("Item")

SERVICE = "special-offers"
# The subscriber's RabbitMQ transport (another part of the tree); measured when it exists.
BROKER_CLIENT_MODULE = "feedline_subscriber.broker_feed_client"
BROKER_URL_ENV = "FEEDLINE_BROKER_URL"
BROKER_STREAM_ENV = "FEEDLINE_BROKER_STREAM"
# The subscriber's broker transport logs this when it closes, with where its events came from.
BROKER_CLOSED_LOG = "broker transport closed"
# The relay (or the floor) must have the broker confirm the last event within this long.
PUBLISH_TIMEOUT_SECONDS = 600.0
CONFIRM_TIMEOUT_SECONDS = 30.0
PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class Transport:
    """One way for ``feedline subscribe`` to read the service's feed."""

    key: str  # database and subscription names
    name: str  # in the report
    feed_url: str
    env: Mapping[str, str] = field(default_factory=dict)  # more FEEDLINE_... variables
    # Problems in a run's logs: for the broker, events that came over the HTTP fallback.
    log_check: LogCheck | None = None


def transport_list(
    base_url: str, grpc_port: int, broker_url: str | None, stream: str
) -> list[Transport]:
    """HTTP, gRPC and (with ``broker_url``) the RabbitMQ stream, with the HTTP feed behind it."""
    listed = [
        Transport("http", "HTTP", f"{base_url}/events"),
        Transport("grpc", "gRPC", f"grpc://127.0.0.1:{grpc_port}"),
    ]
    if broker_url is not None:
        listed.append(
            Transport(
                "rabbitmq",
                "RabbitMQ stream",
                f"{base_url}/events",
                {BROKER_URL_ENV: broker_url, BROKER_STREAM_ENV: stream},
                broker_source_problems,
            )
        )
    return listed


def broker_source_problems(stderr: str, events: int) -> list[str]:
    """Whether a broker run read its ``events`` from the stream, by its last
    ``broker transport closed`` log line: a run that fell back to the HTTP feed
    (the stream stalled, the broker unreachable) must not be timed as the broker's.
    The first warning of the run (why it fell back) is quoted."""
    counts: dict[str, object] | None = None
    warning: dict[str, object] | None = None
    for line in stderr.splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("event") == BROKER_CLOSED_LOG:
            counts = record
        elif warning is None and record.get("level") in {"warning", "error"}:
            warning = record
    if counts is None:
        return [f"no {BROKER_CLOSED_LOG!r} log line: where its events came from is unknown"]
    problems = count_problems(
        "events from the stream", _count(counts.get("events_from_stream")), events
    ) + count_problems("events from the HTTP feed", _count(counts.get("events_from_http")), 0)
    if problems and warning is not None:
        said = ", ".join(
            f"{key}={value}"
            for key, value in warning.items()
            if key in {"event", "error", "reason", "retry"}
        )
        problems.append(f"its first warning: {said}")
    return problems


def _count(value: object) -> int:
    return value if isinstance(value, int) else -1


def broker_transport_missing() -> str | None:
    """Why the subscriber cannot read a RabbitMQ stream (yet), or None when it can."""
    if importlib.util.find_spec(BROKER_CLIENT_MODULE) is None:
        return f"{BROKER_CLIENT_MODULE} does not exist yet"
    settings = importlib.util.find_spec("feedline_subscriber.settings")
    origin = settings.origin if settings is not None else None
    # Without the setting the subscriber would read the HTTP feed and be timed as the broker.
    if origin is None or "BROKER_URL" not in Path(origin).read_text():
        return f"the subscriber's settings do not read {BROKER_URL_ENV} yet"
    return None


def spread(values: Sequence[float]) -> dict[int, float]:
    return {p: percentile(values, p) for p in PERCENTILES}


# --- The relay and its floor -------------------------------------------------


async def stored_events(service_url: str, count: int) -> list[StoredEvent]:
    """Events 1..count as the relay reads them (sequence number, name, stored JSON)."""
    database = connect_database(service_url)
    column = events.c
    query = (
        select(column.sequence_number, column.name, column.event_json)
        .where(column.sequence_number <= count)
        .order_by(column.sequence_number)
    )
    try:
        async with database.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
    finally:
        await database.dispose()
    return [StoredEvent(number, name, body.encode()) for number, name, body in rows]


def pages(messages: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for start in range(0, len(messages), size):
        yield messages[start : start + size]


@dataclass(frozen=True)
class Published:
    """One publishing run: seconds from the start until the broker confirmed the last event,
    and until it had confirmed the first page (``first_events`` events)."""

    seconds: float
    first_seconds: float
    first_events: int

    def rate(self, events: int) -> float:
        return events / self.seconds

    def rate_after_first(self, events: int) -> float:
        """Events per second after the first confirmed page: connection set-up left out."""
        return (events - self.first_events) / (self.seconds - self.first_seconds)


class Confirms:
    """Counts the broker's confirms; ``done`` when ``expected`` arrived (fails on a refusal).

    ``first_at``: the moment the first ``first`` messages were all confirmed."""

    def __init__(self, expected: int, first: int = 0) -> None:
        self.expected = expected
        self.first = first
        self.first_at = 0.0
        self.confirmed = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __call__(self, status: ConfirmationStatus) -> None:
        if self.done.done():
            return
        if not status.is_confirmed:
            self.done.set_exception(
                CheckError(
                    f"the broker did not store message {status.message_id} "
                    f"(response code {status.response_code})"
                )
            )
            return
        self.confirmed += 1
        if self.confirmed == self.first:
            self.first_at = time.perf_counter()
        if self.confirmed == self.expected:
            self.done.set_result(None)


async def publish_floor(
    node: RabbitMQNode, stream: str, messages: Sequence[RawMessage], *, pipelined: bool
) -> Published:
    """Seconds from connecting until the broker confirmed the last of ``messages``.

    As the relay publishes: pages of PAGE_SIZE in its frames, its publisher
    reference, each page confirmed before the next (``pipelined``: all sent,
    then all confirms awaited); but the messages are in memory, encoded.
    """
    started = time.perf_counter()
    producer = Producer(
        "127.0.0.1",
        node.stream_port,
        username=USER,
        password=PASSWORD,
        frame_max=FRAME_MAX,
        connection_name="feedline-bench floor",
        recovery_strategy=BackOffRecoveryStrategy(enable=False),
    )
    try:
        await producer.start()
        await producer.create_stream(stream, exists_ok=True)
        client = await producer.default_client
        frame_max = client.frame_max if 0 < client.frame_max <= FRAME_MAX else FRAME_MAX
        first = min(PAGE_SIZE, len(messages))
        everything = Confirms(len(messages), first)
        first_at = 0.0
        for page in pages(messages, PAGE_SIZE):
            confirms = everything if pipelined else Confirms(len(page))
            for frame in frames(page, frame_max):
                await producer.send_batch(
                    stream, frame, publisher_name=PUBLISHER_REFERENCE, on_publish_confirm=confirms
                )
            if not pipelined:
                await asyncio.wait_for(confirms.done, CONFIRM_TIMEOUT_SECONDS)
                first_at = first_at or time.perf_counter()
        if pipelined:
            await asyncio.wait_for(everything.done, PUBLISH_TIMEOUT_SECONDS)
            first_at = everything.first_at
        ended = time.perf_counter()
        return Published(ended - started, first_at - started, first)
    finally:
        await asyncio.wait_for(producer.close(), 10)


async def relay_publish(
    service_url: str, node: RabbitMQNode, relay_name: str, count: int
) -> Published:
    """Seconds from the relay's start until the broker confirmed event ``count``.

    The chassis's relay on the service's event store, as the service runs it
    (pages of PAGE_SIZE), but without the replicas' advisory lock: the service
    holds it (the lock is taken once, not per page).
    """
    database = connect_database(service_url)
    relay = BrokerRelay(
        EventStore(database), relay_name, parse_stream_url(node.stream_url), recheck_seconds=1.0
    )
    try:
        started = time.perf_counter()
        await relay.start()
        first_at, first_events = 0.0, 0
        while relay.progress.confirmed < count:
            if not first_events and relay.progress.confirmed:
                first_at, first_events = time.perf_counter(), relay.progress.confirmed
            if time.perf_counter() - started > PUBLISH_TIMEOUT_SECONDS:
                raise CheckError(
                    f"relay {relay_name}: the broker confirmed {relay.progress.confirmed:,} of "
                    f"{count:,} events in {PUBLISH_TIMEOUT_SECONDS:.0f} s"
                )
            await asyncio.sleep(0.002)
        ended = time.perf_counter()
        if not first_events:  # it was all one page
            first_at, first_events = ended, count
        require(
            f"relay {relay_name}",
            [
                f"resumed {relay.progress.resumed_from} (a connection failed and was retried: "
                "the figure would include a backoff)"
            ]
            if relay.progress.resumed_from != [1]
            else [],
        )
        return Published(ended - started, first_at - started, first_events)
    finally:
        await relay.stop()
        await database.dispose()


async def check_stream(node: RabbitMQNode, stream: str, count: int) -> None:
    """Fail unless ``stream``, read from its start, holds exactly events 1..count in order."""
    async with StreamReader(node, stream) as reader:
        try:
            await reader.wait_for_sequence(count, within=120)
        except TimeoutError as timeout:
            raise CheckError(f"stream {stream}: {timeout}") from timeout
        await asyncio.sleep(0.3)  # anything after the last would have come by now
        messages = list(reader.messages)
    problems = sequence_problems([m.sequence_number for m in messages], count)
    mismatched = [
        m.sequence_number for m in messages if m.event.get("sequenceNumber") != m.sequence_number
    ]
    if mismatched:
        problems.append(f"{len(mismatched):,} bodies with another sequenceNumber")
    require(f"stream {stream}", problems)


async def relay_confirmed(base_url: str) -> int:
    """The service's relay's highest confirmed sequence number, from its /metrics."""
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(f"{base_url}/metrics")
    answer.raise_for_status()
    for line in answer.text.splitlines():
        if line.startswith("feedline_broker_relay_confirmed_sequence "):
            return int(float(line.split()[1]))
    return 0


async def wait_relayed(base_url: str, count: int) -> float:
    started = time.perf_counter()
    while (confirmed := await relay_confirmed(base_url)) < count:
        if time.perf_counter() - started > PUBLISH_TIMEOUT_SECONDS:
            raise CheckError(
                f"the service's relay: {confirmed:,} of {count:,} events confirmed after "
                f"{PUBLISH_TIMEOUT_SECONDS:.0f} s"
            )
        await asyncio.sleep(0.2)
    return time.perf_counter() - started


# --- The follow floor --------------------------------------------------------


async def postgres_round_trips(read_model: str, samples: int, interval: float) -> list[float]:
    """Seconds per INSERT (its own commit) + SELECT of the row, at the followers' pace."""
    connection = await asyncpg.connect(read_model)
    try:
        await connection.execute(LOYALTY_TABLE)
        trips = []
        for number in range(1, samples + 2):
            started = time.perf_counter()
            await connection.execute(
                "INSERT INTO loyalty_special_offers VALUES ($1, $2, $1)", number, "flash sale"
            )
            found = await connection.fetchval(
                "SELECT 1 FROM loyalty_special_offers WHERE offer_id = $1", number
            )
            elapsed = time.perf_counter() - started
            require("PostgreSQL round trip", count_problems("rows found", found or 0, 1))
            if number > 1:  # the first is the warm-up, as for the followers
                trips.append(elapsed)
            await asyncio.sleep(interval)
        return trips
    finally:
        await connection.close()


# --- The run -----------------------------------------------------------------


@dataclass
class Figures:
    events: int
    runs: int
    relay_runs: int
    latency_samples: int
    interval: float
    conditions: list[str]
    transports: list[Transport]
    not_measured: dict[str, str]
    load: dict[str, str] = field(default_factory=dict)
    catch_up: dict[str, list[float]] = field(default_factory=dict)
    copy: list[float] = field(default_factory=list)
    floor: list[Published] = field(default_factory=list)
    pipelined: list[Published] = field(default_factory=list)
    relay: list[Published] = field(default_factory=list)
    follow: dict[str, FollowSamples] = field(default_factory=dict)
    postgres_trips: list[float] = field(default_factory=list)
    # Runs left out of the figures: a broker run that read (some) events over the HTTP
    # fallback measured HTTP, not the stream. Printed, with why.
    fell_back: dict[str, list[str]] = field(default_factory=dict)


def broker_version() -> str:
    try:
        found = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown version"
    return found.stdout.strip() or "unknown version"


def conditions(postgres: dict[str, str], node: RabbitMQNode, args: argparse.Namespace) -> list[str]:
    durability = ", ".join(f"{name}={postgres[name]}" for name in DURABILITY_SETTINGS)
    return [
        f"PostgreSQL {postgres['server_version']}: one throwaway server holding the service's "
        "database and every read model",
        f"PostgreSQL durability: {durability}",
        f"PostgreSQL data directory: {postgres['data_directory']}",
        f"RabbitMQ {broker_version()}: one throwaway node (no replication), streams "
        f"in {node.folder} on {filesystem_of(node.folder)}",
        f"catch-up: {args.events:,} events, subscriber pages of {SUBSCRIBER_PAGE:,}, "
        f"{args.runs} run(s) of each transport then the COPY, each into a new database"
        f"{', medians reported' if args.runs > 1 else ''}",
        f"relay: the same {args.events:,} events, pages of {PAGE_SIZE:,}, "
        f"{args.relay_runs} run(s) of floor, pipelined, relay, each into a new stream"
        f"{', medians reported' if args.relay_runs > 1 else ''}",
        f"follow: {args.latency_samples} samples per transport (after 1 not counted), one "
        f"command at a time, {args.interval} s after each row arrived; long poll wait 20 s",
        f"machine: {cores()} cores shared by PostgreSQL, RabbitMQ, the service, the "
        f"subscriber and whatever else runs; Python {platform.python_version()}",
    ]


def run(args: argparse.Namespace) -> Figures:
    """The servers (started outside the event loop: the node's start runs one of its own)."""
    with throwaway_postgres(durable=True) as server, throwaway_rabbitmq() as node:
        figures = asyncio.run(main(args, server, node))
        figures.load["end"] = load_average()
    return figures


async def main(args: argparse.Namespace, server: PostgresServer, node: RabbitMQNode) -> Figures:
    missing = broker_transport_missing() if "rabbitmq" in args.transports else "not asked for"
    server_url = server.url()
    await wait_connectable(server_url)
    postgres = await server_conditions(server_url)
    grpc_port = free_port()
    broker_url = node.stream_url if missing is None else None
    stream = stream_name(SERVICE)
    placeholders = transport_list("http://service", grpc_port, broker_url, stream)
    keys = [t.key for t in placeholders if t.key in args.transports]
    figures = Figures(
        args.events,
        args.runs,
        args.relay_runs,
        args.latency_samples,
        args.interval,
        conditions(postgres, node, args),
        [],
        {} if missing is None else {"rabbitmq": missing},
    )
    print("conditions:")
    for line in figures.conditions:
        print(f"  {line}")
    figures.load["start"] = load_average()
    print(f"  load average at start: {figures.load['start']}", flush=True)
    names = [f"rm_{key}_{run}" for run in range(args.runs) for key in keys]
    names += [f"rm_copy_{run}" for run in range(args.runs)]
    names += [f"rm_follow_{key}" for key in keys]
    await create_databases(server_url, "offers", *names, "rm_postgres_floor")
    service_url = server.url("offers")
    service_env = {"FEEDLINE_GRPC_PORT": str(grpc_port)}
    if broker_url is not None:
        service_env[BROKER_URL_ENV] = broker_url
    with running_service(SERVICE, service_url, cwd=None, **service_env) as base_url:
        figures.transports = [
            t
            for t in transport_list(base_url, grpc_port, broker_url, stream)
            if t.key in args.transports
        ]
        print(f"filling the {SERVICE} event store with {args.events:,} events ...", flush=True)
        await fill_event_store(service_url, args.events)
        if broker_url is not None:
            waited = await wait_relayed(base_url, args.events)
            print(f"the service's relay had the broker confirm them {waited:.1f} s after")
        await catch_up(figures, server, service_url)
        await relays(figures, node, service_url)
        await follow(figures, server, base_url)
    return figures


def recorded(check: LogCheck | None, problems: list[str]) -> LogCheck | None:
    """``check``, its problems kept in ``problems`` rather than failing the run."""
    if check is None:
        return None

    def recording(stderr: str, count: int) -> list[str]:
        problems.extend(check(stderr, count))
        return []

    return recording


async def catch_up(figures: Figures, server: PostgresServer, service_url: str) -> None:
    figures.load["catch-up"] = load_average()
    for run in range(figures.runs):
        line = []
        for transport in figures.transports:
            read_model = server.url(f"rm_{transport.key}_{run}")
            problems: list[str] = []
            seconds = run_subscriber_process(
                transport.feed_url,
                read_model,
                figures.events,
                f"bench-{transport.key}",
                recorded(transport.log_check, problems),
                **transport.env,
            )
            await check_read_model(f"{transport.name} run {run + 1}", read_model, figures.events)
            if problems:
                left_out = f"catch-up run {run + 1} ({seconds:.3f} s): " + "; ".join(problems)
                figures.fell_back.setdefault(transport.key, []).append(left_out)
                line.append(f"{transport.name} {seconds:.3f} s LEFT OUT: {'; '.join(problems)}")
                continue
            figures.catch_up.setdefault(transport.key, []).append(seconds)
            line.append(f"{transport.name} {seconds:.3f} s")
        copy = server.url(f"rm_copy_{run}")
        figures.copy.append(await run_copy(copy, figures.events))
        await check_read_model(f"COPY run {run + 1}", copy, figures.events)
        line.append(f"COPY {figures.copy[-1]:.3f} s")
        print(f"catch-up run {run + 1}: " + ", ".join(line) + " (read models checked)", flush=True)


async def relays(figures: Figures, node: RabbitMQNode, service_url: str) -> None:
    figures.load["relay"] = load_average()
    count = figures.events
    stored = await stored_events(service_url, count)
    require("events read for the floor", count_problems("events", len(stored), count))
    messages = [amqp_message(event) for event in stored]
    for run in range(1, figures.relay_runs + 1):
        floor_stream = f"feedline.bench.floor-{run}"
        figures.floor.append(await publish_floor(node, floor_stream, messages, pipelined=False))
        await check_stream(node, floor_stream, count)
        pipelined_stream = f"feedline.bench.pipelined-{run}"
        figures.pipelined.append(
            await publish_floor(node, pipelined_stream, messages, pipelined=True)
        )
        await check_stream(node, pipelined_stream, count)
        relay_name = f"bench-relay-{run}"
        figures.relay.append(await relay_publish(service_url, node, relay_name, count))
        await check_stream(node, stream_name(relay_name), count)
        print(
            f"relay run {run}: floor {figures.floor[-1].seconds:.3f} s, pipelined "
            f"{figures.pipelined[-1].seconds:.3f} s, relay {figures.relay[-1].seconds:.3f} s "
            "(each stream read back: 1..N in order)",
            flush=True,
        )


async def follow(figures: Figures, server: PostgresServer, base_url: str) -> None:
    figures.load["follow"] = load_average()
    for transport in figures.transports:
        problems: list[str] = []
        samples = await follow_samples(
            base_url,
            transport.feed_url,
            server.url(f"rm_follow_{transport.key}"),
            figures.latency_samples,
            subscription=f"bench-follow-{transport.key}",
            warmup=1,
            interval=figures.interval,
            log_check=recorded(transport.log_check, problems),
            **transport.env,
        )
        if problems:
            figures.fell_back.setdefault(transport.key, []).append("follow: " + "; ".join(problems))
            print(f"follow {transport.name}: LEFT OUT: {'; '.join(problems)}", flush=True)
            continue
        figures.follow[transport.key] = samples
        print(
            f"follow {transport.name}: p50 {percentile(samples.latencies, 50) * 1000:.2f} ms "
            f"({len(samples.latencies)} samples)",
            flush=True,
        )
    figures.postgres_trips = await postgres_round_trips(
        server.url("rm_postgres_floor"), figures.latency_samples, figures.interval
    )


# --- The report ----------------------------------------------------------------


def milliseconds(seconds: float) -> str:
    return significant(seconds * 1000, 4)


def report(figures: Figures) -> None:
    events, runs = figures.events, figures.runs
    print()
    print(f"Transports: {events:,} events, special-offers -> loyalty read model (PostgreSQL)")
    print("conditions:")
    for line in figures.conditions:
        print(f"  {line}")
    print(
        "  load average (1, 5, 15 min): "
        + "; ".join(f"{when} {load}" for when, load in figures.load.items())
    )
    for key, why in figures.not_measured.items():
        print(f"  not measured: {key} ({why})")

    report_catch_up(figures)
    report_relay(figures)
    report_follow(figures)
    for key, runs_left_out in figures.fell_back.items():
        for left_out in runs_left_out:
            print(f"LEFT OUT ({key}, read over the HTTP fallback): {left_out}")
    processed = ", ".join(f"{len(figures.catch_up[t.key])} {t.name}" for t in figures.transports)
    print(
        f"checks passed: catch-up summaries said {events:,} processed and each read model held "
        f"exactly rows 1..{events:,} ({processed}, {runs} COPY); "
        f"{3 * figures.relay_runs} streams read back held exactly 1..{events:,} in order; "
        "every follow sample arrived"
        + (
            f"; {sum(map(len, figures.fell_back.values()))} run(s) left out"
            if figures.fell_back
            else ""
        )
    )


def report_catch_up(figures: Figures) -> None:
    events, runs = figures.events, figures.runs
    median = f", median of {runs}" if runs > 1 else ""
    print()
    print(f"catch-up, empty read model to the head{median}")
    print(f"{'':24}{'seconds':>10}{'events/s':>12}  / COPY rows/s")
    copy_seconds = statistics.median(figures.copy)
    copy_rate = events / copy_seconds
    for transport in figures.transports:
        if transport.key not in figures.catch_up:
            print(f"{transport.name:24}  no run read from it (see 'left out' below)")
            continue
        runs_of = figures.catch_up[transport.key]
        seconds = statistics.median(runs_of)
        rate = events / seconds
        of = f"  ({len(runs_of)} of {runs} runs)" if len(runs_of) != runs else ""
        print(f"{transport.name:24}{seconds:>10.3f}{rate:>12,.0f}  {ratio(rate, copy_rate)}{of}")
    print(f"{'COPY of the same rows':24}{copy_seconds:>10.3f}{copy_rate:>12,.0f}")
    if runs > 1:
        for transport in figures.transports:
            each = ", ".join(f"{s:.3f}" for s in figures.catch_up.get(transport.key, []))
            print(f"  each run, {transport.name} s: {each}")
        print("  each run, COPY s: " + ", ".join(f"{s:.3f}" for s in figures.copy))


def report_relay(figures: Figures) -> None:
    events = figures.events
    relay_median = f", median of {figures.relay_runs}" if figures.relay_runs > 1 else ""
    print()
    print(f"relay: {events:,} events published, start to the broker's last confirm{relay_median}")
    print(f"{'':46}{'seconds':>9}{'events/s':>10}{'after 1st page':>16}")
    rates: dict[str, tuple[float, float]] = {}
    for key, name, runs_of in (
        ("floor", f"floor: rstream, pages of {PAGE_SIZE:,}, each confirmed", figures.floor),
        ("pipelined", "pipelined: rstream, all pages, then confirms", figures.pipelined),
        ("relay", "relay: BrokerRelay from the event store", figures.relay),
    ):
        seconds = statistics.median(run.seconds for run in runs_of)
        rates[key] = (
            statistics.median(run.rate(events) for run in runs_of),
            statistics.median(run.rate_after_first(events) for run in runs_of),
        )
        print(f"{name:46}{seconds:>9.3f}{rates[key][0]:>10,.0f}{rates[key][1]:>16,.0f}")
    for key in ("floor", "pipelined"):
        print(
            f"relay / {key}: {ratio(rates['relay'][0], rates[key][0])} events/s; after the "
            f"first page {ratio(rates['relay'][1], rates[key][1])}"
        )
    if figures.relay_runs > 1:
        for name, runs_of in (
            ("floor", figures.floor),
            ("pipelined", figures.pipelined),
            ("relay", figures.relay),
        ):
            each = ", ".join(f"{run.seconds:.3f} ({run.first_seconds:.3f})" for run in runs_of)
            print(f"  each run, {name} s (first page): {each}")


def report_follow(figures: Figures) -> None:
    print()
    print(
        f"follow latency, POST's 201 -> row in the read model, {figures.latency_samples} samples "
        "each (ms; nearest rank)"
    )
    postgres = spread(figures.postgres_trips)
    print(f"{'':44}" + "".join(f"{'p' + str(p):>10}" for p in PERCENTILES))
    followed = [t for t in figures.transports if t.key in figures.follow]
    for transport in followed:
        samples = figures.follow[transport.key]
        for name, values in (
            (f"{transport.name}: 201 -> row", spread(samples.latencies)),
            ("  its commands' round trip (POST -> 201)", spread(samples.commands)),
        ):
            print(f"{name:44}" + "".join(f"{milliseconds(values[p]):>10}" for p in PERCENTILES))
    print(
        f"{'PostgreSQL INSERT (commit) + SELECT':44}"
        + "".join(f"{milliseconds(postgres[p]):>10}" for p in PERCENTILES)
    )
    for transport in followed:
        samples = figures.follow[transport.key]
        latencies = spread(samples.latencies)
        for floor_name, values in (
            ("command round trip", spread(samples.commands)),
            ("PostgreSQL round trip", postgres),
        ):
            ratios = ", ".join(
                f"p{p} {ratio(latencies[p] * 1000, values[p] * 1000)}" for p in PERCENTILES
            )
            print(f"  {transport.name} / {floor_name}: {ratios}")


def cli() -> None:
    # The relay runs in this process: its warnings and errors show, not its progress.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument(
        "--runs", type=int, default=1, help="catch-up runs of each transport and the COPY"
    )
    parser.add_argument(
        "--relay-runs", type=int, default=1, help="runs of the floor, pipelined and the relay"
    )
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument(
        "--interval", type=float, default=0.2, help="seconds of quiet after each follow sample"
    )
    parser.add_argument(
        "--transports",
        default="http,grpc,rabbitmq",
        help="comma-separated: http, grpc, rabbitmq (measured when the subscriber has it)",
    )
    args = parser.parse_args()
    args.transports = [key.strip() for key in args.transports.split(",") if key.strip()]
    unknown = set(args.transports) - {"http", "grpc", "rabbitmq"}
    if unknown or not args.transports:
        parser.error(f"--transports: unknown {sorted(unknown)}" if unknown else "--transports")
    if args.runs < 1 or args.relay_runs < 1 or args.events < 1 or args.latency_samples < 1:
        parser.error("--events, --runs, --relay-runs and --latency-samples must be at least 1")
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    try:
        report(run(args))
    except CheckError as failure:
        fail_and_exit(parser.prog, failure)


if __name__ == "__main__":
    cli()
