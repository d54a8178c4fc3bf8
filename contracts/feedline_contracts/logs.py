"""One log schema for every part: services, subscriber, operator (and what `feedline dev` shows).

Each line is one record with the same keys whatever wrote it, Feedline's own
code (structlog) or a library through the standard ``logging`` module
(uvicorn, kopf, httpx, asyncio): ``timestamp`` (ISO 8601, UTC), ``level``
(``debug``, ``info``, ``warning``, ``error``, ``critical``), ``logger`` (its
name, e.g. ``feedline.feed`` or ``uvicorn.error``), ``event`` (the message),
then the record's own fields (``request_id``, ``trace_id``, ...).

Two formats, ``--log-format`` / ``FEEDLINE_LOG_FORMAT``: ``json`` (the
default: one JSON object per line, for collectors) and ``plain`` (the same
fields as ``key=value`` after the time, level and message, for people).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from enum import StrEnum
from typing import Any, Final, TextIO

import structlog
from structlog.typing import Processor

LOG_FORMAT_SETTING: Final = "FEEDLINE_LOG_FORMAT"

# The schema's keys (docs/architecture.md, "Logs").
TIMESTAMP_KEY: Final = "timestamp"
LEVEL_KEY: Final = "level"
LOGGER_KEY: Final = "logger"
EVENT_KEY: Final = "event"


class LogFormat(StrEnum):
    JSON = "json"
    PLAIN = "plain"


def _drop_color_message(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # uvicorn adds an ANSI-coloured copy of its message for its own formatter.
    event.pop("color_message", None)
    return event


def configure_logging(
    *,
    level: str = "INFO",
    log_format: LogFormat = LogFormat.JSON,
    stream: TextIO | None = None,
    quiet: Iterable[str] = (),
    extra_processors: Iterable[Processor] = (),
) -> None:
    """Route structlog and the standard library through one formatter on ``stream``.

    ``level``: the lowest level written (a name: DEBUG, INFO, ...). ``quiet``:
    loggers held to WARNING (a library's chatter at INFO, e.g. httpx's line per
    request). ``extra_processors``: a part's own field clean-up, run on every
    record before rendering. The root logger's handlers are replaced: call it
    once, at start.
    """
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        raise ValueError(f"log level {level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_color_message,
        *extra_processors,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key=TIMESTAMP_KEY),
    ]
    # JSON: the traceback as one string field; plain: ConsoleRenderer lays it out itself.
    rendering: list[Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if log_format is LogFormat.JSON
        else [structlog.dev.ConsoleRenderer(colors=False)]
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *rendering,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric_level)
    for name in quiet:
        logging.getLogger(name).setLevel(max(logging.WARNING, numeric_level))
