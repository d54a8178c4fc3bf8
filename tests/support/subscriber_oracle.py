"""What the read model must hold, computed independently of the projection, and reading it back."""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from feedline_contracts.database import connect_database, parse_database_url

Offers = dict[int, tuple[str, int]]


def oracle(events: list[dict[str, Any]]) -> Offers:
    """Apply the events one at a time, the obvious way."""
    offers: Offers = {}
    for event in events:
        content = event["content"]
        if event["name"] in ("SpecialOfferCreated", "SpecialOfferUpdated"):
            offers[content["offerId"]] = (content["description"], event["sequenceNumber"])
        elif event["name"] == "SpecialOfferRemoved":
            offers.pop(content["offerId"], None)
    return offers


async def query(database_url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of a read-only query. SQLite is read with plain sqlite3: the engine's
    BEGIN IMMEDIATE would queue the test behind a subscriber's write transactions."""
    parsed = parse_database_url(database_url)
    if parsed.dialect == "sqlite":
        path = parsed.sqlalchemy_url.database
        assert path is not None
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as connection:
            try:
                return [tuple(row) for row in connection.execute(sql, params)]
            except sqlite3.OperationalError as exc:
                raise DBAPIError(sql, params, exc) from exc
    database = connect_database(database_url)
    try:
        async with database.engine.connect() as connection:
            return [tuple(row) for row in (await connection.execute(text(sql), params)).all()]
    finally:
        await database.dispose()


async def read_offers(database_url: str) -> Offers:
    rows = await query(
        database_url,
        "SELECT offer_id, description, last_sequence_number FROM loyalty_special_offers",
    )
    return {int(row[0]): (str(row[1]), int(row[2])) for row in rows}


async def applied_counts(database_url: str, subscription: str) -> Counter[int]:
    rows = await query(
        database_url,
        "SELECT sequence_number FROM subscriber_test_applied WHERE subscription = :s",
        s=subscription,
    )
    return Counter(int(row[0]) for row in rows)


async def checkpoint_position(database_url: str, subscription: str) -> int | None:
    """The stored position; None before the subscriber made its tables or its row."""
    try:
        rows = await query(
            database_url,
            "SELECT position FROM feedline_subscriber_checkpoints WHERE subscription = :s",
            s=subscription,
        )
    except DBAPIError:
        return None
    return int(rows[0][0]) if rows else None
