"""Waiting for a database that is not up yet: one retry policy for services and subscribers.

A database server starting beside its clients (a fresh ``helm install``, a
restart, a DNS name not resolvable yet, "the database system is starting up")
is retried with exponential backoff and full jitter: the wait before retry
*n* is uniform in ``[0, min(10 s, first * 2**(n-1))]`` (``first`` 0.5 s).
Each retry logs one warning line naming the database (its password hidden),
the reason and the wait. Only what waiting may fix is retried, as
``unavailable(url, error).transient`` says; anything else (a login refused, a
missing folder, an error of the caller's own) propagates at once, as raised,
for the caller to word. When the limit is reached (a number of retries, or a
deadline in seconds), ``DatabaseUnavailableError`` says so in one line naming
the setting that sets the limit.

The retrying is tenacity's; this module decides what is transient, how long
to wait, and what the logs and the final message say.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from feedline_contracts.database import DatabaseUnavailableError, redacted, unavailable

log = structlog.get_logger("feedline.database")

FIRST_BACKOFF_SECONDS: Final = 0.5
MAX_BACKOFF_SECONDS: Final = 10.0
# Under a deadline, an attempt may run until the deadline, and at least this long.
MIN_ATTEMPT_SECONDS: Final = 3.0

T = TypeVar("T")


def backoff(first: float = FIRST_BACKOFF_SECONDS) -> wait_base:
    """Full jitter under a cap that doubles from ``first`` up to ``MAX_BACKOFF_SECONDS``."""
    return wait_random_exponential(multiplier=first, max=MAX_BACKOFF_SECONDS)


class _Unbounded:
    """A limit whose attempts run as long as they take, between jittered waits."""

    def bounded(self, attempt: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
        return attempt

    def wait(self, first: float) -> Callable[[RetryCallState], float]:
        return backoff(first)


@dataclass(frozen=True)
class Retries(_Unbounded):
    """Give up after ``count`` retries (``count + 1`` attempts); ``setting`` sets ``count``."""

    count: int
    setting: str

    def stop(self) -> stop_base:
        return stop_after_attempt(self.count + 1)

    def gave_up(self, state: RetryCallState) -> str:
        return f"gave up after {state.attempt_number - 1} retries; {self.setting}"

    def log_fields(self, _state: RetryCallState) -> dict[str, Any]:
        return {"retries": self.count}


@dataclass(frozen=True)
class Deadline:
    """Keep retrying until ``seconds`` have passed since the first attempt; ``setting`` sets it.

    The last wait is cut short so that one attempt falls on the deadline; an
    attempt that fails at or after it is the last. An attempt that hangs (a
    server that drops packets: the driver's own timeout is a minute) is cut
    at the deadline, or after ``MIN_ATTEMPT_SECONDS`` if that comes later, as
    a TimeoutError ("no answer"), so giving up is not long after the deadline.
    """

    seconds: float
    setting: str

    def stop(self) -> stop_base:
        return stop_after_delay(self.seconds)

    def bounded(self, attempt: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
        started = time.monotonic()

        async def until_deadline() -> T:
            left = self.seconds - (time.monotonic() - started)
            async with asyncio.timeout(max(left, MIN_ATTEMPT_SECONDS)):
                return await attempt()

        return until_deadline

    def wait(self, first: float) -> Callable[[RetryCallState], float]:
        jitter = backoff(first)

        def until_deadline(state: RetryCallState) -> float:
            left = self.seconds - (state.seconds_since_start or 0.0)
            return max(0.0, min(jitter(state), left))

        return until_deadline

    def gave_up(self, _state: RetryCallState) -> str:
        return f"gave up after {self.seconds:g} s; {self.setting}"

    def log_fields(self, state: RetryCallState) -> dict[str, Any]:
        elapsed = state.seconds_since_start or 0.0
        return {"gives_up_in_seconds": round(max(0.0, self.seconds - elapsed), 1)}


@dataclass(frozen=True)
class UntilStopped(_Unbounded):
    """Keep retrying until the caller's stop event is set (a long-running
    follower waiting for its database, as long as it takes)."""

    def stop(self) -> stop_base:
        return stop_never

    def gave_up(self, _state: RetryCallState) -> str:
        return "stopped"

    def log_fields(self, _state: RetryCallState) -> dict[str, Any]:
        return {"until": "stopped"}


class _StoppedWaitingError(Exception):
    """The stop event was set while waiting to retry."""


async def retry_database(
    attempt: Callable[[], Awaitable[T]],
    url: str,
    limit: Retries | Deadline | UntilStopped,
    *,
    what: str = "database",
    stop: asyncio.Event | None = None,
    first_backoff: float = FIRST_BACKOFF_SECONDS,
) -> T:
    """``await attempt()``, retried while it fails in a way that waiting may fix.

    ``url`` is the database ``attempt`` uses (for the diagnosis and the logs)
    and ``what`` how messages call it ("read-model database"). Raises
    ``DatabaseUnavailableError`` ("... (gave up after ...; SETTING)") when
    ``limit`` is reached, or ("... (stopped while waiting to retry)") when
    ``stop`` is set during a wait; a failure that is not transient propagates
    at once, unchanged.
    """

    def transient(error: BaseException) -> bool:
        return isinstance(error, Exception) and unavailable(url, error, what=what).transient

    waited_on: list[tuple[DatabaseUnavailableError, BaseException]] = []

    def problem(state: RetryCallState) -> tuple[DatabaseUnavailableError, BaseException]:
        assert state.outcome is not None  # tenacity sets it before these calls
        error = state.outcome.exception()
        assert error is not None  # only failures are retried
        return unavailable(url, error, what=what), error

    def log_retry(state: RetryCallState) -> None:
        said, error = problem(state)
        waited_on[:] = [(said, error)]
        log.warning(
            f"{what} unavailable; retrying",
            database=redacted(url),
            error=str(said),
            retry=state.attempt_number,
            wait_seconds=round(state.upcoming_sleep, 3),
            **limit.log_fields(state),
        )

    def give_up(state: RetryCallState) -> None:
        said, error = problem(state)
        raise DatabaseUnavailableError(
            f"{said} ({limit.gave_up(state)})", transient=True
        ) from error

    async def sleep(seconds: float) -> None:
        if stop is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        if stop.is_set():
            raise _StoppedWaitingError

    retrying = AsyncRetrying(
        retry=retry_if_exception(transient),
        stop=limit.stop(),
        wait=limit.wait(first_backoff),
        before_sleep=log_retry,
        sleep=sleep,
        retry_error_callback=give_up,
    )
    try:
        # Either attempt()'s result or an exception: give_up raises, it never returns.
        result: T = await retrying(limit.bounded(attempt))
    except _StoppedWaitingError:
        said, error = waited_on[0]
        raise DatabaseUnavailableError(
            f"{said} (stopped while waiting to retry)", transient=True
        ) from error
    return result
