"""The HTTP event feed, protocol v1 (docs/feed-protocol.md).

``GET /events?start=&end=&limit=&types=&wait=`` returns a JSON array of events,
oldest first, with ``Link: rel="next"``, ``Feed-Head`` and an ``ETag``. A full
page wholly below the head never changes and is cacheable forever; a page that
touches the head is ``no-cache`` and revalidates with ``If-None-Match``.
"""

from __future__ import annotations

import hashlib
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.security import HTTPBearer
from starlette.responses import Response

from feedline.chassis.auth import AllowAnyone, FeedAuthorizer
from feedline.chassis.eventstore import EventStore, FeedPage
from feedline.chassis.metrics import ServiceMetrics
from feedline.chassis.problems import PROBLEM_SCHEMA, problem
from feedline_contracts.feed import (
    DEFAULT_LIMIT,
    EVENT_NAME_CHARACTERS,
    HEAD_HEADER,
    MAX_LIMIT,
    MAX_SEQUENCE,
    MAX_WAIT_SECONDS,
)

IMMUTABLE = "public, max-age=31536000, immutable"
EVENT_NAME_LIST = rf"^{EVENT_NAME_CHARACTERS}+(,{EVENT_NAME_CHARACTERS}+)*$"

FEED_EXAMPLE = [
    {
        "sequenceNumber": 1,
        "occurredAt": "2026-11-29T10:00:00.000000Z",
        "name": "SpecialOfferCreated",
        "content": {"offerId": 1, "description": "10% off"},
    }
]


def _etag(start: int, end: int | None, limit: int, types: str | None, page: FeedPage) -> str:
    # A page's content is fixed by its request and by how far the read scanned
    # (events are immutable and gap-free), so that is what the tag hashes.
    key = f"{start}|{end}|{limit}|{types}|{page.scanned_to}|{page.count}"
    return '"' + hashlib.sha256(key.encode()).hexdigest()[:20] + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in candidates or etag in candidates


def feed_router(
    store: EventStore,
    authorize: FeedAuthorizer,
    metrics: ServiceMetrics,
    *,
    recheck_seconds: float,
) -> APIRouter:
    """The feed's routes. While long-polling, the database is re-checked every
    ``recheck_seconds`` even without a commit notification (a lost NOTIFY only
    delays an answer); ServiceSettings.long_poll_recheck_seconds sets it."""
    dependencies = [Depends(authorize)]
    if not isinstance(authorize, AllowAnyone):
        # Declares the bearer scheme in the OpenAPI document (clients and fuzzers send
        # it); `authorize` does the checking, so this one never answers by itself.
        dependencies.append(Security(HTTPBearer(scheme_name="feedToken", auto_error=False)))
    router = APIRouter(tags=["feed"], dependencies=dependencies)
    errors: dict[int | str, dict[str, Any]] = {
        400: PROBLEM_SCHEMA,
        401: {**PROBLEM_SCHEMA, "description": "No valid bearer token (WWW-Authenticate)"},
    }
    if not isinstance(authorize, AllowAnyone):
        errors |= {
            403: {**PROBLEM_SCHEMA, "description": "The reader is not among the feed's readers"},
            503: {**PROBLEM_SCHEMA, "description": "The token could not be checked (TokenReview)"},
        }

    @router.get(
        "/events",
        summary="Read the event feed",
        responses={
            200: {
                "description": "Events, oldest first",
                "content": {"application/json": {"example": FEED_EXAMPLE}},
                "headers": {
                    "Link": {"description": 'Where the next read starts: <...>; rel="next"'},
                    HEAD_HEADER: {"description": "The highest committed sequence number"},
                    "ETag": {"description": "Identifies this page's content"},
                },
            },
            304: {"description": "Not modified since the ETag in If-None-Match"},
            **errors,
        },
    )
    async def read_events(
        request: Request,
        start: Annotated[
            int, Query(ge=1, le=MAX_SEQUENCE, description="first sequence number (inclusive)")
        ] = 1,
        end: Annotated[
            int | None,
            Query(
                ge=2,
                le=MAX_SEQUENCE,
                description="upper bound (exclusive); must be greater than start, else 400",
            ),
        ] = None,
        limit: Annotated[
            int, Query(ge=1, le=MAX_LIMIT, description="most events returned")
        ] = DEFAULT_LIMIT,
        types: Annotated[
            str | None,
            Query(pattern=EVENT_NAME_LIST, description="comma-separated event names to keep"),
        ] = None,
        wait: Annotated[
            float,
            Query(
                ge=0,
                le=MAX_WAIT_SECONDS,
                description=(
                    "long-poll seconds when nothing is new: the answer may be delayed by up "
                    "to this long (an empty page or a 304 when nothing came)"
                ),
            ),
        ] = 0,
    ) -> Response:
        if end is not None and end <= start:
            return problem(
                400,
                "Invalid request",
                f"query parameter 'end': must be greater than start ({start}), got {end}",
                errors=[{"in": "query", "name": "end", "message": "must be greater than start"}],
            )
        type_list = types.split(",") if types else None
        if_none_match = request.headers.get("if-none-match")
        deadline = time.monotonic() + wait
        while True:
            # Take hold of the commit signal before reading, so that a commit after the
            # head this read is bounded by wakes the wait below, not the re-check.
            commits = store.commits.watch()
            page = await store.reads.read(commits, start, end, limit, type_list)
            etag = _etag(start, end, limit, types, page)
            # Long poll: hold while there is nothing new for this reader.
            if page.count and not _matches(if_none_match, etag):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # Re-check on a beat shared by every poll (multiples of recheck_seconds on
            # the monotonic clock), so that those reads are shared too.
            beat = recheck_seconds - time.monotonic() % recheck_seconds
            await commits.wait(min(remaining, beat))

        full = page.count == limit or (end is not None and page.scanned_to >= end)
        next_url = request.url.remove_query_params(["start", "wait"]).include_query_params(
            start=page.scanned_to
        )
        headers = {
            "Link": f'<{next_url}>; rel="next"',
            HEAD_HEADER: str(page.head),
            "ETag": etag,
            "Cache-Control": IMMUTABLE if full else "no-cache",
        }
        if _matches(if_none_match, etag):
            return Response(status_code=304, headers=headers)
        metrics.events_served.inc(page.count)
        # The body comes from the event store already encoded.
        return Response(page.body, media_type="application/json", headers=headers)

    @router.get(
        "/events/head",
        summary="The highest committed sequence number",
        responses={200: {"content": {"application/json": {"example": {"head": 42}}}}, **errors},
    )
    async def read_head() -> Response:
        head = await store.head()
        return Response(
            b'{"head":%d}' % head,
            media_type="application/json",
            headers={"Cache-Control": "no-cache", HEAD_HEADER: str(head)},
        )

    return router
