"""Service settings, read from the environment (``FEEDLINE_*``) by pydantic-settings.

Nothing reads them at import time: the CLI builds one ``ServiceSettings`` and
passes it to ``create_app``; tests build their own.
"""

from __future__ import annotations

import tempfile
from enum import StrEnum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from feedline.chassis.database import DatabaseUrl


class AuthMode(StrEnum):
    NONE = "none"
    TOKEN = "token"  # static bearer token, e.g. from a Kubernetes Secret
    KUBERNETES = "kubernetes"  # projected ServiceAccount token, checked with TokenReview


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEEDLINE_", extra="ignore")

    database_url: DatabaseUrl = Field(
        default="sqlite:///feedline.db",
        description="postgresql://... or sqlite:///path: the service's own database",
    )
    feed_auth: AuthMode = Field(default=AuthMode.NONE, description="who may read the event feed")
    feed_token: str | None = Field(
        default=None, description="the bearer token when feed_auth=token"
    )
    feed_token_file: Path | None = Field(
        default=None, description="a file holding the bearer token when feed_auth=token"
    )
    token_review_audience: str = "feedline"
    kubernetes_api_url: str = Field(
        default="https://kubernetes.default.svc",
        description="where TokenReviews are sent when feed_auth=kubernetes",
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
    log_level: str = "INFO"

    def resolved_feed_token(self) -> str | None:
        if self.feed_token:
            return self.feed_token
        if self.feed_token_file:
            return self.feed_token_file.read_text().strip()
        return None
