"""Long-poll scale: many followers waiting on one feed, then one commit.

Run: ``.venv/bin/python -m bench.bench_longpoll --followers 1000``

One throwaway PostgreSQL server (durable) holds the special-offers service's
database; the service runs as a real process (``feedline serve``, HTTP and
gRPC feed, ``FEEDLINE_GRPC_PORT``) with a few events in its store (head H).
For each transport, in turn:

- **HTTP long polls**: F connections (plain asyncio HTTP/1.1, bench.serving.
  RawHttp, all in this process), each sending ``GET /events?start=H+1&wait=30``;
- **gRPC follow streams**: F channels (each its own connection:
  ``grpc.use_local_subchannel_pool``), each calling ``Subscribe(start=H+1,
  follow=true)``; a stream is waiting once its first (empty) batch came.

When all F are waiting (gRPC: every first batch in; HTTP: every request sent
and ``--settle`` seconds passed with none answered), the benchmark reads the
service's RSS, then its CPU time over ``--idle-seconds`` of nothing happening
(what F waiters cost while waiting: each re-checks the database every
``FEEDLINE_LONG_POLL_RECHECK_SECONDS``, 1 s by default), then commits one event
with ``POST /offers`` and times, per follower, from the POST being sent until
that follower had the event (its answer or batch read whole). Reported: p50,
p99 and max across the followers; the service's and PostgreSQL's CPU from the
POST until the last follower had it.

Floors, measured in the same run: the same publish with **1 follower** of
the same transport (``--floor-rounds`` rounds, the median), and the POST's own
round trip (request to 201, a PostgreSQL commit inside). Memory per waiting
follower: (RSS with F waiting - RSS just before they connected) / F.

The file-descriptor limit is raised (soft up to hard, ``resource.setrlimit``)
for this process and its children (the service inherits it) when it is below
what F connections on each side need; the conditions say what it was.

Checks (exit status 1 when one fails): no follower is answered before the
commit; every follower gets exactly the committed event (sequence number H+1,
the POST's offer) and nothing else; all within ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import orjson
import psutil
from tests.support.ports import free_port
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
from bench.harness import (
    create_databases,
    fill_event_store,
    server_conditions,
    wait_connectable,
)
from bench.serving import (
    RawHttp,
    cpu_seconds,
    postgres_process,
    raise_fd_limit,
    rss_bytes,
    service_process,
)
from bench.summary import summary_line
from feedline_contracts.feed_v1 import feed_pb2, feed_pb2_grpc

SERVICE = "special-offers"
INITIAL_EVENTS = 10
LONG_POLL_WAIT = 30
# Each follower its own connection (channels to one target share one by default).
GRPC_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)


@dataclass
class Publish:
    sent: float
    answered: float
    offer: int
    sequence: int


async def publish(client: httpx.AsyncClient, number: int) -> Publish:
    sent = time.perf_counter()
    answer = await client.post("/offers", json={"description": f"long-poll sample {number}"})
    answered = time.perf_counter()
    answer.raise_for_status()
    head = await client.get("/events/head")
    head.raise_for_status()
    return Publish(sent, answered, int(answer.json()["id"]), int(head.json()["head"]))


def event_problems(events: list[tuple[int, int]], expected: Publish) -> list[str]:
    """A follower's events as (sequence number, offer id): exactly the published one."""
    if events == [(expected.sequence, expected.offer)]:
        return []
    return [f"got {events[:3]}, expected [({expected.sequence}, {expected.offer})]"]


class Follower:
    """One waiting reader; ``ready`` once waiting, ``arrived`` when it had the event."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.arrived: float | None = None
        self.events: list[tuple[int, int]] = []
        self.problem: str | None = None

    async def run(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class HttpFollower(Follower):
    def __init__(self, port: int, start: int) -> None:
        super().__init__()
        self.connection = RawHttp("127.0.0.1", port)
        self.target = f"/events?start={start}&wait={LONG_POLL_WAIT}"

    async def connect(self) -> None:
        await self.connection.open()
        await self.connection.send_get(self.target)
        self.ready.set()  # sent; the service holds it (checked: no answer before the commit)

    async def run(self) -> None:
        answer = await self.connection.read_answer()
        self.arrived = time.perf_counter()
        if answer.status != 200:
            self.problem = f"status {answer.status}"
            return
        self.events = [
            (event["sequenceNumber"], event["content"].get("offerId"))
            for event in orjson.loads(answer.body)
        ]

    async def close(self) -> None:
        await self.connection.close()


class GrpcFollower(Follower):
    def __init__(self, target: str, start: int) -> None:
        super().__init__()
        self.channel = grpc.aio.insecure_channel(target, options=GRPC_OPTIONS)
        self.stub = feed_pb2_grpc.EventFeedStub(self.channel)
        self.start = start
        self.call: grpc.aio.UnaryStreamCall[feed_pb2.SubscribeRequest, feed_pb2.EventBatch]

    async def connect(self) -> None:
        self.call = self.stub.Subscribe(feed_pb2.SubscribeRequest(start=self.start, follow=True))
        first = await self.call.read()
        if not isinstance(first, feed_pb2.EventBatch) or first.events:
            self.problem = f"first batch not the empty one at the head: {first!r:.200}"
        self.ready.set()

    async def run(self) -> None:
        batch = await self.call.read()
        self.arrived = time.perf_counter()
        if not isinstance(batch, feed_pb2.EventBatch):
            self.problem = "stream ended"
            return
        self.events = [
            (event.sequence_number, orjson.loads(event.content).get("offerId"))
            for event in batch.events
        ]

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


@dataclass
class Round:
    """One publish to ``followers`` waiting followers of one transport."""

    transport: str
    followers: int
    latencies: list[float]  # seconds, POST sent -> follower had it
    command: float  # POST sent -> 201
    rss_before: int
    rss_waiting: int
    idle_service_cpu: float  # CPU seconds over idle_seconds, all waiting
    idle_postgres_cpu: float
    idle_seconds: float
    wake_service_cpu: float  # POST sent -> last follower had it
    wake_postgres_cpu: float
    connect_seconds: float

    @property
    def memory_per_follower(self) -> float:
        return (self.rss_waiting - self.rss_before) / self.followers


@dataclass
class Watched:
    base_url: str
    grpc_target: str
    port: int
    service: psutil.Process
    postgres: psutil.Process


async def one_round(
    transport: str,
    count: int,
    watched: Watched,
    client: httpx.AsyncClient,
    number: int,
    args: argparse.Namespace,
) -> Round:
    head = (await client.get("/events/head")).json()["head"]
    start = head + 1
    rss_before = rss_bytes(watched.service)
    followers: list[HttpFollower | GrpcFollower]
    if transport == "http":
        followers = [HttpFollower(watched.port, start) for _ in range(count)]
    else:
        followers = [GrpcFollower(watched.grpc_target, start) for _ in range(count)]
    connecting = time.perf_counter()
    try:
        await asyncio.wait_for(
            gather_limited([follower.connect for follower in followers], 200), args.timeout
        )
        connect_seconds = time.perf_counter() - connecting
        require(
            f"{transport}: {count} follower(s) connecting",
            [f"follower {i}: {f.problem}" for i, f in enumerate(followers, 1) if f.problem],
        )
        runs = [asyncio.create_task(follower.run()) for follower in followers]
        await asyncio.sleep(args.settle if count > 1 else min(args.settle, 0.5))
        rss_waiting = rss_bytes(watched.service)
        idle = args.idle_seconds if count > 1 else 0.0
        service_idle, postgres_idle = await cpu_over(watched, asyncio.sleep(idle))
        early = [i for i, follower in enumerate(followers, 1) if follower.arrived is not None]
        require(
            f"{transport}: {count} follower(s) waiting",
            [f"{len(early)} answered before any commit (e.g. follower {early[0]})"]
            if early
            else [],
        )
        service_before = cpu_seconds(watched.service)
        postgres_before = cpu_seconds(watched.postgres, tree=True)
        published = await publish(client, number)
        await asyncio.wait_for(asyncio.gather(*runs), args.timeout)
        wake_service = cpu_seconds(watched.service) - service_before
        wake_postgres = cpu_seconds(watched.postgres, tree=True) - postgres_before
    finally:
        await asyncio.gather(*(follower.close() for follower in followers), return_exceptions=True)
    problems = [f"follower {i}: {f.problem}" for i, f in enumerate(followers, 1) if f.problem]
    for i, follower in enumerate(followers, 1):
        problems += [f"follower {i}: {p}" for p in event_problems(follower.events, published)]
    require(f"{transport}: {count} follower(s), event {published.sequence}", problems)
    latencies = [follower.arrived - published.sent for follower in followers if follower.arrived]
    result = Round(
        transport,
        count,
        latencies,
        published.answered - published.sent,
        rss_before,
        rss_waiting,
        service_idle,
        postgres_idle,
        idle,
        wake_service,
        wake_postgres,
        connect_seconds,
    )
    print(describe(result), flush=True)
    return result


async def gather_limited(calls: list[Callable[[], Awaitable[None]]], at_once: int) -> None:
    """Run ``calls``, at most ``at_once`` at a time (connecting 1,000 at once floods accept)."""
    gate = asyncio.Semaphore(at_once)

    async def gated(call: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await call()

    await asyncio.gather(*(gated(call) for call in calls))


async def cpu_over(watched: Watched, wait: Awaitable[None]) -> tuple[float, float]:
    service, postgres = cpu_seconds(watched.service), cpu_seconds(watched.postgres, tree=True)
    await wait
    return (
        cpu_seconds(watched.service) - service,
        cpu_seconds(watched.postgres, tree=True) - postgres,
    )


def ms(seconds: float) -> str:
    return significant(seconds * 1000, 4)


def describe(result: Round) -> str:
    text = (
        f"{result.transport}, {result.followers} follower(s): POST -> every follower had it: "
        f"p50 {ms(percentile(result.latencies, 50))} ms, "
        f"p99 {ms(percentile(result.latencies, 99))} ms, max {ms(max(result.latencies))} ms; "
        f"POST -> 201 {ms(result.command)} ms; CPU s from the POST: service "
        f"{result.wake_service_cpu:.4f}, PostgreSQL {result.wake_postgres_cpu:.4f}"
    )
    if result.followers > 1:
        text += (
            f"; RSS {result.rss_before / 2**20:.1f} -> {result.rss_waiting / 2**20:.1f} MiB "
            f"({result.memory_per_follower / 1024:.1f} KiB/follower); idle {result.idle_seconds}"
            f" s: service CPU {result.idle_service_cpu:.3f} s, PostgreSQL "
            f"{result.idle_postgres_cpu:.3f} s; connecting took {result.connect_seconds:.2f} s"
        )
    return text + f"; load {load_average()}"


@dataclass
class Figures:
    conditions: list[str]
    floors: dict[str, list[Round]] = field(default_factory=dict)
    rounds: dict[str, list[Round]] = field(default_factory=dict)


async def main(args: argparse.Namespace, fd_note: str) -> Figures:
    with throwaway_postgres(durable=True) as server:
        server_url = server.url()
        await wait_connectable(server_url)
        postgres = await server_conditions(server_url)
        await create_databases(server_url, "offers")
        service_url = server.url("offers")
        grpc_port = free_port()
        env: dict[str, str] = {"FEEDLINE_GRPC_PORT": str(grpc_port)}
        if args.recheck_seconds is not None:
            env["FEEDLINE_LONG_POLL_RECHECK_SECONDS"] = str(args.recheck_seconds)
        figures = Figures(
            [
                f"{args.followers:,} followers per transport, all in this process (HTTP: plain "
                "asyncio connections; gRPC: grpc.aio, one channel and connection each); "
                f"floors: 1 follower, {args.floor_rounds} rounds, median",
                f"service: `feedline serve {SERVICE}` (one process, one event loop), HTTP and "
                "gRPC; long-poll re-check "
                + (
                    f"{args.recheck_seconds} s (FEEDLINE_LONG_POLL_RECHECK_SECONDS)"
                    if args.recheck_seconds is not None
                    else "1 s (the default)"
                )
                + f"; PostgreSQL {postgres['server_version']} (fsync={postgres['fsync']})",
                f"machine: {cores()} cores shared by the service, PostgreSQL, the followers, "
                f"the publisher and whatever else runs; Python {platform.python_version()}",
                fd_note,
            ]
        )
        print("conditions:")
        for line in figures.conditions:
            print(f"  {line}")
        print(f"  load average at start: {load_average()}", flush=True)
        with running_service(SERVICE, service_url, cwd=None, **env) as base_url:
            await fill_event_store(service_url, INITIAL_EVENTS)
            watched = Watched(
                base_url,
                f"127.0.0.1:{grpc_port}",
                int(base_url.rsplit(":", 1)[1]),
                service_process(base_url),
                postgres_process(server.port),
            )
            number = 0
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                for transport in args.transports:
                    floors = figures.floors.setdefault(transport, [])
                    for _ in range(args.floor_rounds):
                        number += 1
                        floors.append(await one_round(transport, 1, watched, client, number, args))
                    for _ in range(args.rounds):
                        number += 1
                        figures.rounds.setdefault(transport, []).append(
                            await one_round(
                                transport, args.followers, watched, client, number, args
                            )
                        )
    figures.conditions.append(f"load average at end: {load_average()}")
    return figures


def report(figures: Figures) -> None:
    print()
    print("Long-poll scale: followers waiting on one feed, then one commit")
    print("conditions:")
    for line in figures.conditions:
        print(f"  {line}")
    print(
        f"{'':34}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'POST->201 ms':>14}"
        f"{'KiB/follower':>14}{'idle CPU %':>12}{'wake CPU ms':>13}"
    )
    for transport, rounds in figures.rounds.items():
        floors = figures.floors[transport]
        floor = statistics.median(r.latencies[0] for r in floors)
        floor_command = statistics.median(r.command for r in floors)
        print(
            f"{transport + ': 1 follower (median)':34}{ms(floor):>10}{'':>10}{'':>10}"
            f"{ms(floor_command):>14}"
        )
        for result in rounds:
            p50 = percentile(result.latencies, 50)
            p99 = percentile(result.latencies, 99)
            idle = result.idle_service_cpu / result.idle_seconds * 100
            print(
                f"{f'{transport}: {result.followers:,} followers':34}{ms(p50):>10}{ms(p99):>10}"
                f"{ms(max(result.latencies)):>10}{ms(result.command):>14}"
                f"{result.memory_per_follower / 1024:>14.1f}{idle:>12.1f}"
                f"{result.wake_service_cpu * 1000:>13.1f}"
            )
            print(
                f"  p50 / 1-follower floor: {ratio(p50 * 1000, floor * 1000)} ms; "
                f"p99 / floor: {ratio(p99 * 1000, floor * 1000)} ms; "
                f"p50 / its POST->201: {ratio(p50 * 1000, result.command * 1000)} ms"
            )
            print(
                f"  service CPU per follower woken: "
                f"{significant(result.wake_service_cpu / result.followers * 1e6, 4)} µs; "
                f"PostgreSQL CPU from the POST: {result.wake_postgres_cpu * 1000:.1f} ms; "
                f"idle {result.idle_seconds:g} s with all waiting: service CPU "
                f"{result.idle_service_cpu:.3f} s, PostgreSQL {result.idle_postgres_cpu:.3f} s"
            )
    print(
        "  KiB/follower: (service RSS with all waiting - RSS before they connected) / followers; "
        "idle CPU %: the service's CPU over the idle window with all waiting; "
        "wake CPU ms: the service's CPU from the POST until the last follower had the event"
    )
    print(
        "checks passed: no follower was answered before the commit; every follower got exactly "
        "the committed event (its sequence number and offer), nothing else"
    )
    print(summary_line("bench_longpoll", headline(figures)))


def headline(figures: Figures) -> list[dict[str, object]]:
    """Per transport and follower count: p50 over the 1-follower floor, p99, memory per
    waiting follower and the service's CPU per follower woken."""
    found: list[dict[str, object]] = []
    for transport, rounds in figures.rounds.items():
        floor = statistics.median(r.latencies[0] for r in figures.floors[transport])
        for result in rounds:
            p50 = percentile(result.latencies, 50)
            p99 = percentile(result.latencies, 99)
            name = f"longpoll {transport} {result.followers:,}"
            found += [
                {
                    "name": f"{name} p50 / floor",
                    "value": round(p50 / floor, 4),
                    "unit": "ratio",
                    "detail": f"{ms(p50)} / {ms(floor)} ms; p99 {ms(p99)} ms",
                },
                {
                    "name": f"{name} memory per follower",
                    "value": round(result.memory_per_follower / 1024, 1),
                    "unit": "KiB",
                },
                {
                    "name": f"{name} CPU per follower woken",
                    "value": significant(result.wake_service_cpu / result.followers * 1e6, 4),
                    "unit": "µs",
                },
            ]
    return found


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1, help="rounds with all followers")
    parser.add_argument("--floor-rounds", type=int, default=5, help="rounds with 1 follower")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=25.0)
    parser.add_argument("--transports", default="http,grpc")
    parser.add_argument(
        "--recheck-seconds",
        type=float,
        default=None,
        help="the service's FEEDLINE_LONG_POLL_RECHECK_SECONDS (default: its own, 1 s)",
    )
    args = parser.parse_args()
    args.transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    if not args.transports or set(args.transports) - {"http", "grpc"}:
        parser.error("--transports: http, grpc or both")
    if args.followers < 1 or args.rounds < 1 or args.floor_rounds < 1:
        parser.error("--followers, --rounds and --floor-rounds must be at least 1")
    if args.settle + args.idle_seconds + args.timeout >= LONG_POLL_WAIT:
        parser.error(f"--settle + --idle-seconds + --timeout must stay below {LONG_POLL_WAIT} s")
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    try:
        # This process holds a connection per follower; the service one per follower too.
        fd_note = raise_fd_limit(2 * args.followers + 1024)
        report(asyncio.run(main(args, fd_note)))
    except CheckError as failure:
        fail_and_exit(parser.prog, failure)


if __name__ == "__main__":
    cli()
