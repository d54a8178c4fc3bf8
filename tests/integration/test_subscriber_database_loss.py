"""The read model's database going away: lost mid-run (the server terminates
the connection, as a restart or a network cut would), the run reconnects,
takes its lock again and goes on from the checkpoint; no event is taken for
poison, none applied twice. Not up yet, a follower waits until it is.

A real `feedline subscribe` process, the real special-offers service, and a
real PostgreSQL whose `pg_terminate_backend` ends the subscriber's sessions
(SQLSTATE 57P01, what clients see when the server shuts down).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from feedline_contracts.database import connect_database, parse_database_url
from tests.support.ports import free_port
from tests.support.services import running_service
from tests.support.subscriber_databases import read_model_database
from tests.support.subscriber_oracle import applied_counts, checkpoint_position, oracle, read_offers
from tests.support.subscriber_process import (
    AUDITED,
    finish,
    run_subscriber,
    start_subscriber,
    subscriber_env,
)
from tests.support.subscriber_workload import append_events_directly, read_feed

pytestmark = pytest.mark.integration

EVENTS = 3_000
LOSSES = 2


async def terminate_sessions(server_url: str, database: str) -> int:
    """End every session on ``database`` (but ours); how many there were."""
    admin = connect_database(server_url)
    try:
        async with admin.engine.connect() as connection:
            ended = await connection.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :d AND pid <> pg_backend_pid()"
                ),
                {"d": database},
            )
            return int(ended.scalar_one())
    finally:
        await admin.dispose()


async def test_a_lost_connection_mid_run_is_reconnected(
    postgres_server_url: str, postgres_url: str, tmp_path: Path
) -> None:
    async with read_model_database("postgresql", postgres_server_url, tmp_path) as read_model:
        database = parse_database_url(read_model).sqlalchemy_url.database
        assert database is not None
        with running_service("special-offers", postgres_url) as base_url:
            await append_events_directly(postgres_url, EVENTS, first_offer=1)
            feed_url = f"{base_url}/events"
            process = start_subscriber(
                subscriber_env("lossy", feed_url, read_model, AUDITED, FEEDLINE_BATCH_SIZE="10")
            )
            ended_at: list[int] = []
            deadline = time.monotonic() + 60
            while len(ended_at) < LOSSES and time.monotonic() < deadline:
                position = await checkpoint_position(read_model, "lossy") or 0
                wanted = (len(ended_at) + 1) * EVENTS // (LOSSES + 2)
                if position >= wanted and await terminate_sessions(postgres_server_url, database):
                    ended_at.append(position)
                await asyncio.sleep(0.02)
            finished = finish(process)
            events = await read_feed(feed_url)
        assert len(ended_at) == LOSSES, f"the run ended before the faults: {ended_at}"
        assert max(ended_at) < EVENTS, ended_at
        assert finished.returncode == 0, finished.stderr[-3000:]
        summary = finished.summary
        assert summary["outcome"] == "CaughtUp", summary
        assert summary["position"] == EVENTS
        assert summary["deadLettered"] == 0
        log = finished.stderr
        assert log.count("read-model database connection lost; reconnecting") == LOSSES, log[-3000:]
        assert "isolating the poison event" not in log
        counts = await applied_counts(read_model, "lossy")
        assert counts == {number: 1 for number in range(1, EVENTS + 1)}
        assert await read_offers(read_model) == oracle(events)


def test_a_follower_waits_for_its_database_until_stopped(tmp_path: Path) -> None:
    """A follower beside a database that is not up yet (a fresh helm install)
    keeps waiting, each retry logged, past --database-retries (which bounds a
    CronJob run), until it is stopped; a CronJob run with the same settings
    gives up at once."""
    read_model = f"postgresql://feedline:secret@127.0.0.1:{free_port()}/read_model"
    with running_service("special-offers", f"sqlite:///{tmp_path / 'offers.db'}") as base_url:
        environment = subscriber_env(
            "waiting", f"{base_url}/events", read_model, AUDITED, FEEDLINE_DATABASE_RETRIES="0"
        )
        once = run_subscriber(environment)
        assert once.returncode != 0
        assert once.summary["outcome"] == "Failed"
        assert "gave up after 0 retries" in once.summary["message"], once.summary

        follower = start_subscriber({**environment, "FEEDLINE_FOLLOW": "true"})
        retries = wait_for_lines(follower, "read-model database unavailable; retrying", count=3)
        follower.send_signal(signal.SIGTERM)
        finished = finish(follower, timeout=30)
    assert retries == 3
    assert "stopped while waiting to retry" in finished.summary["message"], finished.summary


def wait_for_lines(process: subprocess.Popen[bytes], text: str, count: int) -> int:
    """Read stderr until ``text`` appeared ``count`` times (the process keeps running)."""
    assert process.stderr is not None
    seen = 0
    deadline = time.monotonic() + 120
    while seen < count and time.monotonic() < deadline:
        line = process.stderr.readline().decode()
        assert line, "the follower exited instead of waiting"
        seen += text in line
    return seen


async def test_a_follower_reconnects_when_its_database_drops_it(
    postgres_server_url: str, tmp_path: Path
) -> None:
    """Follow mode: the read model's sessions terminated while the follower
    waits at the head; the next events still arrive, each applied once."""
    async with read_model_database("postgresql", postgres_server_url, tmp_path) as read_model:
        database = parse_database_url(read_model).sqlalchemy_url.database
        assert database is not None
        with running_service("special-offers", f"sqlite:///{tmp_path / 'offers.db'}") as base_url:
            follower = start_subscriber(
                subscriber_env(
                    "following", f"{base_url}/events", read_model, AUDITED, FEEDLINE_FOLLOW="true"
                )
            )
            try:
                async with httpx.AsyncClient(base_url=base_url) as client:
                    for round_ in range(LOSSES + 1):
                        created = await client.post("/offers", json={"description": f"#{round_}"})
                        assert created.status_code == 201
                        wanted = round_ + 1
                        deadline = time.monotonic() + 60
                        while (await checkpoint_position(read_model, "following") or 0) < wanted:
                            assert time.monotonic() < deadline, f"event {wanted} never applied"
                            await asyncio.sleep(0.05)
                        if round_ < LOSSES:
                            assert await terminate_sessions(postgres_server_url, database)
            finally:
                follower.send_signal(signal.SIGTERM)
                finished = finish(follower, timeout=30)
        assert finished.returncode == 0, finished.stderr[-3000:]
        log = finished.stderr
        assert "read-model database connection lost; reconnecting" in log, log[-3000:]
        counts = await applied_counts(read_model, "following")
        assert counts == {number: 1 for number in range(1, LOSSES + 2)}
