"""The EventSubscription manifests both tiers check: tests/data/eventsubscriptions/.

``invalid/*.yaml``: each a manifest the API server refuses (and so must
`feedline dev`), with a header naming the field the answer names and words of
its message::

    # What the case is about.
    # field: spec.schedule
    # words: schedule must be a cron expression

``valid/*.yaml``: manifests both accept (together they set every field).
The cluster tier sends each to a real kube-apiserver
(tests/cluster/test_operator_validation.py), the unit tier to `feedline dev`'s
validation (tests/unit/test_eventsubscription_cases.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

DATA = Path(__file__).resolve().parents[1] / "data" / "eventsubscriptions"
INVALID = DATA / "invalid"
VALID = DATA / "valid"


@dataclass(frozen=True)
class InvalidCase:
    name: str
    about: str
    field: str  # the field path the API server names (spec.feed.url, spec.subscriber.env[0].name)
    words: str  # words of the message, the same from the API server and from `feedline dev`
    body: dict[str, Any]


def _header(text: str, key: str, path: Path) -> str:
    prefix = f"# {key}: "
    for line in text.splitlines():
        if line.startswith(prefix):
            return line.removeprefix(prefix).strip()
    raise ValueError(f"{path}: no '{prefix}' line")


def invalid_cases() -> list[InvalidCase]:
    cases = []
    for path in sorted(INVALID.glob("*.yaml")):
        text = path.read_text()
        cases.append(
            InvalidCase(
                name=path.stem,
                about=text.splitlines()[0].removeprefix("# "),
                field=_header(text, "field", path),
                words=_header(text, "words", path),
                body=yaml.safe_load(text),
            )
        )
    return cases


def valid_manifests() -> dict[str, dict[str, Any]]:
    return {path.stem: yaml.safe_load(path.read_text()) for path in sorted(VALID.glob("*.yaml"))}


def invalid_params() -> list[Any]:
    """The invalid cases as pytest parameters, named after their files."""
    return [pytest.param(case, id=case.name) for case in invalid_cases()]


def valid_params() -> list[Any]:
    return [pytest.param(body, id=name) for name, body in valid_manifests().items()]
