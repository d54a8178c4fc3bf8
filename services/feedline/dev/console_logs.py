"""The processes' log lines on `feedline dev`'s own terminal, as Compose prints its services'.

Every process `feedline dev` starts writes to ``STATE/logs/NAME.log``; the
dashboard shows them all. On the terminal, the lines at or above a level
(``--console-logs``, default ``warning``: a 4xx, an upstream failure, a
retry, a crash's traceback) are printed above the table as they are written,
``NAME | level logger: event key=value ...``, so what goes wrong is seen where
`feedline dev` runs. ``--console-logs none`` prints none; ``info`` (or
``debug``) everything but dev's own polling.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

from feedline.dev.dashboard.logs import LEVELS, LogFilter, LogRecord, LogTail

CONSOLE_LEVELS = (*LEVELS, "none")
DEFAULT_CONSOLE_LEVEL = "warning"
ECHO_INTERVAL_SECONDS = 0.5
# Fields already said by the line's shape, or too long for a terminal line.
LEFT_OUT = frozenset({"exception", "stack"})


def console_line(record: LogRecord) -> str:
    """``NAME | level logger: event k=v ...`` (a traceback's last line, not all of it)."""
    fields = " ".join(f"{k}={v}" for k, v in record.fields.items() if k not in LEFT_OUT)
    text = f"{record.process} | {record.level} {record.logger}: {record.event}"
    exception = record.fields.get("exception")
    if isinstance(exception, str) and exception.strip():
        fields = f"{fields} exception={exception.strip().splitlines()[-1]}".strip()
    return f"{text} {fields}" if fields else text


async def echo_logs(
    logs_dir: Path,
    processes: Sequence[str],
    level: str,
    print_line: Callable[[str], None],
    stop: asyncio.Event,
) -> None:
    """Print the processes' new records at or above ``level`` until ``stop``."""
    if level == "none":
        return
    tail = LogTail(logs_dir, processes, LogFilter(level=level))
    while not stop.is_set():
        for record in tail.read():
            print_line(console_line(record))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), ECHO_INTERVAL_SECONDS)
    for record in tail.read():  # what was written while stopping
        print_line(console_line(record))
