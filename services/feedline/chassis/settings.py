"""Service settings, read from the environment (``FEEDLINE_*``) by pydantic-settings.

Nothing reads them at import time: the CLI builds one ``ServiceSettings`` and
passes it to ``create_app``; tests build their own.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from feedline_contracts.auth import (
    READER_FORMS,
    TOKEN_AUDIENCE,
    FeedAuth,
    FeedAuthSetting,
    reader_problem,
)
from feedline_contracts.broker import StreamAddress, parse_stream_url
from feedline_contracts.database import DatabaseUrl
from feedline_contracts.logs import LogFormat

# Where the start-up deadline is set; named when a service gives up waiting for its database.
DATABASE_STARTUP_TIMEOUT_SETTING = "FEEDLINE_DATABASE_STARTUP_TIMEOUT_SECONDS"


def default_database_url(service: str) -> str:
    """One SQLite file per service: two services started in one folder share nothing."""
    return f"sqlite:///{service}.db"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEEDLINE_", extra="ignore")

    database_url: DatabaseUrl | None = Field(
        default=None,
        description=(
            "postgresql://... or sqlite:///path: the service's own database "
            "(default: sqlite:///SERVICE.db in the working folder, one file per service)"
        ),
    )
    feed_auth: FeedAuthSetting = Field(
        default=FeedAuth.NONE,
        description="who may read the event feed: None, Token or ServiceAccountToken (any case)",
    )
    feed_token: str | None = Field(
        default=None, description="the bearer token when feed_auth=Token"
    )
    feed_token_file: Path | None = Field(
        default=None, description="a file holding the bearer token when feed_auth=Token"
    )
    feed_readers: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description=(
            "ServiceAccountToken mode: who may read the feed, comma-separated: "
            f"{READER_FORMS}; others get 403. Empty: every authenticated reader"
        ),
    )
    token_review_audience: str = TOKEN_AUDIENCE
    kubernetes_api_url: str = Field(
        default="https://kubernetes.default.svc",
        description="where TokenReviews are sent when feed_auth=ServiceAccountToken",
    )
    kubernetes_token_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    kubernetes_ca_file: Path | None = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
    product_catalog_url: str = Field(
        default="http://127.0.0.1:8004", description="shopping-cart's product-catalog base URL"
    )
    product_cache_max_age: int = Field(
        default=60, ge=0, description="product-catalog's Cache-Control max-age in seconds"
    )
    http_cache_dir: Path = Field(
        default=Path(tempfile.gettempdir()),
        description="where the HTTP cache of outgoing queries keeps its SQLite file",
    )
    long_poll_recheck_seconds: float = Field(
        default=1.0,
        ge=0.05,
        le=300,
        description=(
            "a long poll (GET /events?wait=) re-checks the database this often even without "
            "a commit notification, so a lost notification only delays an answer this much"
        ),
    )
    # Below the chart's startupProbe budget (failureThreshold 30 x periodSeconds 2 = 60 s in
    # charts/feedline-service/templates/deployment.yaml): a service that gives up exits with
    # its one-line reason before kubelet kills it for not starting.
    database_startup_timeout_seconds: float = Field(
        default=50,
        ge=0,
        le=3600,
        description=(
            "at start-up, how long to keep retrying a database that cannot be reached yet "
            "(connection refused, host not found, starting up) before giving up; 0: no retry"
        ),
    )
    grpc_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description=(
            "serve the gRPC event feed (feedline.feed.v1.EventFeed, with health and reflection) "
            "on this port beside HTTP; 0: a free port; unset: no gRPC (a pod gives it 9090)"
        ),
    )
    grpc_host: str = Field(
        default="127.0.0.1",
        description="the address the gRPC feed listens on (feedline serve: its --host)",
    )
    broker_url: str | None = Field(
        default=None,
        description=(
            "rabbitmq-stream://USER:PASSWORD@HOST[:5552]/VHOST (or rabbitmq-stream+tls://): "
            "relay the event store's events to the service's RabbitMQ stream; unset: no relay"
        ),
    )
    broker_stream_max_age: str | None = Field(
        default="7D",
        pattern=r"^[0-9]+(Y|M|D|h|m|s)$",
        description=(
            "the stream's retention by age, set when the relay creates it (RabbitMQ's max-age: "
            "7D, 12h, ...); older events are read from the HTTP feed"
        ),
    )
    broker_stream_max_length_bytes: int | None = Field(
        default=20_000_000_000,
        ge=1,
        description="the stream's retention by size (max-length-bytes), set when it is created",
    )
    broker_stream_max_segment_size_bytes: int | None = Field(
        default=None,
        ge=1,
        description=(
            "the stream's segment size (retention drops whole segments); unset: RabbitMQ's "
            "default (500 MB)"
        ),
    )
    log_level: str = "INFO"
    log_format: LogFormat = Field(
        default=LogFormat.JSON,
        description="json (one object per line) or plain (key=value): the same fields either way",
    )

    @field_validator("feed_readers", mode="before")
    @classmethod
    def _readers_listed(cls, value: object) -> object:
        if isinstance(value, str):  # the variable: comma-separated, blanks ignored
            value = tuple(entry.strip() for entry in value.split(",") if entry.strip())
        if isinstance(value, tuple | list):
            problems = [problem for entry in value if (problem := reader_problem(str(entry)))]
            if problems:
                raise ValueError("; ".join(problems))
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url_parses(cls, value: str | None) -> str | None:
        if value:
            parse_stream_url(value)  # a ValueError says what is wrong
        return value or None

    def broker_address(self) -> StreamAddress | None:
        return parse_stream_url(self.broker_url) if self.broker_url else None

    def database_url_for(self, service: str) -> str:
        return self.database_url or default_database_url(service)

    def resolved_feed_token(self) -> str | None:
        if self.feed_token:
            return self.feed_token
        if self.feed_token_file:
            return self.feed_token_file.read_text().strip()
        return None
