"""Feed protocol v1 (docs/feed-protocol.md): the limits, headers and names both ends use.

The chassis serves the feed with these; the subscriber checks what it reads
and validates its settings against them.
"""

from __future__ import annotations

import re
from typing import Final

# `limit`: events per page.
DEFAULT_LIMIT: Final = 1000
MAX_LIMIT: Final = 10_000
# `wait`: long-poll seconds when nothing at or after `start` exists.
MAX_WAIT_SECONDS: Final = 30.0
# Sequence numbers are BIGINTs.
MAX_SEQUENCE: Final = 2**63 - 1

# The highest committed sequence number, on every 200 (and on /events/head).
HEAD_HEADER: Final = "Feed-Head"

# Event names are identifiers: the feed's `types` filter names them in a
# comma-separated list, and the feed writes them into JSON without escaping.
EVENT_NAME_CHARACTERS: Final = r"[A-Za-z0-9_.:\-]"
EVENT_NAME_MAX_LENGTH: Final = 200
EVENT_NAME_PATTERN: Final = re.compile(rf"{EVENT_NAME_CHARACTERS}{{1,{EVENT_NAME_MAX_LENGTH}}}")
