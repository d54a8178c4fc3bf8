"""Does a live object still match what the builders want? (Pure.)

The live object has every field the API server defaulted, so the desired
manifest only has to be contained in it: every key the builder set must have
the same value; lists must have the same length (an env var added by hand is
drift) and match element by element. Resource quantities compare by value
("0.5" equals "500m"), as the API server rewrites them.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

_UNITS: dict[str, int | Decimal] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip


def parse_quantity(value: object) -> Decimal | None:
    text = str(value)
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            number, unit = text[: -len(suffix)], Decimal(_UNITS[suffix])
            break
    else:
        number, unit = text, Decimal(1)
    try:
        return Decimal(number) * unit
    except InvalidOperation:
        return None


def differences(desired: Any, live: Any, path: str = "") -> list[str]:
    """Paths where `live` does not carry what `desired` says (empty: in sync)."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return [path or "."]
        found: list[str] = []
        for key, value in desired.items():
            found += differences(value, live.get(key), f"{path}.{key}")
        return found
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return [path]
        found = []
        for index, (want, have) in enumerate(zip(desired, live, strict=True)):
            found += differences(want, have, f"{path}[{index}]")
        return found
    return [] if _same_scalar(desired, live, path) else [path]


def _same_scalar(desired: object, live: object, path: str) -> bool:
    if desired == live:
        return True
    if ".resources." not in path:
        return False
    quantity = parse_quantity(desired)
    return quantity is not None and quantity == parse_quantity(live)
