"""Drift detection: desired contained in live, quantities by value."""

from __future__ import annotations

import pytest

from feedline_operator.compare import differences, parse_quantity

pytestmark = pytest.mark.unit


def test_defaults_added_by_the_server_are_no_drift() -> None:
    desired = {"spec": {"a": 1, "list": [{"name": "x"}]}}
    live = {"spec": {"a": 1, "b": 2, "list": [{"name": "x", "protocol": "TCP"}]}, "status": {}}
    assert differences(desired, live) == []


def test_changed_value_and_extra_list_item_are_drift() -> None:
    desired = {"spec": {"a": 1, "env": [{"name": "A", "value": "1"}]}}
    assert differences(desired, {"spec": {"a": 2, "env": [{"name": "A", "value": "1"}]}}) == [
        ".spec.a"
    ]
    extra = {"spec": {"a": 1, "env": [{"name": "A", "value": "1"}, {"name": "B"}]}}
    assert differences(desired, extra) == [".spec.env"]
    assert differences(desired, {}) == [".spec"]


def test_quantities_compare_by_value_under_resources() -> None:
    desired = {"resources": {"requests": {"cpu": "0.5", "memory": "1Gi"}}}
    live = {"resources": {"requests": {"cpu": "500m", "memory": "1024Mi"}}}
    assert differences({"c": desired}, {"c": live}) == []
    assert differences({"c": {"x": "0.5"}}, {"c": {"x": "500m"}}) == [".c.x"]


@pytest.mark.parametrize(
    ("text", "value"), [("1", 1), ("500m", 0.5), ("2Ki", 2048), ("1e3", 1000), ("1k", 1000)]
)
def test_parse_quantity(text: str, value: float) -> None:
    assert parse_quantity(text) == pytest.approx(value)
