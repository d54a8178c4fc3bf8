"""Feed auth `ServiceAccountToken`:
projected ServiceAccount tokens checked by a real TokenReview, over HTTP and over gRPC."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import httpx
import pytest
from kubernetes import client

from feedline.chassis.app import create_app
from feedline.chassis.settings import ServiceSettings
from feedline.services.registry import SERVICES
from feedline_contracts.auth import FeedAuth
from feedline_contracts.feed_v1 import feed_pb2, feed_pb2_grpc
from tests.support.kube import apis
from tests.support.ports import free_port
from tests.support.services import serving_in_thread

pytestmark = pytest.mark.cluster

# Every gRPC call has a deadline: a broken server fails the test instead of hanging it.
DEADLINE = 30.0


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


@dataclass(frozen=True)
class Tokens:
    """What a service in ServiceAccountToken mode needs, and what readers present."""

    settings: dict[str, Any]  # the service's TokenReview settings (its own token, the API)
    feedline: str  # a subscriber's token with the feed's audience
    other_audience: str  # the same ServiceAccount's token for another audience


@pytest.fixture
def tokens(kube_api: client.ApiClient, namespace: str, tmp_path: Path) -> Iterator[Tokens]:
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
        yield Tokens(
            settings={
                "feed_auth": FeedAuth.SERVICE_ACCOUNT_TOKEN,
                "kubernetes_api_url": configuration.host,
                "kubernetes_token_file": own_token,
                "kubernetes_ca_file": Path(configuration.ssl_ca_cert)
                if configuration.ssl_ca_cert
                else None,
            },
            feedline=service_account_token(kube_api, namespace, "subscriber", "feedline"),
            other_audience=service_account_token(
                kube_api, namespace, "subscriber", "somebody-else"
            ),
        )
    finally:
        apis.rbac(kube_api).delete_cluster_role_binding(binding)


def test_only_service_account_tokens_for_the_feedline_audience_may_read_the_feed(
    tokens: Tokens, tmp_path: Path
) -> None:
    settings = ServiceSettings(
        database_url=f"sqlite:///{tmp_path / 'offers.db'}", **tokens.settings
    )
    with serving_in_thread(create_app(SERVICES["special-offers"], settings)) as base:
        httpx.post(f"{base}/offers", json={"description": "for subscribers"}).raise_for_status()

        def read(token: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return httpx.get(f"{base}/events", headers=headers, timeout=30)

        accepted = read(tokens.feedline)
        assert accepted.status_code == 200, accepted.text
        assert [event["name"] for event in accepted.json()] == ["SpecialOfferCreated"]
        assert read(tokens.other_audience).status_code == 401
        assert read("not-a-token").status_code == 401
        assert read(None).status_code == 401


def test_the_grpc_feed_checks_service_account_tokens_with_token_review(
    tokens: Tokens, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As deployed: the service given FEEDLINE_GRPC_PORT (the chart's grpc.enabled); a
    reader's `authorization: Bearer` metadata is checked by a real TokenReview, as over
    HTTP: a token for the feed's audience reads, anything else is UNAUTHENTICATED."""
    port = free_port()
    monkeypatch.setenv("FEEDLINE_GRPC_PORT", str(port))
    settings = ServiceSettings(
        database_url=f"sqlite:///{tmp_path / 'offers.db'}", **tokens.settings
    )
    assert settings.grpc_port == port
    with serving_in_thread(create_app(SERVICES["special-offers"], settings)) as base:
        httpx.post(f"{base}/offers", json={"description": "for subscribers"}).raise_for_status()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = feed_pb2_grpc.EventFeedStub(channel)

            def metadata(token: str | None) -> tuple[tuple[str, str | bytes], ...]:
                return (("authorization", f"Bearer {token}"),) if token else ()

            def subscribe(token: str | None) -> list[feed_pb2.EventBatch]:
                request = feed_pb2.SubscribeRequest(start=1, limit=100)
                call = stub.Subscribe(request, metadata=metadata(token), timeout=DEADLINE)
                return list(call)

            def head(token: str | None) -> int:
                answer = stub.Head(
                    feed_pb2.HeadRequest(), metadata=metadata(token), timeout=DEADLINE
                )
                return int(answer.head)

            batches = subscribe(tokens.feedline)
            assert [e.name for b in batches for e in b.events] == ["SpecialOfferCreated"]
            assert head(tokens.feedline) == 1

            for refused in (tokens.other_audience, "not-a-token", None):
                for call in (subscribe, head):
                    with pytest.raises(grpc.RpcError) as error:
                        call(refused)
                    rpc_error = cast(grpc.Call, error.value)
                    assert rpc_error.code() == grpc.StatusCode.UNAUTHENTICATED, (
                        call.__name__,
                        refused,
                        rpc_error.details(),
                    )
