"""Fixtures shared by every tier: a PostgreSQL server and per-test databases, a RabbitMQ node."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.postgres import fresh_database, throwaway_postgres
from tests.support.rabbitmq import RabbitMQNode, throwaway_rabbitmq


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database (``postgres``)."""
    external = os.environ.get("FEEDLINE_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with throwaway_postgres() as server:
        yield server.url()


@pytest.fixture
async def postgres_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    async with fresh_database(postgres_server_url) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'feedline.db'}"


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Run a test once on PostgreSQL and once on SQLite."""
    fixture = "postgres_url" if request.param == "postgresql" else "sqlite_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQNode]:
    """A throwaway RabbitMQ node with streams, for the session (tests/support/rabbitmq.py).

    Fails (does not skip) when rabbitmq-server is not installed.
    """
    with throwaway_rabbitmq() as node:
        yield node
