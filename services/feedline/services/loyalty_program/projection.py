"""The loyalty program's read model of special offers, from the special-offers feed.

Import path: ``feedline.services.loyalty_program.projection:project_special_offers``.
Writes ``loyalty_special_offers`` (offer_id, description, last_sequence_number):
``SpecialOfferCreated`` and ``SpecialOfferUpdated`` upsert the offer,
``SpecialOfferRemoved`` deletes it; other event names are ignored. A batch is
folded in memory first (the last event per offer wins), then written in bulk
(PostgreSQL: COPY into a staging table and one INSERT ... ON CONFLICT).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter, methodcaller
from typing import Any

from sqlalchemy import text

from feedline.services.loyalty_program.read_model import special_offers
from feedline_subscriber.projection import Event, ProjectionContext, bulk_upsert, projection

CREATED, UPDATED, REMOVED = "SpecialOfferCreated", "SpecialOfferUpdated", "SpecialOfferRemoved"
MAX_BIGINT = 2**63 - 1

# offer id -> (description, sequence number), or None when the batch ends with the offer removed.
OfferChanges = dict[int, tuple[str, int] | None]


class InvalidSpecialOfferEventError(ValueError):
    """An event this projection cannot apply (a poison event)."""


def _offer_id(event: Event) -> int:
    value: Any = event.content.get("offerId")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_BIGINT:
        raise InvalidSpecialOfferEventError(
            f"{event.name} {event.sequence_number}: offerId must be an integer in 0..2^63-1, "
            f"got {value!r:.50}"
        )
    return value


UPSERTING = frozenset((CREATED, UPDATED))
_NUMBER, _NAME, _CONTENT = (
    attrgetter("sequence_number"),
    attrgetter("name"),
    attrgetter("content"),
)
_OFFER_ID, _DESCRIPTION = methodcaller("get", "offerId"), methodcaller("get", "description")


def _upsert_columns(
    events: Sequence[Event],
) -> tuple[list[int], list[str], list[int]] | None:
    """Offer ids, descriptions and sequence numbers of a batch of valid upserts, else None.

    The fast path: a batch of only valid Created/Updated events (a catch-up is
    mostly those) is checked column by column in C instead of with a few
    Python calls per event. It accepts only batches the loop in
    :func:`fold_special_offer_events` accepts; on anything else the caller
    runs that loop, which says what is wrong.
    """
    if not UPSERTING.issuperset(map(_NAME, events)):
        return None
    contents = list(map(_CONTENT, events))
    offer_ids = list(map(_OFFER_ID, contents))
    descriptions = list(map(_DESCRIPTION, contents))
    if offer_ids and (
        set(map(type, offer_ids)) != {int}  # exactly int: a bool is not an offer id
        or min(offer_ids) < 0
        or max(offer_ids) > MAX_BIGINT
        or set(map(type, descriptions)) != {str}
    ):
        return None
    return offer_ids, descriptions, list(map(_NUMBER, events))


def fold_special_offer_events(events: Sequence[Event]) -> OfferChanges:
    """The net change a batch makes, per offer (pure; raises on an invalid event)."""
    columns = _upsert_columns(events)
    if columns is not None:
        # A dict keeps each offer's first position and its last value, as the loop does.
        offer_ids, descriptions, numbers = columns
        return dict(zip(offer_ids, zip(descriptions, numbers, strict=True), strict=True))
    changes: OfferChanges = {}
    for event in events:
        if event.name in (CREATED, UPDATED):
            offer_id = _offer_id(event)
            description = event.content.get("description")
            if not isinstance(description, str):
                raise InvalidSpecialOfferEventError(
                    f"{event.name} {event.sequence_number}: description must be a string, "
                    f"got {description!r:.50}"
                )
            changes[offer_id] = (description, event.sequence_number)
        elif event.name == REMOVED:
            changes[_offer_id(event)] = None
    return changes


DELETE_POSTGRESQL = "DELETE FROM loyalty_special_offers WHERE offer_id = ANY($1::bigint[])"
DELETE_SQLITE = text("DELETE FROM loyalty_special_offers WHERE offer_id = :offer_id")
COLUMNS = ("offer_id", "description", "last_sequence_number")


@projection(tables=[special_offers])
async def project_special_offers(events: Sequence[Event], context: ProjectionContext) -> None:
    columns = _upsert_columns(events)
    if columns is not None:
        # The fold's rows straight away: the last event per offer wins.
        offer_ids, descriptions, numbers = columns
        rows = zip(offer_ids, descriptions, numbers, strict=True)
        upserts = list(dict(zip(offer_ids, rows, strict=True)).values())
        removed: list[int] = []
    else:
        changes = fold_special_offer_events(events)
        upserts = [(offer, *change) for offer, change in changes.items() if change is not None]
        removed = [offer for offer, change in changes.items() if change is None]
    if removed:
        if context.dialect == "postgresql":
            await (await context.asyncpg_connection()).execute(DELETE_POSTGRESQL, removed)
        else:
            await context.connection.execute(
                DELETE_SQLITE, [{"offer_id": offer} for offer in removed]
            )
    await bulk_upsert(
        context, "loyalty_special_offers", COLUMNS, ("offer_id",), upserts, key_type="bigint"
    )
