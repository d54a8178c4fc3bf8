"""Schemathesis hooks for the API fuzzing tests (loaded via SCHEMATHESIS_HOOKS).

Long polls are valid and hold a request up to 30 s; the fuzzer would spend
its whole budget waiting. Valid ``wait`` values are capped at 0.2 s (invalid
ones are sent as generated, so they are still checked).
"""

from __future__ import annotations

from typing import Any

import schemathesis

MAX_FUZZ_WAIT = 0.2


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    query = case.query or {}
    try:
        wait = float(query.get("wait", "x"))
    except (TypeError, ValueError):
        return
    if 0 < wait <= 30:
        query["wait"] = MAX_FUZZ_WAIT
