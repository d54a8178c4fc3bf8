"""Poison events, replay, the lock, SIGTERM, start positions and budgets.

The feed is a fake one (real HTTP on loopback) so each test can shape its
events, including ones a projection cannot apply. Runs are in-process unless
the behaviour needs a process (signals, two runs at once).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from feedline_subscriber.runner import run_subscription
from feedline_subscriber.settings import load_settings
from feedline_subscriber.summary import Outcome, Summary
from tests.support import subscriber_projections
from tests.support.ports import free_port
from tests.support.subscriber_feed import FakeFeed, fake_feed, special_offer_event
from tests.support.subscriber_oracle import (
    applied_counts,
    checkpoint_position,
    oracle,
    query,
    read_offers,
)
from tests.support.subscriber_process import (
    AUDITED,
    finish,
    run_subscriber,
    start_subscriber,
    subscriber_env,
)

pytestmark = pytest.mark.integration

FLAKY = "tests.support.subscriber_projections:flaky_special_offers"
POISON = 17


def offer_events(count: int, poison: int | None = None) -> list[dict[str, Any]]:
    events = []
    for n in range(1, count + 1):
        if n == poison:
            events.append(special_offer_event(n, "SpecialOfferCreated", {"description": "no id"}))
        elif n % 5 == 0:
            events.append(
                special_offer_event(
                    n, "SpecialOfferUpdated", {"offerId": n - 1, "description": f"u{n}"}
                )
            )
        elif n % 7 == 0:
            events.append(special_offer_event(n, "SpecialOfferRemoved", {"offerId": n - 2}))
        else:
            events.append(
                special_offer_event(
                    n, "SpecialOfferCreated", {"offerId": n, "description": f"c{n}"}
                )
            )
    return events


async def run(feed: FakeFeed, database_url: str, **overrides: Any) -> Summary:
    values: dict[str, Any] = {
        "subscription": "behaviour",
        "feed_url": feed.url,
        "database_url": database_url,
        "projection": AUDITED,
        "batch_size": 10,
        "retry_backoff_seconds": 0.01,
        **overrides,
    }
    return await run_subscription(load_settings(**values))


async def test_a_poison_event_is_dead_lettered_and_the_run_goes_on(database_url: str) -> None:
    events = offer_events(40, poison=POISON)
    with fake_feed(events) as feed:
        summary = await run(feed, database_url, on_poison_event="DeadLetter", retry_max_attempts=3)
    assert summary.outcome is Outcome.CAUGHT_UP, summary.message
    assert summary.exit_code == 0
    assert (summary.position, summary.processed, summary.deadLettered) == (40, 39, 1)
    rows = await query(
        database_url,
        "SELECT subscription, sequence_number, event_name, content, error, attempts "
        "FROM feedline_subscriber_dead_letters",
    )
    assert len(rows) == 1
    subscription, sequence, name, content, error, attempts = rows[0]
    assert (subscription, sequence, name, attempts) == (
        "behaviour",
        POISON,
        "SpecialOfferCreated",
        3,
    )
    assert content == '{"description":"no id"}'
    assert "offerId must be an integer" in error
    good = [event for event in events if event["sequenceNumber"] != POISON]
    assert await read_offers(database_url) == oracle(good)
    assert await applied_counts(database_url, "behaviour") == {
        n: 1 for n in range(1, 41) if n != POISON
    }


async def test_a_poison_event_halts_the_run_before_it(database_url: str) -> None:
    events = offer_events(40, poison=POISON)
    with fake_feed(events) as feed:
        summary = await run(feed, database_url, on_poison_event="Halt", retry_max_attempts=2)
        assert summary.outcome is Outcome.HALTED
        assert summary.exit_code == 3
        assert summary.position == POISON - 1
        assert f"halted at event {POISON} (SpecialOfferCreated) after 2 attempts" in summary.message
        assert "offerId must be an integer" in summary.message
        assert await checkpoint_position(database_url, "behaviour") == POISON - 1
        assert await read_offers(database_url) == oracle(events[: POISON - 1])
        # The next run halts at the same event; nothing moves past it.
        again = await run(feed, database_url, on_poison_event="Halt", retry_max_attempts=1)
    assert again.outcome is Outcome.HALTED
    assert again.processed == 0
    assert await checkpoint_position(database_url, "behaviour") == POISON - 1
    assert await applied_counts(database_url, "behaviour") == {n: 1 for n in range(1, POISON)}


async def test_a_failing_event_is_retried_with_backoff_until_it_succeeds(sqlite_url: str) -> None:
    subscriber_projections.FLAKY.clear()
    # Fails in the batch, three times more while the batch is retried and bisected
    # (1-20, 11-15, 13-15), then twice as the isolated event (attempts 1 and 2);
    # attempt 3 succeeds after 0.2 + 0.4 s of backoff.
    subscriber_projections.FLAKY[13] = 6
    events = offer_events(30)
    with fake_feed(events) as feed:
        started = time.monotonic()
        summary = await run(
            feed, sqlite_url, projection=FLAKY, retry_max_attempts=3, retry_backoff_seconds=0.2
        )
    assert summary.outcome is Outcome.CAUGHT_UP, summary.message
    assert (summary.processed, summary.deadLettered) == (30, 0)
    assert time.monotonic() - started >= 0.6
    assert subscriber_projections.FLAKY[13] == 0
    assert await applied_counts(sqlite_url, "behaviour") == {n: 1 for n in range(1, 31)}
    assert await read_offers(sqlite_url) == oracle(events)


async def test_a_new_replay_token_rebuilds_the_read_model(database_url: str) -> None:
    events = offer_events(50)
    with fake_feed(events) as feed:
        first = await run(feed, database_url, replay_token="one")
        assert first.processed == 50
        same = await run(feed, database_url, replay_token="one")
        assert same.processed == 0  # same token: no replay
        replayed = await run(feed, database_url, replay_token="two")
        assert replayed.outcome is Outcome.CAUGHT_UP
        assert replayed.processed == 50
        # The reset hook emptied the tables in the rewinding transaction: one application each.
        assert await applied_counts(database_url, "behaviour") == {n: 1 for n in range(1, 51)}
        assert await read_offers(database_url) == oracle(events)
        partial = await run(feed, database_url, replay_token="three", replay_from_sequence=31)
    assert partial.processed == 20
    assert await applied_counts(database_url, "behaviour") == {n: 1 for n in range(31, 51)}
    rows = await query(database_url, "SELECT replay_token FROM feedline_subscriber_checkpoints")
    assert rows == [("three",)]


async def test_start_positions_and_the_per_run_budget(sqlite_url: str) -> None:
    events = offer_events(60)
    with fake_feed(events) as feed:
        head = await run(feed, sqlite_url, subscription="from-head", start_position="Head")
        assert (head.position, head.processed) == (60, 0)
        numbered = await run(feed, sqlite_url, subscription="from-41", start_position="41")
        assert (numbered.position, numbered.processed) == (60, 20)
        budget = await run(feed, sqlite_url, subscription="budget", max_events_per_run=25)
        assert budget.outcome is Outcome.PROGRESSED
        assert (budget.position, budget.processed, budget.lag) == (25, 25, 35)
        rest = await run(feed, sqlite_url, subscription="budget", max_events_per_run=100)
        assert (rest.outcome, rest.position, rest.processed) == (Outcome.CAUGHT_UP, 60, 35)
    assert await applied_counts(sqlite_url, "budget") == {n: 1 for n in range(1, 61)}


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_two_runs_at_once_never_both_apply(dialect: str, request: pytest.FixtureRequest) -> None:
    database_url = request.getfixturevalue(
        "postgres_url" if dialect == "postgresql" else "sqlite_url"
    )
    events = offer_events(60)
    with fake_feed(events) as feed:
        environment = subscriber_env(
            "shared",
            feed.url,
            database_url,
            FEEDLINE_BATCH_SIZE="10",
            FEEDLINE_TEST_PROJECTION_DELAY="0.4",
        )
        first = start_subscriber(environment)
        # Start the second once the first holds the lock (it has written its checkpoint row).
        deadline = time.monotonic() + 30
        while asyncio.run(checkpoint_position(database_url, "shared")) is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = run_subscriber(environment)
        first_done = finish(first)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.summary["outcome"] == "Locked"
    assert second.summary["processed"] == 0
    assert "is locked by another run" in second.summary["message"]
    assert first_done.returncode == 0, first_done.stderr[-2000:]
    assert first_done.summary["outcome"] == "CaughtUp"
    assert first_done.summary["processed"] == 60
    assert asyncio.run(applied_counts(database_url, "shared")) == {n: 1 for n in range(1, 61)}


def test_sigterm_finishes_the_batch_commits_and_exits_zero(sqlite_url: str) -> None:
    events = offer_events(200)
    with fake_feed(events) as feed:
        process = start_subscriber(
            subscriber_env(
                "terminated",
                feed.url,
                sqlite_url,
                FEEDLINE_BATCH_SIZE="10",
                FEEDLINE_TEST_PROJECTION_DELAY="0.3",
            )
        )
        deadline = time.monotonic() + 30
        while (asyncio.run(checkpoint_position(sqlite_url, "terminated")) or 0) < 20:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        done = finish(process, timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = done.summary
    assert summary["outcome"] == "Progressed"
    position = summary["position"]
    assert 20 <= position < 200
    assert position % 10 == 0  # whole batches only
    assert summary["lag"] == 200 - position
    assert asyncio.run(checkpoint_position(sqlite_url, "terminated")) == position
    assert asyncio.run(applied_counts(sqlite_url, "terminated")) == {
        n: 1 for n in range(1, position + 1)
    }


def test_a_read_model_database_that_stays_down_is_retried_then_named_in_one_line() -> None:
    port = free_port()  # nothing listens there
    down = f"postgresql://nobody:s3cret@127.0.0.1:{port}/read_models"
    with fake_feed(offer_events(5)) as feed:
        started = time.monotonic()
        done = run_subscriber(
            subscriber_env("down", feed.url, down, FEEDLINE_DATABASE_RETRIES="3"),
            timeout=60,
        )
    assert done.returncode == 1, done.stderr[-2000:]
    summary = done.summary
    assert summary["outcome"] == "Failed"
    assert summary["message"] == (
        f"cannot use the read-model database postgresql://nobody:***@127.0.0.1:{port}/read_models:"
        f" connection refused at 127.0.0.1:{port}; start the database server, or fix "
        "--database-url (FEEDLINE_DATABASE_URL) (gave up after 3 retries; "
        "--database-retries (FEEDLINE_DATABASE_RETRIES))"
    )
    retries = [line for line in done.stderr.splitlines() if "retrying" in line]
    assert len(retries) == 3, done.stderr
    assert time.monotonic() - started < 30  # backoff from 0.5 s, not the feed's 8 tries
    assert "Traceback" not in done.stderr
    assert "s3cret" not in done.stdout + done.stderr


def test_a_read_model_folder_that_does_not_exist_fails_at_once_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    url = f"sqlite:///{missing / 'read-model.db'}"
    with fake_feed(offer_events(5)) as feed:
        done = run_subscriber(subscriber_env("nowhere", feed.url, url), timeout=60)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.summary["message"] == (
        f"cannot use the read-model database {url}: folder {missing} does not exist; "
        "create it, or pass another path in --database-url (FEEDLINE_DATABASE_URL)"
    )
    assert "retrying" not in done.stderr  # waiting cannot create a folder
    assert "Traceback" not in done.stderr


async def test_a_read_model_database_that_comes_up_late_is_reached_by_a_retry(
    postgres_url: str,
) -> None:
    """The read model's server is not listening when the run starts; it is a second later."""
    target = make_url(postgres_url)
    port = free_port()
    late = target.set(port=port).render_as_string(hide_password=False)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(target.host, target.port)
        await asyncio.gather(
            pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True
        )

    async def come_up_late() -> asyncio.Server:
        await asyncio.sleep(1.0)
        return await asyncio.start_server(forward, "127.0.0.1", port)

    with fake_feed(offer_events(5)) as feed:
        settings = load_settings(
            subscription="late",
            feed_url=feed.url,
            database_url=late,
            projection=AUDITED,
            database_retries=8,
        )
        server_task = asyncio.create_task(come_up_late())
        summary = await run_subscription(settings)
        server = await server_task
    server.close()
    assert summary.outcome is Outcome.CAUGHT_UP, summary.message
    assert summary.position == 5
    assert await checkpoint_position(postgres_url, "late") == 5
