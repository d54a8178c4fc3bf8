"""Free ports for the listeners `feedline dev` (and the tests) start, picked where no
outgoing connection can take them.

A port found free by binding and closing a socket is handed to a child that binds
it a moment later. If the port came from the kernel's ephemeral range (what
``bind(("127.0.0.1", 0))`` returns), any outgoing connection on the machine may be
given the same local port in between, and the child fails with "address in use"
(a cold CI run did exactly that). Ports outside the ephemeral range are handed
out by nobody: only another process that picks ports on purpose can race us.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

# Linux's range for outgoing connections' local ports (and for bind to port 0).
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# IANA's dynamic range, the default of the BSDs and macOS, where the file is absent.
IANA_EPHEMERAL = range(49152, 65536)
# Below this, ports are registered to well-known servers (and ours: 8000-8004, 9090).
LOWEST_PICKED_PORT = 10000
_ATTEMPTS = 2000
# `feedline dev --port-offset`: the services' default ports (8000-8004) plus the
# offset stay in 0-65535 (8000 - 8000 .. 8004 + 50000).
PORT_OFFSET_MIN, PORT_OFFSET_MAX = -8000, 50000


def ephemeral_range() -> range:
    """The ports the kernel gives to outgoing connections."""
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return IANA_EPHEMERAL
    return range(low, high + 1)


def pickable(port: int, ephemeral: range | None = None) -> bool:
    """True for a port we may pick for a listener: high, and outside the ephemeral range."""
    if ephemeral is None:  # not `or`: an empty range is a range read, not a missing one
        ephemeral = ephemeral_range()
    return LOWEST_PICKED_PORT <= port < 65536 and port not in ephemeral


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bound(host: str, port: int) -> socket.socket | None:
    """A socket bound to ``host:port``, or None if that port is taken (even in TIME_WAIT)."""
    sock = socket.socket(_family(host))
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    return sock


def free_ports(host: str, names: list[str]) -> dict[str, int]:
    """A distinct free port for each name, outside the ephemeral range, on ``host``.

    Every socket stays bound until all are picked, so no two names share a port.
    """
    ephemeral = ephemeral_range()
    pool = [p for p in range(LOWEST_PICKED_PORT, 65536) if pickable(p, ephemeral)]
    if not pool:  # an ephemeral range that covers everything: the kernel's pick it is
        pool = [0]
    ports: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        for name in names:
            for _ in range(_ATTEMPTS):
                sock = _bound(host, random.choice(pool))
                if sock is not None:  # still bound: the next name cannot get this port
                    stack.callback(sock.close)
                    ports[name] = int(sock.getsockname()[1])
                    break
            else:
                raise OSError(f"no free port on {host} after {_ATTEMPTS} attempts")
    return ports


def free_port(host: str = "127.0.0.1") -> int:
    """One free port on ``host`` (see `free_ports`)."""
    return free_ports(host, ["port"])["port"]


def port_in_use(host: str, port: int) -> bool:
    """True if a listener holds ``host:port`` (TIME_WAIT leftovers do not count)."""
    with socket.socket(_family(host)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False
