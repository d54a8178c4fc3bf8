"""kopf handlers: thin. They read the body into a typed model and call reconcile.

Handlers are registered on a registry built per operator instance (no module
globals), so tests can run an operator in-process next to another one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, cast

import httpx
import kopf
import pydantic

from feedline_operator import builders, metrics, names, status
from feedline_operator.compare import differences
from feedline_operator.config import OperatorConfig
from feedline_operator.kube import ApiError, Kube, load_api_client, object_path
from feedline_operator.reconcile import (
    list_subscriber_pods,
    now,
    reconcile,
    watched_part,
    write_status,
)
from feedline_operator.spec import EventSubscription

EVSUB = (names.GROUP, names.VERSION, names.PLURAL)
CHILD_FILTER = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
POD_FILTER = {
    names.LABEL_MANAGED_BY: names.MANAGED_BY,
    names.LABEL_COMPONENT: names.SUBSCRIBER_COMPONENT,
}
# A failing reconcile is retried this soon (kopf's default is a minute).
RETRY_BACKOFF_SECONDS = 3.0

Logger = logging.Logger | logging.LoggerAdapter[Any]


def connection_info(kubeconfig: str | None) -> kopf.ConnectionInfo:
    """kopf's credentials from the same source as the reconcile client."""
    api = load_api_client(kubeconfig)
    try:
        cfg = api.configuration
        auth = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
        scheme, token = None, None
        if auth:
            scheme, _, token = str(auth).partition(" ")
            if not token:
                scheme, token = "Bearer", scheme
        return kopf.ConnectionInfo(
            server=cfg.host,
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            certificate_path=cfg.cert_file,
            private_key_path=cfg.key_file,
            scheme=scheme,
            token=token,
        )
    finally:
        api.close()  # type: ignore[no-untyped-call]


def _subscription(body: Mapping[str, Any]) -> EventSubscription:
    try:
        return EventSubscription.from_body(body)
    except pydantic.ValidationError as error:  # the CRD schema should make this unreachable
        raise kopf.PermanentError(f"spec does not match the operator's model: {error}") from error


def reconcile_body(
    kube: Kube,
    body: Mapping[str, Any],
    config: OperatorConfig,
    logger: Logger,
    trigger: str,
) -> None:
    """One reconcile of one subscription, then its Ready condition; Events for problems."""
    started = time.perf_counter()
    sub = _subscription(body)
    annotations = dict(body.get("metadata", {}).get("annotations") or {})
    try:
        outcome = reconcile(kube, sub, config.defaults, annotations)
    except ApiError as error:
        metrics.ERRORS.labels(reason=f"api{error.status}").inc()
        metrics.RECONCILES.labels(trigger=trigger, result="error").inc()
        _write_ready(kube, sub, False, "ReconcileError", str(error), None, None)
        kopf.warn(_as_body(body), reason="ReconcileError", message=str(error))
        raise kopf.TemporaryError(str(error), delay=RETRY_BACKOFF_SECONDS) from error
    finally:
        metrics.DURATION.observe(time.perf_counter() - started)
    for action in outcome.actions:
        logger.info(action)
        metrics.CHILD_CHANGES.labels(action=action.split(" ", 1)[0]).inc()
        kopf.info(_as_body(body), reason="Reconciled", message=action)
    for reason, message in outcome.warnings:
        kopf.warn(_as_body(body), reason=reason, message=message)
    result = "ready" if outcome.ready else "notready"
    metrics.RECONCILES.labels(trigger=trigger, result=result).inc()
    _write_ready(
        kube,
        sub,
        outcome.ready,
        outcome.reason,
        outcome.message,
        outcome.child_kind,
        outcome.child_name,
    )


def _write_ready(
    kube: Kube,
    sub: EventSubscription,
    ready: bool,
    reason: str,
    message: str,
    child_kind: str | None,
    child_name: str | None,
) -> None:
    def change(current: Mapping[str, Any], generation: int) -> dict[str, Any] | None:
        if generation != sub.generation:
            return None  # a newer spec is on its way through the handlers
        return status.with_reconcile(
            current,
            generation=generation,
            ready=ready,
            reason=reason,
            message=message,
            child_kind=child_kind,
            child_name=child_name,
            now=now(),
        )

    if write_status(kube, sub.namespace, sub.name, change):
        metrics.STATUS_WRITES.labels(cause="reconcile").inc()


def record_run(kube: Kube, namespace: str, name: str, run: status.Run) -> bool:
    """Write a finished run into its subscription's status, if it is news."""

    def change(current: Mapping[str, Any], generation: int) -> dict[str, Any] | None:
        if not status.is_newer(run, current):
            return None
        observed = int(current.get("observedGeneration") or generation)
        return status.with_run(current, run, generation=observed, now=now())

    written = write_status(kube, namespace, name, change)
    if written:
        metrics.STATUS_WRITES.labels(cause="run").inc()
    return written


def read_follower(kube: Kube, sub: EventSubscription, timeout: float = 3.0) -> status.Run | None:
    """A follower never terminates: its latest summary comes from its /status port."""
    for pod in list_subscriber_pods(kube, sub.namespace, sub.name):
        pod_status = pod.get("status") or {}
        ip = pod_status.get("podIP")
        if pod_status.get("phase") != "Running" or not ip:
            continue
        url = f"http://{ip}:{names.STATUS_PORT}/status"
        try:
            response = httpx.get(url, timeout=timeout)
            response.raise_for_status()
            data = response.json()
        except (httpx.HTTPError, ValueError):
            continue
        if isinstance(data, dict) and data.get("outcome") in status.OUTCOMES:
            return status.summary_to_run(pod["metadata"]["name"], data)
    return None


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:  # noqa: PLR0915
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        # kopf's bookkeeping lives under our API group, in annotations (the
        # status schema is explicit, so there is no status.kopf to write).
        settings.persistence.finalizer = names.FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=names.KOPF_PREFIX
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=names.KOPF_PREFIX, key="last-handled-configuration"
        )
        # Handler logs are not Events; Events are posted on purpose (kopf.warn).
        settings.posting.level = logging.WARNING
        settings.execution.max_workers = config.workers
        # No cluster-wide list/watch of namespaces and CRDs (least privilege): the
        # namespaces are named on the command line and the CRD exists at start-up.
        settings.scanning.disabled = True
        settings.networking.request_timeout = 60
        settings.watching.server_timeout = 270
        settings.watching.client_timeout = 300
        memo.kube = Kube(load_api_client(config.kubeconfig))
        if config.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(config.metrics_port, registry=metrics.REGISTRY)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(config.kubeconfig)

    @kopf.on.cleanup(registry=registry)
    def close(memo: kopf.Memo, **_: Any) -> None:
        kube: Kube | None = memo.get("kube")
        if kube is not None:
            kube.close()

    @kopf.on.probe(id="reconciles", registry=registry)
    def probe_reconciles(**_: Any) -> float:
        return sum(s.value for m in metrics.RECONCILES.collect() for s in m.samples)

    @kopf.on.create(*EVSUB, backoff=RETRY_BACKOFF_SECONDS, registry=registry)
    @kopf.on.resume(*EVSUB, backoff=RETRY_BACKOFF_SECONDS, registry=registry)
    @kopf.on.update(*EVSUB, backoff=RETRY_BACKOFF_SECONDS, registry=registry)
    def reconcile_subscription(
        body: kopf.Body, memo: Any, logger: Logger, reason: str, **_: Any
    ) -> None:
        reconcile_body(memo.kube, body, config, logger, trigger=str(reason))

    @kopf.timer(
        *EVSUB,
        interval=config.resync_seconds,
        initial_delay=config.resync_seconds,
        registry=registry,
    )
    def resync(body: kopf.Body, memo: Any, logger: Logger, **_: Any) -> None:
        """A safety net: Secrets that appeared, events the watch missed."""
        reconcile_body(memo.kube, body, config, logger, trigger="resync")

    @kopf.timer(
        *EVSUB,
        interval=config.follow_poll_seconds,
        when=lambda spec, **_: spec.get("mode") == "Follow",
        registry=registry,
    )
    def poll_follower(body: kopf.Body, memo: Any, **_: Any) -> None:
        sub = _subscription(body)
        run = read_follower(memo.kube, sub)
        if run is not None:
            record_run(memo.kube, sub.namespace, sub.name, run)

    @kopf.on.event("batch", "v1", "cronjobs", labels=CHILD_FILTER, registry=registry)
    @kopf.on.event("apps", "v1", "deployments", labels=CHILD_FILTER, registry=registry)
    def child_changed(type: str, body: kopf.Body, memo: Any, logger: Logger, **_: Any) -> None:
        """Drift correction: a child deleted or edited by hand is put back at once."""
        owner = _owner_name(body)
        if owner is None or not type:
            return  # type None: the initial listing, which resume handlers cover
        kube: Kube = memo.kube
        namespace = body.metadata.namespace or ""
        parent = kube.get(object_path(names.API_VERSION, names.KIND, namespace, owner))
        if parent is None or parent["metadata"].get("deletionTimestamp"):
            return
        sub = _subscription(parent)
        wanted_kind = builders.child_kind(sub)
        if type != "DELETED" and body.get("kind") == wanted_kind:
            desired = builders.build_child(sub, config.defaults)
            if not differences(watched_part(desired), body):
                return
        elif type == "DELETED" and body.get("kind") != wanted_kind:
            return  # the old child of a mode switch
        logger.info(f"child {body.get('kind')} {body.metadata.name} {type.lower()}: reconciling")
        reconcile_body(kube, parent, config, logger, trigger="drift")

    @kopf.on.event("", "v1", "pods", labels=POD_FILTER, registry=registry)
    def pod_changed(body: kopf.Body, memo: Any, logger: Logger, **_: Any) -> None:
        """A finished subscriber pod: its termination message is the run's summary."""
        owner = (body.metadata.labels or {}).get(names.LABEL_SUBSCRIPTION)
        run = status.run_from_pod(body)
        if owner is None or run is None:
            return
        namespace = body.metadata.namespace or ""
        if record_run(memo.kube, namespace, owner, run):
            logger.info(f"run {run.name}: {run.outcome}, position {run.position}, lag {run.lag}")
            if run.outcome in status.STALLED_OUTCOMES:
                parent = memo.kube.get(object_path(names.API_VERSION, names.KIND, namespace, owner))
                if parent is not None:
                    kopf.warn(_as_body(parent), reason=f"Run{run.outcome}", message=run.message)

    return registry


def _as_body(raw: Mapping[str, Any]) -> kopf.Body:
    """kopf posts Events about any object given as a body."""
    return kopf.Body(cast(kopf.RawBody, dict(raw)))


def _owner_name(body: Mapping[str, Any]) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == names.KIND:
            return str(ref.get("name"))
    return None
