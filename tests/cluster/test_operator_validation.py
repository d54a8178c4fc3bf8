"""The API server itself rejects bad EventSubscriptions, naming the field (CRD schema + CEL)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from tests.support.eventsubscription_cases import InvalidCase, invalid_params, valid_params
from tests.support.kube import apis
from tests.support.operator_fixtures import GROUP, PLURAL, VERSION, install_crd, subscription

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def evsub_crd(kube_api: client.ApiClient) -> None:
    install_crd(kube_api)


# The same manifests go through `feedline dev`'s validation in the unit tier
# (tests/unit/test_eventsubscription_cases.py): both must refuse each, naming the field.
@pytest.mark.usefixtures("evsub_crd")
@pytest.mark.parametrize("case", invalid_params())
def test_invalid_subscription_is_rejected_naming_the_field(
    kube_api: client.ApiClient, namespace: str, case: InvalidCase
) -> None:
    with pytest.raises(apis.ApiException) as caught:
        apis.custom(kube_api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, case.body, field_validation="Strict"
        )
    assert caught.value.status in (400, 422), caught.value.body
    answer = json.loads(caught.value.body or "{}")
    message = answer.get("message", "")
    causes = answer.get("details", {}).get("causes", [])
    assert case.field in message or any(c.get("field") == case.field for c in causes), message
    assert case.words in message, message


@pytest.mark.usefixtures("evsub_crd")
@pytest.mark.parametrize("body", valid_params())
def test_valid_subscriptions_are_accepted(
    kube_api: client.ApiClient, namespace: str, body: dict[str, Any]
) -> None:
    created = apis.custom(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict"
    )
    assert created["metadata"]["name"] == body["metadata"]["name"]


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
