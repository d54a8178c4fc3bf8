"""Environment variables that configure a subscriber run.

This module is the single list of names: the subscriber reads them, the
operator renders them into the CronJob/Deployment pod spec, and `feedline dev`
passes them to local processes. Every `feedline subscribe` flag has one.
"""

from typing import Final

from feedline_contracts.broker import BROKER_URL_SETTING
from feedline_contracts.summary import TERMINATION_MESSAGE_PATH

# Every variable the subscriber reads starts with it, and the operator renders
# them all: an EventSubscription's spec.subscriber.env may not set any.
PREFIX: Final = "FEEDLINE_"

SUBSCRIPTION: Final = "FEEDLINE_SUBSCRIPTION"
FEED_URL: Final = "FEEDLINE_FEED_URL"
EVENT_TYPES: Final = "FEEDLINE_EVENT_TYPES"  # comma-separated event names
FEED_AUTH: Final = "FEEDLINE_FEED_AUTH"  # None | Token | ServiceAccountToken (any case)
FEED_TOKEN_FILE: Final = (
    "FEEDLINE_FEED_TOKEN_FILE"  # bearer token file (Secret or projected SA token)
)
DATABASE_URL: Final = "FEEDLINE_DATABASE_URL"  # read-model DSN: postgresql://... or sqlite:///...
PROJECTION: Final = "FEEDLINE_PROJECTION"  # package.module:function
BATCH_SIZE: Final = "FEEDLINE_BATCH_SIZE"
MAX_EVENTS_PER_RUN: Final = "FEEDLINE_MAX_EVENTS_PER_RUN"
START_POSITION: Final = "FEEDLINE_START_POSITION"  # Beginning | Head | <sequence number>
ON_POISON_EVENT: Final = "FEEDLINE_ON_POISON_EVENT"  # DeadLetter | Halt
RETRY_MAX_ATTEMPTS: Final = "FEEDLINE_RETRY_MAX_ATTEMPTS"
RETRY_BACKOFF_SECONDS: Final = "FEEDLINE_RETRY_BACKOFF_SECONDS"
REPLAY_TOKEN: Final = "FEEDLINE_REPLAY_TOKEN"
REPLAY_FROM_SEQUENCE: Final = "FEEDLINE_REPLAY_FROM_SEQUENCE"
FOLLOW: Final = "FEEDLINE_FOLLOW"  # "true" runs as a follower (long-polls, never stops)
STATUS_PORT: Final = "FEEDLINE_STATUS_PORT"  # follow mode: serves the latest summary and health
TERMINATION_LOG: Final = "FEEDLINE_TERMINATION_LOG"  # default /dev/termination-log

DEFAULT_TERMINATION_LOG: Final = TERMINATION_MESSAGE_PATH

# Added with the subscriber itself (same rules: the operator renders them).
FEED_WAIT_SECONDS: Final = "FEEDLINE_FEED_WAIT_SECONDS"  # follow mode: long-poll seconds (0..30)
FEED_RETRY_ATTEMPTS: Final = "FEEDLINE_FEED_RETRY_ATTEMPTS"  # transient feed errors: retries
# The read-model database unreachable at the start of a run: retries.
DATABASE_RETRIES: Final = "FEEDLINE_DATABASE_RETRIES"
# Its default: with full jitter under a cap doubling from 0.5 s to 10 s, about
# 80 s of waiting on average (rarely under 45 s), enough for a database that a
# fresh `helm install` starts beside the first CronJob run.
DEFAULT_DATABASE_RETRIES: Final = 20

DEFAULT_SERVICEACCOUNT_TOKEN_FILE: Final = "/var/run/secrets/feedline/token"

# FEED_URL's scheme picks the transport (docs/transports.md), here and in the
# CRD's rule on spec.feed.url: the HTTP feed's endpoint (http://NAME/events),
# or a service's gRPC feed (grpc://NAME:9090, no path; grpcs:// with TLS).
HTTP_FEED_SCHEMES: Final = ("http", "https")
GRPC_FEED_SCHEMES: Final = ("grpc", "grpcs")
FEED_URL_SCHEMES: Final = (*HTTP_FEED_SCHEMES, *GRPC_FEED_SCHEMES)
# A grpcs:// URL without a port: the TLS port (grpc:// defaults to feed.GRPC_PORT).
GRPCS_DEFAULT_PORT: Final = 443

# The RabbitMQ transport (docs/transports.md, "RabbitMQ"): both set, or neither.
# Set, the subscriber reads the service's stream and uses FEED_URL (then an HTTP
# feed) for the head and for what the stream no longer holds. The broker's URL
# carries its credentials (rabbitmq-stream://USER:PASSWORD@HOST[:PORT]/VHOST), so
# the operator renders it from a Secret (spec.feed.broker.urlSecretRef); it is the
# variable that names the broker to a service's relay, too.
BROKER_URL: Final = BROKER_URL_SETTING
BROKER_STREAM: Final = "FEEDLINE_BROKER_STREAM"  # the service's stream, feedline.events.SERVICE
