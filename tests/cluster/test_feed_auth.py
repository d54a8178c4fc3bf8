"""Feed auth `ServiceAccountToken`:
projected ServiceAccount tokens checked by a real TokenReview, over HTTP and over gRPC;
and authorisation: only the feed's readers (FEEDLINE_FEED_READERS) may read it, others
get 403 / PERMISSION_DENIED, and a real subscriber that is not among them fails at once."""

from __future__ import annotations

import time
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
from feedline_contracts.auth import READERS_SETTING, FeedAuth
from feedline_contracts.feed_v1 import feed_pb2, feed_pb2_grpc
from tests.support.kube import apis
from tests.support.kube.cluster import create_namespace, delete_namespace, namespace_name
from tests.support.ports import free_port
from tests.support.services import serving_in_thread
from tests.support.subscriber_process import Finished, run_subscriber, subscriber_env

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


# Authorisation (FEEDLINE_FEED_READERS, docs/feed-protocol.md "Authorisation"): who the
# TokenReview says a reader is, against the feed's readers.


@dataclass(frozen=True)
class Reader:
    """A ServiceAccount as a reader: the name a TokenReview gives it, and its token."""

    username: str  # system:serviceaccount:NAMESPACE:NAME
    token: str  # for the feed's audience


@dataclass(frozen=True)
class Readers:
    namespace: str
    a: Reader  # ServiceAccount reader-a of the test's namespace
    b: Reader  # reader-b of the same namespace
    outsider: Reader  # a ServiceAccount also named reader-a, of another namespace
    a_other_audience: str  # reader-a's token for another audience


@pytest.fixture
def readers(
    kube_api: client.ApiClient, namespace: str, request: pytest.FixtureRequest
) -> Iterator[Readers]:
    core = apis.core(kube_api)
    elsewhere = create_namespace(kube_api, namespace_name(f"other-{request.node.name}"))
    try:

        def reader(ns: str, name: str) -> Reader:
            core.create_namespaced_service_account(ns, {"metadata": {"name": name}})
            return Reader(
                f"system:serviceaccount:{ns}:{name}",
                service_account_token(kube_api, ns, name, "feedline"),
            )

        a = reader(namespace, "reader-a")
        yield Readers(
            namespace=namespace,
            a=a,
            b=reader(namespace, "reader-b"),
            outsider=reader(elsewhere, "reader-a"),
            a_other_audience=service_account_token(
                kube_api, namespace, "reader-a", "somebody-else"
            ),
        )
    finally:
        delete_namespace(kube_api, elsewhere)


def serve_with_readers(
    tokens: Tokens, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allowed: str
) -> tuple[ServiceSettings, int]:
    """The service's settings as the chart renders them: FEEDLINE_FEED_AUTH and
    FEEDLINE_FEED_READERS (feedAuth.readers), FEEDLINE_GRPC_PORT; its gRPC port."""
    port = free_port()
    monkeypatch.setenv("FEEDLINE_FEED_AUTH", "ServiceAccountToken")
    monkeypatch.setenv(READERS_SETTING, allowed)
    monkeypatch.setenv("FEEDLINE_GRPC_PORT", str(port))
    review = {key: value for key, value in tokens.settings.items() if key != "feed_auth"}
    settings = ServiceSettings(database_url=f"sqlite:///{tmp_path / 'offers.db'}", **review)
    assert settings.feed_auth is FeedAuth.SERVICE_ACCOUNT_TOKEN
    assert settings.feed_readers == (allowed,)
    return settings, port


def forbidden(reader: Reader) -> str:
    """The whole message a reader not among the feed's readers gets: itself, nothing else."""
    return f"{reader.username} may not read this feed: it is not among the feed's readers"


@pytest.mark.parametrize("by", ["serviceaccount", "namespace"])
def test_only_the_feeds_readers_may_read_it_over_http_and_grpc(
    by: str,
    tokens: Tokens,
    readers: Readers,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FEEDLINE_FEED_READERS naming ServiceAccount reader-a (or, by namespace, every
    ServiceAccount of its namespace), checked against what a real TokenReview says:
    those named read (HTTP 200, gRPC OK); another authenticated ServiceAccount gets 403 /
    PERMISSION_DENIED with a message naming it and not the readers; a token for another
    audience is still 401 / UNAUTHENTICATED (authentication comes first)."""
    if by == "serviceaccount":
        allowed = readers.a.username
        admitted, refused = [readers.a], [readers.b, readers.outsider]
    else:
        allowed = f"system:serviceaccounts:{readers.namespace}"
        admitted, refused = [readers.a, readers.b], [readers.outsider]
    settings, port = serve_with_readers(tokens, tmp_path, monkeypatch, allowed)
    with serving_in_thread(create_app(SERVICES["special-offers"], settings)) as base:
        httpx.post(f"{base}/offers", json={"description": "for readers"}).raise_for_status()

        def read(token: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"}
            return httpx.get(f"{base}/events", headers=headers, timeout=30)

        for reader in admitted:
            answer = read(reader.token)
            assert answer.status_code == 200, (reader.username, answer.text)
            assert [event["name"] for event in answer.json()] == ["SpecialOfferCreated"]
        for reader in refused:
            answer = read(reader.token)
            assert answer.status_code == 403, (reader.username, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            detail = answer.json()["detail"]
            assert detail == forbidden(reader)
            assert allowed not in answer.text
        assert read(readers.a_other_audience).status_code == 401

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = feed_pb2_grpc.EventFeedStub(channel)

            def subscribe(token: str) -> list[str]:
                call = stub.Subscribe(
                    feed_pb2.SubscribeRequest(start=1, limit=100),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=DEADLINE,
                )
                return [event.name for batch in call for event in batch.events]

            def head(token: str) -> list[str]:
                answer = stub.Head(
                    feed_pb2.HeadRequest(),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=DEADLINE,
                )
                return [str(answer.head)]

            for reader in admitted:
                assert subscribe(reader.token) == ["SpecialOfferCreated"], reader.username
                assert head(reader.token) == ["1"], reader.username
            for token, code, details in [
                *((r.token, grpc.StatusCode.PERMISSION_DENIED, forbidden(r)) for r in refused),
                (readers.a_other_audience, grpc.StatusCode.UNAUTHENTICATED, None),
            ]:
                for call in (subscribe, head):
                    with pytest.raises(grpc.RpcError) as error:
                        call(token)
                    rpc_error = cast(grpc.Call, error.value)
                    assert rpc_error.code() == code, (call.__name__, rpc_error.details())
                    if details is not None:
                        assert rpc_error.details() == details, call.__name__


# A refused run that retried would take the whole retry budget: 8 attempts waiting 0.5 s,
# doubling up to 10 s (cronjobs/feedline_subscriber/feed_transport.py), ~45 s in all.
FEED_RETRY_ATTEMPTS = 8
AT_ONCE_SECONDS = 20.0


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_subscriber_not_among_the_readers_fails_at_once(
    transport: str,
    tokens: Tokens,
    readers: Readers,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`feedline subscribe` as a CronJob's pod runs it, with its ServiceAccount's token
    in a file: reader-b, authenticated but not among the feed's readers (reader-a), fails
    at once (exit 1, summary Failed: refused the subscriber (403 / PERMISSION_DENIED)
    naming reader-b, one request, no retries); reader-a reads every event."""
    settings, port = serve_with_readers(tokens, tmp_path, monkeypatch, readers.a.username)
    with serving_in_thread(create_app(SERVICES["special-offers"], settings)) as base:
        for n in range(3):
            httpx.post(f"{base}/offers", json={"description": f"offer {n}"}).raise_for_status()
        url = f"{base}/events" if transport == "http" else f"grpc://127.0.0.1:{port}"

        def run(reader: Reader) -> tuple[Finished, float]:
            token_file = tmp_path / f"{reader.username.rsplit(':', 1)[1]}.token"
            token_file.write_text(reader.token)
            environment = subscriber_env(
                f"offers-{transport}",
                url,
                f"sqlite:///{tmp_path / 'read-model.db'}",
                FEEDLINE_FEED_AUTH="ServiceAccountToken",
                FEEDLINE_FEED_TOKEN_FILE=str(token_file),
                FEEDLINE_FEED_RETRY_ATTEMPTS=str(FEED_RETRY_ATTEMPTS),
            )
            started = time.monotonic()
            finished = run_subscriber(environment)
            return finished, time.monotonic() - started

        refused, seconds = run(readers.b)
        assert refused.returncode == 1, refused.stderr[-3000:]
        assert refused.summary["outcome"] == "Failed"
        code = "403" if transport == "http" else "PERMISSION_DENIED"
        assert refused.summary["message"] == (
            f"FeedUnavailableError: feed {url} refused the subscriber ({code}): "
            f"{forbidden(readers.b)}"
        )
        assert readers.a.username not in refused.stdout + refused.stderr
        assert seconds < AT_ONCE_SECONDS, f"the refused run took {seconds:.1f} s"
        if transport == "http":
            metrics = httpx.get(f"{base}/metrics").text
            assert (
                'feedline_http_requests_total{method="GET",route="/events",status="403"} 1.0'
                in (metrics.splitlines())
            )

        accepted, _ = run(readers.a)
        assert accepted.returncode == 0, accepted.stderr[-3000:]
        assert (accepted.summary["outcome"], accepted.summary["processed"]) == ("CaughtUp", 3)
