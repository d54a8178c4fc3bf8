"""Pure: manifests in, local process specs out (what `feedline dev` starts).

A subscriber's process is the container the operator renders: the builders in
``feedline_operator.builders`` give the CronJob (or Deployment); its pod
template's container gives the command, args and env. The env is resolved the
way the kubelet would (``value`` with ``$(VAR)`` references, ``valueFrom.
secretKeyRef`` from the folder's Secrets, Secret volumes as local files) and a
few values are mapped to this machine, each one documented in
docs/local-mode.md:

- ``FEEDLINE_FEED_URL``: a cluster service name (``http://special-offers/events``,
  ``grpc://special-offers:9090``) becomes the local (HTTP or gRPC) port of that
  example service, or of a service of your own that the folder's values file
  declares (``feedlineService``); a loopback http:// URL on a default port
  follows ``--port-offset``;
- ``PYTHONPATH``: with services of your own, the folder `feedline dev` was
  started in comes first (their packages and projections import from there,
  as ``feedline serve package.module:attribute`` finds them);
- ``FEEDLINE_BROKER_URL`` (``spec.feed.broker``): the broker `feedline dev`
  runs (``broker``), whatever host the Secret names, as the services' relays
  publish there;
- ``FEEDLINE_TERMINATION_LOG``: a file in the state directory, read after each run;
- ``FEEDLINE_STATUS_PORT`` (Follow mode): a free local port;
- with the dashboard on, ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the dashboard, which
  collects the traces), ``OTEL_SERVICE_NAME`` (the process's name, unless the
  spec gives one) and a short ``OTEL_BSP_SCHEDULE_DELAY`` (spans show at once);
- paths under a Secret volume's mount: the same files under the state directory;
- in Secret values, ``$(FEEDLINE_DEV_STATE_DIR)`` and ``$(FEEDLINE_DEV_DIR)``
  expand to the state directory and the folder (so a DSN can point at a
  service's SQLite database wherever ``--state-dir`` puts it).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from feedline.dev.manifests import Folder, LoadedSubscription
from feedline.services.registry import DEFAULT_PORTS
from feedline_contracts import subscriber_env as env_names
from feedline_contracts.broker import BROKER_URL_SETTING
from feedline_contracts.feed import GRPC_PORT, GRPC_PORT_SETTING
from feedline_operator import builders

STATE_DIR_NAME = ".feedline-dev"
STATE_DIR_VAR = "FEEDLINE_DEV_STATE_DIR"
FOLDER_VAR = "FEEDLINE_DEV_DIR"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
CLUSTER_SUFFIXES = ("", ".svc", ".svc.cluster.local")

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")

Manifest = dict[str, Any]


class PlanError(ValueError):
    """The pod spec asks for something local mode cannot give (names the field)."""


@dataclass(frozen=True)
class Layout:
    """Where things live on this machine."""

    directory: Path
    state_dir: Path
    host: str = "127.0.0.1"
    port_offset: int = 0
    # Each example service's gRPC feed port (free ports, picked when `feedline dev`
    # starts); a service without one serves no gRPC.
    grpc_ports: Mapping[str, int] = field(default_factory=dict)
    # The broker `feedline dev` runs (``rabbitmq-stream://...``), when it runs one.
    broker_url: str | None = None
    # Where every process sends its traces and metrics (OTLP/HTTP): the dashboard.
    otlp_endpoint: str | None = None
    # Services of your own (the folder's feedline-service values): name -> import path,
    # each on a free port picked at start; PYTHONPATH for every process when there are any.
    apps: Mapping[str, str] = field(default_factory=dict)
    app_ports: Mapping[str, int] = field(default_factory=dict)
    python_path: str | None = None

    @property
    def service_names(self) -> list[str]:
        """The example services, then the folder's own."""
        return [*DEFAULT_PORTS, *self.apps]

    def service_port(self, service: str) -> int:
        if service in self.apps:  # picked at start; 0 while the manifests are checked
            return self.app_ports.get(service, 0)
        return DEFAULT_PORTS[service] + self.port_offset

    def _netloc(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"

    def service_url(self, service: str) -> str:
        return f"http://{self._netloc(self.service_port(service))}"

    def service_grpc_port(self, service: str) -> int | None:
        return self.grpc_ports.get(service)

    def service_grpc_url(self, service: str) -> str | None:
        """``grpc://HOST:PORT``, the gRPC feed's address (a ``feed.url`` as is)."""
        port = self.service_grpc_port(service)
        return None if port is None else f"grpc://{self._netloc(port)}"

    def service_database(self, service: str) -> Path:
        return self.state_dir / f"{service}.db"

    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def subscription_dir(self, name: str) -> Path:
        return self.state_dir / "subscriptions" / name

    def status_file(self) -> Path:
        return self.state_dir / "status.json"

    def broker_dir(self) -> Path:
        """The local broker's folder (data and logs), wiped at each start."""
        return self.state_dir / "rabbitmq"


@dataclass(frozen=True)
class ProcessSpec:
    """One local process: argv, its own environment (added to a clean base), files."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    termination_log: Path | None = None
    status_port: int | None = None
    # Files to write (mode 0600) before the start: Secret volumes.
    files: dict[Path, str] = field(default_factory=dict)


def default_state_dir(directory: Path) -> Path:
    return directory / STATE_DIR_NAME


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: unknown references stay as written, ``$$`` escapes."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(replace, value)


def local_command(command: list[str], feedline: str) -> tuple[str, ...]:
    """The image's ``feedline`` is this installation's ``feedline`` executable."""
    if command and command[0] == "feedline":
        return (feedline, *command[1:])
    return tuple(command)


# --- telemetry -----------------------------------------------------------------------

OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_SERVICE_NAME = "OTEL_SERVICE_NAME"
OTEL_BSP_SCHEDULE_DELAY = "OTEL_BSP_SCHEDULE_DELAY"
SPAN_EXPORT_DELAY_MS = "200"  # the SDK's default is 5000: too slow to watch a request


def with_telemetry(env: Mapping[str, str], name: str, layout: Layout) -> dict[str, str]:
    """``env`` plus the OpenTelemetry settings that send a process's spans to the dashboard
    (and the folder's packages on PYTHONPATH, with services of your own)."""
    if layout.python_path is not None:
        env = {"PYTHONPATH": layout.python_path, **env}
    if layout.otlp_endpoint is None:
        return dict(env)
    return {
        OTEL_SERVICE_NAME: name,
        OTEL_BSP_SCHEDULE_DELAY: SPAN_EXPORT_DELAY_MS,
        **env,
        OTLP_ENDPOINT: layout.otlp_endpoint,
    }


# --- services ------------------------------------------------------------------------


def service_process(service: str, layout: Layout, feedline: str) -> ProcessSpec:
    """``feedline serve NAME`` on its default port (+ offset) with its own SQLite file.

    With a gRPC port in the layout, it serves its gRPC feed there too
    (``FEEDLINE_GRPC_PORT``); with a broker, its relay publishes to it
    (``FEEDLINE_BROKER_URL``).
    """
    env = {
        "FEEDLINE_HTTP_CACHE_DIR": str(layout.state_dir / "http-cache"),
        "FEEDLINE_PRODUCT_CATALOG_URL": layout.service_url("product-catalog"),
    }
    grpc_port = layout.service_grpc_port(service)
    if grpc_port is not None:
        env[GRPC_PORT_SETTING] = str(grpc_port)
    if layout.broker_url is not None:
        env[BROKER_URL_SETTING] = layout.broker_url
    return ProcessSpec(
        name=service,
        env=with_telemetry(env, service, layout),
        argv=(
            feedline,
            "serve",
            layout.apps.get(service, service),
            "--host",
            layout.host,
            "--port",
            str(layout.service_port(service)),
            "--database-url",
            f"sqlite:///{layout.service_database(service)}",
        ),
        cwd=layout.directory,
        log_path=layout.logs_dir() / f"{service}.log",
    )


# --- feed URLs -----------------------------------------------------------------------


def _cluster_service(hostname: str, services: Iterable[str]) -> str | None:
    """``special-offers``, ``special-offers.NS``, ``special-offers.NS.svc[.cluster.local]``."""
    for service in services:
        if hostname == service:
            return service
        if hostname.startswith(f"{service}."):
            rest = hostname[len(service) + 1 :]
            namespace, _, suffix = rest.partition(".")
            if namespace and (f".{suffix}" if suffix else "") in CLUSTER_SUFFIXES:
                return service
    return None


def local_feed_url(url: str, layout: Layout) -> str:
    """A feed URL usable on this machine (see the module docstring); others unchanged.

    A cluster service name at the port its chart's Service gives the transport
    (http:// at 80, grpc:// at 9090, or no port) is that example service's
    local address; https:// and grpcs:// stay (the local services serve
    plaintext only), as does any other port.
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a port: the CRD refused it already; nothing to map
        return url
    hostname = (parts.hostname or "").lower()
    service = _cluster_service(hostname, layout.service_names)
    if service is not None and port in (None, 80) and parts.scheme == "http":
        base = urlsplit(layout.service_url(service))
        return urlunsplit(parts._replace(netloc=base.netloc))
    if service is not None and port in (None, GRPC_PORT) and parts.scheme == "grpc":
        grpc_url = layout.service_grpc_url(service)
        if grpc_url is not None:
            return urlunsplit(parts._replace(netloc=urlsplit(grpc_url).netloc))
        return url
    if parts.scheme == "http" and hostname in LOOPBACK_HOSTS and layout.port_offset:
        for name, default_port in DEFAULT_PORTS.items():
            if port == default_port:
                netloc = parts.netloc.rsplit(":", 1)[0] + f":{layout.service_port(name)}"
                return urlunsplit(parts._replace(netloc=netloc))
    return url


# --- the broker ----------------------------------------------------------------------


def needs_broker(loaded: LoadedSubscription) -> bool:
    """Whether the subscription reads its feed through a broker (``spec.feed.broker``)."""
    return loaded.subscription.spec.feed.broker is not None


def folder_needs_broker(subscriptions: Iterable[LoadedSubscription]) -> bool:
    """`feedline dev` starts a broker when any subscription reads through one."""
    return any(needs_broker(loaded) for loaded in subscriptions)


# --- subscribers ---------------------------------------------------------------------


def pod_template(child: Manifest) -> Manifest:
    """The pod template of a CronJob or a Deployment."""
    if child["kind"] == "CronJob":
        template: Manifest = child["spec"]["jobTemplate"]["spec"]["template"]
    else:
        template = child["spec"]["template"]
    return template


def rendered_container(loaded: LoadedSubscription) -> tuple[Manifest, Manifest]:
    """(pod spec, subscriber container) exactly as the operator would render them."""
    child = builders.build_child(loaded.subscription, builders.ChildDefaults())
    spec = pod_template(child)["spec"]
    return spec, spec["containers"][0]


def secret_variables(layout: Layout) -> dict[str, str]:
    """What ``$(VAR)`` in a Secret value may name: the state directory and the folder."""
    return {STATE_DIR_VAR: str(layout.state_dir), FOLDER_VAR: str(layout.directory)}


def _secret_values(folder: Folder, layout: Layout, namespace: str, name: str) -> dict[str, str]:
    secret = folder.secrets.get((namespace, name))
    if secret is None:
        raise PlanError(f'Secret "{name}" not found')
    variables = secret_variables(layout)
    return {key: expand(value, variables) for key, value in secret.data.items()}


def _resolve_env(
    container: Manifest, folder: Folder, layout: Layout, namespace: str
) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "valueFrom" not in var:
            env[var["name"]] = expand(var.get("value", ""), env)
            continue
        ref = var["valueFrom"].get("secretKeyRef")
        if ref is None:
            raise PlanError(f"env {var['name']}: only valueFrom.secretKeyRef is supported locally")
        values = _secret_values(folder, layout, namespace, ref["name"])
        if ref["key"] not in values:
            raise PlanError(f'env {var["name"]}: Secret "{ref["name"]}" has no key "{ref["key"]}"')
        env[var["name"]] = values[ref["key"]]
    return env


def _volume_files(
    pod: Manifest, container: Manifest, folder: Folder, layout: Layout, namespace: str, root: Path
) -> tuple[dict[str, Path], dict[Path, str]]:
    """Secret volumes as local files: (mount path -> local dir, files to write)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts: dict[str, Path] = {}
    files: dict[Path, str] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "secret" not in volume:
            continue  # emptyDir /tmp: this machine's /tmp will do
        secret = volume["secret"]
        values = _secret_values(folder, layout, namespace, secret["secretName"])
        local = root / "volumes" / mount["name"]
        items = secret.get("items") or [{"key": k, "path": k} for k in values]
        for item in items:
            if item["key"] not in values:
                raise PlanError(
                    f'volume {mount["name"]}: Secret "{secret["secretName"]}" has no key '
                    f'"{item["key"]}"'
                )
            files[local / item["path"]] = values[item["key"]]
        mounts[mount["mountPath"]] = local
    return mounts, files


def _map_path(value: str, mounts: Mapping[str, Path]) -> str:
    for mount_path, local in mounts.items():
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(local / posixpath.relpath(value, mount_path))
    return value


def subscriber_process(
    loaded: LoadedSubscription,
    folder: Folder,
    layout: Layout,
    feedline: str,
    *,
    status_port: int | None = None,
    once: bool = False,
) -> ProcessSpec:
    """The subscriber's container as a local process.

    ``once``: a Follow subscription runs one catch-up run instead (``--once``).
    """
    sub = loaded.subscription
    pod, container = rendered_container(loaded)
    root = layout.subscription_dir(sub.name)
    env = _resolve_env(container, folder, layout, sub.namespace)
    mounts, files = _volume_files(pod, container, folder, layout, sub.namespace, root)
    env = {name: _map_path(value, mounts) for name, value in env.items()}
    env[env_names.FEED_URL] = local_feed_url(env[env_names.FEED_URL], layout)
    if env_names.BROKER_URL in env and layout.broker_url is not None:
        # The broker the local services publish to is the only one holding their events.
        env[env_names.BROKER_URL] = layout.broker_url
    termination_log = root / "termination-log"
    if env.get(env_names.TERMINATION_LOG) == container.get("terminationMessagePath"):
        env[env_names.TERMINATION_LOG] = str(termination_log)
    follow = env.get(env_names.FOLLOW) == "true"
    if follow and once:
        env.pop(env_names.FOLLOW)
        env.pop(env_names.STATUS_PORT, None)
        follow = False
    if follow:
        if status_port is None:
            raise PlanError("a Follow subscription needs a local status port")
        env[env_names.STATUS_PORT] = str(status_port)
    argv = local_command([*container.get("command", []), *container.get("args", [])], feedline)
    return ProcessSpec(
        name=sub.name,
        argv=tuple(expand(part, env) for part in argv),
        env=with_telemetry(env, sub.name, layout),
        cwd=layout.directory,
        log_path=layout.logs_dir() / f"{sub.name}.log",
        termination_log=termination_log,
        status_port=status_port if follow else None,
        files=files,
    )
