"""`feedline dev [DIR]`: load the folder, start everything, show the table, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from feedline.dev import plan, schema
from feedline.dev.manifests import Folder, ManifestError, load_folder
from feedline.dev.plan import Layout
from feedline.dev.status import SubscriptionStatus, render_table
from feedline.dev.supervisor import DevError, Worker, base_environment, start_services, stop_all
from feedline.services.registry import DEFAULT_PORTS

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class DevOptions:
    directory: Path
    state_dir: Path | None = None
    host: str = "127.0.0.1"
    port_offset: int = 0
    services: tuple[str, ...] = ()  # empty: every example service
    once: bool = False
    run_now: bool = False
    output: str = "table"  # table | json (--once)
    refresh_seconds: float = 1.0
    crd: Path | None = None


def feedline_executable() -> str:
    """The ``feedline`` of this installation (the image's ``feedline`` locally)."""
    beside = Path(sys.executable).with_name("feedline")
    if beside.exists():
        return str(beside)
    found = shutil.which("feedline")
    if found is None:
        raise DevError("cannot find the feedline executable (is the package installed?)")
    return found


def load(options: DevOptions, warn: Console) -> tuple[Folder, Layout]:
    """The folder's manifests, checked (ManifestError on a bad one), and the layout."""
    directory = options.directory.resolve()
    # The CRD shipped inside the package (the chart's, generated from the same model).
    crd_schema = schema.load_crd_schema(options.crd) if options.crd else schema.shipped_schema()
    folder = load_folder(directory, crd_schema)
    state_dir = (options.state_dir or plan.default_state_dir(directory)).resolve()
    layout = Layout(directory, state_dir, options.host, options.port_offset)
    for loaded in folder.subscriptions:
        try:
            plan.subscriber_process(loaded, folder, layout, "feedline", status_port=0)
        except plan.PlanError as exc:
            subject = f'EventSubscription "{loaded.subscription.name}"'
            raise ManifestError(loaded.source, subject, [str(exc)]) from exc
    return folder, layout


class Display:
    """The status: a live table on a terminal, one line per change otherwise; status.json."""

    def __init__(self, layout: Layout, services: dict[str, str], out: Console) -> None:
        self.layout = layout
        self.services = services
        self.out = out
        self.statuses: list[SubscriptionStatus] = []
        self.notes: deque[str] = deque(maxlen=6)
        self.live: Live | None = None

    def renderable(self) -> Group:
        table = render_table(self.statuses, self.services)
        return Group(table, Text("\n".join(self.notes), style="dim"))

    @contextlib.contextmanager
    def running(self, interactive: bool) -> Iterator[None]:
        if not interactive:
            yield
            return
        with Live(console=self.out, get_renderable=self.renderable, refresh_per_second=2) as live:
            self.live = live
            try:
                yield
            finally:
                self.live = None

    def note(self, text: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        if self.live is not None:
            self.notes.append(f"{stamp} {text}")
        else:
            self.out.print(f"{stamp} {text}", highlight=False, soft_wrap=True, markup=False)
            self.out.file.flush()

    def changed(self, status: SubscriptionStatus, note: str | None) -> None:
        if self.live is None and note != "run started":
            self.note(status.line() + (f" ({note})" if note else ""))
        elif note:
            self.notes.append(f"{datetime.now().strftime('%H:%M:%S')} {status.name}: {note}")
        self.write_status_file()

    def document(self) -> dict[str, Any]:
        return {
            "updated": datetime.now(UTC).isoformat(),
            "services": self.services,
            "subscriptions": [s.to_dict() for s in self.statuses],
        }

    def write_status_file(self) -> None:
        path = self.layout.status_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.document(), indent=2))
        tmp.replace(path)


def _install_run_now(workers: list[Worker], display: Display) -> None:
    loop = asyncio.get_running_loop()

    def run_now() -> None:
        display.note("SIGUSR1: running every CronJob subscription now")
        for worker in workers:
            worker.run_now()

    loop.add_signal_handler(signal.SIGUSR1, run_now)


async def _run(options: DevOptions, folder: Folder, layout: Layout, out: Console) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    feedline = feedline_executable()
    base_env = base_environment()
    names = list(options.services or DEFAULT_PORTS)
    services = {name: layout.service_url(name) for name in names}
    display = Display(layout, services, out if not options.once else Console(stderr=True))
    display.note(
        f"feedline dev: {len(folder.subscriptions)} subscription(s) from {layout.directory}; "
        f"state and logs in {layout.state_dir}"
    )
    for ignored in folder.ignored:
        display.note(f"ignored (not an EventSubscription or Secret): {ignored}")
    children = await start_services(names, layout, feedline, base_env, stop)
    try:
        if stop.is_set():
            return EXIT_OK
        display.note("services ready: " + ", ".join(f"{n} {u}" for n, u in services.items()))
        workers = [
            Worker(loaded, folder, layout, feedline, base_env, display.changed)
            for loaded in folder.subscriptions
        ]
        display.statuses = [w.status for w in workers]
        display.write_status_file()
        if options.once:
            return await _once(workers, display, stop, options, out)
        _install_run_now(workers, display)
        interactive = out.is_terminal
        with display.running(interactive):
            tasks = [
                asyncio.create_task(
                    w.follow_loop(stop)
                    if w.status.mode == "Follow"
                    else w.cron_loop(stop, run_now=options.run_now)
                )
                for w in workers
            ]
            await stop.wait()
            display.note("stopping: subscribers, then services")
            await asyncio.gather(*(w.shutdown() for w in workers))
            _, pending = await asyncio.wait(tasks, timeout=15) if tasks else (set(), set())
            for task in pending:
                task.cancel()
            await asyncio.gather(*(w.shutdown() for w in workers))
        display.write_status_file()
        return EXIT_OK
    finally:
        await stop_all(children)


async def _once(
    workers: list[Worker], display: Display, stop: asyncio.Event, options: DevOptions, out: Console
) -> int:
    """Every (not suspended) subscription runs once, Follow ones as a catch-up run."""
    runs = [asyncio.create_task(w.run_once(once=True)) for w in workers if not w.status.suspended]
    waiter = asyncio.create_task(stop.wait())
    if runs:
        await asyncio.wait([*runs, waiter], return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            await asyncio.gather(*(w.shutdown() for w in workers))
        await asyncio.gather(*runs, return_exceptions=True)
    waiter.cancel()
    display.write_status_file()
    if options.output == "json":
        out.print_json(json.dumps(display.document()))
    else:
        out.print(render_table(display.statuses, display.services))
    failed = [s.name for s in display.statuses if s.failed]
    return EXIT_FAILED if failed or stop.is_set() else EXIT_OK


def run(options: DevOptions, folder: Folder, layout: Layout) -> int:
    """Run until SIGINT/SIGTERM (or once); the exit code."""
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    out = Console(width=width)
    try:
        return asyncio.run(_run(options, folder, layout, out))
    except DevError as exc:
        Console(stderr=True).print(f"feedline dev: {exc}", highlight=False, markup=False)
        return EXIT_FAILED
