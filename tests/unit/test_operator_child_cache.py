"""What the operator's watch cache keeps of a child: what a reconcile compares, no more."""

from __future__ import annotations

from typing import Any

import pytest

from feedline_contracts.eventsubscription import EventSubscription
from feedline_operator import builders, child_cache, reconcile
from feedline_operator.compare import differences
from tests.support.operator_fixtures import sample

pytestmark = pytest.mark.unit


def live_child() -> dict[str, Any]:
    """A CronJob as a watch event brings it: the builder's, plus what the server adds."""
    sub = EventSubscription.from_body(
        {
            **sample("subscription-cronjob"),
            "metadata": {"name": "offers", "namespace": "shop", "uid": "u-1", "generation": 1},
        }
    )
    child = builders.build_child(sub, builders.ChildDefaults())
    child["metadata"].update(
        uid="c-1",
        resourceVersion="42",
        managedFields=[{"manager": "feedline-operator", "fieldsV1": {"f:spec": {}}}],
        creationTimestamp="2026-12-03T07:00:00Z",
    )
    child["status"] = {"lastScheduleTime": "2026-12-03T07:00:00Z"}
    return child


def test_the_entry_is_keyed_by_namespace_and_name_and_keeps_what_ensure_compares() -> None:
    child = live_child()
    entry = child_cache.index_entry(child)
    assert list(entry) == [("shop", child["metadata"]["name"])]
    kept = entry[("shop", child["metadata"]["name"])]
    # ensure compares labels, owner and spec, and replaces with the resourceVersion.
    assert differences(reconcile.watched_part(child), kept) == []
    assert kept["metadata"]["resourceVersion"] == "42"
    assert kept["metadata"]["uid"] == "c-1"
    assert kept["spec"] is child["spec"]  # shared with the event, not copied
    # The bulk of a body the cache would only carry along.
    assert "managedFields" not in kept["metadata"]
    assert "status" not in kept
