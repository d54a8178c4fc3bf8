"""An async attempt that fails a given number of times, then succeeds (retry tests)."""

from __future__ import annotations


class FlakyAttempt:
    """Fails ``failures`` times with ``error``, then returns ``result``; counts its calls."""

    def __init__(self, failures: int, error: Exception, result: str = "done") -> None:
        self.failures = failures
        self.error = error
        self.result = result
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.result
