"""Fan-out: many readers of one feed at once, straight from the service and through a cache.

Run: ``.venv/bin/python -m bench.bench_fanout --events 200000 --readers 1,10,50``

One throwaway PostgreSQL server (durable) holds the special-offers service's
database; the service runs as a real process (``feedline serve``) and its
event store gets N ``SpecialOfferCreated`` events. One reference read of the
whole feed (pages of ``--page``), decoded and checked (exactly sequence
numbers 1..N, in order), keeps every page's bytes. Then, for each reader
count R:

1. **direct**: R readers read the whole feed from the service at once, each
   on its own keep-alive connection, page after page (``start=1``, then the
   ``start`` of each answer's ``Link: rel="next"``) until a page is not full;
2. **cache, cold**: the same through nginx (a caching reverse proxy started
   for this R on a free loopback port from a temporary config, with an empty
   cache) that caches what the feed's ``Cache-Control`` allows and nothing
   else (``proxy_cache`` without ``proxy_cache_valid``: full pages say
   ``public, max-age=31536000, immutable`` and are kept, the page at the head
   says ``no-cache`` and is not); ``proxy_cache_lock`` off unless
   ``--cache-lock`` (see ``nginx_config``: with it, readers arriving together at
   the page at the head pass its lock one by one, 500 ms apart);
3. **cache, warm**: the same again through that nginx, its cache now full.

Each run is timed from the moment every reader starts (their connections are
already open) until the last has read its last page. Around each run the
benchmark reads from the kernel (psutil) the CPU seconds of the service
process, of the PostgreSQL server (postmaster and backends) and of nginx
(master and workers), and the service's own ``/metrics``: how many
``GET /events`` reached it and how many events it served.

The readers are one asyncio process of plain HTTP/1.1 connections (bench.
serving.RawHttp), not R ``feedline subscribe`` processes: 50 subscriber
processes on 2 cores would measure 50 interpreters starting and 50 read
models being written (each subscriber's PostgreSQL writes cost ~5 times what
the service spends serving the same events, docs/benchmarks.md), not the
feed. What the service does per reader is the same either way: one
``GET /events?start=&limit=`` per page. That the real subscriber works
through the cache is shown too: after the runs, one ``feedline subscribe``
process (``--feed-url`` at nginx) catches up into a new read model, checked
row by row.

Checks (exit status 1 when one fails): the reference read holds exactly
sequence numbers 1..N in order; every reader's every page is byte for byte
the reference's page for that ``start``, every answer is a 200, each reader
read exactly N events; the subscriber's read model holds exactly rows 1..N.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
    ratio,
    require,
    sequence_problems,
    significant,
)
from bench.harness import (
    check_read_model,
    create_databases,
    fill_event_store,
    run_subscriber_process,
    server_conditions,
    wait_connectable,
)
from bench.serving import (
    FeedCounters,
    RawHttp,
    cpu_seconds,
    feed_counters,
    next_start,
    postgres_process,
    raise_fd_limit,
    service_process,
)
from bench.summary import summary_line

SERVICE = "special-offers"
DEFAULT_PAGE = 10_000
READ_TIMEOUT_SECONDS = 900.0
NGINX = "nginx"
NGINX_PACKAGE = "nginx-light"
CACHE_STATUS_HEADER = "x-cache-status"


def nginx_config(
    port: int,
    origin_port: int,
    directory: Path,
    *,
    workers: int = 1,
    lock: bool = False,
    as_root: bool = False,
) -> str:
    """A caching reverse proxy on 127.0.0.1:``port`` for the service on ``origin_port``.

    What is cached and for how long is the origin's ``Cache-Control`` alone:
    there is no ``proxy_cache_valid`` (which would cache answers the origin did
    not allow, e.g. the ``no-cache`` page at the head) and no
    ``proxy_ignore_headers``. ``lock``: ``proxy_cache_lock``, of concurrent
    misses of one page one goes to the origin and the others wait for it; nginx
    polls that lock every 500 ms and has no hit-for-pass, so readers arriving
    together at the page at the head (``no-cache``: never stored) go through it
    one after another, 500 ms apart. Everything
    (pid, logs, temporary files, cache) lives in ``directory``.
    """
    d = directory
    temp_paths = "\n".join(
        f"    {kind}_temp_path {d / ('temp-' + kind)};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
{"user root;" if as_root else ""}
daemon off;
master_process on;
worker_processes {workers};
pid {d / "nginx.pid"};
error_log {d / "error.log"} warn;
events {{
    worker_connections 8192;
}}
http {{
    log_format feed '$upstream_cache_status $status $request_uri';
    access_log {d / "access.log"} feed;
{temp_paths}
    proxy_cache_path {d / "cache"} levels=1:2 keys_zone=feed:16m max_size=8g inactive=1d
                     use_temp_path=off;
    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_read_timeout 60s;
            proxy_buffer_size 64k;
            proxy_buffers 64 64k;
            proxy_cache feed;
            proxy_cache_lock {"on" if lock else "off"};
            proxy_cache_lock_age 60s;
            proxy_cache_lock_timeout 60s;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"""


@dataclass
class CachingProxy:
    port: int
    directory: Path
    process: psutil.Process

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    def cache_statuses(self) -> Counter[str]:
        """How many logged requests had each ``$upstream_cache_status`` (``-``: not cacheable)."""
        lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
        return Counter(line.split(" ", 1)[0] for line in lines if line)


def nginx_version() -> str:
    done = subprocess.run([NGINX, "-v"], capture_output=True, text=True, check=False)
    return (done.stderr or done.stdout).strip().removeprefix("nginx version: ")


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        if process.poll() is not None:
            text = log.read_text() if log.exists() else ""
            raise CheckError(f"nginx exited with {process.returncode}: {text[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if time.monotonic() > deadline:
            raise CheckError(f"nginx not listening on {port} after {within:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def caching_proxy(origin_port: int, workers: int, lock: bool) -> Iterator[CachingProxy]:
    """nginx in the foreground on a free loopback port, from a config in a temporary folder."""
    if shutil.which(NGINX) is None:
        raise CheckError(
            f"nginx is not installed: apt-get install -y {NGINX_PACKAGE} (Debian), "
            "or run with --no-cache"
        )
    directory = Path(tempfile.mkdtemp(prefix="feedline-nginx-"))
    port = free_port()
    config = directory / "nginx.conf"
    config.write_text(
        nginx_config(
            port, origin_port, directory, workers=workers, lock=lock, as_root=os.geteuid() == 0
        )
    )
    log = directory / "error.log"
    process = subprocess.Popen(
        [NGINX, "-p", str(directory), "-e", str(log), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_listening(port, process, log, within=15)
        yield CachingProxy(port, directory, psutil.Process(process.pid))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # fast shutdown
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Reference:
    """The feed as read once from the service, checked: each page's bytes by its ``start``."""

    pages: dict[int, bytes]
    events: int


async def read_reference(port: int, page: int, expected: int) -> Reference:
    connection = RawHttp("127.0.0.1", port)
    await connection.open()
    pages: dict[int, bytes] = {}
    numbers: list[int] = []
    start = 1
    try:
        while True:
            answer = await connection.get(f"/events?start={start}&limit={page}")
            if answer.status != 200:
                raise CheckError(f"reference read: {answer.status} for start={start}")
            events = orjson.loads(answer.body)
            pages[start] = answer.body
            numbers.extend(event["sequenceNumber"] for event in events)
            if len(events) < page:
                break
            start = next_start(answer.headers.get("link", ""))
    finally:
        await connection.close()
    require("reference read of the feed", sequence_problems(numbers, expected))
    return Reference(pages, len(numbers))


@dataclass
class ReaderResult:
    events: int = 0
    requests: int = 0
    finished: float = 0.0
    cache_statuses: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


async def read_feed(connection: RawHttp, page: int, reference: Reference) -> ReaderResult:
    """Read the whole feed as a catching-up subscriber does, comparing each page with the
    reference's bytes (a ``count`` of its events is the reference's, once it matched)."""
    result = ReaderResult()
    start = 1
    while True:
        answer = await connection.get(f"/events?start={start}&limit={page}")
        result.requests += 1
        result.cache_statuses[answer.headers.get(CACHE_STATUS_HEADER, "none")] += 1
        if answer.status != 200:
            result.problems.append(f"start={start}: status {answer.status}")
            break
        if answer.body != reference.pages.get(start):
            result.problems.append(f"start={start}: page differs from the reference's")
            break
        count = answer.body.count(b'"sequenceNumber":')
        result.events += count
        if count < page:
            break
        start = next_start(answer.headers.get("link", ""))
    result.finished = time.perf_counter()
    return result


@dataclass
class Run:
    """One run: ``readers`` at once, ``path`` direct or through the cache (cold or warm)."""

    readers: int
    path: str
    seconds: float
    events: int  # delivered to the readers, all together
    requests: int  # made by the readers
    origin: FeedCounters  # what reached the service (its /metrics, after - before)
    service_cpu: float
    postgres_cpu: float
    nginx_cpu: float | None
    client_cpu: float
    cache_statuses: Counter[str]
    load: str

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def service_microseconds_per_event(self) -> float:
        return self.service_cpu / self.events * 1e6


def run_problems(results: Sequence[ReaderResult], expected: int) -> list[str]:
    problems: list[str] = []
    for number, result in enumerate(results, 1):
        problems += [f"reader {number}: {problem}" for problem in result.problems]
        if not result.problems and result.events != expected:
            problems.append(f"reader {number}: {result.events:,} events, expected {expected:,}")
    return problems


async def measure(
    readers: int,
    path: str,
    port: int,
    page: int,
    reference: Reference,
    watched: Watched,
    proxy: CachingProxy | None,
) -> Run:
    connections = [RawHttp("127.0.0.1", port) for _ in range(readers)]
    await asyncio.gather(*(connection.open() for connection in connections))
    try:
        before = await feed_counters(watched.base_url)
        service_before = cpu_seconds(watched.service)
        postgres_before = cpu_seconds(watched.postgres, tree=True)
        nginx_before = cpu_seconds(proxy.process, tree=True) if proxy else 0.0
        client_before = cpu_seconds(psutil.Process())
        started = time.perf_counter()
        results = await asyncio.wait_for(
            asyncio.gather(*(read_feed(connection, page, reference) for connection in connections)),
            READ_TIMEOUT_SECONDS,
        )
        client_cpu = cpu_seconds(psutil.Process()) - client_before
        nginx_cpu = cpu_seconds(proxy.process, tree=True) - nginx_before if proxy else None
        postgres_cpu = cpu_seconds(watched.postgres, tree=True) - postgres_before
        service_cpu = cpu_seconds(watched.service) - service_before
        after = await feed_counters(watched.base_url)
    finally:
        await asyncio.gather(*(connection.close() for connection in connections))
    require(f"{readers} reader(s), {path}", run_problems(results, reference.events))
    statuses: Counter[str] = Counter()
    for result in results:
        statuses.update(result.cache_statuses)
    run = Run(
        readers=readers,
        path=path,
        seconds=max(result.finished for result in results) - started,
        events=sum(result.events for result in results),
        requests=sum(result.requests for result in results),
        origin=FeedCounters(after.requests - before.requests, after.events - before.events),
        service_cpu=service_cpu,
        postgres_cpu=postgres_cpu,
        nginx_cpu=nginx_cpu,
        client_cpu=client_cpu,
        cache_statuses=statuses,
        load=load_average(),
    )
    print(describe(run), flush=True)
    return run


@dataclass
class Watched:
    base_url: str
    service: psutil.Process
    postgres: psutil.Process


def describe(run: Run) -> str:
    statuses = ", ".join(f"{name} {count}" for name, count in sorted(run.cache_statuses.items()))
    nginx = f", nginx {run.nginx_cpu:.3f}" if run.nginx_cpu is not None else ""
    return (
        f"{run.readers} reader(s), {run.path}: {run.seconds:.3f} s, {run.events:,} events "
        f"({run.rate:,.0f}/s); {run.origin.requests:,.0f} of {run.requests:,} GET /events "
        f"reached the service ({run.origin.events:,.0f} events); CPU s: service "
        f"{run.service_cpu:.3f}, PostgreSQL {run.postgres_cpu:.3f}{nginx}, readers "
        f"{run.client_cpu:.3f}; X-Cache-Status: {statuses}; load {run.load}"
    )


@dataclass
class SubscriberThroughCache:
    seconds: float
    origin: FeedCounters
    statuses: Counter[str]


@dataclass
class Figures:
    conditions: list[str]
    runs: list[Run]
    subscriber: SubscriberThroughCache | None
    events: int


async def main(args: argparse.Namespace, fd_note: str) -> Figures:
    with throwaway_postgres(durable=True) as server:
        server_url = server.url()
        await wait_connectable(server_url)
        postgres = await server_conditions(server_url)
        await create_databases(server_url, "offers", "rm_through_cache")
        service_url = server.url("offers")
        conditions = [
            f"{args.events:,} events, pages of {args.page:,}; readers {args.readers}; each "
            "reader one keep-alive HTTP/1.1 connection, one page at a time, all in one asyncio "
            "process (this one)",
            f"service: `feedline serve {SERVICE}` (one process, one event loop); PostgreSQL "
            f"{postgres['server_version']} (fsync={postgres['fsync']}), its data on "
            f"{postgres['data_directory']}",
            f"cache: nginx {nginx_version()}, worker_processes {args.nginx_workers}, "
            "proxy_cache honouring the origin's Cache-Control (no proxy_cache_valid), "
            f"proxy_cache_lock {'on' if args.cache_lock else 'off'}, cache on the same disk"
            if not args.no_cache
            else "cache: not measured (--no-cache)",
            f"machine: {cores()} cores shared by the service, PostgreSQL, nginx, the readers "
            f"and whatever else runs; Python {platform.python_version()}",
            fd_note,
        ]
        print("conditions:")
        for line in conditions:
            print(f"  {line}")
        print(f"  load average at start: {load_average()}", flush=True)
        with running_service(SERVICE, service_url) as base_url:
            origin_port = int(base_url.rsplit(":", 1)[1])
            print(f"filling the event store with {args.events:,} events ...", flush=True)
            await fill_event_store(service_url, args.events)
            watched = Watched(base_url, service_process(base_url), postgres_process(server.port))
            reference = await read_reference(origin_port, args.page, args.events)
            runs: list[Run] = []
            subscriber = None
            for readers in args.readers:
                runs.append(
                    await measure(
                        readers, "direct", origin_port, args.page, reference, watched, None
                    )
                )
                if args.no_cache:
                    continue
                with caching_proxy(origin_port, args.nginx_workers, args.cache_lock) as proxy:
                    for path in ("cache, cold", "cache, warm"):
                        runs.append(
                            await measure(
                                readers, path, proxy.port, args.page, reference, watched, proxy
                            )
                        )
                    if readers == args.readers[-1]:
                        subscriber = await subscriber_through(
                            proxy, watched, server.url("rm_through_cache"), args.events
                        )
    return Figures(conditions, runs, subscriber, args.events)


async def subscriber_through(
    proxy: CachingProxy, watched: Watched, read_model: str, events: int
) -> SubscriberThroughCache:
    """``feedline subscribe --feed-url http://nginx/events`` catching up, its read model checked."""
    before = await feed_counters(watched.base_url)
    statuses_before = proxy.cache_statuses()
    seconds = await asyncio.to_thread(
        run_subscriber_process,
        f"http://127.0.0.1:{proxy.port}/events",
        read_model,
        events,
        "bench-through-cache",
    )
    after = await feed_counters(watched.base_url)
    await check_read_model("subscriber through the cache", read_model, events)
    statuses = proxy.cache_statuses()
    statuses.subtract(statuses_before)
    result = SubscriberThroughCache(
        seconds,
        FeedCounters(after.requests - before.requests, after.events - before.events),
        +statuses,
    )
    print(
        f"feedline subscribe through the warm cache: {seconds:.3f} s for {events:,} events "
        f"(read model checked); {result.origin.requests:,.0f} GET /events reached the service "
        f"({result.origin.events:,.0f} events); nginx log: {dict(result.statuses)}",
        flush=True,
    )
    return result


def report(figures: Figures) -> None:
    print()
    print(f"Fan-out: {figures.events:,} events to each reader")
    print("conditions:")
    for line in figures.conditions:
        print(f"  {line}")
    header = (
        f"{'readers':>7} {'path':<12}{'seconds':>9}{'events/s (all)':>16}"
        f"{'origin GETs':>13}{'origin events':>15}{'service CPU s':>15}{'µs/event':>10}"
        f"{'PG CPU s':>10}{'nginx CPU s':>13}{'readers CPU s':>15}"
    )
    print(header)
    for run in figures.runs:
        nginx = f"{run.nginx_cpu:.3f}" if run.nginx_cpu is not None else "-"
        print(
            f"{run.readers:>7} {run.path:<12}{run.seconds:>9.3f}{run.rate:>16,.0f}"
            f"{run.origin.requests:>13,.0f}{run.origin.events:>15,.0f}{run.service_cpu:>15.3f}"
            f"{significant(run.service_microseconds_per_event, 4):>10}"
            f"{run.postgres_cpu:>10.3f}{nginx:>13}{run.client_cpu:>15.3f}"
        )
    print("  µs/event: the service's CPU time over the events delivered to the readers")
    by = {(run.readers, run.path): run for run in figures.runs}
    for readers in dict.fromkeys(run.readers for run in figures.runs):
        direct = by[(readers, "direct")]
        line = f"{readers} reader(s):"
        if readers != figures.runs[0].readers and (figures.runs[0].readers, "direct") in by:
            one = by[(figures.runs[0].readers, "direct")]
            scaled = ratio(direct.rate, one.rate)
            line += f" direct / {one.readers} reader(s) direct, events/s: {scaled};"
        warm = by.get((readers, "cache, warm"))
        cold = by.get((readers, "cache, cold"))
        if warm is not None and cold is not None:
            line += (
                f" direct / warm cache, events/s: {ratio(direct.rate, warm.rate)};"
                f" service CPU, cold cache / direct: "
                f"{ratio(cold.service_cpu, direct.service_cpu)};"
                f" warm cache / direct: {ratio(warm.service_cpu, direct.service_cpu)}"
            )
        print(line)
    if figures.subscriber is not None:
        s = figures.subscriber
        print(
            f"feedline subscribe through the warm cache: {s.seconds:.3f} s, "
            f"{figures.events / s.seconds:,.0f} events/s; {s.origin.requests:,.0f} GET /events "
            f"reached the service ({s.origin.events:,.0f} events); nginx: {dict(s.statuses)}"
        )
    print(
        f"checks passed: the reference read held exactly 1..{figures.events:,} in order; "
        "every reader's every page was byte for byte the reference's, each reader read "
        f"{figures.events:,} events"
        + ("; the subscriber's read model held exactly its rows" if figures.subscriber else "")
    )
    print(summary_line("bench_fanout", headline(figures)))


def headline(figures: Figures) -> list[dict[str, object]]:
    """Per reader count: events/s and the service's CPU per event, direct; with the
    cache warm, the share of GETs that reached the service and its CPU over direct."""
    by = {(run.readers, run.path): run for run in figures.runs}
    found: list[dict[str, object]] = []
    for (readers, path), run in by.items():
        if path == "direct":
            found.append(
                {
                    "name": f"fanout {readers} readers direct",
                    "value": round(run.rate),
                    "unit": "events/s",
                    "detail": f"service {significant(run.service_microseconds_per_event, 4)} "
                    "µs CPU per event served",
                }
            )
        elif path == "cache, warm":
            direct = by[(readers, "direct")]
            found.append(
                {
                    "name": f"fanout {readers} readers warm cache",
                    "value": round(run.service_cpu / direct.service_cpu, 4),
                    "unit": "x direct",
                    "detail": f"service CPU {run.service_cpu:.3f} / {direct.service_cpu:.3f} s; "
                    f"{run.origin.requests:,.0f} GETs reached the service, "
                    f"{run.origin.events:,.0f} events",
                }
            )
    return found


def reader_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of reader counts, each >= 1")
    return counts


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--readers", type=reader_counts, default=[1, 10, 50])
    parser.add_argument("--page", type=int, default=DEFAULT_PAGE, help="limit of each GET")
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument("--no-cache", action="store_true", help="direct runs only (no nginx)")
    parser.add_argument(
        "--cache-lock", action="store_true", help="nginx's proxy_cache_lock on (default off)"
    )
    args = parser.parse_args()
    if args.events < 1 or not 1 <= args.page <= 10_000:
        parser.error("--events must be >= 1 and --page 1..10000")
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    try:
        # Each reader is a connection at the service, at nginx and (proxied) between them.
        fd_note = raise_fd_limit(4 * max(args.readers) + 1024)
        report(asyncio.run(main(args, fd_note)))
    except CheckError as failure:
        fail_and_exit(parser.prog, failure)


if __name__ == "__main__":
    cli()
