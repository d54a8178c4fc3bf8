"""Extra databases for subscriber tests: the read model lives apart from the service's DB."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg


@contextlib.asynccontextmanager
async def extra_postgres_database(server_url: str) -> AsyncIterator[str]:
    name = f"rm_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def read_model_database(
    dialect: str, server_url: str | None, folder: Path
) -> AsyncIterator[str]:
    """A fresh read-model database of ``dialect``."""
    if dialect == "sqlite":
        yield f"sqlite:///{folder / 'read-model.db'}"
        return
    assert server_url is not None
    async with extra_postgres_database(server_url) as url:
        yield url
