"""The EventSubscription API (`feedline.dev/v1alpha1`): the one source.

These typed models are what the operator reads a custom resource into, and
what `make crd` generates the CRD from (``feedline_contracts.eventsubscription.crd``),
as kubebuilder's controller-gen does from Go types. Every part of the schema
lives on the field or object it belongs to:

- the Python type gives the OpenAPI type (``int | str`` is int-or-string,
  ``Literal``/``StrEnum`` an enum, ``tuple[X, ...]`` an array, ``X | None`` an
  optional field, a field without a default a required one);
- ``Field(description=..., ge=..., le=..., min_length=..., max_length=...,
  pattern=...)`` gives the description and the bounds (on a tuple,
  ``max_length`` is ``maxItems``);
- a field's default is the API server's default, except ``None`` and an empty
  tuple (no default); a nested object's default instance becomes ``{}`` (the
  API server then applies the nested defaults);
- ``json_schema_extra`` holds what pydantic cannot say: the CEL rules
  (``x-kubernetes-validations``, made with ``rule``), list types, formats.

The API server enforces all of it; `feedline dev` enforces the generated CRD
the same way (``feedline.dev.schema``, with a real CEL implementation).
Change the API here, then run ``make crd`` (docs/eventsubscription.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from feedline_contracts import subscriber_env
from feedline_contracts.auth import TOKEN_AUDIENCE, FeedAuth
from feedline_contracts.broker import STREAM_NAME_PREFIX, STREAM_PORT, STREAM_SCHEME
from feedline_contracts.feed import GRPC_PORT
from feedline_contracts.summary import TERMINATION_MESSAGE_LIMIT, Outcome

GROUP: Final = "feedline.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "EventSubscription"
LIST_KIND: Final = f"{KIND}List"
PLURAL: Final = "eventsubscriptions"
SINGULAR: Final = "eventsubscription"
SHORT_NAMES: Final = ("evsub",)
CATEGORIES: Final = ("feedline", "all")
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# A CronJob's name is at most 52 characters (its Jobs append an 11-character
# suffix), and the children are named after the subscription.
MAX_NAME_LENGTH: Final = 52

# The subscriber's FEEDLINE_* variables are the operator's: it renders each
# one from the spec, so spec.subscriber.env may set none of them.
RESERVED_ENV_MESSAGE: Final = (
    f"spec.subscriber.env may not set {subscriber_env.PREFIX}* variables: the operator sets "
    f"every {subscriber_env.PREFIX} variable of the subscriber from the spec; use the spec's "
    "fields instead"
)

DNS_SUBDOMAIN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY: Final = r"^[-._a-zA-Z0-9]+$"
QUANTITY: Final = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# metav1.Condition's type and reason.
CONDITION_TYPE: Final = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON: Final = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

CRON_MACROS: Final = ("yearly", "annually", "monthly", "weekly", "daily", "midnight", "hourly")
_MONTHS = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"
_WEEKDAYS = "SUN|MON|TUE|WED|THU|FRI|SAT"
# The five cron fields: (wildcards, one value). A field is a list of values,
# ranges or wildcards, each with an optional step.
CRON_FIELDS: Final = (
    ("[*]", "[0-5]?[0-9]"),  # minute 0-59
    ("[*]", "(?:[01]?[0-9]|2[0-3])"),  # hour 0-23
    ("[*?]", "(?:0?[1-9]|[12][0-9]|3[01])"),  # day of month 1-31
    ("[*]", f"(?:0?[1-9]|1[0-2]|{_MONTHS})"),  # month 1-12, JAN-DEC
    ("[*?]", f"(?:[0-7]|{_WEEKDAYS})"),  # day of week 0-7, SUN-SAT
)


def _cron_field(wildcard: str, value: str) -> str:
    term = f"(?:{wildcard}|{value}(?:-{value})?)(?:/[0-9]+)?"
    return f"{term}(?:,{term})*"


# RE2 syntax (CEL's `matches`), case-insensitive: `jan`, `Mon` and `@HOURLY` too.
CRON_PATTERN: Final = (
    "^(?i)(?:@(?:"
    + "|".join(CRON_MACROS)
    + ")|"
    + " +".join(_cron_field(w, v) for w, v in CRON_FIELDS)
    + ")$"
)


def rule(
    expression: str,
    message: str,
    *,
    reason: str = "FieldValueInvalid",
    field_path: str | None = None,
) -> JsonDict:
    """One CEL rule (`x-kubernetes-validations` item) with its message, as the CRD holds it."""
    out: JsonDict = {"rule": expression, "message": message}
    if field_path is not None:
        out["fieldPath"] = field_path
    out["reason"] = reason
    return out


def rules(*items: JsonDict, **extra: Any) -> JsonDict:
    """``json_schema_extra`` for a field or object: its CEL rules and any other keys."""
    return {"x-kubernetes-validations": list(items), **extra}


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=True,
    )


# --- spec ---------------------------------------------------------------------------


class SecretKeyRef(_Model):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = Field(min_length=1, max_length=253, pattern=SECRET_KEY)


class Auth(_Model):
    """spec.feed.auth (its ``type`` is the contracts' FeedAuth vocabulary)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            rule(
                "self.type != 'Token' || has(self.secretRef)",
                "auth.secretRef is required when auth.type is Token",
                field_path=".secretRef",
                reason="FieldValueRequired",
            ),
            rule(
                "self.type == 'Token' || !has(self.secretRef)",
                "auth.secretRef is only allowed when auth.type is Token",
                field_path=".secretRef",
                reason="FieldValueForbidden",
            ),
        )
    )

    type: FeedAuth = Field(
        default=FeedAuth.NONE,
        validate_default=True,
        description=(
            "None (no credentials), Token (a static bearer token from a Secret) or "
            "ServiceAccountToken (a projected ServiceAccount token with audience "
            f'"{TOKEN_AUDIENCE}", checked by the feed with TokenReview).'
        ),
    )
    secret_ref: SecretKeyRef | None = Field(
        default=None, description="The Secret key that holds the bearer token (type Token)."
    )


EventType = Annotated[
    str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$")
]


def _cel_list(words: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{word}'" for word in words) + "]"


# spec.feed.url: its scheme picks the subscriber's transport (docs/transports.md).
# HTTP: the feed endpoint; gRPC: the service's address alone (HOST[:PORT]).
FEED_URL_RULE: Final = (
    "isURL(self) && url(self).getHostname() != '' && ("
    f"url(self).getScheme() in {_cel_list(subscriber_env.HTTP_FEED_SCHEMES)} || ("
    f"url(self).getScheme() in {_cel_list(subscriber_env.GRPC_FEED_SCHEMES)} "
    "&& url(self).getEscapedPath() in ['', '/'] "
    "&& !self.contains('?') && !self.contains('#') && !self.contains('@')))"
)
FEED_URL_MESSAGE: Final = (
    # Starts as the message did before gRPC: the words people and tests know.
    "feed.url must be an absolute http:// or https:// URL with a host (an HTTP feed "
    "endpoint, e.g. http://special-offers/events), or grpc://HOST[:PORT] or "
    "grpcs://HOST[:PORT] with no path, query or user (a gRPC feed, e.g. "
    f"grpc://special-offers:{GRPC_PORT})"
)


# spec.feed.broker.stream: the stream a service's relay publishes to,
# feedline_contracts.broker.stream_name(SERVICE): the prefix, then a DNS label.
DNS_LABEL: Final = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
# RE2 in a CEL string: a dot as `[.]`, so the pattern needs no backslash escapes.
BROKER_STREAM_PATTERN: Final = (
    "^" + "".join("[.]" if c == "." else c for c in STREAM_NAME_PREFIX) + DNS_LABEL + "$"
)
BROKER_STREAM_MAX_LENGTH: Final = len(STREAM_NAME_PREFIX) + 63
BROKER_STREAM_MESSAGE: Final = (
    f"feed.broker.stream must be {STREAM_NAME_PREFIX}SERVICE, SERVICE a DNS label (lower-case "
    "letters, digits and '-', at most 63 characters): the stream the service's relay "
    f"publishes to, e.g. {STREAM_NAME_PREFIX}special-offers"
)
# With a broker, feed.url is the HTTP feed: what the stream no longer holds, and the head.
BROKER_FEED_URL_RULE: Final = (
    "!has(self.broker) || (isURL(self.url) && "
    f"url(self.url).getScheme() in {_cel_list(subscriber_env.HTTP_FEED_SCHEMES)})"
)
BROKER_FEED_URL_MESSAGE: Final = (
    "feed.url must be an http:// or https:// URL (the service's HTTP feed, e.g. "
    "http://special-offers/events) when feed.broker is set: the subscriber reads the head "
    "and what the stream no longer holds from it"
)


class Broker(_Model):
    """spec.feed.broker: read the service's RabbitMQ stream (docs/transports.md)."""

    url_secret_ref: SecretKeyRef = Field(
        description=(
            "The Secret key that holds the broker's URL, "
            f"{STREAM_SCHEME}://USER:PASSWORD@HOST[:PORT]/VHOST (port {STREAM_PORT} by default; "
            f"{STREAM_SCHEME}+tls:// for TLS); the pod gets it by secretKeyRef."
        )
    )
    stream: str = Field(
        description=(
            f"The service's stream, {STREAM_NAME_PREFIX}SERVICE (for example "
            f"{STREAM_NAME_PREFIX}special-offers)."
        ),
        min_length=1,
        max_length=BROKER_STREAM_MAX_LENGTH,
        json_schema_extra=rules(
            rule(f"self.matches('{BROKER_STREAM_PATTERN}')", BROKER_STREAM_MESSAGE)
        ),
    )


class Feed(_Model):
    model_config = ConfigDict(
        json_schema_extra=rules(
            rule(BROKER_FEED_URL_RULE, BROKER_FEED_URL_MESSAGE, field_path=".url"),
        )
    )

    url: str = Field(
        description=(
            "The feed's URL; its scheme picks the transport: the HTTP feed's endpoint "
            "(http:// or https://, for example http://special-offers/events) or a service's "
            f"gRPC feed (grpc://HOST[:PORT], port {GRPC_PORT} by default, or grpcs:// with TLS, "
            "for example grpc://special-offers:9090)."
        ),
        min_length=1,
        max_length=2048,
        json_schema_extra=rules(rule(FEED_URL_RULE, FEED_URL_MESSAGE)),
    )
    event_types: tuple[EventType, ...] = Field(
        default=(),
        description="Only these event names are applied (empty means every event).",
        max_length=100,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    wait_seconds: int | None = Field(
        default=None,  # None: the subscriber's default
        description=(
            "Follow mode: how long one long poll of the feed waits for new events "
            "(over gRPC: how long a caught-up follower waits on its stream before it "
            "refreshes its status; the subscriber's default is 20)."
        ),
        ge=0,
        le=30,
    )
    retry_attempts: int | None = Field(
        default=None,
        description=(
            "Retries of a transient feed error (connection, timeout, 429, 5xx; gRPC "
            "UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, CANCELLED) before the "
            "run fails (the subscriber's default is 8)."
        ),
        ge=0,
        le=100,
    )
    auth: Auth = Field(default=Auth(), description="How the subscriber authenticates to the feed.")
    broker: Broker | None = Field(
        default=None,
        description=(
            "Read the service's events from its RabbitMQ stream instead (the RabbitMQ "
            "transport); url is then the service's HTTP feed, read for the head and for what "
            "the stream no longer holds (retention)."
        ),
    )


class ReadModel(_Model):
    database_secret_ref: SecretKeyRef = Field(
        description=(
            "The Secret key that holds the read model's DSN (postgresql://... or sqlite:///...)."
        )
    )
    projection: str = Field(
        description=(
            "Import path of the projection, package.module:function (for example "
            "feedline.services.loyalty_program.projection:project_special_offers)."
        ),
        max_length=512,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$",
    )
    retry_attempts: int | None = Field(
        default=None,  # None: the subscriber's default
        description=(
            "Retries of a read-model database that cannot be reached yet (connection "
            "refused, host not found, starting up) before the run fails (the subscriber's "
            f"default is {subscriber_env.DEFAULT_DATABASE_RETRIES}; a follower waits until "
            "stopped)."
        ),
        ge=0,
        le=100,
    )


class Retry(_Model):
    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff_seconds: int = Field(
        default=1, description="First backoff; it doubles per attempt.", ge=0, le=3600
    )


class Replay(_Model):
    token: str | None = Field(default=None, min_length=1, max_length=128)
    from_sequence: int = Field(
        default=0,
        description=(
            "The first event the replay reads again; 0 and 1 both mean the first event of the feed."
        ),
        json_schema_extra=rules(rule("self >= 0", "replay.fromSequence must be >= 0")),
    )


def _quantity() -> Any:
    return Field(default=None, json_schema_extra={"pattern": QUANTITY})


class Quantities(_Model):
    cpu: int | str | None = _quantity()
    memory: int | str | None = _quantity()
    ephemeral_storage: int | str | None = Field(
        default=None, alias="ephemeral-storage", json_schema_extra={"pattern": QUANTITY}
    )


class Resources(_Model):
    requests: Quantities | None = None
    limits: Quantities | None = None


class EnvVar(_Model):
    model_config = ConfigDict(
        json_schema_extra=rules(
            rule(
                f"!self.name.startsWith('{subscriber_env.PREFIX}')",
                RESERVED_ENV_MESSAGE,
                field_path=".name",
                reason="FieldValueForbidden",
            )
        )
    )

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    value: str | None = Field(default=None, max_length=4096)


class Subscriber(_Model):
    image: str | None = Field(
        default=None,
        description="Container image (defaults to the operator's --subscriber-image).",
        min_length=1,
        max_length=512,
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    service_account_name: str | None = Field(
        default=None,
        description=(
            "ServiceAccount of the pod (its token is never mounted, except as the projected "
            "feed token for auth type ServiceAccountToken)."
        ),
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    resources: Resources | None = Field(
        default=None, description="Replaces the default requests and limits."
    )
    env: tuple[EnvVar, ...] = Field(
        default=(),
        description=(
            "Extra environment variables, e.g. for the projection. Names starting with "
            f"{subscriber_env.PREFIX} are refused: the operator renders those."
        ),
        max_length=50,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class EventSubscriptionSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=rules(
            rule(
                "self.mode != 'CronJob' || has(self.schedule)",
                "schedule is required when mode is CronJob",
                field_path=".schedule",
                reason="FieldValueRequired",
            ),
            rule(
                "self.mode != 'Follow' || !has(self.schedule)",
                "schedule is forbidden when mode is Follow (the follower never stops)",
                field_path=".schedule",
                reason="FieldValueForbidden",
            ),
            rule(
                "self.mode != 'Follow' || !has(self.timeZone)",
                "timeZone is forbidden when mode is Follow",
                field_path=".timeZone",
                reason="FieldValueForbidden",
            ),
            rule(
                "!has(self.maxEventsPerRun) || self.maxEventsPerRun >= self.batchSize",
                "maxEventsPerRun must be at least batchSize",
                field_path=".maxEventsPerRun",
            ),
        )
    )

    feed: Feed = Field(
        description=(
            "The event feed to read (Feed protocol v1): over HTTP, gRPC or, with broker, "
            "a RabbitMQ stream."
        )
    )
    mode: Literal["CronJob", "Follow"] = Field(
        default="CronJob",
        description=(
            "CronJob (default) runs the subscriber on a schedule until it is caught up; "
            "Follow runs one long-polling replica for sub-second latency."
        ),
    )
    schedule: str | None = Field(
        default=None,
        description=(
            "Cron schedule (five fields or @hourly/@daily/...), CronJob mode only. Time zones "
            "go in timeZone, not in the schedule."
        ),
        max_length=256,
        json_schema_extra=rules(
            rule(
                f"self.matches('{CRON_PATTERN}')",
                "schedule must be a cron expression: five fields (minute hour day-of-month "
                "month day-of-week) within range, or @yearly, @monthly, @weekly, @daily or "
                "@hourly",
            )
        ),
    )
    time_zone: str | None = Field(
        default=None,
        description="IANA time zone of the schedule (for example Europe/Copenhagen).",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$",
    )
    suspend: bool = Field(
        default=False,
        description="Stop starting runs (CronJob) or scale the follower to zero.",
    )
    read_model: ReadModel = Field(description="Where the events are written.")
    batch_size: int = Field(
        default=1000,
        description="Events per feed page and per read-model transaction (1..10000).",
        json_schema_extra=rules(
            rule(
                "self >= 1 && self <= 10000",
                "batchSize must be between 1 and 10000 (the feed's largest page)",
            )
        ),
    )
    max_events_per_run: int | None = Field(
        default=None,
        description="Stop a CronJob run after this many events (unset means until caught up).",
        json_schema_extra=rules(
            rule(
                "self >= 1 && self <= 100000000", "maxEventsPerRun must be between 1 and 100000000"
            )
        ),
    )
    start_position: int | str = Field(
        default="Beginning",
        description=(
            "Where a subscription without a checkpoint starts: Beginning, Head, or a sequence "
            "number (the first event to read)."
        ),
        json_schema_extra=rules(
            rule(
                "type(self) == int ? self >= 1 : (self == 'Beginning' || self == 'Head' "
                "|| self.matches('^[1-9][0-9]{0,17}$'))",
                "startPosition must be Beginning, Head or a sequence number >= 1",
            )
        ),
    )
    on_poison_event: Literal["DeadLetter", "Halt"] = Field(
        default="Halt",
        description=(
            "What to do with an event the projection keeps failing on after "
            "retry.maxAttempts: DeadLetter (record it and go on) or Halt (stop; the position "
            "stays before it and status says why)."
        ),
    )
    retry: Retry = Field(
        default=Retry(), description="Retries of a failing event before onPoisonEvent applies."
    )
    replay: Replay | None = Field(
        default=None,
        description=(
            "Change token to rebuild the read model: the next run calls the projection's "
            "reset hook and reads again from fromSequence."
        ),
    )
    subscriber: Subscriber = Field(default=Subscriber(), description="The subscriber's pod.")


# --- status -------------------------------------------------------------------------

_INT64: Final[JsonDict] = {"format": "int64"}
_DATE_TIME: Final[JsonDict] = {"format": "date-time"}


class Condition(_Model):
    """metav1.Condition."""

    type: str = Field(max_length=316, pattern=CONDITION_TYPE)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(min_length=1, max_length=1024, pattern=CONDITION_REASON)
    message: str = Field(max_length=32768)
    last_transition_time: str = Field(json_schema_extra=_DATE_TIME)
    observed_generation: int | None = Field(default=None, ge=0, json_schema_extra=_INT64)


class LastRun(_Model):
    name: str | None = Field(default=None, description="The pod that reported this run.")
    start_time: str | None = Field(default=None, json_schema_extra=_DATE_TIME)
    completion_time: str | None = Field(default=None, json_schema_extra=_DATE_TIME)
    outcome: Outcome | None = None
    processed: int | None = Field(default=None, json_schema_extra=_INT64)
    dead_lettered: int | None = Field(default=None, json_schema_extra=_INT64)
    message: str | None = Field(default=None, max_length=TERMINATION_MESSAGE_LIMIT)


class EventSubscriptionStatus(_Model):
    observed_generation: int | None = Field(default=None, json_schema_extra=_INT64)
    conditions: tuple[Condition, ...] = Field(
        default=(),
        description=(
            "Ready (child in sync), CaughtUp (lag 0 at the last run), Stalled (last run "
            "failed or halted)."
        ),
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    position: int | None = Field(
        default=None,
        description="Sequence number of the last event applied.",
        json_schema_extra=_INT64,
    )
    head: int | None = Field(
        default=None, description="The feed's head at the last run.", json_schema_extra=_INT64
    )
    lag: int | None = Field(
        default=None, description="head - position at the last run.", json_schema_extra=_INT64
    )
    child_name: str | None = None
    child_kind: Literal["CronJob", "Deployment"] | None = None
    last_run: LastRun | None = None


# --- the resource -------------------------------------------------------------------


class EventSubscriptionResource(_Model):
    """The custom resource as the API server stores it (the CRD's root schema)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            rule(
                f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
                f"metadata.name must be at most {MAX_NAME_LENGTH} characters "
                "(it names the CronJob)",
            ),
            description=(
                "An EventSubscription reads one HTTP event feed into a read model. The "
                "feedline operator runs it as a CronJob (mode CronJob) or as a one-replica "
                "Deployment that long-polls the feed (mode Follow)."
            ),
        )
    )

    api_version: str | None = None
    kind: str | None = None
    metadata: dict[str, Any] | None = None
    spec: EventSubscriptionSpec = Field(
        description="What to read, where to write it, and how to run the subscriber."
    )
    status: EventSubscriptionStatus | None = Field(
        default=None, description="Written by the operator."
    )


class EventSubscription(_Model):
    """The parts of the custom resource the operator and `feedline dev` need."""

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
