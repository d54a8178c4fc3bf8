"""The app factory: one call turns a service definition into a complete service.

Every service gets, without code of its own: its database and event store,
the feed (``/events``), health, ``/metrics``, JSON logs with request and trace
ids, problem+json errors and feed auth. A service adds its own routers and
tables through a ``ServiceDefinition``.
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
from feedline.chassis.database import Database, connect_database
from feedline.chassis.eventstore import NOTIFY_CHANNEL, EventStore, event_store_metadata
from feedline.chassis.feed import feed_router
from feedline.chassis.health import health_router
from feedline.chassis.metrics import ServiceMetrics
from feedline.chassis.notifications import PostgresCommitListener
from feedline.chassis.problems import install_problem_handlers
from feedline.chassis.request_context import RequestContextMiddleware
from feedline.chassis.settings import ServiceSettings


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


def create_app(definition: ServiceDefinition, settings: ServiceSettings) -> FastAPI:
    database = connect_database(settings.database_url)
    store = EventStore(database)
    metrics = ServiceMetrics(definition.name)
    authorize, auth_client = create_authorizer(settings)
    context = ServiceContext(definition.name, settings, database, store, metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as cleanup:
            cleanup.push_async_callback(database.dispose)
            if auth_client is not None:
                cleanup.push_async_callback(auth_client.aclose)
            await create_tables(database, definition.metadata)
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
            yield

    app = FastAPI(
        title=definition.name,
        description=definition.description,
        version=__version__,
        lifespan=lifespan,
    )
    app.state.context = context
    install_problem_handlers(app)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.include_router(feed_router(store, authorize, metrics))
    app.include_router(health_router(database))
    for router in definition.routers:
        app.include_router(router)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return metrics.render()

    return app
