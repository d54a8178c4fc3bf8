"""A throwaway RabbitMQ node (Debian's ``rabbitmq-server``) with streams, for integration tests.

One node per test session, in a temporary folder, on free loopback ports
(AMQP, stream protocol, Erlang distribution and its own epmd), with the
``rabbitmq_stream`` plugin enabled and nothing read from ``/etc/rabbitmq``.
Tests may restart it mid-test (``restart``: the same folder, so streams and
their messages survive) or stop it for a while (``stop`` then ``start``).

The node is started as ``/usr/lib/rabbitmq/bin/rabbitmq-server`` directly (the
``/usr/sbin`` wrapper switches user and logs to /var/log). epmd is started
detached by the first Erlang VM and outlives the node: it runs on a port of
the node's own (``ERL_EPMD_PORT``) and is stopped at teardown by that port.

Not installed, the fixture fails (it does not skip): ``apt-get install
rabbitmq-server`` (``.ci/run`` does it on CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.support.ports import free_port

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
INSTALL_HINT = (
    f"RabbitMQ is not installed ({RABBITMQ_SERVER} is missing): the broker tests need a real "
    "node. Install it with `apt-get install -y rabbitmq-server` (Debian; .ci/run installs it)."
)
# The default user of a fresh node, allowed from loopback only (as here).
USER = "guest"
PASSWORD = "guest"
START_TIMEOUT_SECONDS = 60.0
# A stream of the fixture's own: a message through it says the node serves streams.
PROBE_STREAM = "feedline-fixture-probe"
STOP_TIMEOUT_SECONDS = 30.0


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pids_listening_on(port: int) -> list[int]:
    """The pids of processes listening on a TCP port (found through /proc, as ss would)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                parts = line.split()
                local, state, inode = parts[1], parts[3], parts[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # LISTEN
                    inodes.add(f"socket:[{inode}]")
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        pids.append(int(pid))
                        break
    return pids


@dataclass
class RabbitMQNode:
    """One node; ``stream_url`` is what ``FEEDLINE_BROKER_URL`` takes."""

    folder: Path
    amqp_port: int = field(default_factory=free_port)
    stream_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    epmd_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # Seconds each start took (both ports open and streams ready), for reports.
    start_seconds: list[float] = field(default_factory=list)

    @property
    def nodename(self) -> str:
        return f"feedline-test-{self.amqp_port}@localhost"

    @property
    def stream_url(self) -> str:
        return f"rabbitmq-stream://{USER}:{PASSWORD}@127.0.0.1:{self.stream_port}/%2F"

    @property
    def amqp_url(self) -> str:
        return f"amqp://{USER}:{PASSWORD}@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def log_file(self) -> Path:
        return self.folder / "server.out"

    def _prepare(self) -> None:
        home = self.folder / "home"
        for each in (home, self.folder / "mnesia", self.folder / "log"):
            each.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(f"feedline{self.amqp_port}{os.getpid()}")
            cookie.chmod(0o400)
        (self.folder / "rabbitmq-env.conf").write_text("")
        (self.folder / "enabled_plugins").write_text("[rabbitmq_stream].\n")
        (self.folder / "advanced.config").write_text("[].\n")
        (self.folder / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}",
                    f"stream.listeners.tcp.1 = 127.0.0.1:{self.stream_port}",
                    "stream.advertised_host = 127.0.0.1",
                    f"stream.advertised_port = {self.stream_port}",
                    "disk_free_limit.absolute = 50MB",
                    "log.console = false",
                    "log.file.level = info",
                    "",
                ]
            )
        )

    def environment(self) -> dict[str, str]:
        """The variables of this node, for the server and for its CLI tools alike."""
        folder = self.folder
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(folder / "home"),
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(folder / "rabbitmq.pid"),
            # Else the distribution port listens on every address.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self, *, ready_streams: Sequence[str] = ()) -> None:
        """Start the node; return when both ports take connections and streams work.

        ``ready_streams``: existing streams that must also be readable (after a
        restart the ports open about a second before streams are recovered).
        """
        if not RABBITMQ_SERVER.exists():
            raise RuntimeError(INSTALL_HINT)
        assert self.process is None, "the node is running"
        self._prepare()
        started = time.monotonic()
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [str(RABBITMQ_SERVER)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self.folder,
                start_new_session=True,
            )
        deadline = started + START_TIMEOUT_SECONDS
        while not (_port_open(self.amqp_port) and _port_open(self.stream_port)):
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited early:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"rabbitmq-server did not open its ports in {START_TIMEOUT_SECONDS:.0f}s:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.1)
        asyncio.run(self._wait_streams_ready(ready_streams, deadline))
        self.start_seconds.append(time.monotonic() - started)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the node (SIGTERM to the Erlang VM, or SIGKILL with ``kill``); epmd stays."""
        if self.process is None:
            return
        pid_file = self.folder / "rabbitmq.pid"
        beam = None
        with contextlib.suppress(OSError, ValueError):
            beam = int(pid_file.read_text().strip())
        if beam is None:
            beam = next(iter(_pids_listening_on(self.amqp_port)), None)
        sig = signal.SIGKILL if kill else signal.SIGTERM
        if beam is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(beam, sig)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # The wrapper ends with the VM; wait until the ports are free for the next start.
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while _port_open(self.amqp_port) or _port_open(self.stream_port):
            if time.monotonic() > deadline:
                raise RuntimeError("rabbitmq-server still listens after it was stopped")
            time.sleep(0.1)
        pid_file.unlink(missing_ok=True)
        self.process = None

    def restart(self, *, ready_streams: Sequence[str] = (), kill: bool = False) -> None:
        """Stop and start again on the same ports and folder (streams keep their messages)."""
        self.stop(kill=kill)
        self.start(ready_streams=ready_streams)

    def stop_epmd(self) -> None:
        """epmd outlives the node (started detached): stop the one on this node's port."""
        for pid in _pids_listening_on(self.epmd_port):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _log_tail(self) -> str:
        parts = []
        for log in (self.log_file, *sorted((self.folder / "log").glob("*.log"))):
            with contextlib.suppress(OSError):
                parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    async def _wait_streams_ready(self, streams: Sequence[str], deadline: float) -> None:
        """Until a probe stream takes a message and gives it back, and each of ``streams``
        takes a reader (until a stream is recovered, subscribing fails: not available)."""
        from rstream import (
            Consumer,
            ConsumerOffsetSpecification,
            OffsetType,
            Producer,
            ServerError,
        )

        async def ready() -> None:
            async with Producer(
                "127.0.0.1", self.stream_port, username=USER, password=PASSWORD
            ) as producer:
                await producer.create_stream(PROBE_STREAM, exists_ok=True)
                await producer.send_wait(PROBE_STREAM, b"ready", timeout=5)
            async with Consumer(
                "127.0.0.1", self.stream_port, username=USER, password=PASSWORD
            ) as consumer:
                got = asyncio.get_running_loop().create_future()

                async def on_message(_message: object, _context: object) -> None:
                    if not got.done():
                        got.set_result(None)

                await consumer.subscribe(
                    PROBE_STREAM,
                    on_message,
                    offset_specification=ConsumerOffsetSpecification(OffsetType.LAST),
                )
                await asyncio.wait_for(got, 5)

                async def ignore(_message: object, _context: object) -> None:
                    return None

                for stream in streams:
                    await consumer.subscribe(
                        stream,
                        ignore,
                        offset_specification=ConsumerOffsetSpecification(OffsetType.NEXT),
                    )

        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                await ready()
                return
            except (OSError, ServerError, TimeoutError, ConnectionError) as exc:
                last = exc
                await asyncio.sleep(0.2)
        raise RuntimeError(f"RabbitMQ streams not ready: {last!r}\n{self._log_tail()}")


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
