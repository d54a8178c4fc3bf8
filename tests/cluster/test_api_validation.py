"""The API server enforces a CRD's OpenAPI schema and CEL rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.support.kube import apis
from tests.support.wait import wait_for

pytestmark = pytest.mark.cluster

CRD_FILE = Path(__file__).parents[1] / "data" / "crds" / "widgets.yaml"
GROUP, VERSION, PLURAL = "test.feedline.dev", "v1", "widgets"


@pytest.fixture(scope="module")
def widgets_crd(kube_api: client.ApiClient) -> Iterator[str]:
    extensions = apis.apiextensions(kube_api)
    body = yaml.safe_load(CRD_FILE.read_text())
    name = body["metadata"]["name"]
    try:
        extensions.create_custom_resource_definition(body)
    except apis.ApiException as err:
        if err.status != 409:
            raise

    def established() -> bool:
        crd = extensions.read_custom_resource_definition(name)
        conditions = crd.status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(established, timeout=30, what=f"CRD {name} Established")
    yield name
    extensions.delete_custom_resource_definition(name)


def widget(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": spec,
    }


def create(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> Any:
    return apis.custom(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def causes(err: apis.ApiException) -> list[dict[str, str]]:
    status = json.loads(err.body or "{}")
    return list(status.get("details", {}).get("causes", []))


@pytest.mark.usefixtures("widgets_crd")
def test_cel_rule_rejects_widget_with_field_path(
    kube_api: client.ApiClient, namespace: str
) -> None:
    with pytest.raises(apis.ApiException) as info:
        create(kube_api, namespace, widget("too-big", {"size": 5, "maxSize": 3}))

    assert info.value.status == 422
    assert any(
        c.get("field") == "spec.size" and "size must not exceed maxSize" in c.get("message", "")
        for c in causes(info.value)
    ), info.value.body


@pytest.mark.usefixtures("widgets_crd")
def test_openapi_schema_rejects_widget_with_field_path(
    kube_api: client.ApiClient, namespace: str
) -> None:
    with pytest.raises(apis.ApiException) as info:
        create(kube_api, namespace, widget("purple", {"size": 1, "color": "purple"}))

    assert info.value.status == 422
    assert any(c.get("field") == "spec.color" for c in causes(info.value)), info.value.body


@pytest.mark.usefixtures("widgets_crd")
def test_valid_widget_is_stored(kube_api: client.ApiClient, namespace: str) -> None:
    create(kube_api, namespace, widget("fine", {"size": 2, "maxSize": 3, "color": "green"}))

    stored = apis.custom(kube_api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "fine"
    )
    assert stored["spec"] == {"size": 2, "maxSize": 3, "color": "green"}
