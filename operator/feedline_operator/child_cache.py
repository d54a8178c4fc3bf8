"""The children as the operator's own watches last saw them: a reconcile looks here first.

kopf feeds one index per child kind (CronJobs and Deployments labelled as
managed by the operator) from the watches that already drive drift correction
(`handlers.child_changed`), and fills them before any handler runs. A
reconcile's first look at a child is that copy instead of a GET: the informer
model of controller-runtime, where a periodic resync reads the cache too. So a
resync of an unchanged subscription sends no request about its children
(docs/benchmarks.md, "Operator").

A stale copy is safe (`reconcile.ensure` relies on this): a create the cache
thought needed gets 409 and the next look is a GET; a replace carrying an older
copy's resourceVersion gets 409 likewise; a copy that is not ours is confirmed
by a GET before the subscription is reported in conflict; and a change made
after the copy was taken arrives as a watch event, which updates the copy
before `handlers.child_changed` compares it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

ChildKey = tuple[str, str]  # (namespace, name)
ChildIndex = kopf.Index[ChildKey, dict[str, Any]]

# A Store's dict can shrink under a reader on another thread (kopf indexes in the
# event loop; sync handlers run in its executor): read it again this often.
_READ_ATTEMPTS = 3


def index_entry(body: Mapping[str, Any]) -> dict[ChildKey, dict[str, Any]]:
    """What the index keeps of one child: what a reconcile compares, and no more.

    The spec is the watch event's own (never modified, shared rather than
    copied); managedFields and the status, most of a body, are left out.
    """
    metadata = body.get("metadata") or {}
    kept = {
        key: metadata[key]
        for key in ("name", "namespace", "uid", "resourceVersion", "labels", "ownerReferences")
        if key in metadata
    }
    copy = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": kept,
        "spec": body.get("spec") or {},
    }
    return {(str(kept.get("namespace", "")), str(kept.get("name", ""))): copy}


@dataclass(frozen=True)
class WatchedChildren:
    """The operator's indexes of its children, by kind (`reconcile.ChildCache`)."""

    by_kind: Mapping[str, ChildIndex]

    def last_seen(self, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The child as last watched; None if the watch has not seen it (or saw it go)."""
        store = self.by_kind[kind].get((namespace, name))
        if store is None:
            return None
        for _ in range(_READ_ATTEMPTS):
            try:
                return next(iter(store), None)
            except RuntimeError:  # changed size during iteration: read again
                continue
        return None  # unknown counts as absent: a create then meets 409 and GETs
