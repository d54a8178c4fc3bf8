"""Pure builders: an EventSubscription in, Kubernetes manifests (dicts) out.

No I/O here. The reconcile step compares these manifests with what the API
server has; unit tests compare them with golden files under
tests/data/operator/; `feedline dev` runs the same command and env locally.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from feedline_contracts import subscriber_env as env_names
from feedline_contracts.eventsubscription import EventSubscription, Quantities, SecretKeyRef
from feedline_contracts.follower import HEALTH_PATH
from feedline_operator import names

Manifest = dict[str, Any]

# Every variable the operator may render; the CRD refuses these (every FEEDLINE_*
# name) in spec.subscriber.env.
RENDERED_ENV = (
    env_names.SUBSCRIPTION,
    env_names.FEED_URL,
    env_names.EVENT_TYPES,
    env_names.FEED_AUTH,
    env_names.FEED_TOKEN_FILE,
    env_names.DATABASE_URL,
    env_names.PROJECTION,
    env_names.BATCH_SIZE,
    env_names.MAX_EVENTS_PER_RUN,
    env_names.START_POSITION,
    env_names.ON_POISON_EVENT,
    env_names.RETRY_MAX_ATTEMPTS,
    env_names.RETRY_BACKOFF_SECONDS,
    env_names.REPLAY_TOKEN,
    env_names.REPLAY_FROM_SEQUENCE,
    env_names.FOLLOW,
    env_names.STATUS_PORT,
    env_names.TERMINATION_LOG,
    env_names.FEED_WAIT_SECONDS,
    env_names.FEED_RETRY_ATTEMPTS,
    env_names.DATABASE_RETRIES,
    env_names.BROKER_URL,
    env_names.BROKER_STREAM,
)


@dataclass(frozen=True)
class ChildDefaults:
    """What the operator decides for every child; the chart can change the image."""

    subscriber_image: str = "feedline:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    version: str = "0.1.0"
    # CronJob: a run missed by more than this (operator or controller down) is skipped.
    starting_deadline_seconds: int = 300
    successful_jobs_history_limit: int = 3
    failed_jobs_history_limit: int = 3
    # A failed run is retried by the next schedule; the Job itself retries once.
    backoff_limit: int = 1
    active_deadline_seconds: int = 3600
    ttl_seconds_after_finished: int = 86400
    # The subscriber's image runs as this user (see the Dockerfile).
    run_as_user: int = 10001
    requests: dict[str, str] = field(default_factory=lambda: {"cpu": "50m", "memory": "64Mi"})
    limits: dict[str, str] = field(default_factory=lambda: {"memory": "256Mi"})


def child_name(sub: EventSubscription) -> str:
    """Children are named after their subscription (the CRD caps names at 52)."""
    return sub.name


def child_kind(sub: EventSubscription) -> str:
    return "Deployment" if sub.spec.mode == "Follow" else "CronJob"


def selector_labels(sub: EventSubscription) -> dict[str, str]:
    return {
        names.LABEL_NAME: names.SUBSCRIBER_APP,
        names.LABEL_INSTANCE: sub.name,
        names.LABEL_COMPONENT: names.SUBSCRIBER_COMPONENT,
    }


def labels(sub: EventSubscription, defaults: ChildDefaults) -> dict[str, str]:
    return {
        **selector_labels(sub),
        names.LABEL_PART_OF: "feedline",
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
        names.LABEL_VERSION: defaults.version,
        names.LABEL_SUBSCRIPTION: sub.name,
    }


def owner_reference(sub: EventSubscription) -> Manifest:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "name": sub.name,
        "uid": sub.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(sub: EventSubscription, defaults: ChildDefaults, name: str) -> Manifest:
    return {
        "name": name,
        "namespace": sub.namespace,
        "labels": labels(sub, defaults),
        "ownerReferences": [owner_reference(sub)],
    }


def _optional(value: int | None) -> str | None:
    return None if value is None else str(value)


def _secret_env(name: str, ref: SecretKeyRef) -> Manifest:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def subscriber_env(sub: EventSubscription) -> list[Manifest]:
    """The container's env: every subscriber setting, from the spec.

    The DSN and the broker's URL (it holds the broker's credentials) come from
    their Secrets by reference; the operator never reads them.
    """
    spec = sub.spec
    follow = spec.mode == "Follow"
    replay = spec.replay
    plain: list[tuple[str, str | None]] = [
        (env_names.SUBSCRIPTION, sub.name),
        (env_names.FEED_URL, spec.feed.url),
        (env_names.EVENT_TYPES, ",".join(spec.feed.event_types) or None),
        # The CRD's names are the subscriber's too (feedline_contracts.auth.FeedAuth).
        (env_names.FEED_AUTH, spec.feed.auth.type),
        (
            env_names.FEED_TOKEN_FILE,
            f"{names.FEED_TOKEN_DIR}/{names.FEED_TOKEN_FILE}"
            if spec.feed.auth.type != "None"
            else None,
        ),
        (env_names.PROJECTION, spec.read_model.projection),
        (env_names.BATCH_SIZE, str(spec.batch_size)),
        (
            env_names.MAX_EVENTS_PER_RUN,
            None if spec.max_events_per_run is None else str(spec.max_events_per_run),
        ),
        (env_names.START_POSITION, str(spec.start_position)),
        (env_names.ON_POISON_EVENT, spec.on_poison_event),
        (env_names.RETRY_MAX_ATTEMPTS, str(spec.retry.max_attempts)),
        (env_names.RETRY_BACKOFF_SECONDS, str(spec.retry.backoff_seconds)),
        (env_names.REPLAY_TOKEN, replay.token if replay else None),
        (
            env_names.REPLAY_FROM_SEQUENCE,
            # The subscriber counts from the first event to read again (>= 1).
            str(max(replay.from_sequence, 1)) if replay and replay.token else None,
        ),
        (env_names.FOLLOW, "true" if follow else None),
        (env_names.STATUS_PORT, str(names.STATUS_PORT) if follow else None),
        (env_names.TERMINATION_LOG, names.TERMINATION_MESSAGE_PATH),
        (env_names.FEED_WAIT_SECONDS, _optional(spec.feed.wait_seconds)),
        (env_names.FEED_RETRY_ATTEMPTS, _optional(spec.feed.retry_attempts)),
        (env_names.DATABASE_RETRIES, _optional(spec.read_model.retry_attempts)),
    ]
    env: list[Manifest] = [{"name": k, "value": v} for k, v in plain if v is not None]
    env.insert(
        [e["name"] for e in env].index(env_names.PROJECTION),
        _secret_env(env_names.DATABASE_URL, spec.read_model.database_secret_ref),
    )
    broker = spec.feed.broker
    if broker is not None:
        # The stream beside the feed it falls back to; the URL by reference.
        at = [e["name"] for e in env].index(env_names.FEED_URL) + 1
        env[at:at] = [
            _secret_env(env_names.BROKER_URL, broker.url_secret_ref),
            {"name": env_names.BROKER_STREAM, "value": broker.stream},
        ]
    env.extend({"name": e.name, "value": e.value or ""} for e in spec.subscriber.env)
    return env


def _quantities(q: Quantities) -> dict[str, str]:
    out = {
        "cpu": q.cpu,
        "memory": q.memory,
        "ephemeral-storage": q.ephemeral_storage,
    }
    return {k: str(v) for k, v in out.items() if v is not None}


def _resources(sub: EventSubscription, defaults: ChildDefaults) -> Manifest:
    custom = sub.spec.subscriber.resources
    if custom is None:
        return {"requests": dict(defaults.requests), "limits": dict(defaults.limits)}
    out: Manifest = {}
    if custom.requests is not None:
        out["requests"] = _quantities(custom.requests)
    if custom.limits is not None:
        out["limits"] = _quantities(custom.limits)
    return out


def _volumes(sub: EventSubscription) -> tuple[list[Manifest], list[Manifest]]:
    """Volumes and mounts: a writable /tmp, and the feed's bearer token if any."""
    volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    mounts: list[Manifest] = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108
    auth = sub.spec.feed.auth
    token_volume: Manifest | None = None
    if auth.type == "Token" and auth.secret_ref is not None:
        token_volume = {
            "name": "feed-token",
            "secret": {
                "secretName": auth.secret_ref.name,
                "items": [{"key": auth.secret_ref.key, "path": names.FEED_TOKEN_FILE}],
                "defaultMode": 0o440,
            },
        }
    elif auth.type == "ServiceAccountToken":
        # The one credential the pod gets: a short-lived token only feeds accept.
        token_volume = {
            "name": "feed-token",
            "projected": {
                "defaultMode": 0o440,
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": names.FEED_TOKEN_AUDIENCE,
                            "expirationSeconds": 3600,
                            "path": names.FEED_TOKEN_FILE,
                        }
                    }
                ],
            },
        }
    if token_volume is not None:
        volumes.append(token_volume)
        mounts.append({"name": "feed-token", "mountPath": names.FEED_TOKEN_DIR, "readOnly": True})
    return volumes, mounts


def subscriber_container(sub: EventSubscription, defaults: ChildDefaults) -> Manifest:
    follow = sub.spec.mode == "Follow"
    _, mounts = _volumes(sub)
    container: Manifest = {
        "name": names.CONTAINER_NAME,
        "image": sub.spec.subscriber.image or defaults.subscriber_image,
        "imagePullPolicy": sub.spec.subscriber.image_pull_policy or defaults.image_pull_policy,
        "command": list(names.SUBSCRIBE_COMMAND),
        "env": subscriber_env(sub),
        "resources": _resources(sub, defaults),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        "terminationMessagePath": names.TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "File",
        "volumeMounts": mounts,
    }
    if follow:
        container["ports"] = [
            {"name": "status", "containerPort": names.STATUS_PORT, "protocol": "TCP"}
        ]
        probe = {"httpGet": {"path": HEALTH_PATH, "port": "status"}, "periodSeconds": 10}
        container["livenessProbe"] = {**probe, "failureThreshold": 6}
        container["readinessProbe"] = probe
    return container


def pod_spec(sub: EventSubscription, defaults: ChildDefaults) -> Manifest:
    """The restricted Pod Security profile; no Kubernetes API credentials."""
    volumes, _ = _volumes(sub)
    spec: Manifest = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "restartPolicy": "Always" if sub.spec.mode == "Follow" else "Never",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": defaults.run_as_user,
            "runAsGroup": defaults.run_as_user,
            "fsGroup": defaults.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [subscriber_container(sub, defaults)],
        "volumes": volumes,
    }
    if sub.spec.subscriber.service_account_name:
        spec["serviceAccountName"] = sub.spec.subscriber.service_account_name
    return spec


def _pod_template(sub: EventSubscription, defaults: ChildDefaults) -> Manifest:
    return {"metadata": {"labels": labels(sub, defaults)}, "spec": pod_spec(sub, defaults)}


def _job_spec(sub: EventSubscription, defaults: ChildDefaults) -> Manifest:
    return {
        "backoffLimit": defaults.backoff_limit,
        "activeDeadlineSeconds": defaults.active_deadline_seconds,
        "ttlSecondsAfterFinished": defaults.ttl_seconds_after_finished,
        "template": _pod_template(sub, defaults),
    }


def build_cronjob(sub: EventSubscription, defaults: ChildDefaults) -> Manifest:
    """CronJob mode: the book's design, one run per schedule until caught up."""
    if sub.spec.schedule is None:
        raise ValueError("a CronJob needs spec.schedule")
    spec: Manifest = {
        "schedule": sub.spec.schedule,
        "suspend": sub.spec.suspend,
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": defaults.starting_deadline_seconds,
        "successfulJobsHistoryLimit": defaults.successful_jobs_history_limit,
        "failedJobsHistoryLimit": defaults.failed_jobs_history_limit,
        "jobTemplate": {
            "metadata": {"labels": labels(sub, defaults)},
            "spec": _job_spec(sub, defaults),
        },
    }
    if sub.spec.time_zone:
        spec["timeZone"] = sub.spec.time_zone
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": _metadata(sub, defaults, child_name(sub)),
        "spec": spec,
    }


def build_deployment(sub: EventSubscription, defaults: ChildDefaults) -> Manifest:
    """Follow mode: one replica that long-polls; Recreate so two never overlap."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(sub, defaults, child_name(sub)),
        "spec": {
            "replicas": 0 if sub.spec.suspend else 1,
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(sub)},
            "template": _pod_template(sub, defaults),
        },
    }


def build_child(sub: EventSubscription, defaults: ChildDefaults) -> Manifest:
    if sub.spec.mode == "Follow":
        return build_deployment(sub, defaults)
    return build_cronjob(sub, defaults)


def run_now_job_name(sub: EventSubscription, request: str) -> str:
    """Deterministic per request, so a retried or restarted reconcile cannot make two."""
    digest = hashlib.sha256(f"{sub.uid}/{request}".encode()).hexdigest()[:8]
    return f"{sub.name[:44]}-now-{digest}"


def build_run_now_job(sub: EventSubscription, defaults: ChildDefaults, request: str) -> Manifest:
    """A Job from the CronJob's template at once (like `kubectl create job --from`)."""
    metadata = _metadata(sub, defaults, run_now_job_name(sub, request))
    metadata["annotations"] = {
        "cronjob.kubernetes.io/instantiate": "manual",
        names.ANNOTATION_RUN_NOW_REQUEST: request,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": _job_spec(sub, defaults),
    }
