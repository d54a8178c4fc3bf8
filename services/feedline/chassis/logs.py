"""The services' logs: the one schema of every part (feedline_contracts.logs), on stdout.

Context variables carry the request and trace ids of the current request into
every line written while it is handled.
"""

from __future__ import annotations

import logging

from feedline_contracts.logs import LogFormat
from feedline_contracts.logs import configure_logging as configure_shared_logging


def configure_logging(level: str = "INFO", log_format: LogFormat = LogFormat.JSON) -> None:
    """JSON (or plain) lines on stdout, uvicorn's own lines included."""
    configure_shared_logging(level=level, log_format=log_format, quiet=("httpx", "hpack"))
    # rstream logs every frame it sends at DEBUG, the SASL frame with the broker's
    # password in it: never below INFO, whatever FEEDLINE_LOG_LEVEL says
    # (tests/integration/test_secrets_leak.py).
    rstream = logging.getLogger("rstream")
    rstream.setLevel(max(logging.INFO, rstream.getEffectiveLevel()))
