"""The RabbitMQ transport (docs/transports.md, "RabbitMQ"): what the relay and a subscriber share.

A service's relay publishes its event store, in sequence order, to one
RabbitMQ **stream** per service; a subscriber reads that stream from an
offset. Both ends name the stream, the message properties and the broker URL
with these.

A message is one event: its body is the event exactly as the HTTP feed
serves it (the JSON object ``{"sequenceNumber", "occurredAt", "name",
"content"}``, ``CONTENT_TYPE``), and its AMQP 1.0 application properties
repeat the sequence number (an AMQP long) and the name, so a reader can
check or skip a message without decoding its body. The stream protocol's
publishing id of each message is its sequence number too (the broker drops a
re-published one: deduplication under ``PUBLISHER_REFERENCE``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit

# Where a service is told its broker; unset (the default), no relay runs.
BROKER_URL_SETTING: Final = "FEEDLINE_BROKER_URL"

# rabbitmq-stream://USER:PASSWORD@HOST[:PORT][/VHOST]: the scheme RabbitMQ's stream
# clients use; rabbitmq-stream+tls:// for TLS. The vhost is URL-encoded (/ is %2F).
STREAM_SCHEME: Final = "rabbitmq-stream"
STREAM_TLS_SCHEME: Final = "rabbitmq-stream+tls"
STREAM_PORT: Final = 5552
STREAM_TLS_PORT: Final = 5551

# Application properties of every message.
SEQUENCE_NUMBER_PROPERTY: Final = "feedline-sequence-number"
EVENT_NAME_PROPERTY: Final = "feedline-event-name"
# The message's content type (AMQP properties): the HTTP feed's event object.
CONTENT_TYPE: Final = "application/json"

# The relay's publisher reference (its name for deduplication). One per stream:
# whichever replica relays, the broker keeps one last publishing id for it.
PUBLISHER_REFERENCE: Final = "feedline-relay"

STREAM_NAME_PREFIX: Final = "feedline.events."
# Stream (queue) names: at most 255 bytes; service names are DNS labels.
_SERVICE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def stream_name(service: str) -> str:
    """The stream that holds ``service``'s events: ``feedline.events.SERVICE``."""
    if not _SERVICE_NAME.fullmatch(service):
        raise ValueError(f"{service!r:.80} is not a service name (a DNS label)")
    return f"{STREAM_NAME_PREFIX}{service}"


@dataclass(frozen=True)
class StreamAddress:
    """A broker's stream-protocol endpoint, from a ``rabbitmq-stream://`` URL."""

    host: str
    port: int
    username: str
    password: str
    vhost: str
    tls: bool

    def redacted(self) -> str:
        """The URL without its password, for logs and errors."""
        scheme = STREAM_TLS_SCHEME if self.tls else STREAM_SCHEME
        vhost = self.vhost.replace("%", "%25").replace("/", "%2F")
        return f"{scheme}://{self.username}@{self.host}:{self.port}/{vhost}"


def parse_stream_url(url: str) -> StreamAddress:
    """``rabbitmq-stream[+tls]://USER:PASSWORD@HOST[:PORT][/VHOST]``; raises ValueError.

    The port defaults to 5552 (5551 with TLS), the vhost to ``/`` (written
    ``%2F`` in a URL). A URL without user and password is refused: RabbitMQ
    lets its default user connect from loopback only.
    """
    parts = urlsplit(url)
    if parts.scheme not in (STREAM_SCHEME, STREAM_TLS_SCHEME):
        raise ValueError(
            f"the broker URL must start with {STREAM_SCHEME}:// (or {STREAM_TLS_SCHEME}://), "
            f"not {parts.scheme or 'nothing'}:// (the relay speaks RabbitMQ's stream protocol)"
        )
    tls = parts.scheme == STREAM_TLS_SCHEME
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"the broker URL's port is not a port: {exc}") from exc
    if not parts.hostname:
        raise ValueError("the broker URL names no host")
    if parts.username is None or parts.password is None:
        raise ValueError("the broker URL needs a user and a password (USER:PASSWORD@HOST)")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return StreamAddress(
        host=parts.hostname,
        port=port or (STREAM_TLS_PORT if tls else STREAM_PORT),
        username=unquote(parts.username),
        password=unquote(parts.password),
        vhost=unquote(path) if path else "/",
        tls=tls,
    )
