"""Who may read a feed: none, a static bearer token, or a Kubernetes ServiceAccount token.

``ServiceAccountToken`` mode checks the caller's projected ServiceAccount token with the
API server's TokenReview (audience ``feedline``), using the service's own
ServiceAccount token to ask. Positive answers are cached briefly so a busy
subscriber does not cost a TokenReview per page.

One check serves every transport: ``FeedAuthorizer.check`` takes the
``Authorization`` value (an HTTP header, or the gRPC feed's ``authorization``
metadata) and raises ``FeedAuthError``; the HTTP feed's dependency
(``FeedAuthorizer.__call__``) answers it as 401 (503 when the check itself
failed), the gRPC feed as UNAUTHENTICATED (UNAVAILABLE).
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog
from fastapi import HTTPException, Request

from feedline.chassis.settings import ServiceSettings
from feedline_contracts.auth import FeedAuth

log = structlog.get_logger("feedline.auth")

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


class FeedAuthError(Exception):
    """The reader may not read the feed.

    ``unavailable``: the check itself failed (try later; HTTP 503, gRPC UNAVAILABLE).
    ``forbidden``: the reader is authenticated but not among the feed's readers
    (HTTP 403, gRPC PERMISSION_DENIED). Neither: not authenticated (401, UNAUTHENTICATED).
    """

    def __init__(self, detail: str, *, unavailable: bool = False, forbidden: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.unavailable = unavailable
        self.forbidden = forbidden


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": 'Bearer realm="feedline"'})


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` value, or FeedAuthError."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise FeedAuthError("this feed needs an Authorization: Bearer token")
    return token.strip()


class FeedAuthorizer(ABC):
    """Checks a reader's ``Authorization`` value; one instance serves HTTP and gRPC."""

    @abstractmethod
    async def check(self, authorization: str | None) -> None:
        """Return if the reader may read the feed; raise FeedAuthError if not."""

    async def __call__(self, request: Request) -> None:
        """The HTTP feed's dependency: ``check`` on the header, failures as 401 (or 503)."""
        try:
            await self.check(request.headers.get("authorization"))
        except FeedAuthError as exc:
            if exc.unavailable:
                raise HTTPException(503, exc.detail) from exc
            if exc.forbidden:
                raise HTTPException(403, exc.detail) from exc
            raise _unauthorized(exc.detail) from exc


class AllowAnyone(FeedAuthorizer):
    async def check(self, authorization: str | None) -> None:
        return None


class StaticToken(FeedAuthorizer):
    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def check(self, authorization: str | None) -> None:
        if not hmac.compare_digest(bearer_token(authorization).encode(), self._token):
            raise FeedAuthError("the bearer token is not valid for this feed")


@dataclass(frozen=True)
class Reader:
    """Who a TokenReview says the reader is."""

    username: str  # system:serviceaccount:NAMESPACE:NAME for a ServiceAccount
    groups: frozenset[str]  # system:serviceaccounts, system:serviceaccounts:NAMESPACE, ...

    def is_among(self, readers: frozenset[str]) -> bool:
        """Named by the allow-list: its username, or a group it is in (a whole namespace)."""
        return self.username in readers or not readers.isdisjoint(self.groups)


class KubernetesTokenReview(FeedAuthorizer):
    """Accepts tokens that the API server's TokenReview authenticates for ``audience``.

    With ``readers`` (FEEDLINE_FEED_READERS), only those it names: a user name
    (``system:serviceaccount:NAMESPACE:NAME``) or a group
    (``system:serviceaccounts:NAMESPACE``: every ServiceAccount of a namespace).
    Anyone else authenticated gets FeedAuthError(forbidden): authorisation, not
    only authentication. Empty: every authenticated reader.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        own_token_file: Path,
        audience: str,
        cache_seconds: float = 60.0,
        readers: frozenset[str] = frozenset(),
    ) -> None:
        self._client = client
        self._own_token_file = own_token_file
        self._audience = audience
        self._cache_seconds = cache_seconds
        self._readers = readers
        # sha256(token) -> (until when, who it authenticated as): a reader turned away
        # costs no TokenReview either while its token is cached.
        self._reviewed: dict[str, tuple[float, Reader]] = {}

    async def review(self, token: str) -> dict[str, Any]:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self._audience]},
        }
        # Re-read every time: the kubelet rotates projected tokens.
        own_token = self._own_token_file.read_text().strip()
        response = await self._client.post(
            TOKEN_REVIEW_PATH, json=body, headers={"Authorization": f"Bearer {own_token}"}
        )
        response.raise_for_status()
        status: dict[str, Any] = response.json().get("status", {})
        return status

    async def check(self, authorization: str | None) -> None:
        reader = await self._authenticate(bearer_token(authorization))
        if self._readers and not reader.is_among(self._readers):
            # Names the reader (it knows who it is), never the allow-list.
            raise FeedAuthError(
                f"{reader.username} may not read this feed: it is not among the feed's readers",
                forbidden=True,
            )

    async def _authenticate(self, token: str) -> Reader:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._reviewed.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            status = await self.review(token)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("token review failed", error=str(exc))
            raise FeedAuthError(
                "cannot check the token: TokenReview failed", unavailable=True
            ) from exc
        if not status.get("authenticated") or self._audience not in status.get("audiences", []):
            raise FeedAuthError(
                f"the ServiceAccount token was not accepted for audience {self._audience!r}"
            )
        user = status.get("user") or {}
        reader = Reader(str(user.get("username", "")), frozenset(user.get("groups") or ()))
        self._reviewed[key] = (now + self._cache_seconds, reader)
        return reader


def create_authorizer(settings: ServiceSettings) -> tuple[FeedAuthorizer, httpx.AsyncClient | None]:
    """The authorizer for the configured mode, and a client to close at shutdown."""
    if settings.feed_readers and settings.feed_auth is not FeedAuth.SERVICE_ACCOUNT_TOKEN:
        raise ValueError(
            "FEEDLINE_FEED_READERS needs FEEDLINE_FEED_AUTH=ServiceAccountToken: only a "
            f"TokenReview says who a reader is (FEEDLINE_FEED_AUTH is {settings.feed_auth.value})"
        )
    if settings.feed_auth is FeedAuth.NONE:
        return AllowAnyone(), None
    if settings.feed_auth is FeedAuth.TOKEN:
        token = settings.resolved_feed_token()
        if not token:
            raise ValueError(
                "FEEDLINE_FEED_AUTH=Token needs FEEDLINE_FEED_TOKEN or FEEDLINE_FEED_TOKEN_FILE"
            )
        return StaticToken(token), None
    verify: ssl.SSLContext | bool = True
    if settings.kubernetes_ca_file and settings.kubernetes_ca_file.exists():
        verify = ssl.create_default_context(cafile=str(settings.kubernetes_ca_file))
    client = httpx.AsyncClient(base_url=settings.kubernetes_api_url, verify=verify, timeout=10)
    return (
        KubernetesTokenReview(
            client,
            settings.kubernetes_token_file,
            settings.token_review_audience,
            readers=frozenset(settings.feed_readers),
        ),
        client,
    )
