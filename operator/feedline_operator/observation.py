"""Run observation: what subscriber runs report, written into their subscription's status.

A CronJob run's pod finishes and leaves its summary as the container's
termination message. A follower never terminates, so it serves the same
summary document on its status port instead (`feedline_contracts.follower`),
and the operator reads it over the pod IP on a timer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
import kopf

from feedline_contracts.eventsubscription import EventSubscription
from feedline_contracts.follower import STATUS_PORT, SUMMARY_PATH
from feedline_contracts.summary import OUTCOMES, STALLED_OUTCOMES
from feedline_operator import names, status
from feedline_operator.kube import Kube, collection_path, object_path
from feedline_operator.reporting import Logger, as_body
from feedline_operator.status_writes import record_run

log = logging.getLogger(__name__)


def observe_pod(kube: Kube, pod: Mapping[str, Any], logger: Logger) -> None:
    """A finished subscriber pod: its termination message is the run's summary."""
    metadata = pod.get("metadata") or {}
    owner = (metadata.get("labels") or {}).get(names.LABEL_SUBSCRIPTION)
    run = status.run_from_pod(pod)
    if owner is None or run is None:
        return
    namespace = metadata.get("namespace") or ""
    if not record_run(kube, namespace, owner, run):
        return
    logger.info(f"run {run.name}: {run.outcome}, position {run.position}, lag {run.lag}")
    if run.outcome in STALLED_OUTCOMES:
        parent = kube.get(object_path(names.API_VERSION, names.KIND, namespace, owner))
        if parent is not None:
            kopf.warn(as_body(parent), reason=f"Run{run.outcome}", message=run.message)


def observe_follower(kube: Kube, sub: EventSubscription) -> None:
    """Write what the subscription's follower reports, if it answers and it is news."""
    run = read_follower(kube, sub)
    if run is not None:
        record_run(kube, sub.namespace, sub.name, run)


def list_subscriber_pods(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    selector = f"{names.LABEL_SUBSCRIPTION}={name},{names.LABEL_MANAGED_BY}={names.MANAGED_BY}"
    found = kube.request(
        "GET", collection_path("v1", "Pod", namespace), query={"labelSelector": selector}
    )
    items: list[dict[str, Any]] = found.get("items", [])
    return items


def summary_url(address: str, port: int = STATUS_PORT) -> str:
    """Where a follower at ``address`` (a pod IP) serves its summary."""
    host = f"[{address}]" if ":" in address else address  # an IPv6 pod IP
    return f"http://{host}:{port}{SUMMARY_PATH}"


def fetch_follower_run(pod_name: str, url: str, timeout: float = 3.0) -> status.Run | None:
    """The run a follower reports at ``url``; None (and a warning) when it cannot be read."""
    try:
        response = httpx.get(url, timeout=timeout)
        response.raise_for_status()
        data = response.json()
    except (httpx.HTTPError, ValueError) as error:
        # Said, not swallowed: a follower whose summary cannot be read leaves
        # the subscription's position and lag stale.
        log.warning("follower %s: cannot read its summary at %s: %s", pod_name, url, error)
        return None
    if not isinstance(data, dict) or data.get("outcome") not in OUTCOMES:
        log.warning("follower %s: %s answered no run summary: %.200r", pod_name, url, data)
        return None
    return status.summary_to_run(pod_name, data)


def read_follower(kube: Kube, sub: EventSubscription, timeout: float = 3.0) -> status.Run | None:
    """The latest summary of the subscription's running follower pod, if one answers."""
    return first_follower_run(list_subscriber_pods(kube, sub.namespace, sub.name), timeout=timeout)


def first_follower_run(
    pods: Iterable[Mapping[str, Any]], port: int = STATUS_PORT, timeout: float = 3.0
) -> status.Run | None:
    """The run reported by the first running pod of ``pods`` that answers on ``port``."""
    for pod in pods:
        pod_status = pod.get("status") or {}
        address = pod_status.get("podIP")
        if pod_status.get("phase") != "Running" or not address:
            continue
        run = fetch_follower_run(pod["metadata"]["name"], summary_url(address, port), timeout)
        if run is not None:
            return run
    return None
