"""Reconciliation of children: make the cluster match the builders, idempotently.

Safe to run any number of times, concurrently with itself (a child event and
the subscription's own handler), and after a restart: children have fixed
names, so a create that loses a race gets 409 and the next pass compares
instead; a replace carries the resourceVersion it compared against.
`reconcile_and_report` is what the handlers call: one reconcile, then its
metrics, Events and Ready condition. `child_drifted` decides whether a change
to a child needs one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import kopf
import pydantic

from feedline_contracts.eventsubscription import EventSubscription, SecretKeyRef
from feedline_operator import builders, metrics, names, observation
from feedline_operator.compare import differences
from feedline_operator.kube import ApiError, Kube, object_path
from feedline_operator.reporting import Logger, as_body
from feedline_operator.status_writes import write_ready

log = logging.getLogger(__name__)

_CHILD_KINDS = (("batch/v1", "CronJob"), ("apps/v1", "Deployment"))
_ATTEMPTS = 5


@dataclass
class Outcome:
    """What one reconcile found and did; the handler turns it into status and Events."""

    ready: bool = True
    reason: str = "ChildInSync"
    message: str = ""
    child_kind: str | None = None
    child_name: str | None = None
    actions: list[str] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (reason, message): Normal Events


class ChildConflictError(Exception):
    """An object with the child's name exists and is not ours: never take it over."""


class ChildCache(Protocol):
    """Children as a watch last saw them (`child_cache.WatchedChildren`): a first look
    that sends no request. It may be stale; `ensure` and `remove_other_children`
    confirm with a GET whatever a stale copy could get wrong."""

    def last_seen(self, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None: ...


def watched_part(manifest: Mapping[str, Any]) -> dict[str, Any]:
    meta = manifest["metadata"]
    return {
        "metadata": {"labels": meta["labels"], "ownerReferences": meta["ownerReferences"]},
        "spec": manifest["spec"],
    }


def _is_ours(live: Mapping[str, Any], sub: EventSubscription) -> bool:
    refs = live.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("controller") and r.get("uid") == sub.uid for r in refs)


def ensure(
    kube: Kube, desired: Mapping[str, Any], sub: EventSubscription, cache: ChildCache | None
) -> str:
    """Create the child or put it back in line; returns what it did ("" if nothing).

    The first look is ``cache``'s copy when there is one; every later look (after
    a 409, or to confirm a conflict) is a GET.
    """
    meta = desired["metadata"]
    path = object_path(desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"])
    for attempt in range(_ATTEMPTS):
        from_cache = attempt == 0 and cache is not None
        if cache is not None and from_cache:
            live = cache.last_seen(desired["kind"], meta["namespace"], meta["name"])
        else:
            live = kube.get(path)
        if live is None:
            try:
                kube.create(desired)
            except ApiError as error:
                if error.status == 409:  # created meanwhile: compare it on the next pass
                    continue
                raise
            return f"created {desired['kind']} {meta['name']}"
        if not _is_ours(live, sub):
            if from_cache:
                continue  # a copy may predate an adoption or a re-creation: ask the API
            raise ChildConflictError(
                f"{desired['kind']} {meta['name']} exists and is not owned by this subscription"
            )
        drift = differences(watched_part(desired), live)
        if not drift:
            return ""
        version = live["metadata"]["resourceVersion"]
        body = {**desired, "metadata": {**meta, "resourceVersion": version}}
        try:
            kube.replace(body)
        except ApiError as error:
            if error.status in (404, 409):  # deleted or changed meanwhile: look again
                continue
            raise
        return f"updated {desired['kind']} {meta['name']} ({', '.join(drift[:5])})"
    raise RuntimeError(f"{desired['kind']} {meta['name']} kept changing; will retry")


def remove_other_children(
    kube: Kube, sub: EventSubscription, keep_kind: str, cache: ChildCache | None
) -> list[str]:
    """After a mode switch, the child of the other kind goes.

    With a ``cache``, a child it has not seen is taken as absent: one created
    later arrives as a watch event, and `child_drifted` sends its parent here again.
    """
    removed = []
    for api_version, kind in _CHILD_KINDS:
        if kind == keep_kind:
            continue
        name = builders.child_name(sub)
        if cache is not None and cache.last_seen(kind, sub.namespace, name) is None:
            continue
        path = object_path(api_version, kind, sub.namespace, name)
        live = kube.get(path)  # the delete names the uid it saw: a live one, not a copy
        if (
            live is not None
            and _is_ours(live, sub)
            and kube.delete(path, uid=live["metadata"]["uid"])
        ):
            removed.append(f"deleted {kind} {name}")
    return removed


def missing_secrets(kube: Kube, sub: EventSubscription) -> list[str]:
    """Secret references that do not resolve (the schema cannot know)."""
    refs: list[tuple[str, SecretKeyRef]] = [
        ("readModel.databaseSecretRef", sub.spec.read_model.database_secret_ref)
    ]
    if sub.spec.feed.auth.type == "Token" and sub.spec.feed.auth.secret_ref is not None:
        refs.append(("feed.auth.secretRef", sub.spec.feed.auth.secret_ref))
    if sub.spec.feed.broker is not None:
        refs.append(("feed.broker.urlSecretRef", sub.spec.feed.broker.url_secret_ref))
    problems = []
    for field_name, ref in refs:
        secret = kube.get(object_path("v1", "Secret", sub.namespace, ref.name))
        if secret is None:
            problems.append(f"{field_name}: Secret {ref.name} not found")
        elif ref.key not in (secret.get("data") or {}) and ref.key not in (
            secret.get("stringData") or {}
        ):
            problems.append(f"{field_name}: Secret {ref.name} has no key {ref.key}")
    return problems


def run_now(
    kube: Kube, sub: EventSubscription, defaults: builders.ChildDefaults, request: str
) -> str:
    """Start a Job from the CronJob's template; the name makes it happen once per request."""
    job = builders.build_run_now_job(sub, defaults, request)
    try:
        kube.create(job)
    except ApiError as error:
        if error.status != 409:
            raise
        return ""
    return f"created Job {job['metadata']['name']} (run-now)"


def run_in_progress(kube: Kube, sub: EventSubscription) -> str | None:
    """The name of a subscriber pod of ``sub`` that is running, if one is.

    A run started beside it would find the subscription's lock held and exit
    ``Locked``, applying nothing: so run-now waits for it, as `feedline dev`'s
    run-now does. A pod still Pending does not count: it has not taken the lock,
    and if it takes it second, it is that pod that exits Locked.
    """
    for pod in observation.list_subscriber_pods(kube, sub.namespace, sub.name):
        if (pod.get("status") or {}).get("phase") == "Running":
            return str(pod["metadata"]["name"])
    return None


def pending_run_now(kube: Kube, pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The subscription of a subscriber pod that has just finished, if it has a run-now
    request waiting (for that pod, or another run, to end); else None."""
    if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
        return None
    metadata = pod.get("metadata") or {}
    owner = (metadata.get("labels") or {}).get(names.LABEL_SUBSCRIPTION)
    if owner is None:
        return None
    parent = live_subscription(kube, metadata.get("namespace") or "", owner)
    if parent is None:
        return None
    if names.ANNOTATION_RUN_NOW not in (parent["metadata"].get("annotations") or {}):
        return None
    return parent


def live_subscription(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    """The EventSubscription ``namespace/name``; None if it is gone or being deleted."""
    parent = kube.get(object_path(names.API_VERSION, names.KIND, namespace, name))
    if parent is None or parent["metadata"].get("deletionTimestamp"):
        return None
    return parent


def clear_run_now(kube: Kube, sub: EventSubscription) -> None:
    path = object_path(names.API_VERSION, names.KIND, sub.namespace, sub.name)
    try:
        kube.merge_patch(path, {"metadata": {"annotations": {names.ANNOTATION_RUN_NOW: None}}})
    except ApiError as error:
        if error.status != 404:
            raise


def reconcile(
    kube: Kube,
    sub: EventSubscription,
    defaults: builders.ChildDefaults,
    annotations: Mapping[str, str] | None = None,
    cache: ChildCache | None = None,
) -> Outcome:
    outcome = Outcome(child_kind=builders.child_kind(sub), child_name=builders.child_name(sub))
    desired = builders.build_child(sub, defaults)
    try:
        done = ensure(kube, desired, sub, cache)
    except ChildConflictError as error:
        outcome.ready, outcome.reason, outcome.message = False, "ChildConflict", str(error)
        outcome.warnings.append(("ChildConflict", str(error)))
        return outcome
    if done:
        outcome.actions.append(done)
    outcome.actions += remove_other_children(kube, sub, desired["kind"], cache)

    request = (annotations or {}).get(names.ANNOTATION_RUN_NOW)
    if request is not None:
        if sub.spec.mode != "CronJob":
            outcome.warnings.append(
                ("RunNowIgnored", "run-now applies to mode CronJob; a follower is always running")
            )
            clear_run_now(kube, sub)
        elif (running := run_in_progress(kube, sub)) is not None:
            # The annotation stays: the pod's end reconciles again (handlers.pod_changed).
            outcome.notes.append(
                (
                    "RunNowWaiting",
                    f"run-now waits for {running}, a run of this subscription in "
                    "progress, to finish (a run beside it would find the lock held)",
                )
            )
        else:
            started = run_now(kube, sub, defaults, request)
            if started:
                outcome.actions.append(started)
            clear_run_now(kube, sub)

    problems = missing_secrets(kube, sub)
    if problems:
        outcome.ready, outcome.reason = False, "SecretNotFound"
        outcome.message = "; ".join(problems)
        outcome.warnings.append(("SecretNotFound", outcome.message))
    else:
        outcome.message = f"{desired['kind']} {desired['metadata']['name']} matches the spec"
    return outcome


# A failing reconcile is retried this soon (kopf's default is a minute).
RETRY_BACKOFF_SECONDS = 3.0


def subscription_of(body: Mapping[str, Any]) -> EventSubscription:
    """The typed subscription of a custom resource's body."""
    try:
        return EventSubscription.from_body(body)
    except pydantic.ValidationError as error:  # the CRD schema should make this unreachable
        raise kopf.PermanentError(f"spec does not match the operator's model: {error}") from error


def reconcile_and_report(
    kube: Kube,
    body: Mapping[str, Any],
    defaults: builders.ChildDefaults,
    logger: Logger,
    trigger: str,
    cache: ChildCache | None = None,
) -> None:
    """One reconcile of one subscription, then its Ready condition; Events for problems."""
    started = time.perf_counter()
    sub = subscription_of(body)
    annotations = dict(body.get("metadata", {}).get("annotations") or {})
    try:
        outcome = reconcile(kube, sub, defaults, annotations, cache)
    except ApiError as error:
        metrics.ERRORS.labels(reason=f"api{error.status}").inc()
        metrics.RECONCILES.labels(trigger=trigger, result="error").inc()
        write_ready(kube, sub, False, "ReconcileError", str(error), None, None)
        kopf.warn(as_body(body), reason="ReconcileError", message=str(error))
        raise kopf.TemporaryError(str(error), delay=RETRY_BACKOFF_SECONDS) from error
    finally:
        metrics.DURATION.observe(time.perf_counter() - started)
    for action in outcome.actions:
        logger.info(action)
        metrics.CHILD_CHANGES.labels(action=action.split(" ", 1)[0]).inc()
        kopf.info(as_body(body), reason="Reconciled", message=action)
    for reason, message in outcome.notes:
        logger.info(message)
        # Posted whatever settings.posting.level says (it keeps handler logs out of Events).
        kopf.event(as_body(body), type="Normal", reason=reason, message=message)
    for reason, message in outcome.warnings:
        kopf.warn(as_body(body), reason=reason, message=message)
    result = "ready" if outcome.ready else "notready"
    metrics.RECONCILES.labels(trigger=trigger, result=result).inc()
    write_ready(
        kube,
        sub,
        outcome.ready,
        outcome.reason,
        outcome.message,
        outcome.child_kind,
        outcome.child_name,
    )


def owner_name(child: Mapping[str, Any]) -> str | None:
    """The EventSubscription that controls ``child``, if one does."""
    for ref in child.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == names.KIND:
            return str(ref.get("name"))
    return None


def child_drifted(
    event_type: str,
    child: Mapping[str, Any],
    parent: Mapping[str, Any],
    defaults: builders.ChildDefaults,
) -> bool:
    """Whether a change to ``child`` needs its parent reconciled (put back in line)."""
    sub = subscription_of(parent)
    wanted_kind = builders.child_kind(sub)
    if event_type != "DELETED" and child.get("kind") == wanted_kind:
        desired = builders.build_child(sub, defaults)
        return bool(differences(watched_part(desired), child))
    # The child of the other kind deleted: the old child of a mode switch, as meant.
    return not (event_type == "DELETED" and child.get("kind") != wanted_kind)
