"""Keeping the example services up: a service that exits is reported at once and restarted.

Each service started by ``supervisor.start_services`` is watched: when its
process exits while `feedline dev` runs, one line names it, how it ended
(exit code or signal) and its log; it is started again after the back-off of
``restarts`` (1 s doubling to 30 s), and counts as up again once it answers
``/health/ready``. Its ``ServiceStatus`` (table and status.json) shows its
state, restarts and last exit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from feedline.dev.restarts import Backoff, crash_line, describe_exit
from feedline.dev.status import ServiceStatus
from feedline.dev.supervisor import Child, answers_ready


class ServiceKeeper:
    """One service: watched until ``stop``, restarted after each exit."""

    def __init__(
        self,
        child: Child,
        status: ServiceStatus,
        changed: Callable[[], None],
        alert: Callable[[str], None],
        note: Callable[[str], None],
    ) -> None:
        self.child = child
        self.status = status
        self.changed = changed
        self.alert = alert
        self.note = note
        self.backoff = Backoff()

    async def _exit_or_stop(self, stop: asyncio.Event) -> int | None:
        """The exit code of the running process, or None when ``stop`` comes first."""
        exited = asyncio.ensure_future(self.child.wait())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([exited, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if stop.is_set():
            exited.cancel()
            return None
        return exited.result()

    async def _restart(self, stop: asyncio.Event) -> None:
        """Start the service again; Ready once it answers /health/ready."""
        try:
            await self.child.start()
        except OSError as exc:  # not startable now: counted as an exit, retried after back-off
            self.alert(f"service {self.status.name}: cannot start: {exc}")
            return
        self.status.pid = self.child.pid
        self.status.state = "Starting"
        self.changed()
        while self.child.returncode is None and not stop.is_set():
            if await answers_ready(self.child, self.status.url, stop):
                self.status.state = "Ready"
                self.note(f"service {self.status.name} is up again (pid {self.status.pid})")
                self.changed()
                return
            if self.child.returncode is None and not stop.is_set():
                self.alert(
                    f"service {self.status.name} (pid {self.status.pid}) does not answer "
                    f"/health/ready yet; log: {self.child.spec.log_path}"
                )

    async def keep(self, stop: asyncio.Event) -> None:
        """Until ``stop``: the service was started and is ready (``start_services``)."""
        while not stop.is_set():
            if self.child.returncode is None:
                code = await self._exit_or_stop(stop)
                if code is None:
                    return
            else:  # it did not start, or it exited while starting
                code = self.child.returncode
            delay = self.backoff.delay(self.child.uptime())
            self.status.restarts += 1
            self.status.state = "Restarting"
            self.status.pid = None
            self.status.last_exit = describe_exit(code)
            self.alert(
                crash_line(
                    "service",
                    self.status.name,
                    code,
                    self.child.spec.log_path,
                    delay,
                    self.status.restarts,
                )
            )
            self.changed()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            await self._restart(stop)
