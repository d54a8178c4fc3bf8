"""A service whose database is not up yet waits for it at start-up; what waiting cannot fix fails.

`feedline serve` as a user (or a pod of a fresh ``helm install``) starts it,
against a real PostgreSQL: one that starts after the service, and the session's
server for the problems that waiting cannot fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from feedline.chassis.app import check_database
from feedline.chassis.settings import ServiceSettings
from feedline.services.registry import SERVICES
from feedline_contracts.database import redacted
from tests.support import postgres as postgres_support
from tests.support.ports import free_port
from tests.support.processes import stop
from tests.support.services import FEEDLINE, wait_until_ready
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

RETRY_EVENT = "database unavailable; retrying"


def log_records(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``text`` (a service logs one object per line on stdout)."""
    records = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def retry_records(text: str) -> list[dict[str, Any]]:
    return [record for record in log_records(text) if record.get("event") == RETRY_EVENT]


def serve_env(**env: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FEEDLINE_")} | env


@contextlib.contextmanager
def serving(
    service: str, database_url: str, log: Path, **env: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`feedline serve SERVICE` on a free port, its output in ``log``; stopped afterwards."""
    port = free_port()
    argv = [FEEDLINE, "serve", service, "--port", str(port), "--database-url", database_url]
    environment = serve_env(FEEDLINE_HTTP_CACHE_DIR=str(log.parent), **env)
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=environment)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        stop(proc, grace_seconds=10)


def test_a_service_waits_for_a_postgresql_that_starts_after_it(tmp_path: Path) -> None:
    try:
        postgres_support.find_bin_dir()
    except RuntimeError as exc:
        if os.environ.get("FEEDLINE_TEST_DATABASE_URL"):
            pytest.skip(f"needs a PostgreSQL server of its own to start late: {exc}")
        raise
    port = free_port()
    url = f"postgresql://postgres:s3cret@127.0.0.1:{port}/postgres"
    shown = f"postgresql://postgres:***@127.0.0.1:{port}/postgres"
    log = tmp_path / "service.log"
    with serving("special-offers", url, log, FEEDLINE_DATABASE_STARTUP_TIMEOUT_SECONDS="300") as (
        base,
        proc,
    ):
        wait_for(
            lambda: proc.poll() is not None or retry_records(log.read_text()),
            timeout=60,
            what="the service's first retry line",
        )
        assert proc.poll() is None, log.read_text()
        # Waiting, it does not listen yet: not ready (kubelet's startupProbe covers it).
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health/ready", timeout=5)
        # A real server comes up on the port the service waits for.
        with postgres_support.throwaway_postgres(port=port) as server:
            assert server.port == port
            wait_until_ready(base, proc, log, timeout=120)
            created = httpx.post(f"{base}/offers", json={"description": "10% off"}, timeout=10)
            assert created.status_code == 201, created.text
            assert httpx.get(f"{base}/events/head", timeout=10).json() == {"head": 1}
            stop(proc, grace_seconds=10)  # before its server goes
    text = log.read_text()
    retries = retry_records(text)
    assert retries, text
    first = retries[0]
    assert first["level"] == "warning"
    assert first["database"] == shown
    assert first["error"].startswith(
        f"cannot use the database {shown}: connection refused at 127.0.0.1:{port}; "
    )
    assert first["retry"] == 1
    assert 0 <= first["wait_seconds"] <= 0.5  # the first wait: full jitter under 0.5 s
    assert all(record["database"] == shown for record in retries)
    assert "s3cret" not in text
    assert "Traceback" not in text


def claim_for_special_offers(database_url: str) -> None:
    settings = ServiceSettings(database_url=database_url)
    asyncio.run(check_database(SERVICES["special-offers"], settings))


@pytest.mark.parametrize("problem", ["login refused", "no such database", "another's event store"])
def test_what_waiting_cannot_fix_fails_at_once_with_its_line(
    postgres_url: str, problem: str
) -> None:
    said = "cannot use the database"
    if problem == "login refused":
        url = make_url(postgres_url).set(username="nobody", password="s3cret")
        database_url = url.render_as_string(hide_password=False)
        ending = "fix the user or password in --database-url (FEEDLINE_DATABASE_URL)"
    elif problem == "no such database":
        url = make_url(postgres_url).set(database="no_such_database")
        database_url = url.render_as_string(hide_password=False)
        ending = "create it (createdb), or fix --database-url (FEEDLINE_DATABASE_URL)"
    else:
        database_url = postgres_url
        claim_for_special_offers(database_url)
        said = "the database"
        ending = (
            "give loyalty-program its own with --database-url (FEEDLINE_DATABASE_URL) "
            "(default: sqlite:///loyalty-program.db in the working folder)"
        )
    argv = [FEEDLINE, "serve", "loyalty-program", "--port", str(free_port())]
    # A deadline far beyond the run's timeout: only a failure at once passes.
    env = serve_env(
        FEEDLINE_DATABASE_URL=database_url, FEEDLINE_DATABASE_STARTUP_TIMEOUT_SECONDS="3600"
    )
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"feedline serve: {said} {redacted(database_url)}")
    assert line.endswith(ending)
    if problem == "another's event store":
        assert " holds the event store of special-offers, not of loyalty-program: " in line
    assert "gave up" not in line
    assert retry_records(done.stdout) == []
    assert "s3cret" not in done.stdout + done.stderr
