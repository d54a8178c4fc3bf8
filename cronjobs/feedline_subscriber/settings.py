"""Settings of one subscriber run, read from the environment by pydantic-settings.

Every field reads exactly one name from :mod:`feedline_contracts.subscriber_env`
(the operator renders those) and has one ``feedline subscribe`` flag; the CLI
passes the flags it was given as keyword arguments, which win over the
environment. Nothing here is read at import time.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from feedline_contracts import subscriber_env as env
from feedline_contracts.auth import FeedAuth, FeedAuthSetting
from feedline_contracts.broker import (
    STREAM_NAME_PREFIX,
    STREAM_SCHEME,
    STREAM_TLS_SCHEME,
    StreamAddress,
    parse_stream_url,
    stream_name,
)
from feedline_contracts.database import DatabaseUrl
from feedline_contracts.feed import EVENT_NAME_PATTERN, MAX_LIMIT, MAX_WAIT_SECONDS
from feedline_subscriber.feed_transport import feed_url_problem, transport_of

MAX_PAGE_SIZE = MAX_LIMIT  # a batch is one page
SUBSCRIPTION_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


class PoisonPolicy(StrEnum):
    DEAD_LETTER = "DeadLetter"
    HALT = "Halt"


StartPosition = Literal["Beginning", "Head"] | int

# field name -> (flag, environment variable): error messages name both.
FLAGS: dict[str, tuple[str, str]] = {
    "subscription": ("--subscription", env.SUBSCRIPTION),
    "feed_url": ("--feed-url", env.FEED_URL),
    "event_types": ("--event-types", env.EVENT_TYPES),
    "feed_auth": ("--feed-auth", env.FEED_AUTH),
    "feed_token_file": ("--feed-token-file", env.FEED_TOKEN_FILE),
    "database_url": ("--database-url", env.DATABASE_URL),
    "projection": ("--projection", env.PROJECTION),
    "batch_size": ("--batch-size", env.BATCH_SIZE),
    "max_events_per_run": ("--max-events-per-run", env.MAX_EVENTS_PER_RUN),
    "start_position": ("--start-position", env.START_POSITION),
    "on_poison_event": ("--on-poison-event", env.ON_POISON_EVENT),
    "retry_max_attempts": ("--retry-max-attempts", env.RETRY_MAX_ATTEMPTS),
    "retry_backoff_seconds": ("--retry-backoff-seconds", env.RETRY_BACKOFF_SECONDS),
    "replay_token": ("--replay-token", env.REPLAY_TOKEN),
    "replay_from_sequence": ("--replay-from-sequence", env.REPLAY_FROM_SEQUENCE),
    "follow": ("--follow", env.FOLLOW),
    "status_port": ("--status-port", env.STATUS_PORT),
    "termination_log": ("--termination-log", env.TERMINATION_LOG),
    "feed_wait_seconds": ("--feed-wait-seconds", env.FEED_WAIT_SECONDS),
    "feed_retry_attempts": ("--feed-retry-attempts", env.FEED_RETRY_ATTEMPTS),
    "database_retries": ("--database-retries", env.DATABASE_RETRIES),
    "broker_url": ("--broker-url", env.BROKER_URL),
    "broker_stream": ("--broker-stream", env.BROKER_STREAM),
}

BROKER_URL_FORM = f"{STREAM_SCHEME}[+tls]://USER:PASSWORD@HOST[:PORT]/VHOST"


class SubscriberSettings(BaseSettings):
    model_config = SettingsConfigDict(
        extra="ignore", populate_by_name=True, case_sensitive=True, frozen=True
    )

    subscription: str = Field(
        validation_alias=env.SUBSCRIPTION,
        description="the subscription's name: keys its checkpoint, lock and dead letters",
    )
    feed_url: str = Field(
        validation_alias=env.FEED_URL,
        description=(
            "the feed: its HTTP endpoint (http://special-offers/events) or its gRPC "
            "address (grpc://special-offers:9090); the scheme picks the transport"
        ),
    )
    event_types: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        validation_alias=env.EVENT_TYPES,
        description="event names to read (all if empty)",
    )
    feed_auth: FeedAuthSetting = Field(default=FeedAuth.NONE, validation_alias=env.FEED_AUTH)
    feed_token_file: Path | None = Field(default=None, validation_alias=env.FEED_TOKEN_FILE)
    database_url: DatabaseUrl = Field(validation_alias=env.DATABASE_URL)
    projection: str = Field(validation_alias=env.PROJECTION, description="package.module:function")
    batch_size: int = Field(default=1000, ge=1, le=MAX_PAGE_SIZE, validation_alias=env.BATCH_SIZE)
    max_events_per_run: int = Field(
        default=0, ge=0, validation_alias=env.MAX_EVENTS_PER_RUN, description="0: no limit"
    )
    start_position: StartPosition = Field(default="Beginning", validation_alias=env.START_POSITION)
    on_poison_event: PoisonPolicy = Field(
        default=PoisonPolicy.HALT, validation_alias=env.ON_POISON_EVENT
    )
    retry_max_attempts: int = Field(
        default=3, ge=1, le=100, validation_alias=env.RETRY_MAX_ATTEMPTS
    )
    retry_backoff_seconds: float = Field(
        default=1.0, ge=0, le=3600, validation_alias=env.RETRY_BACKOFF_SECONDS
    )
    replay_token: str = Field(default="", max_length=253, validation_alias=env.REPLAY_TOKEN)
    replay_from_sequence: int = Field(default=1, ge=1, validation_alias=env.REPLAY_FROM_SEQUENCE)
    follow: bool = Field(default=False, validation_alias=env.FOLLOW)
    status_port: int | None = Field(default=None, ge=0, le=65535, validation_alias=env.STATUS_PORT)
    termination_log: Path | None = Field(default=None, validation_alias=env.TERMINATION_LOG)
    feed_wait_seconds: float = Field(
        default=20.0, ge=0, le=MAX_WAIT_SECONDS, validation_alias=env.FEED_WAIT_SECONDS
    )
    feed_retry_attempts: int = Field(
        default=8, ge=0, le=100, validation_alias=env.FEED_RETRY_ATTEMPTS
    )
    database_retries: int = Field(
        default=env.DEFAULT_DATABASE_RETRIES,
        ge=0,
        le=100,
        validation_alias=env.DATABASE_RETRIES,
        description="retries of a read-model database that cannot be reached yet",
    )
    # The RabbitMQ transport: both, or neither (docs/transports.md, "RabbitMQ").
    broker_url: str | None = Field(
        default=None,
        validation_alias=env.BROKER_URL,
        repr=False,  # it carries the broker's password
        description=f"the broker's stream endpoint, {BROKER_URL_FORM}",
    )
    broker_stream: str | None = Field(
        default=None,
        validation_alias=env.BROKER_STREAM,
        description="the service's stream, feedline.events.SERVICE",
    )

    @field_validator("subscription")
    @classmethod
    def _subscription_name(cls, value: str) -> str:
        if not SUBSCRIPTION_NAME.match(value):
            raise ValueError(
                "must be 1-253 letters, digits, '.', '_' or '-', starting and ending "
                f"with a letter or digit; got {value!r}"
            )
        return value

    @field_validator("feed_url")
    @classmethod
    def _feed_url(cls, value: str) -> str:
        problem = feed_url_problem(value)  # its scheme picks the transport
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("broker_url", "broker_stream", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parse_stream_url(value)  # its messages never repeat the URL (nor its password)
        except ValueError as exc:
            raise ValueError(
                f"{exc}; expected {BROKER_URL_FORM} ({STREAM_TLS_SCHEME}:// for TLS; "
                "the vhost URL-encoded, %2F for /)"
            ) from None
        return value

    @field_validator("broker_stream")
    @classmethod
    def _broker_stream(cls, value: str | None) -> str | None:
        if value is None:
            return None
        service = value.removeprefix(STREAM_NAME_PREFIX)
        try:
            if service == value:
                raise ValueError(value)
            stream_name(service)
        except ValueError:
            raise ValueError(
                f"must be the service's stream, {STREAM_NAME_PREFIX}SERVICE (e.g. "
                f"{STREAM_NAME_PREFIX}special-offers); got {value!r:.120}"
            ) from None
        return value

    @field_validator("event_types", mode="before")
    @classmethod
    def _event_types(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [name.strip() for name in value.split(",") if name.strip()]
        for name in value:
            if not EVENT_NAME_PATTERN.fullmatch(name):
                raise ValueError(
                    f"must be comma-separated event names (letters, digits, _ . : -); got {name!r}"
                )
        return tuple(value)

    @field_validator("projection")
    @classmethod
    def _projection(cls, value: str) -> str:
        if not IMPORT_PATH.match(value):
            raise ValueError(f"must be an import path package.module:function; got {value!r}")
        return value

    @field_validator("start_position", mode="before")
    @classmethod
    def _start_position(cls, value: Any) -> Any:
        if isinstance(value, str):
            word = value.strip()
            for name in ("Beginning", "Head"):
                if word.lower() == name.lower():
                    return name
            if word.isdigit() and int(word) >= 1:
                return int(word)
            raise ValueError(f"must be Beginning, Head or a sequence number >= 1; got {value!r}")
        if isinstance(value, bool) or (isinstance(value, int) and value < 1):
            raise ValueError(f"must be Beginning, Head or a sequence number >= 1; got {value!r}")
        return value

    @field_validator("on_poison_event", mode="before")
    @classmethod
    def _on_poison_event(cls, value: Any) -> Any:
        if isinstance(value, str):
            for policy in PoisonPolicy:
                if value.strip().lower() == policy.value.lower():
                    return policy
        return value

    @field_validator("status_port", mode="before")
    @classmethod
    def _status_port(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _token_file_when_needed(self) -> SubscriberSettings:
        if self.feed_auth is FeedAuth.TOKEN and self.feed_token_file is None:
            raise ValueError(
                f"{FLAGS['feed_token_file'][0]} ({env.FEED_TOKEN_FILE}) is required when "
                f"{FLAGS['feed_auth'][0]} is {FeedAuth.TOKEN.value}"
            )
        return self

    @model_validator(mode="after")
    def _broker_with_its_stream_and_an_http_feed(self) -> SubscriberSettings:
        (url_flag, url_var), (stream_flag, stream_var) = FLAGS["broker_url"], FLAGS["broker_stream"]
        if (self.broker_url is None) != (self.broker_stream is None):
            given, missing = (
                (f"{url_flag} ({url_var})", f"{stream_flag} ({stream_var})")
                if self.broker_stream is None
                else (f"{stream_flag} ({stream_var})", f"{url_flag} ({url_var})")
            )
            raise ValueError(
                f"{url_flag} ({url_var}) and {stream_flag} ({stream_var}) go together: "
                f"{given} is set, {missing} is not; set both to read the service's "
                "RabbitMQ stream, or neither"
            )
        if self.broker_url is not None and transport_of(self.feed_url) != "http":
            flag, var = FLAGS["feed_url"]
            raise ValueError(
                f"{flag} ({var}) must be the service's HTTP feed (http:// or https://, e.g. "
                f"http://special-offers/events) when {url_flag} ({url_var}) is set: the "
                "subscriber reads the head, and what the stream no longer holds, from it; "
                f"got {self.feed_url!r}"
            )
        return self

    @property
    def transport(self) -> str:
        """``http``, ``grpc`` or ``rabbitmq``: what the run reads its events through."""
        return "rabbitmq" if self.broker_url is not None else transport_of(self.feed_url)

    def broker_address(self) -> StreamAddress | None:
        """The broker's endpoint (``--broker-url``), or None without one."""
        return None if self.broker_url is None else parse_stream_url(self.broker_url)

    def token_file(self) -> Path | None:
        if self.feed_auth is FeedAuth.NONE:
            return None
        if self.feed_token_file is not None:
            return self.feed_token_file
        return Path(env.DEFAULT_SERVICEACCOUNT_TOKEN_FILE)

    def termination_log_path(self) -> tuple[Path, bool]:
        """Where the summary goes, and whether it was asked for explicitly."""
        if self.termination_log is not None:
            return self.termination_log, True
        return Path(env.DEFAULT_TERMINATION_LOG), False


class SettingsError(ValueError):
    """Settings that cannot run; the message names the flag, the variable and what is accepted."""


def describe_validation_error(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        location = problem["loc"][0] if problem["loc"] else ""
        field = next((name for name, (_, var) in FLAGS.items() if location in (name, var)), None)
        message = problem["msg"].removeprefix("Value error, ")
        if field is None:
            lines.append(message)
            continue
        flag, var = FLAGS[field]
        if problem["type"] == "missing":
            message = "is required"
        lines.append(f"{flag} ({var}): {message}")
    return "\n".join(lines)


def load_settings(**given: Any) -> SubscriberSettings:
    """Settings from ``given`` (flags) over the environment; SettingsError if unusable."""
    values = {name: value for name, value in given.items() if value is not None}
    try:
        return SubscriberSettings(**values)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from exc
