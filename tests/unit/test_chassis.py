"""Pure pieces of the chassis: URL parsing, trace context, page encoding, auth."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from fastapi import HTTPException
from pydantic import ValidationError
from starlette.requests import Request

from feedline.chassis.auth import KubernetesTokenReview, StaticToken, create_authorizer
from feedline.chassis.eventstore import NewEvent
from feedline.chassis.feed import _matches
from feedline.chassis.settings import ServiceSettings
from feedline.chassis.tracing import continue_or_start, parse_traceparent
from feedline_contracts.auth import READER_PATTERN, TOKEN_AUDIENCE, FeedAuth, reader_problem
from feedline_contracts.database import DatabaseUrlError, parse_database_url

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("url", "dialect", "driver"),
    [
        ("postgresql://u@localhost:5432/db", "postgresql", "postgresql+asyncpg"),
        ("postgres://u:p@h/db", "postgresql", "postgresql+asyncpg"),
        ("sqlite:///tmp/x.db", "sqlite", "sqlite+aiosqlite"),
        ("sqlite:////abs/x.db", "sqlite", "sqlite+aiosqlite"),
    ],
)
def test_database_urls_pick_the_async_driver(url: str, dialect: str, driver: str) -> None:
    parsed = parse_database_url(url)
    assert parsed.dialect == dialect
    assert parsed.sqlalchemy_url.drivername == driver


def test_asyncpg_dsn_keeps_the_password() -> None:
    assert parse_database_url("postgresql://u:p@h:1/db").asyncpg_dsn == "postgresql://u:p@h:1/db"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://h/db", "unsupported database URL scheme 'mysql'"),
        ("sqlite://", "needs a file path"),
        ("sqlite:///:memory:", "needs a file path"),
        ("postgresql://h", "names no database"),
        ("not a url", "invalid database URL"),
    ],
)
def test_unusable_database_urls_say_what_is_accepted(url: str, says: str) -> None:
    with pytest.raises(DatabaseUrlError) as error:
        parse_database_url(url)
    assert says in str(error.value)
    assert "postgresql://" in str(error.value)
    assert "sqlite:///" in str(error.value)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEEDLINE_DATABASE_URL", "sqlite:///env.db")
    monkeypatch.setenv("FEEDLINE_FEED_AUTH", "token")
    settings = ServiceSettings()
    assert settings.database_url == "sqlite:///env.db"
    assert settings.feed_auth is FeedAuth.TOKEN
    assert settings.token_review_audience == TOKEN_AUDIENCE


def test_bad_settings_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEEDLINE_FEED_AUTH", "password")
    with pytest.raises(ValidationError) as error:
        ServiceSettings()
    assert "feed_auth" in str(error.value)
    assert "'None', 'Token' or 'ServiceAccountToken'" in str(error.value)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("none", FeedAuth.NONE),
        ("Token", FeedAuth.TOKEN),
        ("SERVICEACCOUNTTOKEN", FeedAuth.SERVICE_ACCOUNT_TOKEN),
    ],
)
def test_feed_auth_takes_the_crds_names_in_any_letter_case(
    monkeypatch: pytest.MonkeyPatch, given: str, expected: FeedAuth
) -> None:
    monkeypatch.setenv("FEEDLINE_FEED_AUTH", given)
    assert ServiceSettings().feed_auth is expected


@pytest.mark.parametrize("old", ["kubernetes", "serviceaccount"])
def test_old_feed_auth_names_are_refused_naming_the_setting_and_the_accepted_values(
    monkeypatch: pytest.MonkeyPatch, old: str
) -> None:
    monkeypatch.setenv("FEEDLINE_FEED_AUTH", old)
    with pytest.raises(ValidationError) as error:
        ServiceSettings()
    assert "feed_auth" in str(error.value)
    assert f"{old!r} is an old name: use ServiceAccountToken" in str(error.value)
    assert "None, Token, ServiceAccountToken" in str(error.value)


def test_traceparent_is_continued_as_a_child_span() -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    context = continue_or_start(parent)
    assert context.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert context.span_id != "00f067aa0ba902b7"
    assert context.traceparent.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    ],
)
def test_invalid_traceparents_start_a_new_trace(header: str | None) -> None:
    assert parse_traceparent(header) is None
    assert len(continue_or_start(header).trace_id) == 32


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ('"abc"', True),
        ('W/"abc"', True),
        ('"x", "abc"', True),
        ("*", True),
        ('"abd"', False),
        (None, False),
    ],
)
def test_if_none_match(header: str | None, matches: bool) -> None:
    assert _matches(header, '"abc"') is matches


def request_with(authorization: str | None) -> Request:
    headers = [(b"authorization", authorization.encode())] if authorization else []
    return Request({"type": "http", "headers": headers, "method": "GET", "path": "/events"})


async def test_static_token_accepts_only_that_token() -> None:
    check = StaticToken("s3cret")
    await check(request_with("Bearer s3cret"))
    for bad in (None, "Bearer other", "Basic s3cret", "Bearer "):
        with pytest.raises(HTTPException) as error:
            await check(request_with(bad))
        assert error.value.status_code == 401


def test_token_mode_without_a_token_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="FEEDLINE_FEED_TOKEN"):
        create_authorizer(ServiceSettings(feed_auth=FeedAuth.TOKEN))


def fake_token_review(
    authenticated: bool, audiences: list[str], seen: list[dict[str, object]]
) -> httpx.MockTransport:
    """A stand-in for the API server's TokenReview endpoint."""

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/apis/authentication.k8s.io/v1/tokenreviews"
        assert request.headers["Authorization"] == "Bearer own-sa-token"
        body = json.loads(request.content)
        seen.append(body)
        return httpx.Response(
            201,
            json={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "status": {
                    "authenticated": authenticated,
                    "audiences": audiences,
                    "user": {"username": "system:serviceaccount:shop:subscriber"},
                },
            },
        )

    return httpx.MockTransport(answer)


async def test_token_review_accepts_a_token_for_the_feedline_audience(tmp_path: Path) -> None:
    own = tmp_path / "token"
    own.write_text("own-sa-token\n")
    seen: list[dict[str, object]] = []
    client = httpx.AsyncClient(
        base_url="https://api", transport=fake_token_review(True, ["feedline"], seen)
    )
    check = KubernetesTokenReview(client, own, "feedline")
    await check(request_with("Bearer caller-token"))
    await check(request_with("Bearer caller-token"))  # cached: no second review
    assert len(seen) == 1
    assert seen[0]["spec"] == {"token": "caller-token", "audiences": ["feedline"]}


@pytest.mark.parametrize(("authenticated", "audiences"), [(False, []), (True, ["other"])])
async def test_token_review_rejects_unauthenticated_or_wrong_audience(
    tmp_path: Path, authenticated: bool, audiences: list[str]
) -> None:
    own = tmp_path / "token"
    own.write_text("own-sa-token")
    client = httpx.AsyncClient(
        base_url="https://api", transport=fake_token_review(authenticated, audiences, [])
    )
    check = KubernetesTokenReview(client, own, "feedline")
    with pytest.raises(HTTPException) as error:
        await check(request_with("Bearer caller-token"))
    assert error.value.status_code == 401


SUBSCRIBER = "system:serviceaccount:shop:subscriber"  # who fake_token_review says the caller is


@pytest.mark.parametrize(
    "readers", [(SUBSCRIBER,), ("system:serviceaccounts:shop",), ()], ids=["user", "group", "none"]
)
async def test_a_reader_named_by_user_or_namespace_group_may_read(
    tmp_path: Path, readers: tuple[str, ...]
) -> None:
    own = tmp_path / "token"
    own.write_text("own-sa-token")

    def answer(request: httpx.Request) -> httpx.Response:
        status = {
            "authenticated": True,
            "audiences": ["feedline"],
            "user": {"username": SUBSCRIBER, "groups": ["system:serviceaccounts:shop"]},
        }
        return httpx.Response(201, json={"status": status})

    client = httpx.AsyncClient(base_url="https://api", transport=httpx.MockTransport(answer))
    check = KubernetesTokenReview(client, own, "feedline", readers=frozenset(readers))
    await check(request_with("Bearer caller-token"))  # no exception: allowed


async def test_an_authenticated_reader_not_among_the_readers_is_forbidden(tmp_path: Path) -> None:
    """403 naming the reader, never the allow-list; a cached review turns it away again."""
    own = tmp_path / "token"
    own.write_text("own-sa-token")
    seen: list[dict[str, object]] = []
    client = httpx.AsyncClient(
        base_url="https://api", transport=fake_token_review(True, ["feedline"], seen)
    )
    allowed = frozenset({"system:serviceaccount:shop:other", "system:serviceaccounts:billing"})
    check = KubernetesTokenReview(client, own, "feedline", readers=allowed)
    for _ in range(2):
        with pytest.raises(HTTPException) as error:
            await check(request_with("Bearer caller-token"))
        assert error.value.status_code == 403
        assert error.value.detail == (
            f"{SUBSCRIBER} may not read this feed: it is not among the feed's readers"
        )
        assert "other" not in str(error.value.detail)
        assert "billing" not in str(error.value.detail)
    assert len(seen) == 1


@pytest.mark.parametrize(
    "value",
    ["loyalty", "system:serviceaccount:shop", "system:serviceaccount:Shop:x", "system:masters"],
)
def test_readers_must_be_serviceaccounts_or_namespaces(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("FEEDLINE_FEED_READERS", f"system:serviceaccounts:shop, {value}")
    with pytest.raises(ValueError, match=r"is not a reader: use system:serviceaccount:NAMESPACE"):
        ServiceSettings()


def test_readers_need_serviceaccounttoken_mode() -> None:
    settings = ServiceSettings(
        feed_auth=FeedAuth.TOKEN, feed_token="t", feed_readers=("system:serviceaccounts:shop",)
    )
    with pytest.raises(ValueError, match="FEEDLINE_FEED_READERS needs FEEDLINE_FEED_AUTH="):
        create_authorizer(settings)


SERVICE_CHART_SCHEMA = Path(__file__).parents[2] / "charts/feedline-service/values.schema.json"


def test_the_service_chart_checks_readers_with_the_contracts_pattern() -> None:
    """The chart's feedAuth.readers (values.schema.json) is checked with READER_PATTERN,
    anchored: JSON Schema patterns search and the chassis matches whole entries, so the
    chart lets through exactly the readers the service then accepts (they cannot drift)."""
    schema = json.loads(SERVICE_CHART_SCHEMA.read_text())
    readers = schema["properties"]["feedAuth"]["properties"]["readers"]
    assert readers["type"] == "array"
    pattern = readers["items"]["pattern"]
    assert pattern == f"^(?:{READER_PATTERN.pattern})$"
    for entry in (
        "system:serviceaccount:shop:subscriber",
        "system:serviceaccounts:shop",
        "system:serviceaccounts:shop:subscriber",  # a group has no name part
        "system:serviceaccount:shop",
        "xsystem:serviceaccounts:shop",
        "system:serviceaccount:Shop:x",
    ):
        assert (re.search(pattern, entry) is not None) == (reader_problem(entry) is None), entry


@pytest.mark.parametrize("name", ["", 'Quote"d', "with space", "a,b", "ü", "x" * 201, "new\nline"])
def test_event_names_must_be_identifiers(name: str) -> None:
    with pytest.raises(ValueError, match="is not accepted: use 1 to 200 letters"):
        NewEvent(name)


@pytest.mark.parametrize("name", ["SpecialOfferCreated", "offer.made:v2", "a-b_c", "x" * 200])
def test_identifier_event_names_are_accepted(name: str) -> None:
    assert NewEvent(name).name == name


def test_long_poll_recheck_is_a_bounded_service_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServiceSettings().long_poll_recheck_seconds == 1.0
    monkeypatch.setenv("FEEDLINE_LONG_POLL_RECHECK_SECONDS", "60")
    assert ServiceSettings().long_poll_recheck_seconds == 60.0
    for bad in ("0", "301", "soon"):
        monkeypatch.setenv("FEEDLINE_LONG_POLL_RECHECK_SECONDS", bad)
        with pytest.raises(ValidationError, match="long_poll_recheck_seconds"):
            ServiceSettings()
