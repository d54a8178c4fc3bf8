"""`feedline operator`: run the EventSubscription operator."""

from __future__ import annotations

import asyncio
import os
from collections.abc import MutableMapping
from typing import Annotated, Any

import typer

from feedline_contracts.logs import LogFormat, configure_logging
from feedline_operator.builders import ChildDefaults


def kopf_object_fields(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """kopf's per-object records: the object as ``object``, without kopf's internals.

    kopf's object loggers pass ``k8s_ref`` (apiVersion, kind, namespace, name,
    uid), ``k8s_skip`` and its whole ``settings`` as record extras.
    """
    reference = event.pop("k8s_ref", None)
    event.pop("k8s_skip", None)
    event.pop("settings", None)
    if reference:
        event["object"] = reference
    return event


def credentials_problem(kubeconfig: str | None) -> str | None:
    """Why the operator could not reach the API with these credentials, or None.

    kopf would otherwise retry a kubeconfig that can never work, every minute,
    forever. KUBECONFIG may list files (kubectl's rules: missing ones are skipped).
    """
    from feedline_operator.kube import load_api_client

    if kubeconfig:
        files = [path for path in kubeconfig.split(os.pathsep) if path]
        if not any(os.path.isfile(path) for path in files):
            return f"--kubeconfig (KUBECONFIG): {kubeconfig}: no such file"
    try:
        load_api_client(kubeconfig).close()  # type: ignore[no-untyped-call]
    except Exception as exc:  # the kubernetes package raises several kinds
        detail = " ".join(str(exc).split()) or type(exc).__name__
        if kubeconfig:
            return f"--kubeconfig (KUBECONFIG): {kubeconfig}: not a usable kubeconfig: {detail}"
        return (
            "no Kubernetes credentials: not running in a pod, and the default kubeconfig "
            f"(~/.kube/config) cannot be used ({detail}); pass --kubeconfig"
        )
    return None


def operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace",
            "-n",
            envvar="FEEDLINE_OPERATOR_NAMESPACES",
            help="Watch this namespace (repeatable). Needs --all-namespaces otherwise.",
        ),
    ] = None,
    all_namespaces: Annotated[
        bool,
        typer.Option("--all-namespaces", "-A", help="Watch EventSubscriptions in every namespace."),
    ] = False,
    kubeconfig: Annotated[
        str | None,
        typer.Option(
            envvar="KUBECONFIG",
            help="Kubeconfig file; default: in-cluster credentials, else ~/.kube/config.",
        ),
    ] = None,
    subscriber_image: Annotated[
        str,
        typer.Option(
            envvar="FEEDLINE_SUBSCRIBER_IMAGE",
            help="Image of subscriber pods whose spec.subscriber.image is unset.",
        ),
    ] = ChildDefaults.subscriber_image,
    image_pull_policy: Annotated[
        str,
        typer.Option(
            envvar="FEEDLINE_SUBSCRIBER_IMAGE_PULL_POLICY", help="Always, IfNotPresent or Never."
        ),
    ] = ChildDefaults.image_pull_policy,
    health_port: Annotated[
        int, typer.Option(help="Port of the liveness endpoint /healthz (0: off).", min=0, max=65535)
    ] = 8080,
    metrics_port: Annotated[
        int, typer.Option(help="Port of Prometheus /metrics (0: off).", min=0, max=65535)
    ] = 9090,
    resync_seconds: Annotated[
        float, typer.Option(help="Reconcile every subscription at least this often.", min=1)
    ] = 60.0,
    workers: Annotated[int, typer.Option(help="Handler threads.", min=1, max=256)] = 8,
    log_format: Annotated[
        LogFormat, typer.Option(help="json or plain: the same fields (feedline_contracts.logs).")
    ] = LogFormat.JSON,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
) -> None:
    """Run the kopf operator that turns EventSubscriptions into CronJobs or Deployments.

    Exit codes: 0 stopped (SIGTERM, Ctrl-C); 2 bad flags, or a kubeconfig that
    is missing or unusable (checked before the operator starts).
    """
    if image_pull_policy not in ("Always", "IfNotPresent", "Never"):
        raise typer.BadParameter(
            f"{image_pull_policy!r}: use Always, IfNotPresent or Never",
            param_hint="--image-pull-policy",
        )
    if not namespace and not all_namespaces:
        raise typer.BadParameter(
            "name the namespaces to watch, or use --all-namespaces", param_hint="--namespace"
        )
    if namespace and all_namespaces:
        raise typer.BadParameter(
            "use either --namespace or --all-namespaces", param_hint="--all-namespaces"
        )
    problem = credentials_problem(kubeconfig)
    if problem is not None:
        typer.echo(f"feedline operator: {problem}", err=True)
        raise typer.Exit(2)
    # kopf is imported here (by the runtime): `feedline --help` and other subcommands stay fast.
    from feedline_operator.config import OperatorConfig
    from feedline_operator.runtime import run_operator

    # Not kopf.configure: its JSON says "severity" where every other part says "level".
    # kopf's records go through the one schema (feedline_contracts.logs) like ours.
    configure_logging(
        level="DEBUG" if verbose else "INFO",
        log_format=log_format,
        quiet=("kubernetes", "aiohttp.access"),
        extra_processors=(kopf_object_fields,),
    )
    config = OperatorConfig(
        kubeconfig=kubeconfig,
        namespaces=tuple(namespace or ()),
        all_namespaces=all_namespaces,
        defaults=ChildDefaults(
            subscriber_image=subscriber_image, image_pull_policy=image_pull_policy
        ),
        health_port=health_port,
        metrics_port=metrics_port,
        resync_seconds=resync_seconds,
        workers=workers,
    )
    asyncio.run(run_operator(config))
