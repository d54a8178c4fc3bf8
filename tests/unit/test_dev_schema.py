"""`feedline dev` checks manifests against the CRD's rules, as the API server would.

The invalid manifests both tiers refuse are tests/data/eventsubscriptions/invalid
(tests/unit/test_eventsubscription_cases.py here, tests/cluster/test_operator_validation.py
against a real kube-apiserver).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from feedline.dev import schema
from feedline.dev.manifests import ManifestError, Source, parse_secret, parse_subscription
from feedline_contracts.eventsubscription import RESERVED_ENV_MESSAGE
from feedline_contracts.eventsubscription import crd as crd_file
from tests.support.operator_fixtures import CRD_PATH

pytestmark = pytest.mark.unit

SCHEMA = schema.shipped_schema()
SOURCE = Source(Path("subs/loyalty.yaml"))

VALID: dict[str, Any] = {
    "apiVersion": "feedline.dev/v1alpha1",
    "kind": "EventSubscription",
    "metadata": {"name": "loyalty-special-offers"},
    "spec": {
        "feed": {"url": "http://special-offers/events"},
        "schedule": "*/5 * * * *",
        "readModel": {
            "databaseSecretRef": {"name": "loyalty-db", "key": "dsn"},
            "projection": "feedline.services.loyalty_program.projection:project_special_offers",
        },
    },
}


def _with(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        node = body
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return body


def _problems(body: dict[str, Any]) -> list[str]:
    return [str(p) for p in schema.validate(schema.apply_defaults(body, SCHEMA), SCHEMA)]


def test_the_shipped_crd_is_the_charts_and_every_rule_compiles() -> None:
    assert schema.load_crd_schema(CRD_PATH) == SCHEMA
    assert crd_file.openapi_schema(crd_file.build()) == SCHEMA
    rules = schema.rules_of(SCHEMA)
    assert len(rules) >= 10
    for _path, expression in rules:
        schema.compile_rule(expression)  # CELParseError if celpy cannot read it


def test_a_valid_subscription_passes_and_gets_the_crd_defaults() -> None:
    assert _problems(VALID) == []
    defaulted = schema.apply_defaults(VALID, SCHEMA)
    assert defaulted["spec"]["mode"] == "CronJob"
    assert defaulted["spec"]["batchSize"] == 1000
    assert defaulted["spec"]["retry"] == {"maxAttempts": 3, "backoffSeconds": 1}
    assert defaulted["spec"]["feed"]["auth"] == {"type": "None"}


def test_problems_read_like_the_api_servers() -> None:
    """Field path, reason and message in the API server's words (as `kubectl apply` prints)."""
    assert _problems(_with(spec__schedule=None)) == [
        "spec.schedule: Required value: schedule is required when mode is CronJob"
    ]
    assert _problems(_with(spec__batchSize=0)) == [
        "spec.batchSize: Invalid value: 0: batchSize must be between 1 and 10000 "
        "(the feed's largest page)"
    ]
    assert _problems(_with(spec__feed__waitSeconds=31)) == [
        "spec.feed.waitSeconds: Invalid value: 31: spec.feed.waitSeconds in body should be "
        "less than or equal to 30"
    ]
    assert _problems(_with(metadata__name="x" * 53)) == [
        "<root>: Invalid value: metadata.name must be at most 52 characters (it names the CronJob)"
    ]
    assert _problems(_with(spec__scheduel="* * * * *")) == [
        'spec.scheduel: Unknown field: unknown field "spec.scheduel"'
    ]


@pytest.mark.parametrize(
    ("url", "scheme", "hostname", "port"),
    [
        ("http://special-offers/events", "http", "special-offers", ""),
        ("https://user@feeds.example:8443/e?x=1#f", "https", "feeds.example", "8443"),
        ("http://[::1]:80/events", "http", "::1", "80"),
        ("/events", "", "", ""),  # an absolute path is a request URI too
        ("mailto:ops@example.org", "mailto", "", ""),
    ],
)
def test_the_kubernetes_url_functions(url: str, scheme: str, hostname: str, port: str) -> None:
    parsed = schema.parse_request_uri(url)
    assert parsed is not None
    assert (parsed.parts.scheme, parsed.hostname, parsed.port) == (scheme, hostname, port)
    assert schema.evaluate_rule(
        f"isURL(self) && url(self).getScheme() == '{scheme}' "
        f"&& url(self).getHostname() == '{hostname}' && url(self).getPort() == '{port}'",
        url,
    )


@pytest.mark.parametrize(
    "text", ["", "special-offers/events", "1http://x/", "http://a b/", "http://x:port/", "a\x01"]
)
def test_what_is_not_a_url(text: str) -> None:
    assert schema.parse_request_uri(text) is None
    assert schema.evaluate_rule("isURL(self)", text) is False
    assert schema.evaluate_rule("url(self).getScheme() == 'http'", text) is not True


@pytest.mark.parametrize(
    "schedule", ["* * * * *", "@hourly", "0 9 * * MON-FRI", "*/15 0-6 1,15 JAN-MAR ?"]
)
def test_valid_schedules(schedule: str) -> None:
    assert _problems(_with(spec__schedule=schedule)) == []


def test_parse_subscription_errors_name_file_object_and_field() -> None:
    with pytest.raises(ManifestError) as caught:
        parse_subscription(_with(spec__schedule=None), SOURCE, SCHEMA)
    assert str(caught.value) == (
        'subs/loyalty.yaml: EventSubscription "loyalty-special-offers": spec.schedule: '
        "Required value: schedule is required when mode is CronJob"
    )


def test_parse_subscription_checks_against_the_shipped_crd_by_default() -> None:
    with pytest.raises(ManifestError, match=r"spec\.mode: Unsupported value"):
        parse_subscription(_with(spec__mode="Sometimes"), SOURCE)
    loaded = parse_subscription(VALID, SOURCE)
    assert loaded.subscription.spec.batch_size == 1000


def test_feedline_variables_are_refused_by_default() -> None:
    body = _with(spec__subscriber={"env": [{"name": "FEEDLINE_SUBSCRIBER_FAULT", "value": "x"}]})
    with pytest.raises(ManifestError) as caught:
        parse_subscription(body, SOURCE)
    assert f"spec.subscriber.env[0].name: Forbidden: {RESERVED_ENV_MESSAGE}" in str(caught.value)


def test_extra_variables_and_the_feed_settings_that_replace_feedline_ones_are_accepted() -> None:
    body = _with(
        spec__feed__waitSeconds=5,
        spec__feed__retryAttempts=0,
        spec__subscriber={"env": [{"name": "UPSERT_KEY_FIELD", "value": "offerId"}]},
    )
    assert _problems(body) == []
    loaded = parse_subscription(body, SOURCE, SCHEMA).subscription
    assert (loaded.spec.feed.wait_seconds, loaded.spec.feed.retry_attempts) == (5, 0)


def test_a_bad_name_is_refused() -> None:
    with pytest.raises(ManifestError, match=r"metadata\.name: Invalid value"):
        parse_subscription(_with(metadata__name="Not_A_Name"), SOURCE, SCHEMA)
    with pytest.raises(ManifestError, match=r"metadata\.name: Required value"):
        parse_subscription(_with(metadata__name=None), SOURCE, SCHEMA)


def test_secrets_decode_data_and_take_string_data() -> None:
    secret = parse_secret(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db", "namespace": "shop"},
            "data": {"a": "aGVsbG8="},
            "stringData": {"b": "plain"},
        },
        SOURCE,
    )
    assert (secret.namespace, secret.name, secret.data) == (
        "shop",
        "db",
        {"a": "hello", "b": "plain"},
    )
    with pytest.raises(ManifestError, match=r"data\[a\]: Invalid value: not base64"):
        parse_secret(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "data": {"a": "%"}},
            SOURCE,
        )
