"""Integration fixtures: real services on loopback over real databases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import httpx
import pytest

from feedline.chassis.app import create_app
from feedline.chassis.settings import ServiceSettings
from feedline.services.registry import SERVICES
from tests.support.services import serving_in_thread

StartService = Callable[..., str]


@pytest.fixture
def start_service() -> Iterator[StartService]:
    """``start_service(name, database_url, **settings) -> base_url``, stopped after the test."""
    with ExitStack() as stack:

        def start(name: str, database_url: str, **settings: Any) -> str:
            app = create_app(SERVICES[name], ServiceSettings(database_url=database_url, **settings))
            server: AbstractContextManager[str] = serving_in_thread(app)
            return stack.enter_context(server)

        yield start


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as http:
        yield http
