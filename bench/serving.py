"""What the fan-out and long-poll benchmarks share: the processes they watch, and a lean client.

The figures of ``bench.bench_fanout`` and ``bench.bench_longpoll`` are about
the *service*: its CPU time and memory, read from the kernel (psutil) before
and after, and the requests that reached it (its own ``/metrics``). The many
readers they need are plain asyncio HTTP/1.1 connections (``RawHttp``), not
httpx: on a 2-core machine every CPU-second the readers spend is taken from
the service they measure, and a minimal client spends the fewest.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from bench.checks import CheckError

# A connection's answer is read in one go; nothing the feed sends comes close.
MAX_BODY_BYTES = 256 * 1024 * 1024


def raise_fd_limit(needed: int) -> str:
    """Raise this process's open-file limit (soft, up to hard) to at least ``needed``.

    Children (the service, nginx, PostgreSQL) inherit it. Returns what was done,
    for the conditions; raises CheckError when the hard limit is below ``needed``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return f"open files (ulimit -n): {soft} (hard {hard}), {needed} needed: kept"
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise CheckError(
            f"open files: hard limit {hard} is below the {needed} needed; raise it "
            "(ulimit -Hn, or the container's nofile limit) and run again"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return (
        f"open files (ulimit -n): raised from {soft} to {needed} (hard {hard}) for this "
        "process and its children"
    )


def _cmdline(process: psutil.Process) -> list[str]:
    """A process's command line; empty if it ended meanwhile (a backend that exited)."""
    try:
        return list(process.cmdline())
    except psutil.Error:
        return []


def child_process(*words: str) -> psutil.Process:
    """The one child of this process (any depth) whose command line holds every word."""
    found = [
        child
        for child in psutil.Process().children(recursive=True)
        if all(word in _cmdline(child) for word in words)
    ]
    if len(found) != 1:
        raise CheckError(f"expected one child process running {' '.join(words)}, found {found}")
    return found[0]


def service_process(base_url: str) -> psutil.Process:
    """``feedline serve`` started by this process (tests.support.services) at ``base_url``."""
    return child_process("serve", base_url.rsplit(":", 1)[1])


def postgres_process(port: int) -> psutil.Process:
    """The postmaster of a throwaway PostgreSQL server (tests.support.postgres) on ``port``."""
    found = []
    for child in psutil.Process().children(recursive=True):
        argv = _cmdline(child)  # a backend's is its title ("postgres: user db ..."), not a path
        if argv and Path(argv[0]).name == "postgres" and "-p" in argv and str(port) in argv:
            found.append(child)
    if len(found) != 1:
        raise CheckError(f"expected one postmaster on port {port}, found {found}")
    return found[0]


def task_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of the live threads of ``pid``, from the scheduler's nanosecond counters
    (``/proc/PID/task/*/schedstat``); None where the kernel does not give them."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            if not (task / "schedstat").exists():
                continue  # the thread ended meanwhile
            return None
    return total / 1e9


def cpu_seconds(process: psutil.Process, *, tree: bool = False) -> float:
    """CPU seconds of ``process`` (with ``tree``: and of its children, living, and exited
    as reaped by it, in ticks): the scheduler's nanosecond counters where there are
    some, else user + system ticks."""
    total = 0.0
    if tree:  # children that exited and were reaped (e.g. PostgreSQL backends)
        reaped = process.cpu_times()
        total += reaped.children_user + reaped.children_system
    for member in [process, *(process.children(recursive=True) if tree else [])]:
        try:
            exact = task_cpu_seconds(member.pid)
            if exact is None:
                times = member.cpu_times()
                exact = times.user + times.system
        except psutil.NoSuchProcess:
            continue
        total += exact
    return total


def rss_bytes(process: psutil.Process) -> int:
    return int(process.memory_info().rss)


def metric_total(metrics: str, name: str, **labels: str) -> float:
    """The sum of Prometheus ``name`` samples whose labels include ``labels``."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(\{{(?P<labels>[^}}]*)\}})? (?P<value>\S+)$")
    for line in metrics.splitlines():
        match = pattern.match(line)
        if match is None:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group("labels") or ""))
        if all(have.get(key) == value for key, value in labels.items()):
            total += float(match.group("value"))
    return total


@dataclass(frozen=True)
class FeedCounters:
    """What the service says it answered: GET /events requests, events in them."""

    requests: float
    events: float


async def feed_counters(base_url: str) -> FeedCounters:
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.get(f"{base_url}/metrics")
        answer.raise_for_status()
    text = answer.text
    return FeedCounters(
        metric_total(text, "feedline_http_requests_total", method="GET", route="/events"),
        metric_total(text, "feedline_feed_events_served_total"),
    )


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case
    body: bytes = b""


def parse_head(head: bytes) -> HttpAnswer:
    """The status line and headers of an HTTP/1.1 answer (up to and with the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise CheckError(f"not an HTTP/1.x status line: {lines[0]!r}")
    answer = HttpAnswer(int(parts[1]))
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        answer.headers[name.strip().lower()] = value.strip()
    return answer


def next_start(link: str) -> int:
    """The ``start`` of a feed page's ``Link: <...start=N...>; rel="next"``."""
    match = re.search(r"[?&]start=(\d+)", link)
    if match is None or 'rel="next"' not in link:
        raise CheckError(f'no rel="next" start in Link: {link!r}')
    return int(match.group(1))


class RawHttp:
    """One keep-alive HTTP/1.1 connection; GETs one at a time, answers read whole."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(
            self.host, self.port, limit=1024 * 1024
        )

    async def send_get(self, target: str) -> None:
        assert self._writer is not None, "not open"
        self._writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Accept: application/json\r\n\r\n".encode()
        )
        await self._writer.drain()

    async def read_answer(self) -> HttpAnswer:
        assert self._reader is not None, "not open"
        answer = parse_head(await self._reader.readuntil(b"\r\n\r\n"))
        if "content-length" in answer.headers:
            answer.body = await self._reader.readexactly(int(answer.headers["content-length"]))
        elif answer.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self._reader.readexactly(size + 2)
                if size == 0:
                    break
                chunks.append(chunk[:-2])
            answer.body = b"".join(chunks)
        elif answer.status not in (204, 304):
            raise CheckError(f"answer {answer.status} without a length: {answer.headers}")
        if len(answer.body) > MAX_BODY_BYTES:
            raise CheckError(f"answer of {len(answer.body):,} bytes")
        return answer

    async def get(self, target: str) -> HttpAnswer:
        await self.send_get(target)
        return await self.read_answer()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
            self._writer = self._reader = None
