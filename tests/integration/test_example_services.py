"""The book's example services: commands, queries, and queries through the HTTP cache."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import insert

from feedline.services.loyalty_program.read_model import special_offers
from feedline_contracts.database import connect_database
from tests.integration.conftest import StartService

pytestmark = pytest.mark.integration


def products_requests(metrics: str, status: str) -> float:
    prefix = f'feedline_http_requests_total{{method="GET",route="/products",status="{status}"}} '
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


async def test_shopping_cart_queries_the_catalog_through_the_http_cache(
    start_service: StartService, database_url: str, sqlite_url: str, client: httpx.AsyncClient
) -> None:
    catalog_db = f"{sqlite_url.removesuffix('.db')}-catalog.db"  # a database of its own
    catalog = start_service("product-catalog", catalog_db, product_cache_max_age=2)
    cart = start_service("shopping-cart", database_url, product_catalog_url=catalog)

    added = await client.post(f"{cart}/shoppingcart/42/items", json=[1, 2])
    assert added.status_code == 200, added.text
    assert [item["productId"] for item in added.json()["items"]] == [1, 2]
    assert added.json()["items"][0]["price"] == {"amountCents": 199, "currency": "EUR"}
    metrics = (await client.get(f"{catalog}/metrics")).text
    assert products_requests(metrics, "200") == 1

    # Same query within max-age: answered from the cache, no request reaches the catalog.
    again = await client.post(f"{cart}/shoppingcart/42/items", json=[2, 1])
    assert again.status_code == 200
    metrics = (await client.get(f"{catalog}/metrics")).text
    assert products_requests(metrics, "200") == 1
    assert products_requests(metrics, "304") == 0

    # Stale after max-age: revalidated with If-None-Match, answered 304.
    await asyncio.sleep(2.5)
    third = await client.post(f"{cart}/shoppingcart/42/items", json=[1, 2])
    assert third.status_code == 200
    metrics = (await client.get(f"{catalog}/metrics")).text
    assert products_requests(metrics, "200") == 1
    assert products_requests(metrics, "304") == 1

    removed = await client.request("DELETE", f"{cart}/shoppingcart/42/items", json=[1])
    assert [item["productId"] for item in removed.json()["items"]] == [2]
    events = (await client.get(f"{cart}/events")).json()
    assert [event["name"] for event in events] == [
        "ShoppingCartItemAdded",
        "ShoppingCartItemAdded",
        "ShoppingCartItemRemoved",
    ]
    assert events[2]["content"]["item"]["productId"] == 1
    assert (await client.get(f"{cart}/shoppingcart/42")).json()["items"][0]["productId"] == 2


async def test_shopping_cart_rejects_unknown_products_and_writes_nothing(
    start_service: StartService, sqlite_url: str, client: httpx.AsyncClient, tmp_path: object
) -> None:
    catalog = start_service("product-catalog", sqlite_url)
    cart_db = f"{sqlite_url.removesuffix('.db')}-cart.db"
    cart = start_service("shopping-cart", cart_db, product_catalog_url=catalog)
    response = await client.post(f"{cart}/shoppingcart/1/items", json=[1, 999])
    assert response.status_code == 422
    assert "999" in response.json()["detail"]
    assert (await client.get(f"{cart}/events/head")).json() == {"head": 0}


async def test_product_catalog_answers_with_max_age_and_etag(
    start_service: StartService, sqlite_url: str, client: httpx.AsyncClient
) -> None:
    base = start_service("product-catalog", sqlite_url, product_cache_max_age=60)
    response = await client.get(f"{base}/products", params={"productIds": "3,1,3"})
    assert [product["productId"] for product in response.json()] == [1, 3]
    assert response.headers["Cache-Control"] == "max-age=60"
    revalidated = await client.get(
        f"{base}/products",
        params={"productIds": "3,1,3"},
        headers={"If-None-Match": response.headers["ETag"]},
    )
    assert revalidated.status_code == 304


async def test_loyalty_program_users_and_their_offers_from_the_read_model(
    start_service: StartService, database_url: str, client: httpx.AsyncClient
) -> None:
    base = start_service("loyalty-program", database_url)
    created = await client.post(f"{base}/users", json={"name": "Ada", "interests": ["books"]})
    assert created.status_code == 201
    user = created.json()
    assert created.headers["Location"] == f"/users/{user['id']}"
    everyone = (await client.post(f"{base}/users", json={"name": "Bob"})).json()
    assert (await client.get(f"{base}/users/{user['id']}/offers")).json() == []

    # The read model is written by the subscriber; here, straight into its table.
    database = connect_database(database_url)
    try:
        async with database.transaction() as connection:
            await connection.execute(
                insert(special_offers),
                [
                    {"offer_id": 1, "description": "Two Books for one", "last_sequence_number": 1},
                    {"offer_id": 2, "description": "Free coffee", "last_sequence_number": 2},
                ],
            )
    finally:
        await database.dispose()
    offers = (await client.get(f"{base}/users/{user['id']}/offers")).json()
    assert offers == [{"offerId": 1, "description": "Two Books for one"}]
    all_offers = (await client.get(f"{base}/users/{everyone['id']}/offers")).json()
    assert [offer["offerId"] for offer in all_offers] == [1, 2]

    updated = await client.put(
        f"{base}/users/{user['id']}", json={"name": "Ada", "interests": ["coffee"]}
    )
    assert updated.json()["interests"] == ["coffee"]
    offers = (await client.get(f"{base}/users/{user['id']}/offers")).json()
    assert [offer["offerId"] for offer in offers] == [2]
    events = (await client.get(f"{base}/events")).json()
    assert [event["name"] for event in events] == [
        "UserRegistered",
        "UserRegistered",
        "UserUpdated",
    ]
    assert (await client.get(f"{base}/users/999")).status_code == 404
