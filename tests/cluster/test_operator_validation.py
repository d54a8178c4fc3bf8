"""The API server itself rejects bad EventSubscriptions, naming the field (CRD schema + CEL)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from tests.support.kube import apis
from tests.support.operator_fixtures import GROUP, PLURAL, VERSION, install_crd, subscription

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def evsub_crd(kube_api: client.ApiClient) -> None:
    install_crd(kube_api)


def _secret_ref(**ref: str) -> dict[str, Any]:
    return {"databaseSecretRef": ref, "projection": "a.b:c"}


def _with(**spec: Any) -> dict[str, Any]:
    return subscription("bad", **spec)


INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    # (case, body, field named in the answer, words of the message)
    ("cron syntax", _with(schedule="every five minutes"), "spec.schedule", "cron"),
    ("cron out of range", _with(schedule="61 * * * *"), "spec.schedule", "cron"),
    ("feed url scheme", _with(feed={"url": "ftp://feeds/events"}), "spec.feed.url", "http"),
    ("feed url not a url", _with(feed={"url": "special-offers"}), "spec.feed.url", "http"),
    ("schedule missing in CronJob mode", {**_with(), "spec": {
        k: v for k, v in _with()["spec"].items() if k != "schedule"}},
     "spec.schedule", "required"),
    ("schedule forbidden in Follow mode", _with(mode="Follow"), "spec.schedule", "forbidden"),
    ("unknown mode", _with(mode="Sometimes"), "spec.mode", "Unsupported value"),
    ("batch size zero", _with(batchSize=0), "spec.batchSize", "between 1 and 10000"),
    ("batch size too big", _with(batchSize=10001), "spec.batchSize", "between 1 and 10000"),
    ("max events below batch", _with(batchSize=100, maxEventsPerRun=10),
     "spec.maxEventsPerRun", "at least batchSize"),
    ("dsn secret without key", _with(readModel=_secret_ref(name="db")),
     "spec.readModel.databaseSecretRef.key", "Required"),
    ("token auth without secret", _with(feed={"url": "http://f/events",
                                              "auth": {"type": "Token"}}),
     "spec.feed.auth.secretRef", "required"),
    ("secret with none auth", _with(feed={"url": "http://f/events", "auth": {
        "type": "None", "secretRef": {"name": "t", "key": "k"}}}),
     "spec.feed.auth.secretRef", "only allowed"),
    ("replay from negative", _with(replay={"token": "r1", "fromSequence": -1}),
     "spec.replay.fromSequence", ">= 0"),
    ("start position word", _with(startPosition="Middle"), "spec.startPosition", "Beginning"),
    ("start position zero", _with(startPosition=0), "spec.startPosition", "Beginning"),
    ("projection import path", _with(readModel={
        "databaseSecretRef": {"name": "db", "key": "dsn"}, "projection": "not a path"}),
     "spec.readModel.projection", "should match"),
    ("poison policy", _with(onPoisonEvent="Ignore"), "spec.onPoisonEvent", "Unsupported value"),
    ("retry attempts", _with(retry={"maxAttempts": 0}), "spec.retry.maxAttempts",
     "greater than or equal to 1"),
    ("extra env overrides the operator", _with(subscriber={"env": [
        {"name": "FEEDLINE_FEED_URL", "value": "http://evil/events"}]}),
     "spec.subscriber.env[0].name", "may not set FEEDLINE_* variables"),
    ("extra env sets the old test-only fault switch", _with(subscriber={"env": [
        {"name": "FEEDLINE_SUBSCRIBER_FAULT", "value": "after-fetch@1"}]}),
     "spec.subscriber.env[0].name", "the operator sets every FEEDLINE_ variable"),
    ("extra env sets any FEEDLINE_ name", _with(subscriber={"env": [
        {"name": "LOG_LEVEL", "value": "debug"}, {"name": "FEEDLINE_ANYTHING", "value": "x"}]}),
     "spec.subscriber.env[1].name", "may not set FEEDLINE_* variables"),
    ("feed wait above the protocol's 30 s", _with(feed={"url": "http://f/events",
                                                         "waitSeconds": 31}),
     "spec.feed.waitSeconds", "less than or equal to 30"),
    ("name too long for a CronJob", {**_with(), "metadata": {"name": "n" * 53}},
     "metadata.name", "52"),
    ("unknown field", {**_with(), "spec": {**_with()["spec"], "shedule": "* * * * *"}},
     "spec.shedule", "unknown field"),
]  # fmt: skip


@pytest.mark.usefixtures("evsub_crd")
@pytest.mark.parametrize(
    ("body", "field", "words"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_subscription_is_rejected_naming_the_field(
    kube_api: client.ApiClient, namespace: str, body: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(apis.ApiException) as caught:
        apis.custom(kube_api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict"
        )
    assert caught.value.status in (400, 422), caught.value.body
    answer = json.loads(caught.value.body or "{}")
    message = answer.get("message", "")
    causes = answer.get("details", {}).get("causes", [])
    assert field in message or any(c.get("field") == field for c in causes), message
    assert words in message, message


@pytest.mark.usefixtures("evsub_crd")
def test_a_valid_subscription_is_defaulted(kube_api: client.ApiClient, namespace: str) -> None:
    created = apis.custom(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, subscription("good", startPosition=42)
    )
    spec = created["spec"]
    assert spec["mode"] == "CronJob"
    assert spec["batchSize"] == 1000
    assert spec["feed"]["auth"] == {"type": "None"}
    assert spec["onPoisonEvent"] == "Halt"
    assert spec["retry"] == {"maxAttempts": 3, "backoffSeconds": 1}
    assert spec["startPosition"] == 42
