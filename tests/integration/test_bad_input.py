"""Bad input gets a clear problem+json naming what was wrong, and changes nothing."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import StartService

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
