"""A reconcile's first look at a child is the watch cache's copy (feedline_operator.child_cache):
a stale copy must cost at most a GET, never a duplicate, a lost change or a false conflict.

`reconcile.ensure` runs against the real API server with the operator chart's
ServiceAccount; the stale copies are the injected fault (a watch that has not
caught up), built from what the API server really returned earlier.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from feedline_contracts.eventsubscription import EventSubscription
from feedline_operator import builders, reconcile
from feedline_operator.kube import Kube, load_api_client
from tests.support.kube import apis
from tests.support.operator_fixtures import GROUP, PLURAL, VERSION, subscription

pytestmark = pytest.mark.cluster

DEFAULTS = builders.ChildDefaults()


class FrozenCopies:
    """A cache whose copies are whatever the test put there (None: not seen yet)."""

    def __init__(self, copies: Mapping[str, Mapping[str, Any] | None]) -> None:
        self.copies = dict(copies)

    def last_seen(self, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.copies.get(kind)


@pytest.fixture
def kube(operator_kubeconfig: Path) -> Iterator[Kube]:
    """The operator's own client, with only its chart's permissions."""
    kube = Kube(load_api_client(str(operator_kubeconfig)))
    yield kube
    kube.close()


def make_subscription(api: client.ApiClient, namespace: str, name: str) -> EventSubscription:
    body = subscription(name)
    created = apis.custom(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    return EventSubscription.from_body(created)


def with_child(
    api: client.ApiClient, kube: Kube, namespace: str, name: str
) -> tuple[EventSubscription, dict[str, Any]]:
    """A subscription, and its CronJob as the builders want it, made with no cache."""
    sub = make_subscription(api, namespace, name)
    desired = builders.build_child(sub, DEFAULTS)
    assert reconcile.ensure(kube, desired, sub, None) == f"created CronJob {sub.name}"
    return sub, desired


def live_cronjob(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    found = apis.batch(api).read_namespaced_cron_job(name, namespace)
    return dict(apis.to_dict(api, found))


def test_a_child_the_cache_has_not_seen_is_found_not_duplicated(
    kube_api: client.ApiClient, kube: Kube, namespace: str
) -> None:
    sub, desired = with_child(kube_api, kube, namespace, "unseen")
    version = live_cronjob(kube_api, namespace, sub.name)["metadata"]["resourceVersion"]

    # The watch has not delivered the create yet: the create meets 409, a GET compares.
    assert reconcile.ensure(kube, desired, sub, FrozenCopies({"CronJob": None})) == ""
    cronjobs = apis.batch(kube_api).list_namespaced_cron_job(namespace).items
    assert [c.metadata.name for c in cronjobs] == [sub.name]
    assert live_cronjob(kube_api, namespace, sub.name)["metadata"]["resourceVersion"] == version


def test_an_older_copy_never_overwrites_a_newer_child(
    kube_api: client.ApiClient, kube: Kube, namespace: str
) -> None:
    sub, first = with_child(kube_api, kube, namespace, "older-copy")
    old_copy = live_cronjob(kube_api, namespace, sub.name)

    # The spec changes and a reconcile brings the child in line; the cache still
    # holds the copy from before, which differs from what is wanted now.
    newer = copy.deepcopy(first)
    newer["spec"]["schedule"] = "*/7 * * * *"
    assert reconcile.ensure(kube, newer, sub, None).startswith("updated CronJob")
    version = live_cronjob(kube_api, namespace, sub.name)["metadata"]["resourceVersion"]

    # The replace carrying the old copy's resourceVersion gets 409; the GET finds it in line.
    assert reconcile.ensure(kube, newer, sub, FrozenCopies({"CronJob": old_copy})) == ""
    live = live_cronjob(kube_api, namespace, sub.name)
    assert live["metadata"]["resourceVersion"] == version
    assert live["spec"]["schedule"] == "*/7 * * * *"


def test_a_copy_from_a_former_owner_is_not_a_conflict(
    kube_api: client.ApiClient, kube: Kube, namespace: str
) -> None:
    sub, desired = with_child(kube_api, kube, namespace, "former-owner")
    # A copy of the child as it was under a subscription of the same name, since re-created.
    foreign = live_cronjob(kube_api, namespace, sub.name)
    for ref in foreign["metadata"]["ownerReferences"]:
        ref["uid"] = "00000000-0000-0000-0000-000000000000"

    assert reconcile.ensure(kube, desired, sub, FrozenCopies({"CronJob": foreign})) == ""


def test_a_child_owned_by_someone_else_is_still_a_conflict(
    kube_api: client.ApiClient, kube: Kube, namespace: str
) -> None:
    sub = make_subscription(kube_api, namespace, "taken")
    desired = builders.build_child(sub, DEFAULTS)
    squatter = copy.deepcopy(desired)
    del squatter["metadata"]["ownerReferences"]
    apis.batch(kube_api).create_namespaced_cron_job(namespace, squatter)
    seen = live_cronjob(kube_api, namespace, sub.name)

    with pytest.raises(reconcile.ChildConflictError, match="not owned by this subscription"):
        reconcile.ensure(kube, desired, sub, FrozenCopies({"CronJob": seen}))
