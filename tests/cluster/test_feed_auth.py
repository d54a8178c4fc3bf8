"""Feed auth `ServiceAccountToken`:
projected ServiceAccount tokens checked by a real TokenReview."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from kubernetes import client

from feedline.chassis.app import create_app
from feedline.chassis.settings import ServiceSettings
from feedline.services.registry import SERVICES
from feedline_contracts.auth import FeedAuth
from tests.support.kube import apis
from tests.support.services import serving_in_thread

pytestmark = pytest.mark.cluster


def service_account_token(
    api: client.ApiClient, namespace: str, name: str, audience: str | None
) -> str:
    """A bound token from the TokenRequest API, as a projected volume would hold it."""
    spec: dict[str, Any] = {"expirationSeconds": 600}
    if audience:
        spec["audiences"] = [audience]
    answer = apis.core(api).create_namespaced_service_account_token(
        name,
        namespace,
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
    )
    return cast(str, answer.status.token)


def test_only_service_account_tokens_for_the_feedline_audience_may_read_the_feed(
    kube_api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = apis.core(kube_api)
    for name in ("special-offers", "subscriber"):
        core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    # The service asks TokenReviews with its own token: it needs auth-delegator.
    binding = f"feedline-auth-delegator-{uuid.uuid4().hex[:6]}"
    apis.rbac(kube_api).create_cluster_role_binding(
        {
            "metadata": {"name": binding},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:auth-delegator",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": "special-offers", "namespace": namespace}
            ],
        }
    )
    try:
        own_token = tmp_path / "token"
        own_token.write_text(service_account_token(kube_api, namespace, "special-offers", None))
        configuration = cast(Any, kube_api).configuration
        settings = ServiceSettings(
            database_url=f"sqlite:///{tmp_path / 'offers.db'}",
            feed_auth=FeedAuth.SERVICE_ACCOUNT_TOKEN,
            kubernetes_api_url=configuration.host,
            kubernetes_token_file=own_token,
            kubernetes_ca_file=Path(configuration.ssl_ca_cert)
            if configuration.ssl_ca_cert
            else None,
        )
        feedline_token = service_account_token(kube_api, namespace, "subscriber", "feedline")
        other_audience = service_account_token(kube_api, namespace, "subscriber", "somebody-else")
        with serving_in_thread(create_app(SERVICES["special-offers"], settings)) as base:
            httpx.post(f"{base}/offers", json={"description": "for subscribers"}).raise_for_status()

            def read(token: str | None) -> httpx.Response:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                return httpx.get(f"{base}/events", headers=headers, timeout=30)

            accepted = read(feedline_token)
            assert accepted.status_code == 200, accepted.text
            assert [event["name"] for event in accepted.json()] == ["SpecialOfferCreated"]
            assert read(other_audience).status_code == 401
            assert read("not-a-token").status_code == 401
            assert read(None).status_code == 401
    finally:
        apis.rbac(kube_api).delete_cluster_role_binding(binding)
