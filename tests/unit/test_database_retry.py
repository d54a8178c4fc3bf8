"""The start-up retry of a database not up yet (feedline_contracts.database_retry), no I/O."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from tenacity import AsyncRetrying, RetryCallState

from feedline.chassis.settings import DATABASE_STARTUP_TIMEOUT_SETTING, ServiceSettings
from feedline_contracts import database_retry
from feedline_contracts.database import DatabaseUnavailableError
from feedline_contracts.database_retry import Deadline, Retries, backoff, retry_database
from tests.support.flaky import FlakyAttempt

pytestmark = pytest.mark.unit

DOWN = "postgresql://offers:s3cret@db.example:5432/offers"
REFUSED = ConnectionRefusedError(111, "Connect call failed")


def test_the_backoff_doubles_from_half_a_second_up_to_ten() -> None:
    wait = backoff()
    state = RetryCallState(AsyncRetrying(), None, (), {})
    for retry, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 10.0), (20, 10.0)]:
        state.attempt_number = retry
        assert all(0 <= wait(state) <= cap for _ in range(200))


def test_services_wait_below_the_charts_startup_probe_budget_by_default() -> None:
    # startupProbe: failureThreshold 30 x periodSeconds 2 (charts/feedline-service).
    default = ServiceSettings.model_fields["database_startup_timeout_seconds"].default
    assert 0 < default < 30 * 2


async def test_a_database_that_comes_up_before_the_deadline_is_used() -> None:
    attempt = FlakyAttempt(3, REFUSED, result="prepared")
    deadline = Deadline(30, DATABASE_STARTUP_TIMEOUT_SETTING)
    got = await retry_database(attempt, DOWN, deadline, first_backoff=0.001)
    assert (got, attempt.calls) == ("prepared", 4)


async def test_the_deadline_gives_up_naming_the_setting_after_it_has_passed() -> None:
    attempt = FlakyAttempt(10**6, REFUSED, result="prepared")
    deadline = Deadline(0.5, DATABASE_STARTUP_TIMEOUT_SETTING)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as raised:
        await retry_database(attempt, DOWN, deadline, first_backoff=0.01)
    assert time.monotonic() - started >= 0.5
    assert attempt.calls >= 2
    assert raised.value.transient
    assert str(raised.value) == (
        "cannot use the database postgresql://offers:***@db.example:5432/offers: connection "
        "refused at db.example:5432; start the database server, or fix --database-url "
        "(FEEDLINE_DATABASE_URL) (gave up after 0.5 s; FEEDLINE_DATABASE_STARTUP_TIMEOUT_SECONDS)"
    )
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)


async def test_a_wait_longer_than_the_time_left_is_cut_to_the_deadline() -> None:
    # The first wait could be up to a minute; the deadline comes first, and one more
    # attempt is made on it before giving up.
    attempt = FlakyAttempt(10**6, REFUSED, result="prepared")
    deadline = Deadline(0.2, DATABASE_STARTUP_TIMEOUT_SETTING)
    task = asyncio.create_task(retry_database(attempt, DOWN, deadline, first_backoff=60))
    with pytest.raises(DatabaseUnavailableError, match=r"gave up after 0\.2 s"):
        await asyncio.wait_for(task, 30)
    assert attempt.calls >= 2


async def test_a_zero_deadline_tries_once() -> None:
    attempt = FlakyAttempt(10**6, REFUSED, result="prepared")
    with pytest.raises(DatabaseUnavailableError, match=r"gave up after 0 s"):
        await retry_database(attempt, DOWN, Deadline(0, DATABASE_STARTUP_TIMEOUT_SETTING))
    assert attempt.calls == 1


async def test_what_waiting_cannot_fix_propagates_at_once_unchanged(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'offers.db'}"
    attempt = FlakyAttempt(
        10, sqlite3.OperationalError("unable to open database file"), result="prepared"
    )
    with pytest.raises(sqlite3.OperationalError):
        await retry_database(attempt, url, Deadline(60, DATABASE_STARTUP_TIMEOUT_SETTING))
    assert attempt.calls == 1


async def test_an_error_of_the_callers_own_is_not_retried() -> None:
    attempt = FlakyAttempt(10, KeyError("not a database problem"), result="prepared")
    with pytest.raises(KeyError):
        await retry_database(attempt, DOWN, Retries(5, "--retries"), first_backoff=0.001)
    assert attempt.calls == 1


async def test_retries_count_the_retries_in_the_message() -> None:
    attempt = FlakyAttempt(10, REFUSED, result="prepared")
    with pytest.raises(DatabaseUnavailableError) as raised:
        await retry_database(
            attempt, DOWN, Retries(2, "--retries (R)"), what="thing", first_backoff=0.001
        )
    assert attempt.calls == 3
    assert str(raised.value).startswith("cannot use the thing postgresql://offers:***@")
    assert str(raised.value).endswith("(gave up after 2 retries; --retries (R))")


async def test_an_attempt_that_hangs_is_cut_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server that drops packets: the driver would wait a minute for an answer.
    monkeypatch.setattr(database_retry, "MIN_ATTEMPT_SECONDS", 0.05)
    calls = 0

    async def hangs() -> str:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()
        return "never"

    deadline = Deadline(0.3, DATABASE_STARTUP_TIMEOUT_SETTING)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as raised:
        await asyncio.wait_for(retry_database(hangs, DOWN, deadline), 30)
    assert time.monotonic() - started >= 0.3
    assert calls >= 1
    assert "no answer from db.example:5432" in str(raised.value)
    assert str(raised.value).endswith(
        "(gave up after 0.3 s; FEEDLINE_DATABASE_STARTUP_TIMEOUT_SECONDS)"
    )
