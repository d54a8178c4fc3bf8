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

# The gRPC feed (feedline.feed.v1.EventFeed, proto/feedline/feed/v1/feed.proto;
# docs/transports.md): the same feed, served beside HTTP on a port of its own.
GRPC_SERVICE: Final = "feedline.feed.v1.EventFeed"
# Where a service listens for it: unset serves no gRPC (`feedline serve` runs
# several services on one machine); GRPC_PORT is the port a pod gives it.
GRPC_PORT_SETTING: Final = "FEEDLINE_GRPC_PORT"
GRPC_PORT: Final = 9090
# Most bytes of events in one EventBatch message: a page of `limit` events is
# sent as several batches rather than one message over gRPC's default 4 MiB
# receive limit (an event bigger than this alone still goes in a batch of one).
MAX_BATCH_BYTES: Final = 1024 * 1024
