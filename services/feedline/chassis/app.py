"""The app factory: one call turns a service definition into a complete service.

Every service gets, without code of its own: its database and event store,
the feed (``/events``), health, ``/metrics``, JSON logs with request and trace
ids, problem+json errors and feed auth. A service adds its own routers and
tables through a ``ServiceDefinition``.

With ``FEEDLINE_GRPC_PORT`` set, the lifespan also serves the gRPC feed
(``grpc_feed.py``) on that port, from the same event store, commit listener
and authorizer; it stops first at shutdown. With ``FEEDLINE_BROKER_URL`` set,
it runs the broker relay (``broker_relay.py``) in the background, which
publishes the event store to the service's RabbitMQ stream.

Start-up and the database: the database is prepared once (reached, tables
created, event store claimed), before the HTTP server listens. A database not
reachable yet (a fresh ``helm install`` starts it beside the service) is
retried with backoff for ``FEEDLINE_DATABASE_STARTUP_TIMEOUT_SECONDS``, one
warning line per retry; meanwhile nothing listens, so readiness is false (the
chart's startupProbe allows for it). ``feedline serve`` does this in
``check_database`` before uvicorn starts, so giving up is one line on stderr,
and builds its app with ``database_prepared=True``: the lifespan neither waits
nor prepares again. An app built otherwise (tests, embedding) prepares in its
lifespan, with the same wait.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from sqlalchemy import MetaData
from starlette.responses import Response

from feedline import __version__
from feedline.chassis.auth import create_authorizer
from feedline.chassis.broker_relay import BrokerRelay, stream_arguments
from feedline.chassis.eventstore import (
    NOTIFY_CHANNEL,
    EventStore,
    EventStoreOwnerError,
    claim_event_store,
    event_store_metadata,
    upgrade_event_store,
)
from feedline.chassis.feed import feed_router
from feedline.chassis.grpc_feed import create_grpc_feed
from feedline.chassis.health import health_router
from feedline.chassis.metrics import ServiceMetrics
from feedline.chassis.notifications import PostgresCommitListener
from feedline.chassis.problems import install_problem_handlers
from feedline.chassis.request_context import RequestContextMiddleware
from feedline.chassis.settings import (
    DATABASE_STARTUP_TIMEOUT_SETTING,
    ServiceSettings,
    default_database_url,
)
from feedline_contracts.database import (
    DATABASE_URL_SETTING,
    Database,
    DatabaseUnavailableError,
    connect_database,
    missing_sqlite_folder,
    redacted,
    unavailable,
)
from feedline_contracts.database_retry import Deadline, retry_database
from feedline_contracts.telemetry import telemetry_from_env


@dataclass
class ServiceContext:
    """What a running service's routes use; built by ``create_app``, no globals."""

    name: str
    settings: ServiceSettings
    database: Database
    store: EventStore
    metrics: ServiceMetrics
    # Clients to other services, opened at startup and closed at shutdown.
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceDefinition:
    name: str
    description: str
    routers: Sequence[APIRouter]
    # The service's own tables; created at startup if missing.
    metadata: Sequence[MetaData] = ()
    # Runs after the tables exist: open clients, seed data.
    on_startup: Callable[[ServiceContext], Awaitable[None]] | None = None


def get_context(request: Request) -> ServiceContext:
    context: ServiceContext = request.app.state.context
    return context


ContextDep = Annotated[ServiceContext, Depends(get_context)]


async def create_tables(database: Database, metadata: Sequence[MetaData]) -> None:
    async with database.engine.begin() as connection:
        for each in (event_store_metadata, *metadata):
            await connection.run_sync(each.create_all)
        await upgrade_event_store(connection)  # an events table made by an older version


class ServiceDatabaseError(RuntimeError):
    """The service cannot start on its database; one line says why and what to do."""


async def prepare_database(
    definition: ServiceDefinition, database: Database, url: str, *, timeout_seconds: float
) -> None:
    """Create the tables and claim the event store for this service, or say why not.

    A database that cannot be reached yet (connection refused, host not
    found, starting up, no answer) is retried with backoff and jitter until
    ``timeout_seconds`` have passed, one warning line per retry; then the
    one-line reason ends "(gave up after N s; FEEDLINE_DATABASE_STARTUP_TIMEOUT_SECONDS)".
    What waiting cannot fix fails at once: a login refused, a missing
    database, and a database whose event store another service owns (the
    feed would serve that service's events as this one's).
    """

    async def prepare() -> None:
        await create_tables(database, definition.metadata)
        async with database.transaction() as connection:
            await claim_event_store(connection, definition.name)

    try:
        await retry_database(
            prepare, url, Deadline(timeout_seconds, DATABASE_STARTUP_TIMEOUT_SETTING)
        )
    except DatabaseUnavailableError as exc:  # gave up waiting
        raise ServiceDatabaseError(str(exc)) from exc
    except EventStoreOwnerError as exc:
        raise ServiceDatabaseError(
            f"the database {redacted(url)} holds the event store of {exc.owner}, not of "
            f"{definition.name}: each service needs a database of its own; give "
            f"{definition.name} its own with {DATABASE_URL_SETTING} (default: "
            f"{default_database_url(definition.name)} in the working folder)"
        ) from exc
    except Exception as exc:
        raise ServiceDatabaseError(str(unavailable(url, exc))) from exc


async def check_database(definition: ServiceDefinition, settings: ServiceSettings) -> None:
    """Before serving: the start-up work on the database (waiting for it), so a failure is one line.

    ``feedline serve`` calls it before uvicorn starts, then builds its app with
    ``database_prepared=True`` so that the lifespan does not do it (or wait) again.
    """
    url = settings.database_url_for(definition.name)
    if (missing := missing_sqlite_folder(url)) is not None:
        raise ServiceDatabaseError(str(missing))
    database = connect_database(url)
    try:
        await prepare_database(
            definition, database, url, timeout_seconds=settings.database_startup_timeout_seconds
        )
    finally:
        await database.dispose()


def create_app(
    definition: ServiceDefinition, settings: ServiceSettings, *, database_prepared: bool = False
) -> FastAPI:
    """The service as an ASGI app; its lifespan prepares the database unless ``database_prepared``.

    ``database_prepared=True``: the caller has already run ``check_database``
    (``feedline serve``), so start-up goes straight on to the commit listener
    and the service's own start-up hook.
    """
    database_url = settings.database_url_for(definition.name)
    database = connect_database(database_url)
    # OpenTelemetry: None (off) unless the OTEL_* env asks for it (docs/architecture.md).
    telemetry = telemetry_from_env(definition.name)
    store = EventStore(database, telemetry=telemetry)
    metrics = ServiceMetrics(definition.name)
    authorize, auth_client = create_authorizer(settings)
    context = ServiceContext(definition.name, settings, database, store, metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as cleanup:
            if telemetry is not None:  # last out: the spans of shutting down are exported too
                cleanup.callback(telemetry.shutdown)
            cleanup.push_async_callback(database.dispose)
            if auth_client is not None:
                cleanup.push_async_callback(auth_client.aclose)
            if not database_prepared:
                await prepare_database(
                    definition,
                    database,
                    database_url,
                    timeout_seconds=settings.database_startup_timeout_seconds,
                )
            if database.dialect == "postgresql":
                listener = PostgresCommitListener(
                    database.url.asyncpg_dsn, NOTIFY_CHANNEL, store.commits
                )
                await listener.start()
                cleanup.push_async_callback(listener.stop)
            if definition.on_startup is not None:
                await definition.on_startup(context)
            for client in context.clients.values():
                cleanup.push_async_callback(client.aclose)
            if (broker := settings.broker_address()) is not None:
                # In the background: a broker that is down delays the stream, not the service.
                relay = BrokerRelay(
                    store,
                    definition.name,
                    broker,
                    recheck_seconds=settings.long_poll_recheck_seconds,
                    arguments=stream_arguments(
                        max_age=settings.broker_stream_max_age,
                        max_length_bytes=settings.broker_stream_max_length_bytes,
                        max_segment_size_bytes=settings.broker_stream_max_segment_size_bytes,
                    ),
                    metrics=metrics,
                    # Replicas on one PostgreSQL database elect one relay with a lock.
                    lock_dsn=(
                        database.url.asyncpg_dsn if database.dialect == "postgresql" else None
                    ),
                )
                await relay.start()
                # Stopped before the database and the commit listener go.
                cleanup.push_async_callback(relay.stop)
                _app.state.broker_relay = relay
            if settings.grpc_port is not None:
                # The same store, commit signal (and listener) and authorizer as the HTTP feed.
                grpc_feed = create_grpc_feed(
                    store,
                    authorize,
                    metrics,
                    host=settings.grpc_host,
                    port=settings.grpc_port,
                    recheck_seconds=settings.long_poll_recheck_seconds,
                )
                try:
                    await grpc_feed.start()
                except OSError as exc:  # `feedline serve` says it in one line and exits 1
                    _app.state.listen_error = str(exc)
                    raise
                # Stopped first at shutdown: its streams end before the database goes.
                cleanup.push_async_callback(grpc_feed.stop)
                _app.state.grpc_feed = grpc_feed
            yield

    app = FastAPI(
        title=definition.name,
        description=definition.description,
        version=__version__,
        lifespan=lifespan,
    )
    app.state.context = context
    install_problem_handlers(app)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, telemetry=telemetry)
    app.include_router(
        feed_router(store, authorize, metrics, recheck_seconds=settings.long_poll_recheck_seconds)
    )
    app.include_router(health_router(database))
    for router in definition.routers:
        app.include_router(router)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return metrics.render()

    return app
