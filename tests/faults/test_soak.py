"""Load (issue 13): commands at a steady rate for a while, five Follow-mode
subscriptions and a CronJob-style subscription reading along; latency stays
flat, memory does not grow, and every read model ends exactly-once.

Real processes: a PostgreSQL server, the special-offers service (`feedline
serve`), five `feedline subscribe --follow` processes (each its own
subscription and SQLite read model, the audited projection: a duplicate
shows) and a one-shot `feedline subscribe` started every CRONJOB_EVERY
seconds (its own subscription and read model; a run that takes longer is
followed at once by the next), as a CronJob's pod runs it.

The load: ``POST /offers`` from CLIENTS concurrent httpx clients in this
process, paced on a fixed schedule (command n is due at n / rate seconds; a
client that is behind sends at once), for FEEDLINE_SOAK_SECONDS (default 20,
the short version `make test` runs) at FEEDLINE_SOAK_RATE commands/s.
``FEEDLINE_SOAK_SECONDS=300`` is the issue's 5-minute soak, the docs' figure:

    FEEDLINE_SOAK_SECONDS=300 .venv/bin/pytest -m faults tests/faults/test_soak.py -s

**The default rate is 15 commands/s, not the issue's 200**: 200/s cannot be
served on this project's 2 shared cores with the test's own processes beside
it. Measured when this test was written: the service spends ~9 ms of CPU per
``POST /offers`` alone (~16 ms with five followers' feed reads), the httpx
clients ~5 ms; 200/s would take about two cores for the service alone and
one for the clients. With the CI's other runs on the machine (load average
~8) the whole setup sustained ~18 commands/s, the service getting ~0.3 of a
core. ``FEEDLINE_SOAK_RATE=200`` asks for the issue's rate on a machine that
has it; the test then fails unless it is served.

The run is cut into WINDOWS equal windows; for each it prints the commands
per second, their latency (request sent until its 201) by percentile, the
end-to-end lag (from a command's 201 until a follower's checkpoint is seen at
its event; checkpoints are polled every POLL_SECONDS, the lag's resolution)
and the RSS of the service and of each follower at the window's end; then
the CPU each part used. Nearest-rank percentiles. `-s` shows the table on a
pass; a failure shows it anyway (captured stdout).

Checked at the end: the achieved rate is at least 90% of the target (a
machine that cannot sustain it fails, saying what it achieved: the target is
never lowered silently); every follower and the CronJob subscription caught
up, each with the exactly-once oracle; the median command latency and
follower lag of the last FLAT_WINDOWS windows within LATENCY_FACTOR x those of
the first (or a slack above them), the bound multiplied by how much longer the
command path (the service and PostgreSQL) waited for a CPU in the last third
(its stretch from the kernel's scheduler accounting,
tests/support/contention.py); the command path's CPU per command in the last
third within WORK_FACTOR x the first; each process's RSS growth after the
warm-up below RSS_GROWTH_MIB.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
import os
import resource
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.faults.helpers import (
    Subscriber,
    assert_exactly_once,
    position,
    subscriber,
    wait_until,
)
from tests.support.contention import CpuTime, between, cpu_times
from tests.support.services import running_service
from tests.support.subscriber_process import AUDITED, subscriber_env
from tests.support.subscriber_workload import read_feed

pytestmark = pytest.mark.faults

# Commands/s unless FEEDLINE_SOAK_RATE says otherwise; why not the 200: above.
DEFAULT_RATE = 15.0
FOLLOWERS = 5
# Concurrent HTTP clients: room for the rate at 2 s a command (at the default rate
# a busy shared machine's medians reached ~1.1 s; 16 clients were then the limit).
CLIENTS = 32
WINDOWS = 10
CRONJOB_EVERY = 5.0  # seconds from one CronJob-style run's start to the next
POLL_SECONDS = 0.1  # how often the followers' checkpoints are read (the lag's resolution)
WARM_UP_COMMANDS = 20  # sent before the clock starts, until every follower has applied them
MIB = 1024 * 1024

# Latency stays flat: the median of the last third of the windows (the last 3
# of 10, their commands pooled) within 3x that of the first third, or 50 ms
# above it, whichever is larger. Thirds, not single windows: at the default rate
# a window holds ~30 commands, and on 2 cores shared with other runs a single
# window's median went from 113 to 639 ms within one run (107 to 729 ms in
# another) as the background load came and went, while the last third's pooled
# median was 0.3-1.8x the first third's in every run measured (20 s and 60 s,
# load average 5-9). The slack keeps an idle machine's median of a few ms from
# failing on one CronJob run's start-up. What it catches: a queue that backs up
# (commands arriving faster than served), latency that grows with the event
# store or the run (a scan per append, a query off its index, a pool that leaks
# connections) once it passes 3x, which a 5-minute run gives it time to reach.
# The bound is then multiplied by how much longer the command path (the service
# and PostgreSQL) took per second of its own CPU in the last third than in the
# first: its stretch, (ran + waited for a CPU) / ran, from the kernel's
# scheduler accounting (at least 1; tests/support/contention.py). A cold CI
# run's soak went from 16.5 to 114.1 ms while another tier's Kubernetes node ran
# its pods beside it. A queue that backs up grows without limit; contention by
# other processes is bounded by how many want a core, so the growth still fails.
FLAT_WINDOWS = 3
LATENCY_FACTOR = 3.0
LATENCY_SLACK_MS = 50.0
# The followers' lag, the same way; a larger slack because the lag is seen
# through checkpoints polled every POLL_SECONDS (100 ms steps; ~200 ms medians).
# A follower that applies slower than commands come falls further behind each
# window and fails it.
LAG_SLACK_MS = 500.0
# Memory does not grow: RSS from the end of the first window (after the warm-up:
# pools filled, caches and allocator arenas at their working size) to the end of
# the run, per process, below 16 MiB. A steady process moves little: CPython's
# RSS steps by an arena (1 MiB) at a time and SQLite's page cache is bounded
# (~2 MiB); measured, the service grew 1.0 MiB and each follower 0.2-0.3 MiB in
# a 60-s run (0.8-1.3 and 0.3-0.4 in 20 s). What it catches: in the 20-s run only a
# gross leak (~60 KB a command: a kept page, response or task per request); in
# the 5-minute soak (~4,200 commands after the warm-up at 15/s) ~4 KB a command.
RSS_GROWTH_MIB = 16.0
# The service does not slow down by itself: the command path's CPU per command
# (the service and PostgreSQL; it includes serving the followers' and the
# CronJob's reads of each event) in the last third within 2x the first. Unlike
# latency, a neighbour on the CPUs does not inflate it: beside three busy loops
# it went 20.9 -> 15.5 ms. Measured alone, the thirds' ratio was 0.8-1.3. What it
# catches beside the latency bound: work per command that grows with the store
# or the run (a scan per append, a query off its index) even when the latency
# bound was widened for contention.
WORK_FACTOR = 2.0


def setting(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise AssertionError(f"{name}={raw!r}: not a number") from None
    assert value > 0, f"{name}={raw!r}: must be positive"
    return value


def nearest_rank(values: Sequence[float], percent: float) -> float:
    """The nearest-rank percentile of ``values`` (a measured value, never interpolated)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(math.ceil(percent / 100 * len(ordered)) - 1, 0)]


@dataclass
class Load:
    """What the paced clients did; times in seconds since the clock started."""

    sent: list[float] = field(default_factory=list)  # per command, when it was sent
    latency: list[float] = field(default_factory=list)  # per command, sent until 201
    completed: list[float] = field(default_factory=list)  # 201s in the order they came


async def drive(base_url: str, rate: float, seconds: float, start: float, load: Load) -> None:
    """POST /offers on a fixed schedule (command n due at ``start + n / rate``) until
    ``seconds`` have passed; a client that is behind sends its next one at once."""
    slots = itertools.count()
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:

        async def paced_client() -> None:
            while True:
                number = next(slots)
                due = start + number / rate
                if due - start >= seconds or time.monotonic() - start >= seconds:
                    return
                if (delay := due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                sent = time.monotonic()
                answer = await client.post("/offers", json={"description": f"soak {number}"})
                done = time.monotonic()
                assert answer.status_code == 201, answer.text
                load.sent.append(sent - start)
                load.latency.append(done - sent)
                load.completed.append(done - start)

        await asyncio.gather(*(paced_client() for _ in range(CLIENTS)))


@dataclass
class Watch:
    """The followers' checkpoints over time; the processes' RSS at each window's end;
    the command path's scheduler counters at the start and at each window's end."""

    paths: list[Path]
    timelines: list[list[tuple[float, int]]]  # per follower: (time, position) as polled
    rss: dict[str, list[int]]  # per process: bytes, at the end of each window
    path: list[dict[int, CpuTime]] = field(default_factory=list)


def read_positions(connections: list[sqlite3.Connection], start: float) -> list[tuple[float, int]]:
    """Each follower's checkpoint and when it was read (autocommit: no snapshot is kept)."""
    readings = []
    for connection in connections:
        row = connection.execute(
            "SELECT max(position) FROM feedline_subscriber_checkpoints"
        ).fetchone()
        readings.append((time.monotonic() - start, int(row[0] or 0)))
    return readings


async def watch(
    watched: Watch,
    processes: dict[str, psutil.Process],
    start: float,
    window: float,
    stop: asyncio.Event,
) -> None:
    connections = [
        sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        for path in watched.paths
    ]
    try:
        sampled = 0  # windows whose RSS is taken
        while not stop.is_set():
            # In a thread: SQLite reads must not hold up the paced clients' event loop.
            readings = await asyncio.to_thread(read_positions, connections, start)
            for timeline, reading in zip(watched.timelines, readings, strict=True):
                timeline.append(reading)
            if sampled < WINDOWS and time.monotonic() - start >= (sampled + 1) * window - 1e-6:
                for name, process in processes.items():
                    watched.rss[name].append(process.memory_info().rss)
                watched.path.append(cpu_times(command_path(processes["service"])))
                sampled += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_SECONDS)
    finally:
        for connection in connections:
            connection.close()


def lags(
    timeline: list[tuple[float, int]], completed: list[float], first_sequence: int
) -> list[tuple[float, float]]:
    """(when the command's 201 came, seconds until the follower was seen past it) for
    each command. The n-th 201 means events 1..n are committed (sequence numbers are
    gap-free and committed in order), so event n was published by then."""
    result = []
    seen = 0
    for index, published in enumerate(completed):
        sequence = first_sequence + index
        while seen < len(timeline) and timeline[seen][1] < sequence:
            seen += 1
        if seen == len(timeline):
            break
        result.append((published, max(timeline[seen][0] - published, 0.0)))
    return result


@dataclass
class CronRun:
    started: float
    seconds: float
    returncode: int
    summary: dict[str, Any]


async def one_run(environment: dict[str, str], logs: Path, start: float) -> CronRun:
    started = time.monotonic()
    with subscriber(environment, logs) as run:
        deadline = started + 120
        while run.process.poll() is None:
            assert time.monotonic() < deadline, f"a CronJob run hung:\n{run.stderr[-3000:]}"
            await asyncio.sleep(0.05)
        return CronRun(
            started - start, time.monotonic() - started, run.process.returncode, run.summary()
        )


async def cronjob(
    environment: dict[str, str], logs: Path, start: float, stop: asyncio.Event, runs: list[CronRun]
) -> None:
    """A one-shot run every CRONJOB_EVERY seconds (or at once when one took longer)."""
    while not stop.is_set():
        run = await one_run(environment, logs / f"run-{len(runs) + 1}", start)
        runs.append(run)
        wait = start + run.started + CRONJOB_EVERY - time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(wait, 0))


def service_process(base_url: str) -> psutil.Process:
    """The `feedline serve` child of this process listening on ``base_url``'s port."""
    port = base_url.rsplit(":", 1)[1]
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            command = child.cmdline()
            if "serve" in command and port in command:
                return child
    raise AssertionError(f"no `feedline serve` child process on port {port}")


def postgres_processes() -> list[psutil.Process]:
    """The PostgreSQL server's processes, when the server is this test's child."""
    found = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if process.name() == "postgres":
                found.append(process)
    return found


def command_path(service: psutil.Process) -> list[int]:
    """The processes a command is served by: the service and PostgreSQL's."""
    return [service.pid, *(process.pid for process in postgres_processes())]


async def at_least(read_model: str, subscription: str, wanted: int) -> bool:
    return await position(read_model, subscription) >= wanted


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    """CPU time (user + system) so far: each watched process; the PostgreSQL server's
    processes (when it is this test's child; backends that exited are not counted);
    the CronJob runs (children that exited: their rusage); this process (the clients)."""
    used = {}
    for name, process in processes.items():
        times = process.cpu_times()
        used[name] = times.user + times.system
    postgres = 0.0
    for process in postgres_processes():
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            postgres += times.user + times.system
    used["postgres"] = postgres
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    used["cronjob"] = children.ru_utime + children.ru_stime
    times = psutil.Process().cpu_times()
    used["clients"] = times.user + times.system
    return used


def mib(size: float) -> str:
    return f"{size / MIB:.1f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


@dataclass
class Figures:
    """The run cut into WINDOWS windows (a command in the window it was sent in; a
    lag in the window its command's 201 came in)."""

    window: float
    achieved: float  # commands/s over the run
    latency: list[list[float]]  # per window: each command's seconds, sent until 201
    lag: list[list[float]]  # per window: each command's seconds until each follower had it
    rss: dict[str, list[int]]  # per process: bytes at each window's end
    cores: dict[str, float]  # per part: CPU seconds per second of the run
    path: list[CpuTime]  # per window: the command path's CPU and run-queue time

    def thirds(self) -> tuple[CpuTime, CpuTime]:
        """The command path's CPU and run-queue time in the first FLAT_WINDOWS windows
        and in the last."""
        first = sum(self.path[:FLAT_WINDOWS], CpuTime(0.0, 0.0))
        last = sum(self.path[-FLAT_WINDOWS:], CpuTime(0.0, 0.0))
        return first, last

    def contention(self) -> tuple[float, float, float]:
        """The command path's stretch in the first FLAT_WINDOWS windows, in the last,
        and the factor the flatness bounds are multiplied by (their ratio, at least 1)."""
        first, last = self.thirds()
        return first.stretch, last.stretch, max(last.stretch / first.stretch, 1.0)

    def work(self) -> tuple[float, float]:
        """The command path's CPU seconds per command in the first FLAT_WINDOWS
        windows and in the last."""
        first, last = self.thirds()
        commands_first = sum(len(w) for w in self.latency[:FLAT_WINDOWS])
        commands_last = sum(len(w) for w in self.latency[-FLAT_WINDOWS:])
        return first.ran / max(commands_first, 1), last.ran / max(commands_last, 1)

    def flatness(self) -> dict[str, tuple[float, float, float]]:
        """Per figure: the median of the first FLAT_WINDOWS windows, of the last, and
        the bound the last must keep under."""
        scale = self.contention()[2]
        checked = {}
        for what, by_window, slack in (
            ("command latency", self.latency, LATENCY_SLACK_MS),
            ("followers' lag", self.lag, LAG_SLACK_MS),
        ):
            first = nearest_rank([v for w in by_window[:FLAT_WINDOWS] for v in w], 50)
            last = nearest_rank([v for w in by_window[-FLAT_WINDOWS:] for v in w], 50)
            bound = max(LATENCY_FACTOR * first, first + slack / 1000) * scale
            checked[what] = (first, last, bound)
        return checked

    def growth(self, name: str) -> int:
        """RSS from the end of the first window (the warm-up) to the end of the run."""
        samples = self.rss[name]
        return samples[-1] - samples[0]


def figures(
    load: Load,
    watched: Watch,
    seconds: float,
    cpu: tuple[dict[str, float], dict[str, float]],
) -> Figures:
    window = seconds / WINDOWS

    def window_of(at: float) -> int:
        return min(int(at / window), WINDOWS - 1)

    latency: list[list[float]] = [[] for _ in range(WINDOWS)]
    for sent, seconds_taken in zip(load.sent, load.latency, strict=True):
        latency[window_of(sent)].append(seconds_taken)
    lag: list[list[float]] = [[] for _ in range(WINDOWS)]
    for timeline in watched.timelines:
        for published, behind in lags(timeline, load.completed, WARM_UP_COMMANDS + 1):
            lag[window_of(published)].append(behind)
    path = [between(a, b) for a, b in itertools.pairwise(watched.path)]
    before, after = cpu
    cores = {name: (after[name] - before[name]) / seconds for name in before}
    cores["followers"] = sum(
        cores.pop(name) for name in list(cores) if name.startswith("follower-")
    )
    return Figures(window, len(load.completed) / seconds, latency, lag, watched.rss, cores, path)


def table(figures: Figures, rate: float, seconds: float, runs: list[CronRun]) -> str:
    """The per-window figures (the docs' soak figure, at 300 s)."""
    names = list(figures.rss)
    lines = [
        f"soak: target {rate:g} commands/s for {seconds:g} s ({CLIENTS} clients), "
        f"{FOLLOWERS} followers, a CronJob-style run every {CRONJOB_EVERY:g} s; "
        f"{WINDOWS} windows of {figures.window:g} s; {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.2f} at the end",
        f"{'window':>6} {'cmd/s':>6} | {'latency ms p50':>14} {'p95':>6} {'p99':>6} {'max':>6} "
        f"| {'lag ms p50':>10} {'p95':>6} {'max':>6} | {'path CPU ms/cmd':>15} {'stretch':>7} "
        f"| {'RSS MiB':>7} " + " ".join(f"{name.replace('follower-', 'f'):>5}" for name in names),
    ]
    for n in range(WINDOWS):
        latency, lag = figures.latency[n], figures.lag[n]
        rss = [figures.rss[name][n] if n < len(figures.rss[name]) else math.nan for name in names]
        path = figures.path[n]
        lines.append(
            f"{n + 1:>6} {len(latency) / figures.window:>6.1f} | "
            f"{ms(nearest_rank(latency, 50)):>14} {ms(nearest_rank(latency, 95)):>6} "
            f"{ms(nearest_rank(latency, 99)):>6} {ms(max(latency, default=math.nan)):>6} | "
            f"{ms(nearest_rank(lag, 50)):>10} {ms(nearest_rank(lag, 95)):>6} "
            f"{ms(max(lag, default=math.nan)):>6} | "
            f"{ms(path.ran / len(latency)) if latency else 'nan':>15} {path.stretch:>7.2f} "
            f"| {'':>7} " + " ".join(f"{mib(size):>5}" for size in rss)
        )
    lines.append(
        f"achieved {figures.achieved:.1f} commands/s; RSS growth after window 1, MiB: "
        + ", ".join(f"{name} {mib(figures.growth(name))}" for name in names)
    )
    lines.append(
        f"CronJob-style runs: {len(runs)}, {nearest_rank([r.seconds for r in runs], 50):.1f} s "
        f"median, {max(r.seconds for r in runs):.1f} s longest, outcomes "
        + ", ".join(sorted({str(r.summary["outcome"]) for r in runs}))
    )
    first, last, scale = figures.contention()
    lines.append(
        f"CPU contention (the command path's stretch): first {FLAT_WINDOWS} windows "
        f"{first:.2f}, last {FLAT_WINDOWS} {last:.2f}; the flatness bounds x {scale:.2f}"
    )
    first_work, last_work = figures.work()
    lines.append(
        f"the command path's CPU per command, ms: first {FLAT_WINDOWS} windows "
        f"{ms(first_work)}, last {FLAT_WINDOWS} {ms(last_work)} "
        f"(bound {ms(WORK_FACTOR * first_work)})"
    )
    lines.extend(
        f"{what}, median ms: first {FLAT_WINDOWS} windows {ms(first)}, last {FLAT_WINDOWS} "
        f"{ms(last)} (bound {ms(bound)})"
        for what, (first, last, bound) in figures.flatness().items()
    )
    lines.append(
        "CPU, cores busy over the run: "
        + ", ".join(f"{name} {used:.2f}" for name, used in figures.cores.items())
        + f"; total {sum(figures.cores.values()):.2f}"
    )
    return "\n".join(lines)


@dataclass
class Soak:
    """What a soak leaves for the checks."""

    load: Load
    watched: Watch
    runs: list[CronRun]
    cpu: tuple[dict[str, float], dict[str, float]]
    events: list[dict[str, Any]]


async def soak(
    base_url: str,
    rate: float,
    seconds: float,
    followers: dict[str, Subscriber],
    folder: Path,
) -> Soak:
    """Drive the load with the followers, the CronJob-style runs and the watcher
    going; then every follower caught up, and one last CronJob-style run."""
    processes = {"service": service_process(base_url)}
    processes.update((name, psutil.Process(f.process.pid)) for name, f in followers.items())
    paths = [folder / f"{name}.db" for name in followers]
    watched = Watch(paths, [[] for _ in followers], {name: [] for name in processes})
    cron_env = subscriber_env(
        "cronjob", f"{base_url}/events", f"sqlite:///{folder / 'cronjob.db'}", AUDITED
    )
    runs: list[CronRun] = []
    load = Load()
    stop_cron, stop_watch = asyncio.Event(), asyncio.Event()
    cpu_before = cpu_seconds(processes)
    watched.path.append(cpu_times(command_path(processes["service"])))
    start = time.monotonic()
    watcher = asyncio.create_task(watch(watched, processes, start, seconds / WINDOWS, stop_watch))
    cron = asyncio.create_task(cronjob(cron_env, folder / "cronjob", start, stop_cron, runs))
    try:
        await drive(base_url, rate, seconds, start, load)
        await asyncio.sleep(max(start + seconds - time.monotonic(), 0))
        cpu_after = cpu_seconds(processes)
        stop_cron.set()
        await cron
        head = WARM_UP_COMMANDS + len(load.completed)

        async def caught_up() -> bool:
            return all(timeline and timeline[-1][1] >= head for timeline in watched.timelines)

        await wait_until(caught_up, 60, f"every follower at {head}")

        async def samples_taken() -> bool:
            return len(watched.path) == WINDOWS + 1 and all(
                len(samples) == WINDOWS for samples in watched.rss.values()
            )

        await wait_until(samples_taken, 10, "each window's RSS and scheduler counters")
    finally:
        stop_cron.set()
        stop_watch.set()
        await asyncio.gather(watcher, cron, return_exceptions=True)
    for task in (watcher, cron):
        if (failure := task.exception()) is not None:
            raise failure
    for name, follower in followers.items():
        assert follower.process.poll() is None, f"{name} exited:\n{follower.stderr[-3000:]}"
    # The CronJob subscription's last run, after the load: it must catch up too.
    runs.append(await one_run(cron_env, folder / "cronjob" / "final", start))
    events = await read_feed(f"{base_url}/events")
    return Soak(load, watched, runs, (cpu_before, cpu_after), events)


async def test_a_soak_keeps_latency_flat_memory_steady_and_every_read_model_exact(
    postgres_url: str, tmp_path: Path
) -> None:
    rate = setting("FEEDLINE_SOAK_RATE", DEFAULT_RATE)
    seconds = setting("FEEDLINE_SOAK_SECONDS", 20)
    names = [f"follower-{n}" for n in range(1, FOLLOWERS + 1)]
    with (
        running_service("special-offers", postgres_url) as base_url,
        contextlib.ExitStack() as stack,
    ):
        followers = {
            name: stack.enter_context(
                subscriber(
                    subscriber_env(
                        name,
                        f"{base_url}/events",
                        f"sqlite:///{tmp_path / name}.db",
                        AUDITED,
                        FEEDLINE_FOLLOW="true",
                        FEEDLINE_FEED_WAIT_SECONDS="20",
                    ),
                    tmp_path / name,
                )
            )
            for name in names
        }
        # Warm-up, off the clock: every follower started (imports, tables) and has
        # applied the first commands; the service's pool and caches are in use.
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            for number in range(WARM_UP_COMMANDS):
                answer = await client.post("/offers", json={"description": f"warm-up {number}"})
                assert answer.status_code == 201, answer.text
        for name, follower in followers.items():
            warmed = functools.partial(
                at_least, f"sqlite:///{tmp_path / name}.db", name, WARM_UP_COMMANDS
            )
            await wait_until(warmed, 90, f"{name} at the warm-up's end", follower)
        result = await soak(base_url, rate, seconds, followers, tmp_path)

    found = figures(result.load, result.watched, seconds, result.cpu)
    print(table(found, rate, seconds, result.runs))

    # The rate a user asked for was served.
    assert found.achieved >= 0.9 * rate, (
        f"this machine sustained {found.achieved:.1f} commands/s, below 90% of the "
        f"target {rate:g}/s (FEEDLINE_SOAK_RATE)"
    )
    # Every read model exact: each follower, and the CronJob subscription.
    events = result.events
    assert len(events) == WARM_UP_COMMANDS + len(result.load.completed)
    for name in names:
        await assert_exactly_once(f"sqlite:///{tmp_path / name}.db", name, events)
    for run in result.runs:
        assert run.returncode == 0, run.summary
        assert run.summary["outcome"] in ("CaughtUp", "Progressed"), run.summary
    assert result.runs[-1].summary["outcome"] == "CaughtUp", result.runs[-1].summary
    assert result.runs[-1].summary["position"] == len(events), result.runs[-1].summary
    await assert_exactly_once(f"sqlite:///{tmp_path / 'cronjob.db'}", "cronjob", events)
    # The service did not slow down by itself: its work per command.
    first_work, last_work = found.work()
    assert last_work <= WORK_FACTOR * first_work, (
        f"the service and PostgreSQL used {ms(last_work)} ms of CPU per command in the last "
        f"{FLAT_WINDOWS} windows, {ms(first_work)} ms in the first "
        f"(bound {ms(WORK_FACTOR * first_work)} ms)"
    )
    # Latency flat: commands, and the followers' lag.
    first_stretch, last_stretch, scale = found.contention()
    for what, (first, last, bound) in found.flatness().items():
        assert last <= bound, (
            f"{what} grew: the median of the last {FLAT_WINDOWS} windows {ms(last)} ms, "
            f"of the first {FLAT_WINDOWS} {ms(first)} ms (bound {ms(bound)} ms: x {scale:.2f} "
            f"for the command path's stretch, {first_stretch:.2f} then {last_stretch:.2f})"
        )
    # Memory steady.
    for name, samples in found.rss.items():
        assert found.growth(name) < RSS_GROWTH_MIB * MIB, (
            f"{name}'s RSS grew {mib(found.growth(name))} MiB after the warm-up "
            f"(bound {RSS_GROWTH_MIB:g} MiB): {[mib(size) for size in samples]}"
        )
