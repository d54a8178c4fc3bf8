"""Bad input gets a clear problem+json naming what was wrong, and changes nothing."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from feedline.chassis.app import create_app
from feedline.chassis.settings import ServiceSettings
from feedline.services.registry import SERVICES
from feedline_contracts.database import redacted
from tests.integration.conftest import StartService
from tests.support.ports import free_port
from tests.support.services import FEEDLINE, running_service

pytestmark = pytest.mark.integration

BAD_FEED_QUERIES = [
    ("start", "0"),
    ("start", "-1"),
    ("start", "abc"),
    ("start", "1.5"),
    ("start", str(2**63)),
    ("end", "1"),
    ("end", "xyz"),
    ("end", "3"),  # not after start=5, below
    ("limit", "0"),
    ("limit", "10001"),
    ("limit", "many"),
    ("types", ","),
    ("types", "A,,B"),
    ("types", "has space"),
    ("wait", "-1"),
    ("wait", "31"),
    ("wait", "soon"),
]


@pytest.mark.parametrize(("parameter", "value"), BAD_FEED_QUERIES)
async def test_bad_feed_query_values_are_400_naming_the_parameter(
    start_service: StartService,
    sqlite_url: str,
    client: httpx.AsyncClient,
    parameter: str,
    value: str,
) -> None:
    base = start_service("special-offers", sqlite_url)
    params = {parameter: value}
    if parameter == "end":
        params["start"] = "5"
    response = await client.get(f"{base}/events", params=params)
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 400
    assert f"'{parameter}'" in problem["detail"]
    assert any(error["name"] == parameter for error in problem["errors"])


BAD_OFFER_BODIES: list[tuple[str, bytes]] = [
    ("missing description", b"{}"),
    ("description not a string", b'{"description": 5}'),
    ("empty description", b'{"description": ""}'),
    ("unknown field", b'{"description": "x", "price": 3}'),
    ("not JSON", b"{description"),
    ("not an object", b'["x"]'),
]


@pytest.mark.parametrize(("case", "body"), BAD_OFFER_BODIES, ids=[c for c, _ in BAD_OFFER_BODIES])
async def test_a_command_with_a_bad_body_is_422_and_writes_nothing(
    start_service: StartService,
    database_url: str,
    client: httpx.AsyncClient,
    case: str,
    body: bytes,
) -> None:
    base = start_service("special-offers", database_url)
    response = await client.post(
        f"{base}/offers", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, case
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["errors"], "the problem lists what was wrong"
    assert (await client.get(f"{base}/events/head")).json() == {"head": 0}
    assert (await client.get(f"{base}/offers/1")).status_code == 404


async def test_commands_on_missing_resources_are_404_and_publish_nothing(
    start_service: StartService, sqlite_url: str, client: httpx.AsyncClient
) -> None:
    base = start_service("special-offers", sqlite_url)
    assert (await client.put(f"{base}/offers/7", json={"description": "x"})).status_code == 404
    assert (await client.delete(f"{base}/offers/7")).status_code == 404
    bad_id = await client.get(f"{base}/offers/zero")
    assert bad_id.status_code == 400
    assert "'offer_id'" in bad_id.json()["detail"]
    assert (await client.get(f"{base}/events/head")).json() == {"head": 0}


@pytest.mark.parametrize(
    "query",
    [
        "",
        "productIds=",
        "productIds=a",
        "productIds=0",
        "productIds=1,,2",
        "productIds=-3",
        f"productIds=1,{2**63}",
    ],
)
async def test_bad_product_queries_are_400(
    start_service: StartService, sqlite_url: str, client: httpx.AsyncClient, query: str
) -> None:
    base = start_service("product-catalog", sqlite_url)
    response = await client.get(f"{base}/products?{query}")
    assert response.status_code == 400
    assert "'productIds'" in response.json()["detail"]


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def methods_by_path(app: FastAPI) -> dict[str, set[str]]:
    """Every path of an app (its template) and the methods served there."""
    served: dict[str, set[str]] = {}
    for route in iter_route_contexts(app.routes):
        if route.path_format and route.methods:
            served.setdefault(route.path_format, set()).update(route.methods)
    return served


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_every_405_lists_exactly_the_methods_of_its_path(
    start_service: StartService, sqlite_url: str, client: httpx.AsyncClient, service: str
) -> None:
    base = start_service(service, sqlite_url)
    app = create_app(SERVICES[service], ServiceSettings(database_url=sqlite_url))
    checked = 0
    for template, served in methods_by_path(app).items():
        path = re.sub(r"\{[^}]+\}", "1", template)
        for method in sorted(set(METHODS) - served):
            response = await client.request(method, f"{base}{path}")
            assert response.status_code == 405, (method, path)
            allowed = {m.strip() for m in response.headers["Allow"].split(",")}
            assert allowed == served, (method, path)
            checked += 1
    assert checked > 20


async def test_options_on_a_loyalty_user_allows_get_and_put(
    start_service: StartService, sqlite_url: str, client: httpx.AsyncClient
) -> None:
    base = start_service("loyalty-program", sqlite_url)
    response = await client.options(f"{base}/users/1")
    assert response.status_code == 405
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["Allow"] == "GET, PUT"


# --- the database a service starts on ----------------------------------------------


def serve_until_exit(
    service: str, database_url: str, *, cwd: Path | None = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """`feedline serve SERVICE --database-url URL`, expected to give up on its own.

    Extra keyword arguments become environment variables (``FEEDLINE_...``).
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FEEDLINE_")} | env
    argv = [FEEDLINE, "serve", service, "--port", str(free_port()), "--database-url", database_url]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, cwd=cwd
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"`feedline serve` did not give up within {timeout}s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def test_services_started_without_a_database_url_get_a_file_each(tmp_path: Path) -> None:
    with (
        running_service("special-offers", None, cwd=tmp_path) as offers,
        running_service("loyalty-program", None, cwd=tmp_path) as loyalty,
    ):
        created = httpx.post(f"{offers}/offers", json={"description": "10% off"}, timeout=10)
        assert created.status_code == 201
        assert httpx.get(f"{offers}/events/head", timeout=10).json() == {"head": 1}
        assert httpx.get(f"{loyalty}/events/head", timeout=10).json() == {"head": 0}
        assert httpx.get(f"{loyalty}/events", params={"start": 1}, timeout=10).json() == []
    assert (tmp_path / "special-offers.db").is_file()
    assert (tmp_path / "loyalty-program.db").is_file()
    assert not (tmp_path / "feedline.db").exists()


def test_a_service_refuses_a_database_holding_another_services_event_store(
    start_service: StartService, database_url: str
) -> None:
    base = start_service("special-offers", database_url)
    assert httpx.post(f"{base}/offers", json={"description": "x"}, timeout=10).status_code == 201
    result = serve_until_exit("loyalty-program", database_url)
    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("feedline serve: ")
    assert "special-offers" in line
    assert "loyalty-program" in line
    assert redacted(database_url) in line
    assert "--database-url (FEEDLINE_DATABASE_URL)" in line
    # The owner still starts on it.
    assert httpx.get(f"{base}/events/head", timeout=10).json() == {"head": 1}


@pytest.mark.parametrize("where", ["postgresql", "sqlite"])
def test_serve_on_a_database_it_cannot_open_exits_3_with_one_line(
    tmp_path: Path, where: str
) -> None:
    if where == "postgresql":
        port = free_port()  # nothing listens there
        url = f"postgresql://nobody:s3cret@127.0.0.1:{port}/db"
        shown = f"postgresql://nobody:***@127.0.0.1:{port}/db"
        says = "connection refused"
        gave_up = " (gave up after 1 s; FEEDLINE_DATABASE_STARTUP_TIMEOUT_SECONDS)"
    else:
        url = f"sqlite:///{tmp_path / 'missing-folder' / 'offers.db'}"
        shown = url
        says = f"folder {tmp_path / 'missing-folder'} does not exist"
        gave_up = ""  # waiting cannot create a folder
    # An unreachable server is waited for (tests/integration/test_service_database_startup.py);
    # here only a second.
    result = serve_until_exit("special-offers", url, FEEDLINE_DATABASE_STARTUP_TIMEOUT_SECONDS="1")
    assert result.returncode == 3, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    line = result.stderr.strip()
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert line.startswith(f"feedline serve: cannot use the database {shown}: {says}")
    assert line.endswith(f"--database-url (FEEDLINE_DATABASE_URL){gave_up}")
