"""Operator start-up and shutdown: kopf's settings, credentials, clients in memo.

One place for what kopf needs before the first handler runs (STYLE: start-up
settings in `@kopf.on.startup`, clients closed in `@kopf.on.cleanup`).
"""

from __future__ import annotations

import logging

import kopf

from feedline_operator import metrics, names
from feedline_operator.config import OperatorConfig
from feedline_operator.kube import Kube, load_api_client


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, config: OperatorConfig) -> None:
    """kopf's settings and this operator's clients, before any handler runs."""
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


def close(memo: kopf.Memo) -> None:
    """Close the clients `configure` opened."""
    kube: Kube | None = memo.get("kube")
    if kube is not None:
        kube.close()


def reconciles_so_far() -> float:
    """The liveness probe's figure: reconciles done since start."""
    return sum(sample.value for m in metrics.RECONCILES.collect() for sample in m.samples)
