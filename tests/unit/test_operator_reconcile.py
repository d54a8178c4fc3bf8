"""The Secrets a subscription references: each one the spec names is checked to exist."""

from __future__ import annotations

from typing import Any, cast

import pytest

from feedline_contracts.eventsubscription import EventSubscription
from feedline_operator import reconcile
from feedline_operator.kube import Kube, object_path
from tests.support.operator_fixtures import sample

pytestmark = pytest.mark.unit

BROKER = {
    "urlSecretRef": {"name": "rabbitmq-credentials", "key": "url"},
    "stream": "feedline.events.special-offers",
}


class Secrets:
    """What `missing_secrets` asks of the API server: GET of a Secret."""

    def __init__(self, secrets: dict[str, dict[str, Any]]) -> None:
        self.secrets = secrets

    def get(self, path: str, query: Any = None) -> dict[str, Any] | None:
        for name, secret in self.secrets.items():
            if path == object_path("v1", "Secret", "shop", name):
                return secret
        return None


def _with_broker() -> EventSubscription:
    body = sample("subscription-cronjob")
    body["spec"]["feed"]["broker"] = BROKER
    return EventSubscription.from_body(body)


def _missing(sub: EventSubscription, secrets: dict[str, dict[str, Any]]) -> list[str]:
    return reconcile.missing_secrets(cast(Kube, Secrets(secrets)), sub)


def test_the_brokers_secret_is_checked_like_the_read_models() -> None:
    database = {"loyalty-db": {"data": {"dsn": "eA=="}}}
    sub = _with_broker()
    assert _missing(sub, database) == [
        "feed.broker.urlSecretRef: Secret rabbitmq-credentials not found"
    ]
    wrong_key = {**database, "rabbitmq-credentials": {"data": {"uri": "eA=="}}}
    assert _missing(sub, wrong_key) == [
        "feed.broker.urlSecretRef: Secret rabbitmq-credentials has no key url"
    ]
    present = {**database, "rabbitmq-credentials": {"data": {"url": "eA=="}}}
    assert _missing(sub, present) == []
    # Both missing: both named, the read model's first.
    assert _missing(sub, {}) == [
        "readModel.databaseSecretRef: Secret loyalty-db not found",
        "feed.broker.urlSecretRef: Secret rabbitmq-credentials not found",
    ]


def test_without_a_broker_no_broker_secret_is_asked_for() -> None:
    sub = EventSubscription.from_body(sample("subscription-cronjob"))
    assert _missing(sub, {"loyalty-db": {"data": {"dsn": "eA=="}}}) == []
