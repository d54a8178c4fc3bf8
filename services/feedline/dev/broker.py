"""A throwaway RabbitMQ node with streams: the broker of `feedline dev` (and of the tests).

Debian's ``rabbitmq-server`` (RabbitMQ 3.9 or later: the stream plugin),
started as ``/usr/lib/rabbitmq/bin/rabbitmq-server`` directly (the ``/usr/sbin``
wrapper switches user and logs to /var/log), in a folder of its own, on free
loopback ports (AMQP, the stream protocol, Erlang distribution and an epmd of
its own), with the ``rabbitmq_stream`` plugin enabled and nothing read from
``/etc/rabbitmq``: it can run beside a system RabbitMQ, and beside other
throwaway nodes.

``start`` returns once both ports take connections and a message went
through a probe stream (streams answer a little after the ports open).
``stop`` stops the Erlang VM (SIGTERM, or SIGKILL with ``kill``); epmd stays
until ``stop_epmd`` (a restart on the same ports finds it). A node that is
``owned`` (``feedline dev``) is tied to the process that launched it: its
wrapper and epmd are started by that process (from the thread that runs its
event loop) and get SIGTERM if it dies (``PR_SET_PDEATHSIG``; the wrapper then
stops the VM), so no broker outlives `feedline dev`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from feedline.dev.ports import free_port

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
MISSING_MESSAGE = (
    f"RabbitMQ is not installed ({RABBITMQ_SERVER} is missing), and a subscription reads "
    "its feed through a broker (spec.feed.broker): install the rabbitmq-server package "
    "(Debian/Ubuntu: apt-get install rabbitmq-server; RabbitMQ 3.9 or later, for streams)"
)
# The default user of a fresh node, allowed from loopback only (as here).
USER = "guest"
PASSWORD = "guest"
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
# A stream of the node's own: a message through it says the node serves streams.
PROBE_STREAM = "feedline-fixture-probe"
PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The node cannot be started (not installed, exited early, not ready in time)."""


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pids_listening_on(port: int) -> list[int]:
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


def _die_with_parent() -> None:  # pragma: no cover - runs in the child after fork
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


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
    # Tied to the launching process (see the module docstring): `feedline dev`.
    owned: bool = False
    epmd_process: subprocess.Popen[bytes] | None = None

    node_prefix: ClassVar[str] = "feedline-dev"
    missing_message: ClassVar[str] = MISSING_MESSAGE

    @property
    def nodename(self) -> str:
        return f"{self.node_prefix}-{self.amqp_port}@localhost"

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

    def _preexec(self) -> Callable[[], None] | None:
        return _die_with_parent if self.owned else None

    def _start_epmd(self, log: int) -> None:
        """An owned node's epmd is its own child (else the VM starts one, detached)."""
        running = self.epmd_process is not None and self.epmd_process.poll() is None
        epmd = shutil.which("epmd")
        if running or epmd is None or port_open(self.epmd_port):
            return
        self.epmd_process = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            cwd=self.folder,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads between fork and exec
        )
        deadline = time.monotonic() + 10
        while not port_open(self.epmd_port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def launch(self) -> None:
        """Start the node's process and return (``wait_ready`` waits for it)."""
        if not RABBITMQ_SERVER.exists():
            raise BrokerError(self.missing_message)
        assert self.process is None, "the node is running"
        self._prepare()
        with open(self.log_file, "ab") as log:
            if self.owned:
                self._start_epmd(log.fileno())
            self.process = subprocess.Popen(
                [str(RABBITMQ_SERVER)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self.folder,
                start_new_session=True,
                preexec_fn=self._preexec(),  # noqa: PLW1509 - no threads between fork and exec
            )

    async def wait_ready(self, *, ready_streams: Sequence[str] = (), started: float) -> None:
        """Until both ports take connections and streams work (``start``'s second half)."""
        process = self.process
        assert process is not None, "the node was not launched"
        deadline = started + START_TIMEOUT_SECONDS
        while not (port_open(self.amqp_port) and port_open(self.stream_port)):
            if process.poll() is not None:
                raise BrokerError(f"rabbitmq-server exited early:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"rabbitmq-server did not open its ports in {START_TIMEOUT_SECONDS:.0f}s:\n"
                    f"{self.log_tail()}"
                )
            await asyncio.sleep(0.1)
        await self._wait_streams_ready(ready_streams, deadline)
        self.start_seconds.append(time.monotonic() - started)

    def start(self, *, ready_streams: Sequence[str] = ()) -> None:
        """Start the node; return when both ports take connections and streams work.

        ``ready_streams``: existing streams that must also be readable (after a
        restart the ports open about a second before streams are recovered).
        Not to be called from a running event loop (``launch`` + ``wait_ready``).
        """
        started = time.monotonic()
        self.launch()
        asyncio.run(self.wait_ready(ready_streams=ready_streams, started=started))

    def stop(self, *, kill: bool = False) -> None:
        """Stop the node (SIGTERM to the Erlang VM, or SIGKILL with ``kill``); epmd stays."""
        if self.process is None:
            return
        pid_file = self.folder / "rabbitmq.pid"
        beam = None
        with contextlib.suppress(OSError, ValueError):
            beam = int(pid_file.read_text().strip())
        if beam is None:
            beam = next(iter(pids_listening_on(self.amqp_port)), None)
        sig = signal.SIGKILL if kill else signal.SIGTERM
        if beam is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(beam, sig)
        elif self.process.poll() is None:  # not up far enough to name its VM: the wrapper
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # The wrapper ends with the VM; wait until the ports are free for the next start.
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while port_open(self.amqp_port) or port_open(self.stream_port):
            if time.monotonic() > deadline:
                raise BrokerError("rabbitmq-server still listens after it was stopped")
            time.sleep(0.1)
        pid_file.unlink(missing_ok=True)
        self.process = None

    def restart(self, *, ready_streams: Sequence[str] = (), kill: bool = False) -> None:
        """Stop and start again on the same ports and folder (streams keep their messages)."""
        self.stop(kill=kill)
        self.start(ready_streams=ready_streams)

    def stop_epmd(self) -> None:
        """epmd outlives the node: stop the one on this node's port."""
        if self.epmd_process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.epmd_process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.epmd_process.wait(timeout=5)
            self.epmd_process = None
        for pid in pids_listening_on(self.epmd_port):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def log_tail(self) -> str:
        parts = []
        for log in (self.log_file, *sorted((self.folder / "log").glob("*.log"))):
            with contextlib.suppress(OSError):
                parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    _log_tail = log_tail  # the name the tests' fixture used

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
        raise BrokerError(f"RabbitMQ streams not ready: {last!r}\n{self.log_tail()}")
