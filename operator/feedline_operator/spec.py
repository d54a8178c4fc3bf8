"""The EventSubscription spec as a typed model.

The API server has already validated and defaulted the object against the CRD
(charts/feedline-operator/crds/); the model repeats the defaults so that
manifests read from disk (`feedline dev`, unit tests) mean the same thing, and
a unit test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from feedline_contracts import subscriber_env as env_names

# The CRD's rule on spec.subscriber.env[].name says the same (a unit test compares them).
RESERVED_ENV_MESSAGE = (
    "spec.subscriber.env may not set FEEDLINE_* variables: the operator sets every "
    "FEEDLINE_ variable of the subscriber from the spec; use the spec's fields instead"
)


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class SecretKeyRef(_Model):
    name: str
    key: str


class FeedAuth(_Model):
    type: Literal["None", "Token", "ServiceAccountToken"] = "None"
    secret_ref: SecretKeyRef | None = None


class Feed(_Model):
    url: str
    event_types: tuple[str, ...] = ()
    wait_seconds: int | None = None  # None: the subscriber's default
    retry_attempts: int | None = None
    auth: FeedAuth = FeedAuth()


class ReadModel(_Model):
    database_secret_ref: SecretKeyRef
    projection: str
    retry_attempts: int | None = None  # None: the subscriber's default


class Retry(_Model):
    max_attempts: int = 3
    backoff_seconds: int = 1


class Replay(_Model):
    token: str | None = None
    from_sequence: int = 0


class Quantities(_Model):
    cpu: str | int | None = None
    memory: str | int | None = None
    ephemeral_storage: str | int | None = Field(default=None, alias="ephemeral-storage")


class Resources(_Model):
    requests: Quantities | None = None
    limits: Quantities | None = None


class EnvVar(_Model):
    name: str
    value: str = ""

    @field_validator("name")
    @classmethod
    def _not_the_operators(cls, name: str) -> str:
        if name.startswith(env_names.PREFIX):
            raise ValueError(RESERVED_ENV_MESSAGE)
        return name


class Subscriber(_Model):
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    service_account_name: str | None = None
    resources: Resources | None = None
    env: tuple[EnvVar, ...] = ()


class EventSubscriptionSpec(_Model):
    feed: Feed
    read_model: ReadModel
    mode: Literal["CronJob", "Follow"] = "CronJob"
    schedule: str | None = None
    time_zone: str | None = None
    suspend: bool = False
    batch_size: int = 1000
    max_events_per_run: int | None = None
    start_position: int | str = "Beginning"
    on_poison_event: Literal["DeadLetter", "Halt"] = "Halt"
    retry: Retry = Retry()
    replay: Replay = Replay()
    subscriber: Subscriber = Subscriber()


class EventSubscription(_Model):
    """The parts of the custom resource the builders need."""

    name: str
    namespace: str
    uid: str
    generation: int = 1
    spec: EventSubscriptionSpec

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> EventSubscription:
        """Read a custom resource (as the API server or a YAML file gives it)."""
        metadata = body.get("metadata", {})
        return cls(
            name=metadata["name"],
            namespace=metadata.get("namespace") or "default",
            uid=metadata.get("uid", ""),
            generation=metadata.get("generation", 1),
            spec=EventSubscriptionSpec.model_validate(body.get("spec", {})),
        )
