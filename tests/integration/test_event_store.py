"""The event store: appends commit with the caller's data, or not at all, in order."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select

from feedline.chassis.app import create_tables
from feedline.chassis.eventstore import EventStore, NewEvent, render_event
from feedline.services.special_offers import metadata as offers_metadata
from feedline.services.special_offers import offers
from feedline_contracts.database import connect_database
from tests.integration.conftest import StartService

pytestmark = pytest.mark.integration


class CommandFailedError(Exception):
    pass


async def test_a_failed_command_leaves_neither_data_nor_events(database_url: str) -> None:
    database = connect_database(database_url)
    await create_tables(database, [offers_metadata])
    store = EventStore(database)
    try:

        async def failing_command() -> None:
            async with store.transaction() as connection:
                await connection.execute(offers.insert().values(description="half-done"))
                await store.append(connection, [NewEvent("SpecialOfferCreated", {"offerId": 1})])
                raise CommandFailedError

        with pytest.raises(CommandFailedError):
            await failing_command()
        async with store.transaction() as connection:
            await connection.execute(offers.insert().values(description="done"))
            numbers = await store.append(
                connection,
                [NewEvent("A"), NewEvent("Offer.Made:v2", {"text": 'ü \\ "x"', "n": [1]})],
            )
        assert numbers == [1, 2]
        async with database.engine.connect() as connection:
            count = (await connection.execute(select(func.count()).select_from(offers))).scalar()
        assert count == 1
        page = await store.read_page(1, None, 100, None)
        assert [(event["sequenceNumber"], event["name"]) for event in page.events] == [
            (1, "A"),
            (2, "Offer.Made:v2"),
        ]
        second = page.events[1]
        assert second["name"] == "Offer.Made:v2"
        assert second["content"] == {"text": 'ü \\ "x"', "n": [1]}
        occurred_at = datetime.fromisoformat(second["occurredAt"])
        assert second["occurredAt"].endswith("Z")
        assert abs(occurred_at - datetime.now(UTC)) < timedelta(minutes=1)
    finally:
        await database.dispose()


async def test_appended_events_are_stored_exactly_as_render_event_renders_them(
    database_url: str,
) -> None:
    """PostgreSQL numbers and joins each event's JSON in SQL; SQLite renders it in Python:
    both must store, byte for byte, what render_event makes of the event and its number."""
    database = connect_database(database_url)
    await create_tables(database, [offers_metadata])
    store = EventStore(database)
    content = {"text": 'ü \\ "x" \u2028 \t', "big": 2**63 - 1, "f": 1.5, "none": None}
    batch = [NewEvent(f"Event.{n}:v2", {**content, "n": [n, {"k": "v"}]}) for n in range(25)]
    try:
        async with store.transaction() as connection:
            assert await store.append(connection, [NewEvent("First")]) == [1]
            assert await store.append(connection, batch) == list(range(2, 27))
        async with store.transaction() as connection:
            assert await store.append(connection, [NewEvent("Later", content)]) == [27]
        appended = [NewEvent("First"), *batch, NewEvent("Later", content)]
        page = await store.read_page(1, None, 100, None)
        rendered = [
            render_event(number, served["occurredAt"], event)
            for number, (served, event) in enumerate(zip(page.events, appended, strict=True), 1)
        ]
        assert page.body == ("[" + ",".join(rendered) + "]").encode()
    finally:
        await database.dispose()


WRITERS = 16
TOTAL_EVENTS = 20_000


async def test_concurrent_writers_never_make_a_reader_skip_or_repeat(
    start_service: StartService, postgres_url: str
) -> None:
    """16 writers with random delays inside their transactions; a reader follows the feed.

    The reader must see every sequence number exactly once, in order: no event
    may ever appear below a position the reader has already passed.
    """
    base = start_service("special-offers", postgres_url)
    database = connect_database(postgres_url, pool_size=WRITERS)
    store = EventStore(database)
    rng = random.Random(20_000)
    per_writer = TOTAL_EVENTS // WRITERS

    async def writer(writer_id: int) -> None:
        written = 0
        while written < per_writer:
            batch = min(rng.randint(1, 8), per_writer - written)
            async with store.transaction() as connection:
                await asyncio.sleep(rng.random() * 0.002)
                await store.append(
                    connection,
                    [
                        NewEvent("Written", {"writer": writer_id, "n": written + i})
                        for i in range(batch)
                    ],
                )
                await asyncio.sleep(rng.random() * 0.002)
            written += batch

    seen: list[int] = []
    writers_done = asyncio.Event()

    async def reader() -> None:
        start = 1
        async with httpx.AsyncClient(timeout=30) as client:
            while len(seen) < TOTAL_EVENTS:
                response = await client.get(
                    f"{base}/events", params={"start": start, "limit": 1000, "wait": 1}
                )
                response.raise_for_status()
                page = response.json()
                numbers = [event["sequenceNumber"] for event in page]
                assert numbers == list(range(start, start + len(numbers))), "gap or reorder"
                seen.extend(numbers)
                start = int(httpx.URL(response.links["next"]["url"]).params["start"])
                assert start == (numbers[-1] + 1 if numbers else start)
                if writers_done.is_set() and not numbers and len(seen) < TOTAL_EVENTS:
                    head = int(response.headers["Feed-Head"])
                    assert head >= start, "writers finished but the reader cannot reach the head"

    async def all_writers() -> None:
        await asyncio.gather(*(writer(i) for i in range(WRITERS)))
        writers_done.set()

    try:
        await asyncio.wait_for(asyncio.gather(all_writers(), reader()), timeout=240)
    finally:
        await database.dispose()
    assert seen == list(range(1, TOTAL_EVENTS + 1))
