"""The processes of `feedline dev`: services, scheduled runs and followers.

One asyncio loop supervises every child:

- each example service is ``feedline serve`` (``plan.service_process``);
- a CronJob-mode subscription runs its rendered container when its schedule
  fires (or at once: ``--run-now``, SIGUSR1); never two runs at once: a
  scheduled run that is due while the last one still runs is skipped, like
  ``concurrencyPolicy: Forbid``, and a run-now waits for it; after each run
  the summary is read from its termination-log file;
- a Follow-mode subscription runs its container all the time (restarted with
  a back-off if it exits, like ``restartPolicy: Always``: ``restarts``); its
  summary is read from its status port every second.

A service that crashes is restarted by ``keeper``.

Children run in their own process group (Ctrl-C reaches `feedline dev`
only, which stops them in order: subscribers first, then services; SIGTERM,
then SIGKILL after a grace period) and, on Linux, get SIGTERM if `feedline dev`
itself dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from feedline.dev import plan
from feedline.dev.manifests import Folder, LoadedSubscription
from feedline.dev.plan import Layout, ProcessSpec
from feedline.dev.ports import free_port, port_in_use
from feedline.dev.restarts import Backoff, crash_line, describe_exit
from feedline.dev.schedule import next_run
from feedline.dev.status import SubscriptionStatus
from feedline_contracts.follower import SUMMARY_PATH

STOP_GRACE_SECONDS = 10.0
READY_TIMEOUT_SECONDS = 30.0
FOLLOW_POLL_SECONDS = 1.0
PR_SET_PDEATHSIG = 1


class DevError(RuntimeError):
    """Local mode cannot go on (a port in use, a service that does not start)."""


def base_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """This machine's environment without FEEDLINE_*: a child sees only what its spec sets."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if not k.startswith("FEEDLINE_")}


def _die_with_parent() -> None:  # pragma: no cover - runs in the child after fork
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _open_log(spec: ProcessSpec) -> BinaryIO:
    """The child's log, appended to; a header line per start."""
    log = open(spec.log_path, "ab")  # noqa: SIM115 - closed by the caller's with
    log.write(f"--- {datetime.now(UTC).isoformat()} start {' '.join(spec.argv)}\n".encode())
    log.flush()
    return log


class Child:
    """One local process, its output appended to its log file."""

    def __init__(self, spec: ProcessSpec, base_env: Mapping[str, str]) -> None:
        self.spec = spec
        self.base_env = base_env
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0.0

    async def start(self) -> None:
        spec = self.spec
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        for path, content in spec.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(content)
        if spec.termination_log is not None:
            spec.termination_log.parent.mkdir(parents=True, exist_ok=True)
            spec.termination_log.unlink(missing_ok=True)  # a fresh file per run, like a new pod
        with _open_log(spec) as log:
            self.process = await asyncio.create_subprocess_exec(
                *spec.argv,
                cwd=spec.cwd,
                env={**self.base_env, **spec.env},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.started = time.monotonic()

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    @property
    def pid(self) -> int | None:
        """The running process's pid (None before its start and after its exit)."""
        process = self.process
        return process.pid if process is not None and process.returncode is None else None

    def uptime(self) -> float:
        return time.monotonic() - self.started

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    def _signal(self, signum: int) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)  # its own group: it and anything it started

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> int | None:
        if self.process is None:
            return None
        self._signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(self.process.wait()), grace)
        except TimeoutError:
            self._signal(signal.SIGKILL)
            return await self.process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.spec.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# --- services ------------------------------------------------------------------------


async def answers_ready(child: Child, url: str, stop: asyncio.Event) -> bool:
    """Whether the service answers /health/ready within the timeout (False: it exited, or stop)."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    async with httpx.AsyncClient(timeout=1.0) as http:
        while time.monotonic() < deadline and not stop.is_set():
            if child.returncode is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/health/ready")).status_code == 200:
                    return True
            await asyncio.sleep(0.1)
    return False


async def _wait_ready(child: Child, url: str, stop: asyncio.Event) -> None:
    if await answers_ready(child, url, stop) or stop.is_set():
        return
    if child.returncode is not None:
        raise DevError(
            f"{child.spec.name} ended before it was ready ({describe_exit(child.returncode)}; "
            f"log {child.spec.log_path}):\n{child.log_tail()}"
        )
    if not stop.is_set():
        raise DevError(
            f"{child.spec.name} not ready after {READY_TIMEOUT_SECONDS:.0f}s "
            f"(log {child.spec.log_path}):\n{child.log_tail()}"
        )


async def start_services(
    names: list[str],
    layout: Layout,
    feedline: str,
    base_env: Mapping[str, str],
    stop: asyncio.Event,
) -> list[Child]:
    """Start every service, wait until each is ready; on failure stop those started."""
    for name in names:
        port = layout.service_port(name)
        if port_in_use(layout.host, port):
            raise DevError(
                f"port {port} ({name}) on {layout.host} is in use: stop what holds it, "
                "or shift every port with --port-offset N"
            )
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    children = [Child(plan.service_process(n, layout, feedline), base_env) for n in names]
    try:
        for child in children:
            await child.start()
        await asyncio.gather(
            *(_wait_ready(c, layout.service_url(c.spec.name), stop) for c in children)
        )
    except BaseException:
        await stop_all(children)
        raise
    return children


async def stop_all(children: list[Child]) -> None:
    await asyncio.gather(*(c.stop() for c in children), return_exceptions=True)


# --- subscriptions -------------------------------------------------------------------


def read_summary(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


class Worker:
    """One subscription: its runs (CronJob mode) or its follower (Follow mode)."""

    def __init__(
        self,
        loaded: LoadedSubscription,
        folder: Folder,
        layout: Layout,
        feedline: str,
        base_env: Mapping[str, str],
        on_change: Callable[[SubscriptionStatus, str | None], None],
        alert: Callable[[str], None] | None = None,
    ) -> None:
        sub = loaded.subscription
        self.loaded = loaded
        self.folder = folder
        self.layout = layout
        self.feedline = feedline
        self.base_env = base_env
        self.on_change = on_change
        self.alert = alert or (lambda text: on_change(self.status, text))
        self.trigger = asyncio.Event()
        self.child: Child | None = None
        self.current: asyncio.Task[None] | None = None
        self.stopping = False
        self.queued = False  # a run-now asked for while a run was running
        self.status = SubscriptionStatus(
            name=sub.name,
            mode=sub.spec.mode,
            feed=plan.local_feed_url(sub.spec.feed.url, layout),
            schedule=sub.spec.schedule,
            suspended=sub.spec.suspend,
            state="Suspended" if sub.spec.suspend else "Waiting",
        )

    @property
    def name(self) -> str:
        return self.status.name

    def _changed(self, note: str | None = None) -> None:
        self.on_change(self.status, note)

    def _finish(self, child: Child, code: int) -> None:
        summary = read_summary(child.spec.termination_log)
        self.status.runs += 1
        self.status.exit_code = code
        if summary is not None:
            self.status.update(summary)
        else:
            self.status.update({})
            self.status.message = f"{describe_exit(code)} and no summary; see {child.spec.log_path}"
        self._changed("run finished")

    async def run_once(self, *, once: bool = False) -> None:
        """One run of the rendered container, like one Job's pod."""
        spec = plan.subscriber_process(
            self.loaded, self.folder, self.layout, self.feedline, once=once
        )
        child = Child(spec, self.base_env)
        self.child = child
        self.status.state = "Running"
        self._changed("run started")
        try:
            await child.start()
            self.status.pid = child.pid
            if self.stopping:
                await child.stop()
            code = await child.wait()
        except OSError as exc:  # the command cannot be started (like a StartError)
            self.status.runs += 1
            self.status.exit_code = 128
            self.status.update({})
            self.status.message = f"cannot start {spec.argv[0]}: {exc}"
            self._changed("run failed to start")
            return
        finally:
            self.child = None
            self.status.pid = None
            self.status.state = "Waiting"
        self._finish(child, code)

    async def _scheduled_run(self) -> None:
        await self.run_once()
        if self.queued and not self.stopping:
            self.queued = False
            self.trigger.set()

    def run_now(self) -> str:
        """Ask for a run now; what happens, in words (for `feedline dev run-now`)."""
        if self.status.mode != "CronJob":
            return f"{self.name} is in Follow mode: its follower runs all the time"
        if self.status.suspended:
            return f"{self.name} is suspended (spec.suspend: true): no runs"
        self.trigger.set()
        if self.current is not None and not self.current.done():
            return f"{self.name}: a run is running; the run asked for starts when it ends"
        return f"{self.name}: run started"

    async def cron_loop(self, stop: asyncio.Event, *, run_now: bool) -> None:
        sub = self.loaded.subscription
        if sub.spec.suspend or sub.spec.schedule is None:
            await stop.wait()
            return
        if run_now:
            self.trigger.set()
        while not stop.is_set():
            now = datetime.now(UTC)
            due = next_run(sub.spec.schedule, now, sub.spec.time_zone)
            self.status.next_run = due
            waiters = [
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(self.trigger.wait()),
            ]
            timeout = max((due - now).total_seconds(), 0.0)
            _, pending = await asyncio.wait(
                waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()
            if stop.is_set():
                break
            manual = self.trigger.is_set()
            self.trigger.clear()
            if self.current is not None and not self.current.done():
                if manual:
                    # Never two at once: a run asked for now starts when this one ends.
                    self.queued = True
                    self._changed("run-now queued: the last run is still running")
                else:
                    self._changed(
                        "skipped: the last run is still running (concurrencyPolicy Forbid)"
                    )
                continue
            self.current = asyncio.create_task(self._scheduled_run())
        self.status.next_run = None

    async def _poll_follower(self, child: Child, port: int) -> None:
        url = f"http://127.0.0.1:{port}{SUMMARY_PATH}"
        async with httpx.AsyncClient(timeout=2.0) as http:
            while child.returncode is None:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    response = await http.get(url)
                    if response.status_code == 200 and self.status.update(response.json()):
                        self._changed(None)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(child.wait()), FOLLOW_POLL_SECONDS)

    async def follow_loop(self, stop: asyncio.Event) -> None:
        if self.loaded.subscription.spec.suspend:
            await stop.wait()
            return
        backoff = Backoff()
        while not stop.is_set():
            port = free_port()
            spec = plan.subscriber_process(
                self.loaded, self.folder, self.layout, self.feedline, status_port=port
            )
            child = Child(spec, self.base_env)
            self.child = child
            try:
                await child.start()
            except OSError as exc:  # the command cannot be started: back off and retry
                self.child = None
                code = 128
                self.status.update({})
                self.status.exit_code = code
                self.status.message = f"cannot start {spec.argv[0]}: {exc}"
            else:
                if self.stopping:
                    await child.stop()
                self.status.state = "Following"
                self.status.next_run = None
                self.status.pid = child.pid
                self._changed("follower started")
                await self._poll_follower(child, port)
                code = await child.wait()
                self.child = None
                self.status.pid = None
                self._finish(child, code)
            if stop.is_set() or self.stopping:
                break
            delay = backoff.delay(child.uptime() if child.process is not None else 0.0)
            self.status.restarts += 1
            self.status.state = "Restarting"
            self.status.next_run = datetime.now(UTC) + timedelta(seconds=delay)
            self.alert(
                crash_line(
                    "subscription",
                    f"{self.name} (follower)",
                    code,
                    spec.log_path,
                    delay,
                    self.status.restarts,
                )
            )
            self._changed(None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        self.status.state = "Stopped"

    async def shutdown(self) -> None:
        """Stop the running child (SIGTERM: it commits its batch) and wait for the run."""
        self.stopping = True
        child = self.child
        if child is not None:
            await child.stop()
        if self.current is not None:
            with contextlib.suppress(Exception):
                await self.current
        if not self.status.suspended:
            self.status.state = "Stopped"
