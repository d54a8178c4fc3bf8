"""special-offers (the real service) -> `feedline subscribe` -> the loyalty read model.

10,000 events per database: 1,000 from commands sent to the service over HTTP
(creates, updates, deletes) and 9,000 appended in bulk with the service's own
event store (an HTTP round trip per event would make the test minutes long).
The read model must equal an oracle computed from the feed's events, one at
a time.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.support.services import running_service
from tests.support.subscriber_databases import read_model_database
from tests.support.subscriber_oracle import (
    applied_counts,
    checkpoint_position,
    oracle,
    query,
    read_offers,
)
from tests.support.subscriber_process import AUDITED, LOYALTY, run_subscriber, subscriber_env
from tests.support.subscriber_workload import append_events_directly, publish_commands, read_feed

pytestmark = pytest.mark.integration

BULK_EVENTS = 9_000
COMMANDS = 1_000


async def test_ten_thousand_events_on_postgresql(
    postgres_server_url: str, postgres_url: str, tmp_path: Path
) -> None:
    await ten_thousand_events("postgresql", postgres_server_url, postgres_url, tmp_path)


async def test_ten_thousand_events_on_sqlite(tmp_path: Path) -> None:
    await ten_thousand_events(
        "sqlite", None, f"sqlite:///{tmp_path / 'special-offers.db'}", tmp_path
    )


async def ten_thousand_events(
    dialect: str, server: str | None, service_url: str, tmp_path: Path
) -> None:
    async with read_model_database(dialect, server, tmp_path) as read_model:
        with running_service("special-offers", service_url) as base_url:
            await append_events_directly(service_url, BULK_EVENTS, first_offer=1_000_000)
            await publish_commands(base_url, COMMANDS)
            feed_url = f"{base_url}/events"
            events = await read_feed(feed_url)
            assert len(events) == BULK_EVENTS + COMMANDS

            finished = run_subscriber(
                subscriber_env("loyalty", feed_url, read_model, LOYALTY, FEEDLINE_BATCH_SIZE="1000")
            )
            assert finished.returncode == 0, finished.stderr[-3000:]
            summary = finished.summary
            assert summary["outcome"] == "CaughtUp"
            assert summary["position"] == summary["head"] == len(events)
            assert summary["processed"] == len(events)
            assert summary["lag"] == 0
            assert await read_offers(read_model) == oracle(events)

            # A second run finds nothing to do and changes nothing.
            again = run_subscriber(subscriber_env("loyalty", feed_url, read_model, LOYALTY))
            assert again.returncode == 0
            assert again.summary["processed"] == 0
            assert again.summary["outcome"] == "CaughtUp"
            assert await read_offers(read_model) == oracle(events)

            # More commands later: the next run applies only those.
            before = len(events)
            await publish_commands(base_url, 50, seed=99)
            events = await read_feed(feed_url)
            third = run_subscriber(subscriber_env("loyalty", feed_url, read_model, LOYALTY))
            assert third.summary["processed"] == len(events) - before == 50
            assert await read_offers(read_model) == oracle(events)
            assert await checkpoint_position(read_model, "loyalty") == len(events)


async def test_the_audited_projection_applies_every_event_once(
    postgres_url: str, tmp_path: Path
) -> None:
    """The audit table (no unique key) shows each event applied exactly once across runs."""
    read_model = f"sqlite:///{tmp_path / 'rm.db'}"
    with running_service("special-offers", postgres_url) as base_url:
        await append_events_directly(postgres_url, 3_000, first_offer=1)
        feed_url = f"{base_url}/events"
        for budget in ("700", "1000", "0"):
            finished = run_subscriber(
                subscriber_env(
                    "audited",
                    feed_url,
                    read_model,
                    AUDITED,
                    FEEDLINE_BATCH_SIZE="300",
                    FEEDLINE_MAX_EVENTS_PER_RUN=budget,
                )
            )
            assert finished.returncode == 0, finished.stderr[-3000:]
        events = await read_feed(feed_url)
    assert finished.summary["outcome"] == "CaughtUp"
    counts = await applied_counts(read_model, "audited")
    assert counts == {number: 1 for number in range(1, 3_001)}
    assert await read_offers(read_model) == oracle(events)


JOURNAL = "feedline_subscriber.projections.journal:project_journal"


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
async def test_the_journal_projection_holds_each_event_once(
    dialect: str, postgres_server_url: str, postgres_url: str, tmp_path: Path
) -> None:
    """The shipped journal: rows are exactly the feed's events, each once, across
    runs that stop part-way (maxEventsPerRun); two subscriptions share the table,
    and a replay of one clears only its own rows."""
    async with read_model_database(dialect, postgres_server_url, tmp_path) as read_model:
        with running_service("special-offers", postgres_url) as base_url:
            await append_events_directly(postgres_url, 1_500, first_offer=1)
            feed_url = f"{base_url}/events"
            for budget in ("400", "700", "0"):
                finished = run_subscriber(
                    subscriber_env(
                        "journal",
                        feed_url,
                        read_model,
                        JOURNAL,
                        FEEDLINE_BATCH_SIZE="300",
                        FEEDLINE_MAX_EVENTS_PER_RUN=budget,
                    )
                )
                assert finished.returncode == 0, finished.stderr[-3000:]
            assert finished.summary["outcome"] == "CaughtUp"
            other = run_subscriber(subscriber_env("other", feed_url, read_model, JOURNAL))
            assert other.returncode == 0, other.stderr[-3000:]
            events = await read_feed(feed_url)
            replayed = run_subscriber(
                subscriber_env(
                    "other", feed_url, read_model, JOURNAL, FEEDLINE_REPLAY_TOKEN="again"
                )
            )
            assert replayed.returncode == 0, replayed.stderr[-3000:]
            assert replayed.summary["processed"] == len(events)
        expected = [(e["sequenceNumber"], e["name"], e["content"]) for e in events]
        for subscription in ("journal", "other"):
            rows = await query(
                read_model,
                "SELECT sequence_number, event_name, content FROM feedline_journal "
                "WHERE subscription = :s ORDER BY sequence_number",
                s=subscription,
            )
            journal = [(int(n), str(name), orjson.loads(c)) for n, name, c in rows]
            assert journal == expected, subscription
