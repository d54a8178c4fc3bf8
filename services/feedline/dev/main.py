"""`feedline dev [DIR]`: load the folder, start everything, show the table, stop cleanly.

Every service also serves its gRPC feed, on a free port picked at start
(``plan.Layout.grpc_ports``). When a subscription reads its feed through a
broker (``spec.feed.broker``), a throwaway RabbitMQ node (``broker``) is
started first, every service's relay publishes to it, and it is stopped last.

Exit codes: 0 stopped cleanly; 1 a service did not start, a ``--once`` run
failed, or a process that crashed was not back up when `feedline dev` stopped
(``down_after_crash``); 2 bad flags, a bad manifest, or no EventSubscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from feedline.dev import plan, schema
from feedline.dev.broker import BrokerError, RabbitMQNode
from feedline.dev.console_logs import DEFAULT_CONSOLE_LEVEL, echo_logs
from feedline.dev.control import ControlServer
from feedline.dev.dashboard import DashboardServer, DashboardState, ServiceWatch, bind
from feedline.dev.dsns import dsn_errors
from feedline.dev.feeds import unserved_feeds
from feedline.dev.heads import HeadRefresher
from feedline.dev.keeper import ServiceKeeper
from feedline.dev.manifests import (
    Folder,
    FolderError,
    ManifestError,
    Source,
    folders_with_subscriptions,
    manifest_files,
    read_folder,
)
from feedline.dev.plan import Layout
from feedline.dev.ports import free_ports
from feedline.dev.restarts import describe_exit
from feedline.dev.status import ServiceStatus, SubscriptionStatus
from feedline.dev.supervisor import (
    Child,
    DevError,
    Worker,
    base_environment,
    start_services,
    stop_all,
)
from feedline.dev.table import render_table
from feedline.dev.telemetry import TelemetryStore
from feedline.services.registry import DEFAULT_PORTS

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DASHBOARD_PORT = 8000  # + --port-offset, next to the services' 8001-8004


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
    broker: bool = False  # --broker: a local RabbitMQ node even if no subscription needs one
    dashboard: bool = True  # --no-dashboard: none (never with --once)
    dashboard_port: int | None = None  # --dashboard-port; None: 8000 + port_offset; 0: a free one
    console_logs: str = DEFAULT_CONSOLE_LEVEL  # --console-logs: processes' lines at this level up


def feedline_executable() -> str:
    """The ``feedline`` of this installation (the image's ``feedline`` locally)."""
    beside = Path(sys.executable).with_name("feedline")
    if beside.exists():
        return str(beside)
    found = shutil.which("feedline")
    if found is None:
        raise DevError("cannot find the feedline executable (is the package installed?)")
    return found


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd())) or "."
    return str(path)


def no_subscription_error(directory: Path) -> ManifestError:
    """Nothing to run: where `feedline dev` looked, and how to point it elsewhere."""
    files = [p.name for p in manifest_files(directory)]
    read = f"it read {len(files)}: {', '.join(files[:5])}" if files else "there are none"
    problems = [
        "no EventSubscription manifest here (feedline dev reads the *.yaml and *.yml files "
        f"directly in this folder, not its subfolders; {read})"
    ]
    found = folders_with_subscriptions(directory)
    if found:
        commands = " or ".join(f"feedline dev {shlex.quote(_shown(f))}" for f in found)
        problems.append(f"EventSubscription manifests found in subfolders: run {commands}")
    else:
        problems.append(
            "point it at the folder of your manifests: feedline dev DIR (in the Feedline "
            "repository, the sample: feedline dev examples/local)"
        )
    return ManifestError(Source(directory), "", problems)


def _python_path(folder: Path) -> str:
    """``folder`` first on the children's PYTHONPATH, then what this process was given."""
    given = os.environ.get("PYTHONPATH")
    return os.pathsep.join([str(folder), given] if given else [str(folder)])


def load(options: DevOptions, warn: Console) -> tuple[Folder, Layout]:
    """The folder's manifests, checked, and the layout; FolderError lists every problem."""
    directory = options.directory.resolve()
    # The CRD shipped inside the package (the chart's, generated from the same model).
    crd_schema = schema.load_crd_schema(options.crd) if options.crd else schema.shipped_schema()
    folder, errors = read_folder(directory, crd_schema)
    state_dir = (options.state_dir or plan.default_state_dir(directory)).resolve()
    apps = {values.name: values.app for values in folder.services}
    layout = Layout(
        directory,
        state_dir,
        options.host,
        options.port_offset,
        apps=apps,
        python_path=_python_path(Path.cwd()) if apps else None,
    )
    reported = {(e.source, e.subject) for e in errors}
    for loaded in folder.subscriptions:
        subject = f'EventSubscription "{loaded.subscription.name}"'
        if (loaded.source, subject) in reported:
            continue
        try:
            plan.subscriber_process(loaded, folder, layout, "feedline", status_port=0)
        except plan.PlanError as exc:
            errors.append(ManifestError(loaded.source, subject, [str(exc)]))
    errors.extend(dsn_errors(folder, layout))
    if errors:
        raise FolderError(errors)
    if not folder.subscriptions:
        raise no_subscription_error(directory)
    return folder, layout


class Display:
    """The status: a live table on a terminal, one line per change otherwise; status.json."""

    def __init__(self, layout: Layout, services: list[ServiceStatus], out: Console) -> None:
        self.layout = layout
        self.services = services
        self.out = out
        self.statuses: list[SubscriptionStatus] = []
        self.notes: deque[str] = deque(maxlen=6)
        self.live: Live | None = None
        self.broker: dict[str, Any] | None = None  # the local broker, when one runs
        self.dashboard_url: str | None = None  # the dashboard, when it runs

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

    def _print(self, text: str, style: str | None = None) -> None:
        self.out.print(text, style=style, highlight=False, soft_wrap=True, markup=False)
        self.out.file.flush()

    def log_line(self, text: str) -> None:
        """A process's log line, above the table (in the scroll-back, like Compose's)."""
        self._print(text, style="yellow" if self.live is not None else None)

    def note(self, text: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        if self.live is not None:
            self.notes.append(f"{stamp} {text}")
        else:
            self._print(f"{stamp} {text}")

    def alert(self, text: str) -> None:
        """A line that must not scroll away under the table: a crash, a feed nobody serves."""
        stamp = datetime.now().strftime("%H:%M:%S")
        self._print(f"{stamp} {text}", style="bold red" if self.live is not None else None)

    def changed(self, status: SubscriptionStatus, note: str | None) -> None:
        if self.live is None and note != "run started":
            self.note(status.line() + (f" ({note})" if note else ""))
        elif note:
            self.notes.append(f"{datetime.now().strftime('%H:%M:%S')} {status.name}: {note}")
        self.write_status_file()

    def document(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "updated": datetime.now(UTC).isoformat(),
            "pid": os.getpid(),
            "services": {s.name: s.to_dict() for s in self.services},
            "subscriptions": [s.to_dict() for s in self.statuses],
        }
        if self.broker is not None:
            document["broker"] = self.broker
        if self.dashboard_url is not None:
            document["dashboard"] = self.dashboard_url
        return document

    def write_status_file(self) -> None:
        path = self.layout.status_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.document(), indent=2))
        tmp.replace(path)


def _run_now_command(options: DevOptions) -> str:
    """How to ask this `feedline dev` for a run, as the user would type it."""
    command = "feedline dev run-now NAME"
    if options.directory != Path("."):
        command += f" {shlex.quote(str(options.directory))}"
    if options.state_dir is not None:
        command += f" --state-dir {shlex.quote(str(options.state_dir))}"
    return command


def _run_now_handler(
    workers: list[Worker], display: Display, via: str = "feedline dev run-now"
) -> Callable[[str], tuple[int, str]]:
    """What `feedline dev run-now NAME` (control.ControlServer) and the dashboard's
    run-now button do here."""
    by_name = {w.name: w for w in workers}

    def run_now(name: str) -> tuple[int, str]:
        worker = by_name.get(name)
        if worker is None:
            known = ", ".join(by_name) or "none"
            return 404, f"no subscription {name!r} in {display.layout.directory} (known: {known})"
        answer = worker.run_now()
        display.note(f"run-now ({via}): {answer}")
        accepted = worker.status.mode == "CronJob" and not worker.status.suspended
        return (202 if accepted else 409), answer

    return run_now


def _install_run_now(workers: list[Worker], display: Display) -> None:
    loop = asyncio.get_running_loop()

    def run_now() -> None:
        display.note("SIGUSR1: running every CronJob subscription now")
        for worker in workers:
            worker.run_now()

    loop.add_signal_handler(signal.SIGUSR1, run_now)


def _down_after_crash(services: list[ServiceStatus], workers: list[Worker]) -> list[str]:
    """Each process that crashed and is not back up, in one line (the rule of exit code 1)."""
    lines = [
        f"service {s.name} crashed and is not back up ({s.state}; {s.restarts} restart(s), "
        f"last {s.last_exit}; log: {s.log})"
        for s in services
        if s.down_after_crash
    ]
    lines += [
        f"subscription {w.name} (follower) crashed and is not back up ({w.status.restarts} "
        f"restart(s), last {describe_exit(w.status.exit_code or 0)}; log: "
        f"{w.layout.logs_dir() / (w.name + '.log')})"
        for w in workers
        if w.status.down_after_crash
    ]
    return lines


async def _warn_unserved_feeds(
    workers: list[Worker], layout: Layout, names: list[str], display: Display
) -> None:
    subscriptions = [
        (w.name, str(w.loaded.source), w.status.feed) for w in workers if not w.status.suspended
    ]
    for line in await unserved_feeds(subscriptions, layout, names):
        display.alert(line)


def local_broker(layout: Layout) -> RabbitMQNode:
    """The broker of this `feedline dev`: a new node in STATE/rabbitmq (the last one's wiped)."""
    folder = layout.broker_dir()
    shutil.rmtree(folder, ignore_errors=True)
    return RabbitMQNode(folder, owned=True)


async def _stop_broker(node: RabbitMQNode) -> None:
    try:
        await asyncio.to_thread(node.stop)
    finally:
        node.stop_epmd()


def dashboard_socket(options: DevOptions, layout: Layout) -> socket.socket | None:
    """The dashboard's listening socket (None: no dashboard); DevError when the port is taken."""
    if not options.dashboard or options.once:
        return None
    port = options.dashboard_port
    if port is None:
        port = DASHBOARD_PORT + options.port_offset
    try:
        return bind(layout.host, port)
    except OSError as exc:
        raise DevError(
            f"dashboard port {port} on {layout.host}: {exc.strerror or exc}: stop what holds "
            "it, or choose another with --dashboard-port N (0: a free one; --no-dashboard: none)"
        ) from exc


def _otlp_endpoint(sock: socket.socket) -> str:
    """The dashboard as the children reach it (loopback when it listens on every address)."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):  # noqa: S104 - not binding: naming the wildcard
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _run(options: DevOptions, folder: Folder, layout: Layout, out: Console) -> int:
    """Pick the gRPC ports, bind the dashboard's port, run the broker if a subscription
    needs one (or --broker), supervise the rest."""
    # One call: every port distinct (the HTTP ports of the folder's own services too).
    ports = free_ports(
        layout.host,
        [f"grpc {n}" for n in layout.service_names] + [f"http {n}" for n in layout.apps],
    )
    layout = replace(
        layout,
        app_ports={n: ports[f"http {n}"] for n in layout.apps},
        grpc_ports={n: ports[f"grpc {n}"] for n in layout.service_names},
    )
    sock = dashboard_socket(options, layout)
    if sock is not None:
        layout = replace(layout, otlp_endpoint=_otlp_endpoint(sock))
    node: RabbitMQNode | None = None
    try:
        if options.broker or plan.folder_needs_broker(folder.subscriptions):
            node = local_broker(layout)
            layout = replace(layout, broker_url=node.stream_url)
        return await _supervise(options, folder, layout, out, node, sock)
    finally:
        if node is not None:
            await _stop_broker(node)
        if sock is not None:
            sock.close()


def _broker_status(node: RabbitMQNode, state: str) -> dict[str, Any]:
    process = node.process
    return {
        "url": node.stream_url,
        "state": state,
        "pid": process.pid if process is not None and process.poll() is None else None,
        "log": str(node.folder / "log"),
    }


def _launch_broker(node: RabbitMQNode, display: Display) -> None:
    node.launch()
    display.broker = _broker_status(node, "Starting")
    display.note(f"broker starting (RabbitMQ, a subscription reads through one): {node.folder}")


async def _broker_ready(
    node: RabbitMQNode, started: float, children: list[Child], display: Display
) -> None:
    try:
        await node.wait_ready(started=started)
    except BaseException:
        await stop_all(children)
        raise
    display.broker = _broker_status(node, "Ready")
    display.note(f"broker ready: {node.stream_url} (log: {node.folder / 'log'})")


async def _start_processes(
    names: list[str],
    layout: Layout,
    feedline: str,
    base_env: dict[str, str],
    stop: asyncio.Event,
    node: RabbitMQNode | None,
    display: Display,
) -> list[Child]:
    """The broker (if any) first, so the services' relays find it soon; then the services."""
    broker_started = time.monotonic()
    if node is not None:
        _launch_broker(node, display)
    children = await start_services(names, layout, feedline, base_env, stop)
    if node is not None and not stop.is_set():
        await _broker_ready(node, broker_started, children, display)
    return children


def _show_stopped(display: Display, node: RabbitMQNode | None) -> None:
    for status in display.services:
        status.state, status.pid = "Stopped", None
    if node is not None:
        display.broker = {**_broker_status(node, "Stopped"), "pid": None}
    display.write_status_file()


def _addresses(service: ServiceStatus) -> str:
    """``NAME http://HOST:PORT grpc://HOST:PORT``."""
    return f"{service.name} {service.url}" + (f" {service.grpc_url}" if service.grpc_url else "")


async def _start_dashboard(
    sock: socket.socket, layout: Layout, display: Display, stop: asyncio.Event
) -> tuple[DashboardServer, asyncio.Task[None]]:
    """The dashboard, serving from now on; its scrape of the services runs until ``stop``."""
    state = DashboardState(
        layout,
        display.services,
        ServiceWatch(display.services),
        TelemetryStore(),
        document=display.document,
    )
    server = DashboardServer(state, sock)
    await server.start()
    display.dashboard_url = server.url
    display.note(f"dashboard: {server.url}")
    return server, asyncio.create_task(state.watch.run(stop))


async def _supervise(
    options: DevOptions,
    folder: Folder,
    layout: Layout,
    out: Console,
    node: RabbitMQNode | None,
    sock: socket.socket | None = None,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # The example services (those of --service, else all) and the folder's own.
    names = [*(options.services or DEFAULT_PORTS), *layout.apps]
    services = [
        ServiceStatus(
            n,
            layout.service_url(n),
            layout.logs_dir() / f"{n}.log",
            grpc_url=layout.service_grpc_url(n),
        )
        for n in names
    ]
    display = Display(layout, services, out if not options.once else Console(stderr=True))
    display.note(
        f"feedline dev (pid {os.getpid()}): {len(folder.subscriptions)} subscription(s) from "
        f"{layout.directory}; state and logs in {layout.state_dir}"
    )
    for ignored in folder.ignored:
        display.note(f"ignored (not an EventSubscription or Secret): {ignored}")
    dashboard: DashboardServer | None = None
    background: list[asyncio.Task[None]] = []
    try:
        if sock is not None:
            dashboard, scrape = await _start_dashboard(sock, layout, display, stop)
            background.append(scrape)
        return await _supervise_processes(
            options, folder, layout, out, display, node, stop, dashboard, background
        )
    finally:
        stop.set()
        await asyncio.gather(*background, return_exceptions=True)
        if dashboard is not None:  # last: the children's last spans arrive until they end
            await dashboard.close()


async def _supervise_processes(
    options: DevOptions,
    folder: Folder,
    layout: Layout,
    out: Console,
    display: Display,
    node: RabbitMQNode | None,
    stop: asyncio.Event,
    dashboard: DashboardServer | None,
    background: list[asyncio.Task[None]],
) -> int:
    feedline = feedline_executable()
    base_env = base_environment()
    names = [s.name for s in display.services]
    services = display.services
    children = await _start_processes(names, layout, feedline, base_env, stop, node, display)
    control: ControlServer | None = None
    keepers: list[asyncio.Task[None]] = []
    try:
        if stop.is_set():
            return EXIT_OK
        display.note("services ready: " + ", ".join(_addresses(s) for s in display.services))
        workers = [
            Worker(loaded, folder, layout, feedline, base_env, display.changed, display.alert)
            for loaded in folder.subscriptions
        ]
        display.statuses = [w.status for w in workers]
        for child, status in zip(children, services, strict=True):
            status.state, status.pid = "Ready", child.pid
        keepers = [
            asyncio.create_task(
                ServiceKeeper(
                    child, status, display.write_status_file, display.alert, display.note
                ).keep(stop)
            )
            for child, status in zip(children, services, strict=True)
        ]
        display.write_status_file()
        await _warn_unserved_feeds(workers, layout, names, display)
        if options.once:
            return await _once(workers, display, stop, options, out)
        refresher = HeadRefresher(display.statuses, layout, lambda s: display.changed(s, None))
        background.append(asyncio.create_task(refresher.run(stop)))
        processes = [*names, *(w.status.name for w in workers)]
        background.append(
            asyncio.create_task(
                echo_logs(
                    layout.logs_dir(), processes, options.console_logs, display.log_line, stop
                )
            )
        )
        if dashboard is not None:
            dashboard.state.statuses = display.statuses
            dashboard.state.run_now = _run_now_handler(workers, display, via="dashboard")
        _install_run_now(workers, display)
        control = ControlServer(layout.state_dir, _run_now_handler(workers, display))
        await control.start()
        if any(w.status.mode == "CronJob" and not w.status.suspended for w in workers):
            display.note(
                f"run a CronJob subscription now: {_run_now_command(options)} "
                f"(every one: kill -USR1 {os.getpid()})"
            )
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
            down = _down_after_crash(display.services, workers)
            display.note("stopping: subscribers, then services")
            await asyncio.gather(*(w.shutdown() for w in workers))
            _, pending = await asyncio.wait(tasks, timeout=15) if tasks else (set(), set())
            for task in pending:
                task.cancel()
            await asyncio.gather(*(w.shutdown() for w in workers))
        display.write_status_file()
        for line in down:
            display.alert(line)
        return EXIT_FAILED if down else EXIT_OK
    finally:
        if control is not None:
            await control.close()
        stop.set()  # the services' keepers stop restarting
        await asyncio.gather(*keepers, return_exceptions=True)
        await stop_all(children)
        _show_stopped(display, node)


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
    interrupted = stop.is_set()
    down = _down_after_crash(display.services, workers)
    stop.set()  # the services' keepers stop restarting
    display.write_status_file()
    if options.output == "json":
        out.print_json(json.dumps(display.document()))
    else:
        out.print(render_table(display.statuses, display.services))
    for line in down:
        display.alert(line)
    failed = [s.name for s in display.statuses if s.failed]
    return EXIT_FAILED if failed or down or interrupted else EXIT_OK


def run(options: DevOptions, folder: Folder, layout: Layout) -> int:
    """Run until SIGINT/SIGTERM (or once); the exit code."""
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    out = Console(width=width)
    try:
        return asyncio.run(_run(options, folder, layout, out))
    except (DevError, BrokerError) as exc:
        Console(stderr=True).print(f"feedline dev: {exc}", highlight=False, markup=False)
        return EXIT_FAILED
