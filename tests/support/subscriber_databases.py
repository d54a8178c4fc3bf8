"""Extra databases for subscriber tests: the read model lives apart from the service's DB."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from tests.support.postgres import fresh_database


@contextlib.asynccontextmanager
async def read_model_database(
    dialect: str, server_url: str | None, folder: Path
) -> AsyncIterator[str]:
    """A fresh read-model database of ``dialect``."""
    if dialect == "sqlite":
        yield f"sqlite:///{folder / 'read-model.db'}"
        return
    assert server_url is not None
    async with fresh_database(server_url, prefix="rm") as url:
        yield url
