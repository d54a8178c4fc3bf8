"""kopf handlers: registration only. Each reads what kopf gives and calls one module.

- start-up, credentials and clean-up: `startup`;
- the children as last watched (kopf indexes): `child_cache`;
- children made to match the spec, drift put back: `reconcile`;
- runs observed (finished pods, followers) into the status: `observation`.

Handlers are registered on a registry built per operator instance (no module
globals), so tests can run an operator in-process next to another one.

Telemetry (on when the ``OTEL_*`` env says so; docs/architecture.md): each
reconcile is an ``operator.reconcile`` span (service.name ``feedline-operator``),
with the subscription and the reason as attributes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import kopf

from feedline_contracts.telemetry import telemetry_from_env
from feedline_operator import child_cache, names, observation, reconcile, startup
from feedline_operator.config import OperatorConfig
from feedline_operator.kube import Kube
from feedline_operator.reporting import Logger

EVSUB = (names.GROUP, names.VERSION, names.PLURAL)
CHILD_FILTER = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
POD_FILTER = {
    names.LABEL_MANAGED_BY: names.MANAGED_BY,
    names.LABEL_COMPONENT: names.SUBSCRIBER_COMPONENT,
}
BACKOFF = reconcile.RETRY_BACKOFF_SECONDS
SERVICE_NAME = "feedline-operator"  # the default service.name of its spans
# kopf passes every handler each index as a keyword argument named by its id.
INDEX_IDS = {"CronJob": "cronjob_index", "Deployment": "deployment_index"}


def watched(handler_kwargs: Mapping[str, Any]) -> child_cache.WatchedChildren:
    """The children as the watches last saw them, from a handler's keyword arguments."""
    return child_cache.WatchedChildren(
        {kind: handler_kwargs[index_id] for kind, index_id in INDEX_IDS.items()}
    )


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    telemetry = telemetry_from_env(SERVICE_NAME)
    tracer = telemetry.tracer if telemetry is not None else None

    @contextmanager
    def reconcile_span(body: Any, reason: str) -> Iterator[None]:
        if tracer is None:
            yield
            return
        metadata = body.get("metadata", {})
        with tracer.start_as_current_span(
            "operator.reconcile",
            attributes={
                "feedline.subscription": str(metadata.get("name", "")),
                "k8s.namespace.name": str(metadata.get("namespace", "")),
                "feedline.reconcile.reason": reason,
            },
        ):
            yield

    def reconcile_traced(
        kube: Any, body: Any, logger: Logger, reason: str, cache: reconcile.ChildCache
    ) -> None:
        with reconcile_span(body, reason):
            reconcile.reconcile_and_report(kube, body, config.defaults, logger, reason, cache)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        startup.configure(settings, memo, config)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return startup.connection_info(config.kubeconfig)

    @kopf.on.cleanup(registry=registry)
    def close(memo: kopf.Memo, **_: Any) -> None:
        startup.close(memo)
        if telemetry is not None:
            telemetry.shutdown()

    # The children as the watches last saw them (read by `watched`).
    @kopf.index(
        "batch", "v1", "cronjobs", id=INDEX_IDS["CronJob"], labels=CHILD_FILTER, registry=registry
    )
    @kopf.index(
        "apps",
        "v1",
        "deployments",
        id=INDEX_IDS["Deployment"],
        labels=CHILD_FILTER,
        registry=registry,
    )
    def index_child(body: kopf.Body, **_: Any) -> dict[child_cache.ChildKey, Any]:
        return child_cache.index_entry(body)

    @kopf.on.probe(id="reconciles", registry=registry)
    def probe_reconciles(**_: Any) -> float:
        return startup.reconciles_so_far()

    @kopf.on.create(*EVSUB, backoff=BACKOFF, registry=registry)
    @kopf.on.resume(*EVSUB, backoff=BACKOFF, registry=registry)
    @kopf.on.update(*EVSUB, backoff=BACKOFF, registry=registry)
    def reconcile_subscription(
        body: kopf.Body, memo: Any, logger: Logger, reason: str, **kwargs: Any
    ) -> None:
        cache = watched(kwargs)
        reconcile_traced(memo.kube, body, logger, str(reason), cache)

    @kopf.timer(
        *EVSUB,
        interval=config.resync_seconds,
        initial_delay=config.resync_seconds,
        registry=registry,
    )
    def resync(body: kopf.Body, memo: Any, logger: Logger, **kwargs: Any) -> None:
        """A safety net: a Secret that appeared later, a reconcile that failed before.

        It reads the children from the watches' indexes as every reconcile does,
        so a change to a child reaches the operator through its watch alone."""
        cache = watched(kwargs)
        reconcile_traced(memo.kube, body, logger, "resync", cache)

    @kopf.timer(
        *EVSUB,
        interval=config.follow_poll_seconds,
        when=lambda spec, **_: spec.get("mode") == "Follow",
        registry=registry,
    )
    def poll_follower(body: kopf.Body, memo: Any, **_: Any) -> None:
        observation.observe_follower(memo.kube, reconcile.subscription_of(body))

    @kopf.on.event("batch", "v1", "cronjobs", labels=CHILD_FILTER, registry=registry)
    @kopf.on.event("apps", "v1", "deployments", labels=CHILD_FILTER, registry=registry)
    def child_changed(type: str, body: kopf.Body, memo: Any, logger: Logger, **kwargs: Any) -> None:
        """Drift correction: a child deleted or edited by hand is put back at once."""
        owner = reconcile.owner_name(body)
        if owner is None or not type:
            return  # type None: the initial listing, which resume handlers cover
        kube: Kube = memo.kube
        namespace = body.metadata.namespace or ""
        parent = reconcile.live_subscription(kube, namespace, owner)
        if parent is None:
            return
        if reconcile.child_drifted(type, body, parent, config.defaults):
            logger.info(
                f"child {body.get('kind')} {body.metadata.name} {type.lower()}: reconciling"
            )
            cache = watched(kwargs)
            reconcile_traced(kube, parent, logger, "drift", cache)

    @kopf.on.event("", "v1", "pods", labels=POD_FILTER, registry=registry)
    def pod_changed(body: kopf.Body, memo: Any, logger: Logger, **kwargs: Any) -> None:
        """A finished subscriber pod: its termination message is the run's summary, and
        a run-now that waited for it starts now."""
        observation.observe_pod(memo.kube, body, logger)
        parent = reconcile.pending_run_now(memo.kube, body)
        if parent is not None:
            cache = watched(kwargs)
            reconcile_traced(memo.kube, parent, logger, "run-now", cache)

    return registry
