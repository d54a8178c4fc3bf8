"""Free loopback ports for the servers tests start: `feedline.dev.ports`, which picks
them outside the kernel's ephemeral range (no outgoing connection can take one
between the pick and the server's bind)."""

from __future__ import annotations

from feedline.dev.ports import PORT_OFFSET_MAX, free_port, free_ports, pickable

__all__ = ["PORT_OFFSET_MAX", "free_port", "free_ports", "pickable"]
