"""The CRD file: explicit schema, printer columns, and defaults that match the model.

The CRD is generated from the model (tests/unit/test_eventsubscription_crd.py
checks it is current); these tests read the chart's file, as Helm installs it.
"""

from __future__ import annotations

from typing import Any

import pytest
from croniter import croniter

from feedline.dev.schema import evaluate_rule
from feedline_contracts import subscriber_env as env_names
from feedline_contracts.auth import FeedAuth
from feedline_contracts.broker import STREAM_NAME_PREFIX, stream_name
from feedline_contracts.eventsubscription import (
    RESERVED_ENV_MESSAGE,
    Auth,
    EventSubscriptionSpec,
    Replay,
    SecretKeyRef,
)
from feedline_operator.builders import RENDERED_ENV
from feedline_subscriber.settings import FLAGS
from tests.support.operator_fixtures import crd, crd_schema

pytestmark = pytest.mark.unit


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _walk(value, f"{path}[{index}]")
    return found


def test_names_scope_and_subresources() -> None:
    doc = crd()
    assert doc["metadata"]["name"] == "eventsubscriptions.feedline.dev"
    spec = doc["spec"]
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["evsub"]
    assert "feedline" in spec["names"]["categories"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}


def test_feed_auth_types_are_the_one_vocabulary_of_the_contracts() -> None:
    feed = crd_schema()["properties"]["spec"]["properties"]["feed"]["properties"]
    accepted = [member.value for member in FeedAuth]
    assert feed["auth"]["properties"]["type"]["enum"] == accepted
    assert Auth.model_fields["type"].annotation is FeedAuth


def test_printer_columns() -> None:
    columns = {
        c["name"]: c["jsonPath"] for c in crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    }
    assert list(columns) == ["Feed", "Mode", "Schedule", "Position", "Lag", "Ready", "Age"]
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'


def test_schema_is_explicit() -> None:
    for path, node in _walk(crd_schema()):
        assert "x-kubernetes-preserve-unknown-fields" not in node, path


def test_every_rule_has_a_message() -> None:
    rules = [r for _, node in _walk(crd_schema()) for r in node.get("x-kubernetes-validations", [])]
    assert len(rules) >= 10
    assert all(r.get("message") for r in rules)


def _defaults(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        key: prop["default"]
        for key, prop in schema.get("properties", {}).items()
        if "default" in prop
    }


def test_model_defaults_match_the_crd_defaults() -> None:
    """The typed model reads manifests from disk too: same defaults as the API server."""
    spec_schema = crd_schema()["properties"]["spec"]
    model = EventSubscriptionSpec.model_validate(
        {
            "feed": {"url": "http://x/events"},
            "readModel": {"databaseSecretRef": {"name": "a", "key": "b"}, "projection": "m:f"},
        }
    ).model_dump(by_alias=True)
    for key, value in _defaults(spec_schema).items():
        if value == {}:
            nested = _defaults(spec_schema["properties"][key])
            assert {k: model[key][k] for k in nested} == nested, key
        else:
            assert model[key] == value, key
    retry_defaults = _defaults(spec_schema["properties"]["retry"])
    assert retry_defaults == {"maxAttempts": 3, "backoffSeconds": 1}
    # No replay unless one is asked for (the CRD has no default for it either);
    # a replay's fromSequence defaults to 0 in both.
    assert model["replay"] is None
    assert "default" not in spec_schema["properties"]["replay"]
    assert _defaults(spec_schema["properties"]["replay"]) == {"fromSequence": 0}
    assert Replay(token="t").from_sequence == 0


def _schedule_rule_accepts(schedule: str) -> bool:
    """The CRD's CEL rule on spec.schedule, evaluated by a real CEL implementation."""
    schedule_schema = crd_schema()["properties"]["spec"]["properties"]["schedule"]
    (rule,) = schedule_schema["x-kubernetes-validations"]
    return evaluate_rule(rule["rule"], schedule) is True


@pytest.mark.parametrize(
    "schedule",
    [
        "*/5 * * * *",
        "0 0 1 1 *",
        "@hourly",
        "@daily",
        "0 9 * * MON-FRI",
        "0 0 ? * sun",
        "5,10,15 1-3 */2 jan-mar 0",
        "59 23 31 12 7",
    ],
)
def test_cron_rule_accepts(schedule: str) -> None:
    assert _schedule_rule_accepts(schedule)
    if not schedule.startswith("@") and "?" not in schedule:
        assert croniter.is_valid(schedule)


@pytest.mark.parametrize(
    "schedule",
    [
        "",
        "* * * *",
        "* * * * * *",
        "60 * * * *",
        "0 24 * * *",
        "0 0 32 * *",
        "0 0 * 13 *",
        "0 0 * * 8",
        "TZ=UTC 0 0 * * *",
        "@every 5m",
        "hourly",
        "a b c d e",
    ],
)
def test_cron_rule_rejects(schedule: str) -> None:
    assert not _schedule_rule_accepts(schedule)


def test_extra_env_rule_refuses_every_feedline_variable() -> None:
    env_item = crd_schema()["properties"]["spec"]["properties"]["subscriber"]["properties"]["env"]
    (rule,) = env_item["items"]["x-kubernetes-validations"]
    assert rule["rule"] == f"!self.name.startsWith('{env_names.PREFIX}')"
    assert (rule["fieldPath"], rule["reason"]) == (".name", "FieldValueForbidden")
    # The rule (as `feedline dev` evaluates it too) refuses each, in the model's words.
    assert " ".join(rule["message"].split()) == RESERVED_ENV_MESSAGE
    for name in ("FEEDLINE_SUBSCRIBER_FAULT", "FEEDLINE_ANYTHING", *RENDERED_ENV):
        assert evaluate_rule(rule["rule"], {"name": name, "value": "x"}) is False, name
    assert evaluate_rule(rule["rule"], {"name": "UPSERT_KEY_FIELD"}) is True


def test_every_variable_the_subscriber_reads_is_rendered_by_the_operator() -> None:
    """Refusing every FEEDLINE_* name takes nothing away: each setting is a spec field."""
    read = {variable for _flag, variable in FLAGS.values()}
    assert read <= set(RENDERED_ENV), read - set(RENDERED_ENV)
    assert all(name.startswith(env_names.PREFIX) for name in RENDERED_ENV)


def _feed_schema() -> dict[str, Any]:
    feed: dict[str, Any] = crd_schema()["properties"]["spec"]["properties"]["feed"]
    return feed


@pytest.mark.parametrize("service", ["special-offers", "a", "x" * 63, "loyalty-program-2"])
def test_broker_stream_rule_accepts_every_stream_a_relay_publishes_to(service: str) -> None:
    stream = _feed_schema()["properties"]["broker"]["properties"]["stream"]
    (rule,) = stream["x-kubernetes-validations"]
    assert evaluate_rule(rule["rule"], stream_name(service)) is True
    assert len(stream_name(service)) <= stream["maxLength"]


@pytest.mark.parametrize(
    "stream",
    [
        "special-offers",  # the service alone
        "events.special-offers",
        "feedline.events.",  # no service
        "feedline.events.Special-Offers",
        "feedline.events.special_offers",
        "feedline.events.-offers",
        "feedline.events.offers-",
        "feedline.events.special.offers",
        "feedline-events-special-offers",  # the dots are dots, not any character
        "feedline.events." + "x" * 64,
        " feedline.events.special-offers",
    ],
)
def test_broker_stream_rule_refuses_anything_else_naming_the_field(stream: str) -> None:
    (rule,) = _feed_schema()["properties"]["broker"]["properties"]["stream"][
        "x-kubernetes-validations"
    ]
    assert evaluate_rule(rule["rule"], stream) is False
    # Built from the contracts' prefix; the message names the field and the form.
    assert STREAM_NAME_PREFIX in rule["rule"].replace("[.]", ".")
    assert rule["message"].startswith(f"feed.broker.stream must be {STREAM_NAME_PREFIX}SERVICE")


def test_broker_needs_an_http_feed_url() -> None:
    feed = _feed_schema()
    (rule,) = feed["x-kubernetes-validations"]
    assert (rule["fieldPath"], rule["reason"]) == (".url", "FieldValueInvalid")
    broker = {"urlSecretRef": {"name": "rabbitmq", "key": "url"}, "stream": "feedline.events.x"}
    for url in [f"{scheme}://special-offers/events" for scheme in env_names.HTTP_FEED_SCHEMES]:
        assert evaluate_rule(rule["rule"], {"url": url, "broker": broker}) is True
    for url in ["grpc://special-offers:9090", "grpcs://special-offers", "special-offers"]:
        assert evaluate_rule(rule["rule"], {"url": url, "broker": broker}) is False, url
        assert evaluate_rule(rule["rule"], {"url": url}) is True  # no broker: the url's own rule
    assert feed["properties"]["broker"]["required"] == ["urlSecretRef", "stream"]
    secret = feed["properties"]["broker"]["properties"]["urlSecretRef"]
    assert secret["required"] == list(SecretKeyRef.model_fields)
