"""Before the first run: is each subscription's feed served by a service `feedline dev` runs?

A feed URL (after the local mapping of ``plan.local_feed_url``) that points at
none of the services `feedline dev` started, where nothing accepts a
connection either, would make every run retry for a long while and then fail
as "unreachable". `feedline dev` says so at once instead: one line naming
the subscription, the URL, and what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from urllib.parse import urlsplit

from feedline.dev.plan import LOOPBACK_HOSTS, Layout
from feedline.services.registry import DEFAULT_PORTS

CONNECT_TIMEOUT_SECONDS = 1.0
ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names, not a bind


def _same_host(feed_host: str, service_host: str) -> bool:
    if feed_host == service_host:
        return True
    # A service listening on loopback, or on every address, answers loopback URLs.
    return feed_host in LOOPBACK_HOSTS and (
        service_host in LOOPBACK_HOSTS or service_host in ANY_ADDRESS
    )


def serving_service(feed_url: str, layout: Layout, services: Iterable[str]) -> str | None:
    """The service (among ``services``, the ones running) whose address the URL names."""
    parts = urlsplit(feed_url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for name in services:
        if port == layout.service_port(name) and _same_host(host, layout.host.lower()):
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
    if not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
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
