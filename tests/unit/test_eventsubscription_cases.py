"""`feedline dev` refuses what the API server refuses, naming the same field in the same words.

The manifests are tests/data/eventsubscriptions/ (tests/support/eventsubscription_cases.py);
the cluster tier sends the very same files to a real kube-apiserver
(tests/cluster/test_operator_validation.py).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from feedline.dev import schema
from feedline.dev.manifests import ManifestError, Source, parse_subscription
from tests.support.eventsubscription_cases import (
    InvalidCase,
    invalid_params,
    valid_manifests,
    valid_params,
)

pytestmark = pytest.mark.unit


def _names_the_field(case: InvalidCase, problem: str) -> bool:
    # A rule on the object itself (the name's length) has no field path, as from
    # the API server ("<nil>"); its message names the field.
    return problem.startswith(f"{case.field}: ") or (
        problem.startswith("<root>: ") and case.field in problem
    )


@pytest.mark.parametrize("case", invalid_params())
def test_feedline_dev_refuses_each_invalid_manifest_naming_the_field(case: InvalidCase) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_subscription(case.body, Source(Path(f"{case.name}.yaml")))
    problems = caught.value.problems
    assert any(_names_the_field(case, p) and case.words in p for p in problems), problems


@pytest.mark.parametrize("body", valid_params())
def test_feedline_dev_accepts_each_valid_manifest(body: dict[str, Any]) -> None:
    loaded = parse_subscription(body, Source(Path("valid.yaml")))
    assert loaded.subscription.name == body["metadata"]["name"]


def _values_at(value: Any, path: str) -> list[Any]:
    """The values at a schema path of ``rules_of`` (``spec.subscriber.env[]``)."""
    found = [value]
    for part in [p for p in path.split(".") if p]:
        key, items = part.removesuffix("[]"), part.endswith("[]")
        found = [v[key] for v in found if isinstance(v, dict) and key in v]
        if items:
            found = [item for v in found for item in v]
    return found


def test_the_valid_manifests_exercise_every_rule_of_the_crd() -> None:
    """Each CEL rule compiles, and evaluates to true on some valid manifest (no error)."""
    crd_schema = schema.shipped_schema()
    bodies = [schema.apply_defaults(b, crd_schema) for b in valid_manifests().values()]
    for path, expression in schema.rules_of(crd_schema):
        schema.compile_rule(expression)
        outcomes = [
            schema.evaluate_rule(expression, copy.deepcopy(value))
            for body in bodies
            for value in _values_at(body, path)
        ]
        assert outcomes, (
            f"{path}: {expression} is not exercised by tests/data/eventsubscriptions/valid"
        )
        assert all(o is True for o in outcomes), (path, expression, outcomes)
