"""Feed protocol v1 against a real special-offers service, on PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import pytest

from feedline.chassis.eventstore import EventStore, NewEvent
from feedline_contracts.database import connect_database
from tests.integration.conftest import StartService

pytestmark = pytest.mark.integration

# Long polls: the services re-check the database only every RECHECK_SECONDS, far
# beyond WOKEN_WITHIN (and beyond the polls' own wait), so a poll answered in
# time was woken by the commit's notification, not by the safety-net re-check.
RECHECK_SECONDS = 60.0
WOKEN_WITHIN = 2.0


async def create_offers(client: httpx.AsyncClient, base: str, count: int) -> list[int]:
    ids = []
    for number in range(count):
        response = await client.post(f"{base}/offers", json={"description": f"offer {number}"})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def next_start(response: httpx.Response) -> int:
    link = response.links["next"]["url"]
    return int(httpx.URL(link).params["start"])


async def test_commands_publish_events_that_page_with_links_and_head(
    start_service: StartService, database_url: str, client: httpx.AsyncClient
) -> None:
    base = start_service("special-offers", database_url)
    ids = await create_offers(client, base, 25)
    await client.put(f"{base}/offers/{ids[0]}", json={"description": "changed"})
    await client.delete(f"{base}/offers/{ids[1]}")

    pages: list[list[dict[str, Any]]] = []
    url = f"{base}/events?limit=10"
    while True:
        response = await client.get(url)
        assert response.status_code == 200
        assert response.headers["Feed-Head"] == "27"
        page = response.json()
        pages.append(page)
        if len(page) < 10:
            assert response.headers["Cache-Control"] == "no-cache"
            assert next_start(response) == 28
            break
        # Full pages below the head never change.
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        url = response.links["next"]["url"]
    assert [len(page) for page in pages] == [10, 10, 7]
    events = [event for page in pages for event in page]
    assert [event["sequenceNumber"] for event in events] == list(range(1, 28))
    assert events[0]["name"] == "SpecialOfferCreated"
    assert events[0]["content"] == {"offerId": ids[0], "description": "offer 0"}
    assert events[25] | {"occurredAt": None, "sequenceNumber": None, "traceparent": None} == {
        "sequenceNumber": None,
        "occurredAt": None,
        "name": "SpecialOfferUpdated",
        "content": {"offerId": ids[0], "description": "changed"},
        "traceparent": None,
    }
    # Each command's event carries the W3C trace context of its request (feed-protocol.md):
    # a trace of its own per request, since these requests sent none.
    traceparents = [event["traceparent"] for event in events]
    assert all(re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]", t) for t in traceparents)
    assert len({t.split("-")[1] for t in traceparents}) == len(events)
    assert events[26]["name"] == "SpecialOfferRemoved"
    assert events[26]["content"] == {"offerId": ids[1]}
    assert all(event["occurredAt"].endswith("Z") for event in events)


async def test_end_is_exclusive_and_a_settled_range_is_immutable(
    start_service: StartService, database_url: str, client: httpx.AsyncClient
) -> None:
    base = start_service("special-offers", database_url)
    await create_offers(client, base, 8)
    response = await client.get(f"{base}/events", params={"start": 3, "end": 6})
    assert [event["sequenceNumber"] for event in response.json()] == [3, 4, 5]
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert next_start(response) == 6
    # A range reaching past the head is not settled yet.
    response = await client.get(f"{base}/events", params={"start": 7, "end": 20})
    assert [event["sequenceNumber"] for event in response.json()] == [7, 8]
    assert response.headers["Cache-Control"] == "no-cache"
    # Past the head: empty, and next stays where the reader asked.
    response = await client.get(f"{base}/events", params={"start": 50})
    assert response.json() == []
    assert next_start(response) == 50


async def test_etag_answers_304_until_something_new_is_committed(
    start_service: StartService, database_url: str, client: httpx.AsyncClient
) -> None:
    base = start_service("special-offers", database_url)
    await create_offers(client, base, 3)
    first = await client.get(f"{base}/events")
    etag = first.headers["ETag"]
    again = await client.get(f"{base}/events", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["Feed-Head"] == "3"
    await create_offers(client, base, 1)
    changed = await client.get(f"{base}/events", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag
    assert len(changed.json()) == 4
    # An immutable page revalidates too.
    full = await client.get(f"{base}/events", params={"limit": 2})
    revalidated = await client.get(
        f"{base}/events", params={"limit": 2}, headers={"If-None-Match": full.headers["ETag"]}
    )
    assert revalidated.status_code == 304


async def test_type_filter_skips_events_but_next_moves_past_them(
    start_service: StartService, database_url: str, client: httpx.AsyncClient
) -> None:
    base = start_service("special-offers", database_url)
    ids = await create_offers(client, base, 6)  # 1..6 created
    await client.delete(f"{base}/offers/{ids[2]}")  # 7 removed
    await create_offers(client, base, 3)  # 8..10 created
    await client.delete(f"{base}/offers/{ids[4]}")  # 11 removed
    await create_offers(client, base, 2)  # 12..13 created

    response = await client.get(f"{base}/events", params={"types": "SpecialOfferRemoved"})
    assert [event["sequenceNumber"] for event in response.json()] == [7, 11]
    assert next_start(response) == 14  # scanned to the head, past the filtered-out tail
    assert response.links["next"]["url"].count("types=SpecialOfferRemoved") == 1

    response = await client.get(
        f"{base}/events", params={"types": "SpecialOfferRemoved", "limit": 1}
    )
    assert [event["sequenceNumber"] for event in response.json()] == [7]
    assert next_start(response) == 8
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"

    response = await client.get(f"{base}/events", params={"types": "NoSuchEvent"})
    assert response.json() == []
    assert next_start(response) == 14
    both = await client.get(
        f"{base}/events", params={"types": "SpecialOfferRemoved,SpecialOfferCreated", "start": 6}
    )
    assert [event["sequenceNumber"] for event in both.json()] == list(range(6, 14))


async def test_long_poll_answers_as_soon_as_an_event_is_committed(
    start_service: StartService, database_url: str, client: httpx.AsyncClient
) -> None:
    base = start_service("special-offers", database_url, long_poll_recheck_seconds=RECHECK_SECONDS)
    await create_offers(client, base, 2)
    poll = asyncio.create_task(client.get(f"{base}/events", params={"start": 3, "wait": 10}))
    await asyncio.sleep(0.5)
    assert not poll.done(), "the long poll answered before anything was committed"
    committing = time.monotonic()
    await create_offers(client, base, 1)
    response = await poll
    woken_after = time.monotonic() - committing
    assert [event["sequenceNumber"] for event in response.json()] == [3]
    # Woken by the commit: the re-check (60 s) and the wait (10 s) are far off.
    assert woken_after < WOKEN_WITHIN, f"answered {woken_after:.1f}s after the commit"


async def test_long_poll_without_events_returns_empty_when_the_wait_is_up(
    start_service: StartService, database_url: str, client: httpx.AsyncClient
) -> None:
    base = start_service("special-offers", database_url)
    started = time.monotonic()
    response = await client.get(f"{base}/events", params={"wait": 1})
    assert response.status_code == 200
    assert response.json() == []
    assert time.monotonic() - started >= 0.9
    assert next_start(response) == 1


async def test_long_poll_is_woken_by_another_replica(
    start_service: StartService, postgres_url: str, client: httpx.AsyncClient
) -> None:
    """Two replicas on one PostgreSQL: a write on B wakes a long poll on A (LISTEN/NOTIFY)."""
    replica_a = start_service(
        "special-offers", postgres_url, long_poll_recheck_seconds=RECHECK_SECONDS
    )
    replica_b = start_service(
        "special-offers", postgres_url, long_poll_recheck_seconds=RECHECK_SECONDS
    )
    poll = asyncio.create_task(client.get(f"{replica_a}/events", params={"wait": 10}))
    await asyncio.sleep(0.5)
    assert not poll.done(), "the long poll answered before anything was committed"
    committing = time.monotonic()
    await create_offers(client, replica_b, 1)
    response = await poll
    woken_after = time.monotonic() - committing
    assert [event["sequenceNumber"] for event in response.json()] == [1]
    # Only A's LISTEN can wake it this soon: A re-checks every 60 s, its wait is 10 s.
    assert woken_after < WOKEN_WITHIN, f"answered {woken_after:.1f}s after the commit"


# A long poll racing a commit. A poll with If-None-Match holds while its page is
# unchanged; over a big page (BIG_EVENTS of BIG_CONTENT bytes), its read takes long
# enough that a command sent just after the poll commits while the poll reads: after
# the head that bounds the page, before the poll starts to wait. A poll that takes
# hold of the commit signal only after its read misses that commit's signal and
# answers when its wait (RACE_WAIT) is up; one that takes hold before it reads is
# woken at once. Each round commits at a different point of the read.
BIG_EVENTS = 2_000
BIG_CONTENT = 5_000
RACE_ROUNDS = 8
RACE_WAIT = 8.0


async def append_big_events(database_url: str, count: int) -> None:
    database = connect_database(database_url)
    store = EventStore(database)
    try:
        events = [
            NewEvent("SpecialOfferCreated", {"offerId": n, "description": "x" * BIG_CONTENT})
            for n in range(1_000_000, 1_000_000 + count)
        ]
        async with store.transaction() as connection:
            await store.append(connection, events)
    finally:
        await database.dispose()


async def test_a_long_poll_is_woken_by_a_commit_made_while_it_reads(
    start_service: StartService, database_url: str, client: httpx.AsyncClient
) -> None:
    base = start_service("special-offers", database_url, long_poll_recheck_seconds=RECHECK_SECONDS)
    await create_offers(client, base, 1)  # the tables exist now
    await append_big_events(database_url, BIG_EVENTS)
    url = f"{base}/events"
    params: dict[str, Any] = {"limit": 10000}
    page = await client.get(url, params=params)
    etag = page.headers["ETag"]
    # How long the unchanged page takes to read (answered 304, without a body).
    reads = []
    for _ in range(3):
        reading = time.monotonic()
        unchanged = await client.get(url, params=params, headers={"If-None-Match": etag})
        assert unchanged.status_code == 304
        reads.append(time.monotonic() - reading)
    read_seconds = sorted(reads)[1]
    late = []
    for round_number in range(RACE_ROUNDS):
        poll = asyncio.create_task(
            client.get(url, params={**params, "wait": RACE_WAIT}, headers={"If-None-Match": etag})
        )
        # From early in the read to its end, round by round.
        await asyncio.sleep(read_seconds * (0.1 + 0.8 * round_number / RACE_ROUNDS))
        await create_offers(client, base, 1)
        committed = time.monotonic()
        response = await poll
        woken_after = time.monotonic() - committed
        assert response.status_code == 200
        etag = response.headers["ETag"]
        assert response.headers["Feed-Head"] == str(BIG_EVENTS + 2 + round_number)
        if woken_after >= WOKEN_WITHIN:
            late.append(f"round {round_number}: answered {woken_after:.1f}s after the commit")
    # The re-check (60 s) is far off: only the commit signal answers within 2 s.
    assert not late, f"{late} (the page takes {read_seconds * 1000:.0f} ms to read)"


async def test_head_endpoint(
    start_service: StartService, database_url: str, client: httpx.AsyncClient
) -> None:
    base = start_service("special-offers", database_url)
    assert (await client.get(f"{base}/events/head")).json() == {"head": 0}
    await create_offers(client, base, 4)
    response = await client.get(f"{base}/events/head")
    assert response.json() == {"head": 4}
    assert response.headers["Cache-Control"] == "no-cache"


async def test_token_auth_rejects_readers_without_the_token(
    start_service: StartService, sqlite_url: str, client: httpx.AsyncClient
) -> None:
    base = start_service("special-offers", sqlite_url, feed_auth="token", feed_token="s3cret")
    await create_offers(client, base, 1)
    missing = await client.get(f"{base}/events")
    assert missing.status_code == 401
    assert missing.headers["Content-Type"] == "application/problem+json"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = await client.get(f"{base}/events", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert (await client.get(f"{base}/events/head")).status_code == 401
    right = await client.get(f"{base}/events", headers={"Authorization": "Bearer s3cret"})
    assert right.status_code == 200
    assert len(right.json()) == 1
    # Health stays open for probes.
    assert (await client.get(f"{base}/health/ready")).status_code == 200
