"""Two `feedline serve` processes of one service on one PostgreSQL: a commit on either
replica wakes a gRPC follower and an HTTP long poll on the other at once.

Each replica is its own process with its own commit listener (LISTEN feedline_events),
as two pods are; nothing is shared but the database. Both re-check the database only
every 60 s (RECHECK_SECONDS), so an answer within WOKEN_WITHIN (2 s) of the commit can
only come from the commit's NOTIFY reaching the other process (tests/integration/
test_feed.py and test_grpc_feed.py run two replicas as apps inside the test's process).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import pytest

from feedline_contracts.feed_v1 import feed_pb2, feed_pb2_grpc
from tests.integration.test_feed import RECHECK_SECONDS, WOKEN_WITHIN, create_offers
from tests.support.services import ServiceProcess, restartable_service

pytestmark = pytest.mark.integration

# Every call has a deadline, so a broken server fails a test instead of hanging it.
DEADLINE = 30.0


@contextlib.contextmanager
def two_replicas(postgres_url: str) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """special-offers twice on one database, each with HTTP and gRPC, re-checking every 60 s."""
    recheck = str(int(RECHECK_SECONDS))
    with (
        restartable_service(
            "special-offers", postgres_url, FEEDLINE_LONG_POLL_RECHECK_SECONDS=recheck
        ) as replica_a,
        restartable_service(
            "special-offers", postgres_url, FEEDLINE_LONG_POLL_RECHECK_SECONDS=recheck
        ) as replica_b,
    ):
        assert replica_a.proc is not None
        assert replica_b.proc is not None
        assert replica_a.proc.pid != replica_b.proc.pid
        yield replica_a, replica_b


@contextlib.asynccontextmanager
async def follower(
    replica: ServiceProcess, start: int
) -> AsyncIterator[grpc.aio.UnaryStreamCall[feed_pb2.SubscribeRequest, feed_pb2.EventBatch]]:
    """A follow stream on ``replica`` from ``start``, its catch-up batch already read."""
    async with grpc.aio.insecure_channel(replica.grpc_target) as channel:
        stub = feed_pb2_grpc.EventFeedStub(channel)
        call = stub.Subscribe(feed_pb2.SubscribeRequest(start=start, follow=True), timeout=DEADLINE)
        caught_up = await call.read()
        assert isinstance(caught_up, feed_pb2.EventBatch)
        assert list(caught_up.events) == []
        assert caught_up.next_start == start
        try:
            yield call
        finally:
            call.cancel()


async def next_numbers(
    call: grpc.aio.UnaryStreamCall[feed_pb2.SubscribeRequest, feed_pb2.EventBatch],
) -> list[int]:
    batch = await call.read()
    assert isinstance(batch, feed_pb2.EventBatch), batch
    return [event.sequence_number for event in batch.events]


async def test_a_commit_on_one_replica_wakes_grpc_followers_of_both(
    postgres_url: str, client: httpx.AsyncClient
) -> None:
    """Followers on A and on B; a command on B, then one on A: each follower gets each
    event within 2 s, the other replica's through LISTEN/NOTIFY, its own in-process."""
    with two_replicas(postgres_url) as (replica_a, replica_b):
        async with follower(replica_a, 1) as on_a, follower(replica_b, 1) as on_b:
            for number, writer in ((1, replica_b), (2, replica_a), (3, replica_b)):
                reads = [asyncio.create_task(next_numbers(call)) for call in (on_a, on_b)]
                await asyncio.sleep(0.5)
                assert not any(read.done() for read in reads), "a batch before any commit"
                committing = time.monotonic()
                await create_offers(client, writer.base_url, 1)
                for read in asyncio.as_completed(reads):
                    assert await read == [number]
                    woken_after = time.monotonic() - committing
                    # The re-check (60 s) is far off: only the commit signal is this quick.
                    assert woken_after < WOKEN_WITHIN, f"sent {woken_after:.1f}s after the commit"


async def test_a_commit_on_one_replica_answers_an_http_long_poll_on_the_other(
    postgres_url: str, client: httpx.AsyncClient
) -> None:
    with two_replicas(postgres_url) as (replica_a, replica_b):
        for number, (reader, writer) in enumerate(
            ((replica_a, replica_b), (replica_b, replica_a)), start=1
        ):
            poll = asyncio.create_task(
                client.get(f"{reader.base_url}/events", params={"start": number, "wait": 20})
            )
            await asyncio.sleep(0.5)
            assert not poll.done(), "the long poll answered before anything was committed"
            committing = time.monotonic()
            await create_offers(client, writer.base_url, 1)
            response = await poll
            woken_after = time.monotonic() - committing
            assert response.status_code == 200
            assert [event["sequenceNumber"] for event in response.json()] == [number]
            # Only the reader's LISTEN can answer this soon: re-check 60 s, wait 20 s.
            assert woken_after < WOKEN_WITHIN, f"answered {woken_after:.1f}s after the commit"
