"""The reconcile step: make the cluster match the builders, idempotently.

Safe to run any number of times, concurrently with itself (a child event and
the subscription's own handler), and after a restart: children have fixed
names, so a create that loses a race gets 409 and the next pass compares
instead; a replace carries the resourceVersion it compared against.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from feedline_operator import builders, names, status
from feedline_operator.compare import differences
from feedline_operator.kube import ApiError, Kube, collection_path, object_path
from feedline_operator.spec import EventSubscription, SecretKeyRef

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


class ChildConflictError(Exception):
    """An object with the child's name exists and is not ours: never take it over."""


def watched_part(manifest: Mapping[str, Any]) -> dict[str, Any]:
    meta = manifest["metadata"]
    return {
        "metadata": {"labels": meta["labels"], "ownerReferences": meta["ownerReferences"]},
        "spec": manifest["spec"],
    }


def _is_ours(live: Mapping[str, Any], sub: EventSubscription) -> bool:
    refs = live.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("controller") and r.get("uid") == sub.uid for r in refs)


def ensure(kube: Kube, desired: Mapping[str, Any], sub: EventSubscription) -> str:
    """Create the child or put it back in line; returns what it did ("" if nothing)."""
    meta = desired["metadata"]
    path = object_path(desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"])
    for _ in range(_ATTEMPTS):
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


def remove_other_children(kube: Kube, sub: EventSubscription, keep_kind: str) -> list[str]:
    """After a mode switch, the child of the other kind goes."""
    removed = []
    for api_version, kind in _CHILD_KINDS:
        if kind == keep_kind:
            continue
        path = object_path(api_version, kind, sub.namespace, builders.child_name(sub))
        live = kube.get(path)
        if (
            live is not None
            and _is_ours(live, sub)
            and kube.delete(path, uid=live["metadata"]["uid"])
        ):
            removed.append(f"deleted {kind} {builders.child_name(sub)}")
    return removed


def missing_secrets(kube: Kube, sub: EventSubscription) -> list[str]:
    """Secret references that do not resolve (the schema cannot know)."""
    refs: list[tuple[str, SecretKeyRef]] = [
        ("readModel.databaseSecretRef", sub.spec.read_model.database_secret_ref)
    ]
    if sub.spec.feed.auth.type == "Token" and sub.spec.feed.auth.secret_ref is not None:
        refs.append(("feed.auth.secretRef", sub.spec.feed.auth.secret_ref))
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
) -> Outcome:
    outcome = Outcome(child_kind=builders.child_kind(sub), child_name=builders.child_name(sub))
    desired = builders.build_child(sub, defaults)
    try:
        done = ensure(kube, desired, sub)
    except ChildConflictError as error:
        outcome.ready, outcome.reason, outcome.message = False, "ChildConflict", str(error)
        outcome.warnings.append(("ChildConflict", str(error)))
        return outcome
    if done:
        outcome.actions.append(done)
    outcome.actions += remove_other_children(kube, sub, desired["kind"])

    request = (annotations or {}).get(names.ANNOTATION_RUN_NOW)
    if request is not None:
        if sub.spec.mode == "CronJob":
            started = run_now(kube, sub, defaults, request)
            if started:
                outcome.actions.append(started)
        else:
            outcome.warnings.append(
                ("RunNowIgnored", "run-now applies to mode CronJob; a follower is always running")
            )
        clear_run_now(kube, sub)

    problems = missing_secrets(kube, sub)
    if problems:
        outcome.ready, outcome.reason = False, "SecretNotFound"
        outcome.message = "; ".join(problems)
        outcome.warnings.append(("SecretNotFound", outcome.message))
    else:
        outcome.message = f"{desired['kind']} {desired['metadata']['name']} matches the spec"
    return outcome


def write_status(
    kube: Kube,
    namespace: str,
    name: str,
    change: Callable[[Mapping[str, Any], int], dict[str, Any] | None],
) -> bool:
    """Read-modify-write the status; writes only when it changed. True if written.

    `change(current_status, generation)` returns the new status (or None to leave
    it). The resourceVersion makes a concurrent writer's change win a retry
    instead of being overwritten.
    """
    path = object_path(names.API_VERSION, names.KIND, namespace, name)
    for _ in range(_ATTEMPTS):
        body = kube.get(path)
        if body is None:
            return False
        current = body.get("status") or {}
        new = change(current, int(body["metadata"].get("generation", 1)))
        if new is None or status.same_status(current, new):
            return False
        patch = {
            "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
            "status": new,
        }
        try:
            kube.merge_patch(f"{path}/status", patch)
        except ApiError as error:
            if error.status == 409:
                continue
            if error.status == 404:
                return False
            raise
        return True
    raise RuntimeError(f"status of {namespace}/{name} kept changing; will retry")


def now() -> datetime:
    return datetime.now(UTC)


def list_subscriber_pods(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    selector = f"{names.LABEL_SUBSCRIPTION}={name},{names.LABEL_MANAGED_BY}={names.MANAGED_BY}"
    found = kube.request(
        "GET", collection_path("v1", "Pod", namespace), query={"labelSelector": selector}
    )
    items: list[dict[str, Any]] = found.get("items", [])
    return items
