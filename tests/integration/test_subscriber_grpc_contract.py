"""One subscriber, two transports: the same scenarios read over HTTP and over gRPC.

Each test runs a real special-offers service (`feedline serve`, its gRPC feed on
FEEDLINE_GRPC_PORT beside HTTP) and real `feedline subscribe` processes, once with
``--feed-url http://HOST:PORT/events`` and once with ``grpc://HOST:GRPC_PORT``; only
the URL differs. Order and batching over 2,500 events (the audited projection: each
event applied once, the read model equal to the oracle), the type filter, Token auth,
a follower woken by each commit, SIGKILLs mid-run then a clean run, and a replay.
"""

from __future__ import annotations

import contextlib
import functools
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.test_feed import RECHECK_SECONDS, WOKEN_WITHIN
from tests.integration.test_subscriber_crash import where_it_landed
from tests.integration.test_subscriber_follow import offer_is_in, wait_for
from tests.support.ports import free_port
from tests.support.services import running_service
from tests.support.subscriber_databases import read_model_database
from tests.support.subscriber_faults import POINTS, crash_env, read_landings
from tests.support.subscriber_oracle import applied_counts, checkpoint_position, oracle, read_offers
from tests.support.subscriber_process import (
    LOYALTY,
    finish,
    run_subscriber,
    start_subscriber,
    subscriber_env,
)
from tests.support.subscriber_workload import append_events_directly, publish_commands, read_feed

pytestmark = pytest.mark.integration

TRANSPORTS = ["http", "grpc"]
# How each transport says that the feed refused the subscriber's credential.
REFUSED = {"http": "401", "grpc": "UNAUTHENTICATED"}


@dataclass(frozen=True)
class Feed:
    """A running service and its feed's URL over each transport."""

    base_url: str
    urls: dict[str, str]


@contextlib.contextmanager
def feed_service(database_url: str, **env: str) -> Iterator[Feed]:
    """special-offers serving its feed over HTTP and over gRPC (FEEDLINE_GRPC_PORT)."""
    grpc_port = free_port()
    with running_service(
        "special-offers", database_url, cwd=None, FEEDLINE_GRPC_PORT=str(grpc_port), **env
    ) as base_url:
        yield Feed(
            base_url, {"http": f"{base_url}/events", "grpc": f"grpc://127.0.0.1:{grpc_port}"}
        )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_order_and_batching_every_event_once(
    transport: str, postgres_server_url: str, postgres_url: str, tmp_path: Path
) -> None:
    """2,500 events in runs cut short by maxEventsPerRun and in pages of two sizes."""
    async with read_model_database("postgresql", postgres_server_url, tmp_path) as read_model:
        with feed_service(postgres_url) as feed:
            await append_events_directly(postgres_url, 2_300, first_offer=1_000_000)
            await publish_commands(feed.base_url, 200)
            url = feed.urls[transport]
            positions = []
            for batch_size, budget in (("300", "700"), ("300", "1000"), ("450", "0")):
                finished = run_subscriber(
                    subscriber_env(
                        "contract",
                        url,
                        read_model,
                        FEEDLINE_BATCH_SIZE=batch_size,
                        FEEDLINE_MAX_EVENTS_PER_RUN=budget,
                    )
                )
                assert finished.returncode == 0, finished.stderr[-3000:]
                positions.append(finished.summary["position"])
            events = await read_feed(feed.urls["http"])
        assert len(events) == 2_500
        assert positions == [700, 1_700, 2_500]
        summary = finished.summary
        assert summary["outcome"] == "CaughtUp"
        assert summary["position"] == summary["head"] == 2_500
        assert (summary["processed"], summary["lag"]) == (800, 0)
        assert await applied_counts(read_model, "contract") == {n: 1 for n in range(1, 2_501)}
        assert await read_offers(read_model) == oracle(events)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_type_filter_applies_only_those_events_and_moves_past_the_rest(
    transport: str, tmp_path: Path
) -> None:
    service_db = f"sqlite:///{tmp_path / 'special-offers.db'}"
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    kept = ("SpecialOfferCreated", "SpecialOfferUpdated")
    with feed_service(service_db) as feed:
        await append_events_directly(service_db, 900, first_offer=1)
        finished = run_subscriber(
            subscriber_env(
                "filtered",
                feed.urls[transport],
                read_model,
                FEEDLINE_BATCH_SIZE="100",
                FEEDLINE_EVENT_TYPES=",".join(kept),
            )
        )
        events = await read_feed(feed.urls["http"])
    assert finished.returncode == 0, finished.stderr[-3000:]
    selected = [e for e in events if e["name"] in kept]
    assert 0 < len(selected) < len(events)
    assert finished.summary["outcome"] == "CaughtUp"
    assert finished.summary["position"] == finished.summary["head"] == 900  # scanned past the rest
    assert finished.summary["processed"] == len(selected)
    assert await applied_counts(read_model, "filtered") == {
        e["sequenceNumber"]: 1 for e in selected
    }
    assert await read_offers(read_model) == oracle(selected)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_token_auth_refuses_a_missing_or_wrong_token_and_reads_with_the_right_one(
    transport: str, tmp_path: Path
) -> None:
    service_db = f"sqlite:///{tmp_path / 'special-offers.db'}"
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    right, wrong = tmp_path / "right-token", tmp_path / "wrong-token"
    right.write_text("s3cret\n")
    wrong.write_text("guess\n")
    with feed_service(service_db, FEEDLINE_FEED_AUTH="Token", FEEDLINE_FEED_TOKEN="s3cret") as feed:
        await append_events_directly(service_db, 40, first_offer=1)
        url = feed.urls[transport]
        missing = run_subscriber(subscriber_env("auth", url, read_model))
        refused = run_subscriber(
            subscriber_env(
                "auth",
                url,
                read_model,
                FEEDLINE_FEED_AUTH="Token",
                FEEDLINE_FEED_TOKEN_FILE=str(wrong),
            )
        )
        accepted = run_subscriber(
            subscriber_env(
                "auth",
                url,
                read_model,
                FEEDLINE_FEED_AUTH="Token",
                FEEDLINE_FEED_TOKEN_FILE=str(right),
            )
        )
    for finished, detail in (
        (missing, "this feed needs an Authorization: Bearer token"),
        (refused, "the bearer token is not valid for this feed"),
    ):
        assert finished.returncode == 1, finished.stderr[-3000:]
        assert finished.summary["outcome"] == "Failed"
        assert finished.summary["message"] == (
            f"FeedUnavailableError: feed {url} refused the subscriber "
            f"({REFUSED[transport]}): {detail}"
        )
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    assert (accepted.summary["outcome"], accepted.summary["processed"]) == ("CaughtUp", 40)
    assert await applied_counts(read_model, "auth") == {n: 1 for n in range(1, 41)}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_follower_is_woken_by_each_commit_and_stops_at_once(
    transport: str, tmp_path: Path
) -> None:
    read_model = f"sqlite:///{tmp_path / 'loyalty.db'}"
    status_port = free_port()
    # The service re-checks its database only every RECHECK_SECONDS and the follower
    # waits 20 s per long poll: an event applied within WOKEN_WITHIN of its command was
    # announced by the commit's signal (HTTP: the long poll answered; gRPC: the stream).
    with feed_service(
        f"sqlite:///{tmp_path / 'offers.db'}",
        FEEDLINE_LONG_POLL_RECHECK_SECONDS=str(RECHECK_SECONDS),
    ) as feed:
        follower = start_subscriber(
            subscriber_env(
                "follower",
                feed.urls[transport],
                read_model,
                LOYALTY,
                FEEDLINE_FOLLOW="true",
                FEEDLINE_STATUS_PORT=str(status_port),
                FEEDLINE_FEED_WAIT_SECONDS="20",
            )
        )
        status = f"http://127.0.0.1:{status_port}"
        try:

            def caught_up() -> bool:
                try:
                    summary = httpx.get(f"{status}/summary", timeout=1).json()
                except httpx.HTTPError:
                    return False
                return bool(summary["position"] == 0 and summary["head"] == 0)

            wait_for(caught_up)  # waiting for the first commit
            latencies = []
            for number in range(5):
                offer = httpx.post(
                    f"{feed.base_url}/offers", json={"description": f"flash {number}"}
                )
                assert offer.status_code == 201
                offer_id = offer.json()["id"]
                latencies.append(
                    wait_for(functools.partial(offer_is_in, read_model, offer_id), timeout=30)
                )
            assert max(latencies) < WOKEN_WITHIN, latencies

            stopping = time.monotonic()
            follower.send_signal(signal.SIGTERM)  # it is waiting for the next commit
            done = finish(follower, timeout=30)
            assert time.monotonic() - stopping < 5
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.summary["outcome"] == "CaughtUp"
    assert (done.summary["position"], done.summary["processed"]) == (5, 5)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_sigkills_mid_run_then_a_clean_run_apply_every_event_once(
    transport: str, tmp_path: Path
) -> None:
    """Each kill point once (tests/integration/test_subscriber_crash.py has many more, over
    HTTP): where the kill landed agrees with the checkpoint read back; afterwards every
    event is applied exactly once."""
    rng = random.Random(17)
    batch_size, max_batch = 40, 3
    total = len(POINTS) * max_batch * batch_size  # no run can reach the head before its kill
    service_db = f"sqlite:///{tmp_path / 'special-offers.db'}"
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    with feed_service(service_db) as feed:
        await append_events_directly(service_db, total, first_offer=1)
        url = feed.urls[transport]
        landed = []
        for attempt, point in enumerate(POINTS):
            plan = f"{point}@{rng.randint(1, max_batch)}:{rng.uniform(0, 4):.2f}"
            record = tmp_path / f"kill-{attempt}.jsonl"
            killed = run_subscriber(
                subscriber_env(
                    "crashy",
                    url,
                    read_model,
                    FEEDLINE_BATCH_SIZE=str(batch_size),
                    **crash_env(plan, record),
                )
            )
            assert killed.returncode == -signal.SIGKILL, (
                f"{plan}: exit {killed.returncode}, not killed\n{killed.stderr[-3000:]}"
            )
            (landing,) = read_landings(record)
            position = await checkpoint_position(read_model, "crashy") or 0
            landed.append(where_it_landed(plan, landing, position))
            counts = await applied_counts(read_model, "crashy")
            assert counts == {n: 1 for n in range(1, position + 1)}, f"after {plan}"

        final = run_subscriber(subscriber_env("crashy", url, read_model))
        events = await read_feed(feed.urls["http"])
    assert final.returncode == 0, final.stderr[-3000:]
    assert final.summary["outcome"] == "CaughtUp"
    assert {label.split(" ")[0] for label in landed} == set(POINTS), landed
    assert await applied_counts(read_model, "crashy") == {n: 1 for n in range(1, total + 1)}
    assert await read_offers(read_model) == oracle(events)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_new_replay_token_rebuilds_the_read_model(transport: str, tmp_path: Path) -> None:
    service_db = f"sqlite:///{tmp_path / 'special-offers.db'}"
    read_model = f"sqlite:///{tmp_path / 'read-model.db'}"
    with feed_service(service_db) as feed:
        await append_events_directly(service_db, 500, first_offer=1)
        url = feed.urls[transport]
        first = run_subscriber(
            subscriber_env("replayed", url, read_model, FEEDLINE_BATCH_SIZE="200")
        )
        assert first.returncode == 0, first.stderr[-3000:]
        await append_events_directly(service_db, 100, first_offer=10_000, seed=3)
        replayed = run_subscriber(
            subscriber_env(
                "replayed", url, read_model, FEEDLINE_BATCH_SIZE="200", FEEDLINE_REPLAY_TOKEN="v2"
            )
        )
        again = run_subscriber(
            subscriber_env("replayed", url, read_model, FEEDLINE_REPLAY_TOKEN="v2")
        )
        events = await read_feed(feed.urls["http"])
    assert first.summary["processed"] == 500
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    # The reset emptied the read model (audit rows included) and every event came again.
    assert (replayed.summary["outcome"], replayed.summary["processed"]) == ("CaughtUp", 600)
    assert again.summary["processed"] == 0  # the same token: nothing to rebuild
    assert await applied_counts(read_model, "replayed") == {n: 1 for n in range(1, 601)}
    assert await read_offers(read_model) == oracle(events)
    assert await checkpoint_position(read_model, "replayed") == 600
