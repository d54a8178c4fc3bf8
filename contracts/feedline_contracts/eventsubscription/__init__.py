"""The EventSubscription API (`feedline.dev/v1alpha1`): its typed model and its CRD.

``model`` is the one source: the operator reads custom resources into it, and
``crd`` generates the CRD from it (``make crd``), which the chart installs and
this package ships (``crd.yaml``) for `feedline dev`. See docs/eventsubscription.md.
"""

from feedline_contracts.eventsubscription.model import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    RESERVED_ENV_MESSAGE,
    VERSION,
    Auth,
    Broker,
    Condition,
    EnvVar,
    EventSubscription,
    EventSubscriptionResource,
    EventSubscriptionSpec,
    EventSubscriptionStatus,
    Feed,
    LastRun,
    Quantities,
    ReadModel,
    Replay,
    Resources,
    Retry,
    SecretKeyRef,
    Subscriber,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "RESERVED_ENV_MESSAGE",
    "VERSION",
    "Auth",
    "Broker",
    "Condition",
    "EnvVar",
    "EventSubscription",
    "EventSubscriptionResource",
    "EventSubscriptionSpec",
    "EventSubscriptionStatus",
    "Feed",
    "LastRun",
    "Quantities",
    "ReadModel",
    "Replay",
    "Resources",
    "Retry",
    "SecretKeyRef",
    "Subscriber",
]
