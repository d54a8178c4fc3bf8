"""Drive the real special-offers service with a random mix of commands, and read its feed."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import orjson

from feedline.chassis.eventstore import EventStore, NewEvent
from feedline_contracts.database import connect_database


async def publish_commands(
    base_url: str, count: int, *, seed: int = 7, concurrency: int = 8
) -> None:
    """``count`` commands: creates, updates and deletes of offers, as a client would send them."""
    rng = random.Random(seed)
    live: list[int] = []  # offers that exist and no command is working on
    lock = asyncio.Lock()
    remaining = count

    async def worker(client: httpx.AsyncClient) -> None:
        # Each command targets an offer no other command is touching, so every
        # command succeeds and publishes exactly one event.
        nonlocal remaining
        while True:
            async with lock:
                if remaining == 0:
                    return
                remaining -= 1
                roll = rng.random()
                target = live.pop(rng.randrange(len(live))) if live and roll < 0.4 else None
            if target is None:
                answer = await client.post("/offers", json={"description": f"offer {rng.random()}"})
                assert answer.status_code == 201, answer.text
                async with lock:
                    live.append(int(answer.json()["id"]))
            elif roll < 0.1:
                answer = await client.delete(f"/offers/{target}")
                assert answer.status_code == 204, answer.text
            else:
                answer = await client.put(f"/offers/{target}", json={"description": f"new {roll}"})
                assert answer.status_code == 200, answer.text
                async with lock:
                    live.append(target)

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))


async def append_events_directly(
    database_url: str, count: int, *, first_offer: int, seed: int = 11
) -> None:
    """Bulk-append special-offers events to a service's event store (the service's own append).

    For volume: the same EventStore.append the service's commands use, in
    transactions of 1000, without an HTTP round trip per event.
    """
    rng = random.Random(seed)
    database = connect_database(database_url)
    store = EventStore(database)
    live: list[int] = []
    next_offer = first_offer
    try:
        for offset in range(0, count, 1000):
            batch: list[NewEvent] = []
            for _ in range(min(1000, count - offset)):
                roll = rng.random()
                if live and roll < 0.1:
                    offer = live.pop(rng.randrange(len(live)))
                    batch.append(NewEvent("SpecialOfferRemoved", {"offerId": offer}))
                elif live and roll < 0.4:
                    offer = rng.choice(live)
                    batch.append(
                        NewEvent(
                            "SpecialOfferUpdated", {"offerId": offer, "description": f"u{roll}"}
                        )
                    )
                else:
                    live.append(next_offer)
                    batch.append(
                        NewEvent(
                            "SpecialOfferCreated",
                            {"offerId": next_offer, "description": f"c{roll}"},
                        )
                    )
                    next_offer += 1
            async with store.transaction() as connection:
                await store.append(connection, batch)
    finally:
        await database.dispose()


async def append_padded_events(
    database_url: str, count: int, *, first_offer: int = 1, padding: int = 1000
) -> None:
    """Creates, updates and removals of offers whose descriptions carry ``padding``
    characters (so a page is large enough for a fault to land in the middle of
    it), appended as the service appends them (its EventStore), 500 a transaction."""
    rng = random.Random(first_offer)
    database = connect_database(database_url)
    store = EventStore(database)
    live: list[int] = []
    try:
        for offset in range(0, count, 500):
            batch = []
            for number in range(offset, min(offset + 500, count)):
                roll = rng.random()
                description = f"{number} {roll} " + "x" * padding
                if live and roll < 0.1:
                    offer = live.pop(rng.randrange(len(live)))
                    batch.append(NewEvent("SpecialOfferRemoved", {"offerId": offer}))
                elif live and roll < 0.4:
                    offer = rng.choice(live)
                    content = {"offerId": offer, "description": description}
                    batch.append(NewEvent("SpecialOfferUpdated", content))
                else:
                    offer = first_offer + number
                    live.append(offer)
                    content = {"offerId": offer, "description": description}
                    batch.append(NewEvent("SpecialOfferCreated", content))
            async with store.transaction() as connection:
                await store.append(connection, batch)
    finally:
        await database.dispose()


async def read_feed(feed_url: str) -> list[dict[str, Any]]:
    """Every event of a feed, read plainly (the oracle's input)."""
    events: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=30) as client:
        start = 1
        while True:
            answer = await client.get(feed_url, params={"start": start, "limit": 10000})
            answer.raise_for_status()
            page = orjson.loads(answer.content)
            if not page:
                return events
            events.extend(page)
            start = page[-1]["sequenceNumber"] + 1
