"""Fixtures of the faults tier: a real fault proxy (toxiproxy-server) per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.toxiproxy import MissingToxiproxyError, Toxiproxy, running_toxiproxy


@pytest.fixture
def toxiproxy(tmp_path: Path) -> Iterator[Toxiproxy]:
    """toxiproxy-server on a free loopback port (``make toxiproxy`` builds it).

    Fails, never skips, when it is not built: a missing binary must not hide the tier.
    """
    try:
        with running_toxiproxy(tmp_path) as server:
            yield server
    except MissingToxiproxyError as err:
        pytest.fail(str(err), pytrace=False)
