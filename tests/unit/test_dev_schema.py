"""`feedline dev` checks manifests against the CRD's rules, as the API server would."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from feedline.dev import schema
from feedline.dev.manifests import ManifestError, Source, parse_secret, parse_subscription
from feedline_operator.builders import RENDERED_ENV
from feedline_operator.spec import RESERVED_ENV_MESSAGE

pytestmark = pytest.mark.unit

SCHEMA = schema.load_crd_schema(schema.find_crd() or Path("missing"))
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


def test_the_crd_is_found_and_every_rule_is_understood() -> None:
    assert schema.find_crd() is not None
    assert schema.unchecked_rules(SCHEMA) == []


def test_a_valid_subscription_passes_and_gets_the_crd_defaults() -> None:
    assert _problems(VALID) == []
    defaulted = schema.apply_defaults(VALID, SCHEMA)
    assert defaulted["spec"]["mode"] == "CronJob"
    assert defaulted["spec"]["batchSize"] == 1000
    assert defaulted["spec"]["retry"] == {"maxAttempts": 3, "backoffSeconds": 1}
    assert defaulted["spec"]["feed"]["auth"] == {"type": "None"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_with(spec__schedule=None), "spec.schedule: Required value: schedule is required"),
        (_with(spec__mode="Follow"), "spec.schedule: Forbidden: schedule is forbidden"),
        (
            _with(spec__mode="Follow", spec__schedule=None, spec__timeZone="Europe/Oslo"),
            "spec.timeZone: Forbidden",
        ),
        (_with(spec__schedule="61 * * * *"), "spec.schedule: Invalid value: schedule must be"),
        (_with(spec__schedule="every minute"), "spec.schedule: Invalid value"),
        (_with(spec__mode="Sometimes"), 'spec.mode: Unsupported value: "Sometimes"'),
        (_with(spec__batchSize=0), "spec.batchSize: Invalid value: batchSize must be between"),
        (_with(spec__batchSize="ten"), "spec.batchSize: Invalid type"),
        (
            _with(spec__batchSize=100, spec__maxEventsPerRun=10),
            "spec.maxEventsPerRun: Invalid value: maxEventsPerRun must be at least batchSize",
        ),
        (_with(spec__startPosition="Middle"), "spec.startPosition: Invalid value"),
        (_with(spec__feed__url="special-offers/events"), "spec.feed.url: Invalid value"),
        (_with(spec__feed__url="ftp://x/events"), "spec.feed.url: Invalid value"),
        (_with(spec__feed__eventTypes=["A", "A"]), "spec.feed.eventTypes[1]: Duplicate value"),
        (_with(spec__feed__auth={"type": "Token"}), "spec.feed.auth.secretRef: Required value"),
        (
            _with(spec__feed__auth={"type": "None", "secretRef": {"name": "a", "key": "b"}}),
            "spec.feed.auth.secretRef: Forbidden",
        ),
        (_with(spec__readModel__projection="no-colon"), "spec.readModel.projection: Invalid"),
        (_with(spec__readModel=None), "spec.readModel: Required value"),
        (
            _with(spec__readModel__databaseSecretRef={"name": "x"}),
            "spec.readModel.databaseSecretRef.key: Required value",
        ),
        (_with(spec__scheduel="* * * * *"), 'spec.scheduel: Unknown field: unknown field "sc'),
        (_with(spec__retry={"maxAttempts": 0}), "spec.retry.maxAttempts: Invalid value"),
        (_with(spec__replay={"token": "a", "fromSequence": -1}), "spec.replay.fromSequence"),
        (
            _with(spec__subscriber={"env": [{"name": RENDERED_ENV[0], "value": "x"}]}),
            f"spec.subscriber.env[0].name: Forbidden: {RESERVED_ENV_MESSAGE}",
        ),
        (
            _with(spec__subscriber={"env": [{"name": "FEEDLINE_SUBSCRIBER_FAULT", "value": "x"}]}),
            f"spec.subscriber.env[0].name: Forbidden: {RESERVED_ENV_MESSAGE}",
        ),
        (
            _with(
                spec__subscriber={
                    "env": [{"name": "LOG_LEVEL", "value": "debug"}, {"name": "FEEDLINE_ANYTHING"}]
                }
            ),
            "spec.subscriber.env[1].name: Forbidden: spec.subscriber.env may not set FEEDLINE_*",
        ),
        (_with(spec__feed__waitSeconds=31), "spec.feed.waitSeconds: Invalid value: 31: must be <="),
        (_with(spec__feed__retryAttempts=-1), "spec.feed.retryAttempts: Invalid value"),
        (_with(metadata__name="x" * 53), "metadata.name: Invalid value: metadata.name must be"),
    ],
)
def test_invalid_subscriptions_name_the_field(body: dict[str, Any], expected: str) -> None:
    problems = _problems(body)
    assert any(p.startswith(expected) for p in problems), problems


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


def test_parse_subscription_without_a_crd_still_uses_the_typed_model() -> None:
    with pytest.raises(ManifestError, match=r"spec\.mode"):
        parse_subscription(_with(spec__mode="Sometimes"), SOURCE, None)
    loaded = parse_subscription(VALID, SOURCE, None)
    assert loaded.subscription.spec.batch_size == 1000


def test_feedline_variables_are_refused_even_without_the_crd() -> None:
    body = _with(spec__subscriber={"env": [{"name": "FEEDLINE_SUBSCRIBER_FAULT", "value": "x"}]})
    with pytest.raises(ManifestError) as caught:
        parse_subscription(body, SOURCE, None)
    assert "spec.subscriber.env.0.name" in str(caught.value)
    assert RESERVED_ENV_MESSAGE in str(caught.value)


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
