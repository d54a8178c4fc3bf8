"""The dashboard's logs: the per-process log files `feedline dev` writes, read and filtered.

Each process's output is appended to ``STATE/logs/NAME.log``: one JSON record a
line in the schema of ``feedline_contracts.logs`` (timestamp, level, logger,
event, then fields such as ``request_id`` and ``trace_id``), plus dev's own
``--- TIME start ...`` line per start and whatever a process prints that is
not JSON (shown as is, with no level). A filter keeps records at or above a
level, of some processes, whose ``request_id`` or ``trace_id`` contains a text;
the access lines of `feedline dev`'s own polling (``/metrics``, ``/events/head``,
``/health/*``, every few seconds) are left out unless asked for.
``LogTail`` follows the files from their current end (the live view).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedline_contracts.logs import EVENT_KEY, LEVEL_KEY, LOGGER_KEY, TIMESTAMP_KEY

LEVELS = ("debug", "info", "warning", "error", "critical")
TAIL_BYTES = 512 * 1024  # what is read of each file for the first page
ID_KEYS = ("request_id", "trace_id")
ACCESS_LOGGER = "feedline.access"
# What `feedline dev` itself (and the probes) ask every service every few seconds.
POLLING_ROUTES = frozenset({"/metrics", "/events/head", "/health/live", "/health/ready"})
SCHEMA_KEYS = (TIMESTAMP_KEY, LEVEL_KEY, LOGGER_KEY, EVENT_KEY)


@dataclass(frozen=True)
class LogRecord:
    process: str
    timestamp: str
    level: str | None  # None: not a JSON record (a start line, a stray print)
    logger: str
    event: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def request_id(self) -> str | None:
        value = self.fields.get("request_id")
        return None if value is None else str(value)

    @property
    def trace_id(self) -> str | None:
        value = self.fields.get("trace_id")
        return None if value is None else str(value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "process": self.process,
            TIMESTAMP_KEY: self.timestamp,
            LEVEL_KEY: self.level,
            LOGGER_KEY: self.logger,
            EVENT_KEY: self.event,
            **self.fields,
        }


def is_polling(record: LogRecord) -> bool:
    """An access line of a request `feedline dev` makes itself (its scrape, its head reads)."""
    return record.logger == ACCESS_LOGGER and record.fields.get("route") in POLLING_ROUTES


def parse_line(process: str, line: str) -> LogRecord | None:
    """One line of a log file as a record (None for a blank line)."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    try:
        loaded = json.loads(line)
    except ValueError:
        loaded = None
    if not isinstance(loaded, dict):
        return LogRecord(process, "", None, "", line)
    fields = {k: v for k, v in loaded.items() if k not in SCHEMA_KEYS}
    level = str(loaded.get(LEVEL_KEY, "")).lower() or None
    return LogRecord(
        process,
        str(loaded.get(TIMESTAMP_KEY, "")),
        level,
        str(loaded.get(LOGGER_KEY, "")),
        str(loaded.get(EVENT_KEY, "")),
        fields,
    )


@dataclass(frozen=True)
class LogFilter:
    processes: frozenset[str] = frozenset()  # empty: every process
    level: str | None = None  # the lowest level shown; None: every line
    text_id: str = ""  # a request_id or trace_id (or part of one)
    polling: bool = False  # show the access lines of dev's own polling (POLLING_ROUTES)

    def matches(self, record: LogRecord) -> bool:
        if self.processes and record.process not in self.processes:
            return False
        if not self.polling and is_polling(record):
            return False
        if self.level is not None and self.level in LEVELS:
            if record.level not in LEVELS:
                return False
            if LEVELS.index(record.level) < LEVELS.index(self.level):
                return False
        if self.text_id:
            ids = (record.request_id, record.trace_id)
            return any(value is not None and self.text_id in value for value in ids)
        return True


def log_path(logs_dir: Path, process: str) -> Path:
    return logs_dir / f"{process}.log"


def _tail_lines(path: Path, max_bytes: int = TAIL_BYTES) -> list[str]:
    try:
        with open(path, "rb") as file:
            size = file.seek(0, 2)
            file.seek(max(size - max_bytes, 0))
            data = file.read()
    except OSError:
        return []
    lines = data.decode(errors="replace").splitlines()
    return lines[1:] if size > max_bytes else lines  # the first may be cut


def recent(
    logs_dir: Path, processes: Iterable[str], log_filter: LogFilter, limit: int
) -> list[LogRecord]:
    """The last ``limit`` matching records of the processes' files, oldest first.

    Records of several files are merged by timestamp (a line without one keeps
    its place after the record before it in its own file).
    """
    merged: list[tuple[str, int, int, LogRecord]] = []
    for index, process in enumerate(processes):
        if log_filter.processes and process not in log_filter.processes:
            continue
        stamp = ""
        for number, line in enumerate(_tail_lines(log_path(logs_dir, process))):
            record = parse_line(process, line)
            if record is None:
                continue
            stamp = record.timestamp or stamp
            if log_filter.matches(record):
                merged.append((stamp, index, number, record))
    merged.sort(key=lambda item: item[:3])
    return [record for *_, record in merged[-limit:]]


class LogTail:
    """The records appended to the processes' files since it was created (live view)."""

    def __init__(self, logs_dir: Path, processes: Sequence[str], log_filter: LogFilter) -> None:
        self.logs_dir = logs_dir
        self.filter = log_filter
        wanted = log_filter.processes
        self.processes = [p for p in processes if not wanted or p in wanted]
        self.offsets: dict[str, int] = {}
        self.partial: dict[str, bytes] = {}
        for process in self.processes:
            try:
                self.offsets[process] = log_path(logs_dir, process).stat().st_size
            except OSError:
                self.offsets[process] = 0

    def read(self) -> list[LogRecord]:
        """The matching records written since the last read."""
        records: list[LogRecord] = []
        for process in self.processes:
            path = log_path(self.logs_dir, process)
            try:
                with open(path, "rb") as file:
                    size = file.seek(0, 2)
                    offset = self.offsets.get(process, 0)
                    if size < offset:  # truncated or replaced: from its start
                        offset, self.partial[process] = 0, b""
                    file.seek(offset)
                    data = file.read()
            except OSError:
                continue
            self.offsets[process] = offset + len(data)
            data = self.partial.pop(process, b"") + data
            complete, _, rest = data.rpartition(b"\n")
            if rest:
                self.partial[process] = rest
            for line in complete.decode(errors="replace").splitlines():
                record = parse_line(process, line)
                if record is not None and self.filter.matches(record):
                    records.append(record)
        return records
