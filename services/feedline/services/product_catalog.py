"""product-catalog: cacheable queries (``Cache-Control: max-age`` and an ETag).

The catalog is seeded with demo products at first start; other services query
it through their HTTP cache.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, Text, func, insert, select

from feedline.chassis.app import ContextDep, ServiceContext, ServiceDefinition
from feedline.chassis.caching import NOT_MODIFIED, cached_json
from feedline.chassis.problems import PROBLEM_SCHEMA, problem
from feedline.services.common import MAX_ID

MAX_IDS_PER_QUERY = 100
DEMO_PRODUCT_COUNT = 100

metadata = MetaData()
products = Table(
    "products",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("price_amount_cents", Integer, nullable=False),
    Column("currency", Text, nullable=False),
)


class Price(BaseModel):
    amountCents: int  # noqa: N815 - JSON field names
    currency: str


class ProductPublic(BaseModel):
    productId: int  # noqa: N815
    name: str
    description: str
    price: Price


router = APIRouter(prefix="/products", tags=["products"])


@router.get(
    "", response_model=list[ProductPublic], responses={304: NOT_MODIFIED, 400: PROBLEM_SCHEMA}
)
async def get_products(
    request: Request,
    context: ContextDep,
    product_ids: Annotated[
        str,
        Query(
            alias="productIds",
            pattern=r"^[1-9][0-9]{0,18}(,[1-9][0-9]{0,18}){0,99}$",
            description=f"comma-separated product ids (1 to {MAX_IDS_PER_QUERY})",
        ),
    ],
) -> Response:
    wanted = sorted({int(part) for part in product_ids.split(",")})
    if wanted[-1] > MAX_ID:
        return problem(
            400,
            "Invalid request",
            f"query parameter 'productIds': ids are at most {MAX_ID}, got {wanted[-1]}",
            errors=[{"in": "query", "name": "productIds", "message": "id too large"}],
        )
    async with context.database.engine.connect() as connection:
        rows = (
            await connection.execute(
                select(products).where(products.c.id.in_(wanted)).order_by(products.c.id)
            )
        ).all()
    payload = [
        {
            "productId": row.id,
            "name": row.name,
            "description": row.description,
            "price": {"amountCents": row.price_amount_cents, "currency": row.currency},
        }
        for row in rows
    ]
    return cached_json(request, payload, max_age=context.settings.product_cache_max_age)


async def seed_demo_products(context: ServiceContext) -> None:
    async with context.database.transaction() as connection:
        count = (await connection.execute(select(func.count()).select_from(products))).scalar_one()
        if count:
            return
        await connection.execute(
            insert(products),
            [
                {
                    "id": number,
                    "name": f"Product {number}",
                    "description": f"Demo product number {number}",
                    "price_amount_cents": 100 * number + 99,
                    "currency": "EUR",
                }
                for number in range(1, DEMO_PRODUCT_COUNT + 1)
            ],
        )


definition = ServiceDefinition(
    name="product-catalog",
    description="Product catalog: cacheable queries for products.",
    routers=[router],
    metadata=[metadata],
    on_startup=seed_demo_products,
)
