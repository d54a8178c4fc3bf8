"""Schemathesis hooks for the API fuzzing tests (loaded via SCHEMATHESIS_HOOKS).

Each hook makes a request the schema allows into one the service documents as
valid, where the rule is not one an OpenAPI schema can say. Invalid requests
are sent as generated, so every check still sees them.

- Long polls (``GET /events?wait=``) are valid and hold a request up to 30 s
  (the ``wait`` parameter's description says an answer may be delayed that
  long); the fuzzer would spend its whole budget waiting, and a response-time
  limit would misfire. Valid ``wait`` values are capped at 0.2 s.
- ``end`` must be greater than ``start`` (a rule between two parameters,
  docs/feed-protocol.md; answered 400 otherwise, which its description says).
  A positive case with ``end <= start`` gets ``end = start + 1`` (or no ``end``
  when ``start`` is the largest sequence number).
- ``POST /shoppingcart/{user_id}/items`` adds products the catalog holds; an
  unknown product id is answered 422 (the operation declares it). A positive
  case's ids are mapped onto the demo catalog's (1 to 100), so positive data
  acceptance tests adding real products.
"""

from __future__ import annotations

from typing import Any

import schemathesis

MAX_FUZZ_WAIT = 0.2
MAX_SEQUENCE = 2**63 - 1
DEMO_PRODUCT_COUNT = 100  # feedline.services.product_catalog seeds ids 1..100


def _positive(case: Any) -> bool:
    meta = getattr(case, "meta", None)
    return meta is not None and bool(meta.generation.mode.is_positive)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _cap_wait(query: dict[str, Any]) -> None:
    try:
        wait = float(query.get("wait", "x"))
    except (TypeError, ValueError):
        return
    if 0 < wait <= 30:
        query["wait"] = MAX_FUZZ_WAIT


def _end_after_start(query: dict[str, Any]) -> None:
    start = _as_int(query.get("start", 1))
    end = _as_int(query.get("end"))
    if start is None or end is None or end > start:
        return
    if start < MAX_SEQUENCE:
        query["end"] = start + 1
    else:
        del query["end"]


def _catalog_id(number: Any) -> Any:
    """A valid product id (an integer, or a float with no fraction: 3.0) as one the catalog has."""
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if isinstance(number, int) and not isinstance(number, bool):
        return (number - 1) % DEMO_PRODUCT_COUNT + 1
    return number


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    path = case.operation.path
    if path == "/events":
        query = case.query if case.query is not None else {}
        _cap_wait(query)
        if _positive(case):
            _end_after_start(query)
    if (
        path == "/shoppingcart/{user_id}/items"
        and case.method.upper() == "POST"
        and _positive(case)
        and isinstance(case.body, list)
    ):
        case.body = [_catalog_id(number) for number in case.body]
