"""Before the first run: is each subscription's feed served by a service `feedline dev` runs?

A feed URL (after the local mapping of ``plan.local_feed_url``) that points at
none of the services `feedline dev` started, where nothing accepts a
connection either, would make every run retry for a long while and then fail
as "unreachable". `feedline dev` says so at once instead: one line naming
the subscription, the URL, and what to do.

A URL's port is the one it names, else its scheme's default: 80 (http), 443
(https, grpcs), 9090 (grpc, ``feedline_contracts.feed.GRPC_PORT``). An
http:// URL is served by a service's HTTP port, a grpc:// URL by its gRPC
port; https:// and grpcs:// by none (the local services serve plaintext), but
something else may answer there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from urllib.parse import urlsplit

from feedline.dev.plan import LOOPBACK_HOSTS, Layout
from feedline.services.registry import DEFAULT_PORTS
from feedline_contracts.feed import GRPC_PORT
from feedline_contracts.subscriber_env import GRPCS_DEFAULT_PORT

DEFAULT_PORT_OF_SCHEME = {"http": 80, "https": 443, "grpc": GRPC_PORT, "grpcs": GRPCS_DEFAULT_PORT}

CONNECT_TIMEOUT_SECONDS = 1.0
ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names, not a bind


def _same_host(feed_host: str, service_host: str) -> bool:
    if feed_host == service_host:
        return True
    # A service listening on loopback, or on every address, answers loopback URLs.
    return feed_host in LOOPBACK_HOSTS and (
        service_host in LOOPBACK_HOSTS or service_host in ANY_ADDRESS
    )


def feed_port(feed_url: str) -> int | None:
    """The TCP port a feed URL connects to: its own, or its scheme's default (None: neither)."""
    parts = urlsplit(feed_url)
    try:
        port = parts.port
    except ValueError:
        return None
    return port if port is not None else DEFAULT_PORT_OF_SCHEME.get(parts.scheme)


def _served_port(scheme: str, layout: Layout, service: str) -> int | None:
    """The port where ``service`` serves a feed of this scheme (None: it serves none)."""
    if scheme == "http":
        return layout.service_port(service)
    if scheme == "grpc":
        return layout.service_grpc_port(service)
    return None  # https, grpcs: the local services serve plaintext only


def serving_service(feed_url: str, layout: Layout, services: Iterable[str]) -> str | None:
    """The service (among ``services``, the ones running) whose address the URL names."""
    parts = urlsplit(feed_url)
    host = (parts.hostname or "").lower()
    port = feed_port(feed_url)
    if port is None:
        return None
    for name in services:
        served = _served_port(parts.scheme, layout, name)
        if port == served and _same_host(host, layout.host.lower()):
            return name
    return None


def left_out_service(feed_url: str, layout: Layout, services: Iterable[str]) -> str | None:
    """The example service the URL names that `feedline dev` was told not to run (--service)."""
    running = set(services)
    others = [name for name in DEFAULT_PORTS if name not in running]
    return serving_service(feed_url, layout, others)


async def answers(feed_url: str) -> bool:
    """Whether anything accepts a TCP connection at the URL's host and port."""
    parts = urlsplit(feed_url)
    port = feed_port(feed_url)
    if not parts.hostname or port is None:
        return False
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, port), CONNECT_TIMEOUT_SECONDS
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def unserved_feed_line(
    name: str, source: str, feed_url: str, layout: Layout, services: Iterable[str]
) -> str:
    """The one line saying a subscription's feed has no service here."""
    running = list(services)
    left_out = left_out_service(feed_url, layout, running)
    if left_out is not None:
        advice = f"{left_out} is left out by --service: add --service {left_out}"
    else:
        advice = f"start what serves it, or fix spec.feed.url in {source}"
    served = ", ".join(running) or "no service"
    return (
        f"subscription {name}: feed {feed_url}: no service feedline dev runs serves it "
        f"(it runs {served}) and nothing answers there; its runs will fail until "
        f"something does: {advice}"
    )


async def unserved_feeds(
    subscriptions: Iterable[tuple[str, str, str]], layout: Layout, services: Iterable[str]
) -> list[str]:
    """A line for each (name, source, local feed URL) no running service serves and nothing
    answers."""
    running = list(services)
    lines = []
    for name, source, url in subscriptions:
        if serving_service(url, layout, running) is None and not await answers(url):
            lines.append(unserved_feed_line(name, source, url, layout, running))
    return lines
