"""A throwaway RabbitMQ node (Debian's ``rabbitmq-server``) with streams, for integration tests.

One node per test session, in a temporary folder, on free loopback ports
(AMQP, stream protocol, Erlang distribution and its own epmd), with the
``rabbitmq_stream`` plugin enabled and nothing read from ``/etc/rabbitmq``.
Tests may restart it mid-test (``restart``: the same folder, so streams and
their messages survive) or stop it for a while (``stop`` then ``start``).

The node is ``feedline.dev.broker.RabbitMQNode``, the one `feedline dev`
starts (``/usr/lib/rabbitmq/bin/rabbitmq-server`` run directly: the ``/usr/sbin``
wrapper switches user and logs to /var/log), named ``feedline-test-PORT``.
epmd is started detached by the first Erlang VM and outlives the node: it runs
on a port of the node's own (``ERL_EPMD_PORT``) and is stopped at teardown by
that port.

Not installed, the fixture fails (it does not skip): ``apt-get install
rabbitmq-server`` (``.ci/run`` does it on CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import orjson

from feedline.dev import broker
from feedline.dev.broker import (
    PASSWORD,
    PROBE_STREAM,
    RABBITMQ_SERVER,
    START_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    USER,
)
from feedline.dev.broker import pids_listening_on as _pids_listening_on
from feedline.dev.broker import port_open as _port_open
from tests.support.ports import free_port

__all__ = [
    "INSTALL_HINT",
    "PASSWORD",
    "PROBE_STREAM",
    "RABBITMQ_SERVER",
    "START_TIMEOUT_SECONDS",
    "STOP_TIMEOUT_SECONDS",
    "USER",
    "RabbitMQNode",
    "StreamMessage",
    "StreamReader",
    "_pids_listening_on",
    "_port_open",
    "decode_message",
    "delete_stream",
    "throwaway_rabbitmq",
]

INSTALL_HINT = (
    f"RabbitMQ is not installed ({RABBITMQ_SERVER} is missing): the broker tests need a real "
    "node. Install it with `apt-get install -y rabbitmq-server` (Debian; .ci/run installs it)."
)


@dataclass
class RabbitMQNode(broker.RabbitMQNode):
    """One node (``feedline.dev.broker``'s, as `feedline dev` runs it); ``stream_url`` is what
    ``FEEDLINE_BROKER_URL`` takes. Not ``owned``: tests start and stop it from any thread."""

    amqp_port: int = field(default_factory=free_port)
    stream_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    epmd_port: int = field(default_factory=free_port)

    node_prefix: ClassVar[str] = "feedline-test"
    missing_message: ClassVar[str] = INSTALL_HINT


@contextlib.contextmanager
def throwaway_rabbitmq() -> Iterator[RabbitMQNode]:
    """A running node for the block; stopped, its epmd stopped and its folder removed after."""
    if not RABBITMQ_SERVER.exists():
        raise RuntimeError(INSTALL_HINT)
    folder = Path(tempfile.mkdtemp(prefix="feedline-rabbitmq-"))
    node = RabbitMQNode(folder)
    try:
        node.start()
        yield node
    finally:
        try:
            node.stop()
        finally:
            node.stop_epmd()
            shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class StreamMessage:
    """One message read back from a stream, decoded as a subscriber would."""

    offset: int
    sequence_number: int  # from the application properties
    name: str  # from the application properties
    content_type: str
    event: dict[str, Any]  # the body: the HTTP feed's event object


def decode_message(offset: int, message: Any) -> StreamMessage:
    """An AMQP 1.0 message (rstream's ``amqp_decoder``) as the relay writes it."""
    from feedline_contracts.broker import EVENT_NAME_PROPERTY, SEQUENCE_NUMBER_PROPERTY

    properties = {
        (key.decode() if isinstance(key, bytes) else key): value
        for key, value in (message.application_properties or {}).items()
    }
    name = properties[EVENT_NAME_PROPERTY]
    content_type = message.properties.content_type
    body = message.body
    if isinstance(body, list):  # one data section per element
        body = b"".join(body)
    return StreamMessage(
        offset=offset,
        sequence_number=int(properties[SEQUENCE_NUMBER_PROPERTY]),
        name=name.decode() if isinstance(name, bytes) else name,
        content_type=content_type.decode() if isinstance(content_type, bytes) else content_type,
        event=orjson.loads(body),
    )


class StreamReader:
    """A consumer of one stream from an offset, collecting what it reads (in the background).

    ``offset=None`` reads from the first message the stream holds; a number
    reads from that stream offset. Use as ``async with``.
    """

    def __init__(self, node: RabbitMQNode, stream: str, offset: int | None = None) -> None:
        self.node = node
        self.stream = stream
        self.offset = offset
        self.messages: list[StreamMessage] = []
        self._arrived = asyncio.Event()
        self._consumer: Any = None

    async def __aenter__(self) -> StreamReader:
        from rstream import (
            Consumer,
            ConsumerOffsetSpecification,
            OffsetType,
            ServerError,
            amqp_decoder,
        )

        spec = (
            ConsumerOffsetSpecification(OffsetType.FIRST)
            if self.offset is None
            else ConsumerOffsetSpecification(OffsetType.OFFSET, self.offset)
        )

        async def on_message(message: Any, context: Any) -> None:
            # rstream filters offsets client-side: a chunk may start before the asked one.
            if self.offset is None or context.offset >= self.offset:
                self.messages.append(decode_message(context.offset, message))
                self._arrived.set()

        deadline = time.monotonic() + 30
        while True:  # the stream may not exist yet (the relay creates it) or be recovering
            consumer = Consumer(
                "127.0.0.1", self.node.stream_port, username=USER, password=PASSWORD
            )
            try:
                await consumer.start()
                await consumer.subscribe(
                    self.stream, on_message, decoder=amqp_decoder, offset_specification=spec
                )
            except (OSError, ServerError) as exc:
                with contextlib.suppress(Exception):
                    await consumer.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cannot read stream {self.stream}: {exc!r}") from exc
                await asyncio.sleep(0.1)
                continue
            self._consumer = consumer
            return self

    async def __aexit__(self, *_: object) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._consumer.close(), 10)

    @property
    def sequence_numbers(self) -> list[int]:
        return [message.sequence_number for message in self.messages]

    async def wait_for_sequence(self, last: int, within: float = 60) -> list[StreamMessage]:
        """Until a message with sequence number ``last`` (or more) has been read."""
        deadline = time.monotonic() + within
        while not (self.messages and max(self.sequence_numbers[-5:]) >= last):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = self.sequence_numbers[-1] if self.messages else None
                raise TimeoutError(
                    f"stream {self.stream}: no sequence number {last} within {within:.0f}s "
                    f"({len(self.messages)} messages read, the last {seen})"
                )
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return self.messages


async def delete_stream(node: RabbitMQNode, stream: str) -> None:
    """Delete a stream (and with it the broker's deduplication record for it), if it exists."""
    from rstream import Producer

    async with Producer(
        "127.0.0.1", node.stream_port, username=USER, password=PASSWORD
    ) as producer:
        await producer.delete_stream(stream, missing_ok=True)
