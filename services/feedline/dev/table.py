"""The table `feedline dev` shows: subscriptions, then services, fitted to the terminal.

When the full table fits (about 150 columns), every column: those of
``kubectl get evsub`` (mode, schedule, position, lag) plus what a developer
wants locally (state, last outcome, head, runs, restarts, next run, message).
On a narrower terminal (80 columns), a compact table keeps every value that
matters in fewer, narrower columns: the mode and schedule go under the name,
the outcome and restarts under the state, PROCESSED and DEAD-LETTERED are left
out (they stay in status.json), and the message wraps in what is left.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from feedline.dev.status import ServiceStatus, SubscriptionStatus

TITLE = "feedline dev: subscriptions"
MIN_MESSAGE_WIDTH = 24  # the wide table is used when its message gets at least this much
NAME_WIDTH = 24  # compact: a longer name folds onto a second line

WIDE_COLUMNS = (
    ("NAME", "left"),
    ("MODE", "left"),
    ("SCHEDULE", "left"),
    ("STATE", "left"),
    ("OUTCOME", "left"),
    ("POSITION", "right"),
    ("HEAD", "right"),
    ("LAG", "right"),
    ("PROCESSED", "right"),
    ("DEAD-LETTERED", "right"),
    ("RUNS", "right"),
    ("RESTARTS", "right"),
    ("NEXT RUN", "left"),
)
COMPACT_COLUMNS = ("NAME", "STATE", "POS", "HEAD", "LAG", "RUNS", "NEXT", "MESSAGE")


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _until(moment: datetime | None, now: datetime, prefix: str = "in ") -> str:
    if moment is None:
        return "-"
    seconds = max(int((moment - now).total_seconds()), 0)
    text = f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
    return prefix + text


def _style(status: SubscriptionStatus) -> str | None:
    if status.failed or status.down_after_crash:
        return "red"
    return "green" if status.summary.get("outcome") == "CaughtUp" else None


def _wide(statuses: Sequence[SubscriptionStatus], now: datetime, message: bool) -> Table:
    table = Table(title=TITLE)
    for header, justify in WIDE_COLUMNS:
        table.add_column(header, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    if message:
        table.add_column("MESSAGE", overflow="fold")
    for status in statuses:
        d = status.to_dict()
        cells = [
            d["name"],
            d["mode"],
            d["schedule"] or "-",
            d["state"],
            d["outcome"] or "-",
            *(_cell(d[key]) for key in ("position", "head", "lag", "processed", "deadLettered")),
            str(d["runs"]),
            str(d["restarts"]),
            _until(status.next_run, now),
        ]
        table.add_row(*cells, *([d["message"]] if message else []), style=_style(status))
    return table


def _compact(statuses: Sequence[SubscriptionStatus], now: datetime) -> Table:
    table = Table(title=TITLE, box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False, pad_edge=False)
    longest = max((len(s.name) for s in statuses), default=4)
    table.add_column("NAME", width=min(max(longest, 4), NAME_WIDTH), overflow="fold")
    table.add_column("STATE", no_wrap=True)
    for header in ("POS", "HEAD", "LAG", "RUNS"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("NEXT", no_wrap=True)
    table.add_column("MESSAGE", ratio=1, overflow="fold")
    for status in statuses:
        d = status.to_dict()
        name = Text(d["name"])
        name.append("\n" + " ".join(p for p in (d["mode"], d["schedule"]) if p), style="dim")
        state = Text(d["state"])
        if d["outcome"]:
            state.append("\n" + d["outcome"])
        if status.restarts:
            state.append(f"\nrestarts {status.restarts}", style="dim")
        table.add_row(
            name,
            state,
            *(_cell(d[key]) for key in ("position", "head", "lag")),
            str(d["runs"]),
            _until(status.next_run, now, prefix=""),
            d["message"],
            style=_style(status),
        )
    return table


def _services(services: Iterable[ServiceStatus], compact: bool) -> Table:
    table = Table(
        title="services",
        box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
        padding=(0, 0) if compact else (0, 1),
        show_edge=not compact,
        pad_edge=not compact,
    )
    for header in ("SERVICE", "URL", "STATE"):
        table.add_column(header, no_wrap=True)
    for header in ("RESTARTS", "PID"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("LAST EXIT", overflow="fold")
    for service in services:
        table.add_row(
            service.name,
            service.url + (f"\n{service.grpc_url}" if service.grpc_url else ""),
            service.state,
            str(service.restarts),
            _cell(service.pid),
            service.last_exit or "-",
            style="red" if service.down_after_crash else None,
        )
    return table


class StatusTable:
    """The renderable: picks the wide or the compact layout for the width it is given."""

    def __init__(
        self,
        statuses: Sequence[SubscriptionStatus],
        services: Sequence[ServiceStatus] = (),
        now: datetime | None = None,
    ) -> None:
        self.statuses = statuses
        self.services = services
        self.now = now

    def fits_wide(self, console: Console, options: ConsoleOptions) -> bool:
        now = self.now or datetime.now(UTC)
        without_message = _wide(self.statuses, now, message=False)
        needed = Measurement.get(console, options, without_message).maximum
        return needed + MIN_MESSAGE_WIDTH + 3 <= options.max_width

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        now = self.now or datetime.now(UTC)
        wide = self.fits_wide(console, options)
        yield _wide(self.statuses, now, message=True) if wide else _compact(self.statuses, now)
        if self.services:
            yield _services(self.services, compact=not wide)


def render_table(
    statuses: Sequence[SubscriptionStatus],
    services: Sequence[ServiceStatus] = (),
    now: datetime | None = None,
) -> StatusTable:
    return StatusTable(statuses, services, now)
