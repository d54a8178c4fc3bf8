"""shopping-cart: add and remove items; product details come from product-catalog.

Product details are queried through the HTTP cache (``feedline.chassis.http_client``):
within the catalog's ``max-age`` a repeated query makes no request, and after it a
revalidation that answers 304 reuses the cached body.
Events: ``ShoppingCartItemAdded`` and ``ShoppingCartItemRemoved``
(``{"userId", "item": {"productId", "name", "price"}}``).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Body, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, Text, delete, select

from feedline.chassis.app import ContextDep, ServiceContext, ServiceDefinition
from feedline.chassis.eventstore import NewEvent
from feedline.chassis.http_client import service_client
from feedline.chassis.problems import PROBLEM_SCHEMA
from feedline.services.common import MAX_ID, ResourceId

CATALOG = "product-catalog"

metadata = MetaData()
cart_items = Table(
    "shopping_cart_items",
    metadata,
    Column("user_id", BigInteger, primary_key=True),
    Column("product_id", BigInteger, primary_key=True),
    Column("name", Text, nullable=False),
    Column("price_amount_cents", Integer, nullable=False),
    Column("currency", Text, nullable=False),
)

ProductIds = Annotated[
    list[Annotated[int, Field(ge=1, le=MAX_ID)]],
    Body(min_length=1, max_length=100, examples=[[1, 2]]),
]


class Price(BaseModel):
    amountCents: int  # noqa: N815 - JSON field names
    currency: str


class CartItem(BaseModel):
    productId: int  # noqa: N815
    name: str
    price: Price


class ShoppingCart(BaseModel):
    userId: int  # noqa: N815
    items: list[CartItem]


router = APIRouter(prefix="/shoppingcart", tags=["shopping cart"], responses={400: PROBLEM_SCHEMA})


async def fetch_products(client: httpx.AsyncClient, product_ids: list[int]) -> list[dict[str, Any]]:
    try:
        response = await client.get(
            "/products", params={"productIds": ",".join(str(i) for i in sorted(set(product_ids)))}
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise HTTPException(502, f"product-catalog did not answer: {exc}") from exc
    products: list[dict[str, Any]] = response.json()
    return products


async def _cart(context: ServiceContext, user_id: int) -> ShoppingCart:
    async with context.database.engine.connect() as connection:
        rows = (
            await connection.execute(
                select(cart_items)
                .where(cart_items.c.user_id == user_id)
                .order_by(cart_items.c.product_id)
            )
        ).all()
    return ShoppingCart(
        userId=user_id,
        items=[
            CartItem(
                productId=row.product_id,
                name=row.name,
                price=Price(amountCents=row.price_amount_cents, currency=row.currency),
            )
            for row in rows
        ],
    )


@router.get("/{user_id}", response_model=ShoppingCart)
async def get_cart(user_id: ResourceId, context: ContextDep) -> ShoppingCart:
    return await _cart(context, user_id)


@router.post(
    "/{user_id}/items",
    response_model=ShoppingCart,
    responses={422: PROBLEM_SCHEMA, 502: PROBLEM_SCHEMA},
)
async def add_items(
    user_id: ResourceId, product_ids: ProductIds, context: ContextDep
) -> ShoppingCart:
    products = await fetch_products(context.clients[CATALOG], product_ids)
    known = {product["productId"] for product in products}
    unknown = sorted(set(product_ids) - known)
    if unknown:
        raise HTTPException(422, f"body: unknown product ids {unknown}")
    async with context.store.transaction() as connection:
        present = set(
            (
                await connection.execute(
                    select(cart_items.c.product_id).where(cart_items.c.user_id == user_id)
                )
            ).scalars()
        )
        new = [product for product in products if product["productId"] not in present]
        if new:
            await connection.execute(
                cart_items.insert(),
                [
                    {
                        "user_id": user_id,
                        "product_id": product["productId"],
                        "name": product["name"],
                        "price_amount_cents": product["price"]["amountCents"],
                        "currency": product["price"]["currency"],
                    }
                    for product in new
                ],
            )
            await context.store.append(
                connection,
                [
                    NewEvent(
                        "ShoppingCartItemAdded",
                        {
                            "userId": user_id,
                            "item": {key: product[key] for key in ("productId", "name", "price")},
                        },
                    )
                    for product in new
                ],
            )
    return await _cart(context, user_id)


@router.delete("/{user_id}/items", response_model=ShoppingCart, responses={422: PROBLEM_SCHEMA})
async def remove_items(
    user_id: ResourceId, product_ids: ProductIds, context: ContextDep
) -> ShoppingCart:
    async with context.store.transaction() as connection:
        removed = (
            await connection.execute(
                delete(cart_items)
                .where(cart_items.c.user_id == user_id, cart_items.c.product_id.in_(product_ids))
                .returning(
                    cart_items.c.product_id,
                    cart_items.c.name,
                    cart_items.c.price_amount_cents,
                    cart_items.c.currency,
                )
            )
        ).all()
        await context.store.append(
            connection,
            [
                NewEvent(
                    "ShoppingCartItemRemoved",
                    {
                        "userId": user_id,
                        "item": {
                            "productId": row.product_id,
                            "name": row.name,
                            "price": {
                                "amountCents": row.price_amount_cents,
                                "currency": row.currency,
                            },
                        },
                    },
                )
                for row in sorted(removed, key=lambda row: int(row.product_id))
            ],
        )
    return await _cart(context, user_id)


async def open_catalog_client(context: ServiceContext) -> None:
    cache_file = (
        context.settings.http_cache_dir / f"feedline-shopping-cart-{os.getpid()}-http-cache.db"
    )
    context.clients[CATALOG] = service_client(
        context.settings.product_catalog_url, cache_path=str(cache_file)
    )


definition = ServiceDefinition(
    name="shopping-cart",
    description="Shopping cart: add and remove items; product details from product-catalog.",
    routers=[router],
    metadata=[metadata],
    on_startup=open_catalog_client,
)
