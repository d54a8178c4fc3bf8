"""Projections for subscriber tests: the loyalty projection plus an audit of every application.

``audited_special_offers`` writes the loyalty read model AND one row per
applied event into ``subscriber_test_applied`` (no unique key): an event
applied twice shows up twice, which an idempotent upsert alone would hide.
``FEEDLINE_TEST_PROJECTION_DELAY`` (seconds) makes every batch slow, for
SIGTERM and lock tests. ``flaky_special_offers`` fails the first attempts at
chosen sequence numbers (``FLAKY`` below), then succeeds.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from sqlalchemy import BigInteger, Column, MetaData, Table, Text, delete, insert

from feedline.services.loyalty_program.projection import project_special_offers
from feedline.services.loyalty_program.read_model import special_offers
from feedline_subscriber.projection import Event, ProjectionContext, projection

test_metadata = MetaData()
applied = Table(
    "subscriber_test_applied",
    test_metadata,
    Column("subscription", Text, nullable=False),
    Column("sequence_number", BigInteger, nullable=False),
)

DELAY_VARIABLE = "FEEDLINE_TEST_PROJECTION_DELAY"


async def _reset(context: ProjectionContext) -> None:
    await context.connection.execute(delete(special_offers))
    await context.connection.execute(delete(applied))


@projection(tables=[special_offers, applied], reset=_reset)
async def audited_special_offers(events: Sequence[Event], context: ProjectionContext) -> None:
    delay = float(os.environ.get(DELAY_VARIABLE, "0") or 0)
    if delay:
        await asyncio.sleep(delay)
    await project_special_offers(events, context)
    await context.connection.execute(
        insert(applied),
        [
            {"subscription": context.subscription, "sequence_number": e.sequence_number}
            for e in events
        ],
    )


# sequence number -> failures still to come (in-process tests set it).
FLAKY: dict[int, int] = {}


@projection(tables=[special_offers, applied], reset=_reset)
async def flaky_special_offers(events: Sequence[Event], context: ProjectionContext) -> None:
    for event in events:
        if FLAKY.get(event.sequence_number, 0) > 0:
            FLAKY[event.sequence_number] -= 1
            raise RuntimeError(f"flaky failure at {event.sequence_number}")
    await audited_special_offers(events, context)
