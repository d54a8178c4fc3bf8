"""special-offers: commands on offers; every change is an event on its feed.

Events: ``SpecialOfferCreated`` and ``SpecialOfferUpdated`` (``{"offerId",
"description"}``) and ``SpecialOfferRemoved`` (``{"offerId"}``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Column, MetaData, Table, Text, delete, select, update

from feedline.chassis.app import ContextDep, ServiceDefinition
from feedline.chassis.caching import NOT_MODIFIED, cached_json
from feedline.chassis.eventstore import NewEvent
from feedline.chassis.problems import PROBLEM_SCHEMA
from feedline.services.common import NO_NUL, IdType, ResourceId, not_found

metadata = MetaData()
offers = Table(
    "offers",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("description", Text, nullable=False),
)


class OfferCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = Field(
        min_length=1, max_length=2000, pattern=NO_NUL, examples=["10% off all books"]
    )


class OfferUpdate(OfferCreate):
    pass


class OfferPublic(BaseModel):
    id: int
    description: str


router = APIRouter(prefix="/offers", tags=["offers"], responses={400: PROBLEM_SCHEMA})


@router.post("", status_code=201, response_model=OfferPublic, responses={422: PROBLEM_SCHEMA})
async def create_offer(body: OfferCreate, context: ContextDep, response: Response) -> OfferPublic:
    async with context.store.transaction() as connection:
        result = await connection.execute(
            offers.insert().values(description=body.description).returning(offers.c.id)
        )
        offer_id = int(result.scalar_one())
        await context.store.append(
            connection,
            [
                NewEvent(
                    "SpecialOfferCreated", {"offerId": offer_id, "description": body.description}
                )
            ],
        )
    response.headers["Location"] = f"/offers/{offer_id}"
    return OfferPublic(id=offer_id, description=body.description)


@router.put(
    "/{offer_id}", response_model=OfferPublic, responses={404: PROBLEM_SCHEMA, 422: PROBLEM_SCHEMA}
)
async def update_offer(offer_id: ResourceId, body: OfferUpdate, context: ContextDep) -> OfferPublic:
    async with context.store.transaction() as connection:
        result = await connection.execute(
            update(offers).where(offers.c.id == offer_id).values(description=body.description)
        )
        if result.rowcount == 0:
            raise not_found("offer", offer_id)
        await context.store.append(
            connection,
            [
                NewEvent(
                    "SpecialOfferUpdated", {"offerId": offer_id, "description": body.description}
                )
            ],
        )
    return OfferPublic(id=offer_id, description=body.description)


@router.delete("/{offer_id}", status_code=204, responses={404: PROBLEM_SCHEMA})
async def remove_offer(offer_id: ResourceId, context: ContextDep) -> Response:
    async with context.store.transaction() as connection:
        result = await connection.execute(delete(offers).where(offers.c.id == offer_id))
        if result.rowcount == 0:
            raise not_found("offer", offer_id)
        await context.store.append(
            connection, [NewEvent("SpecialOfferRemoved", {"offerId": offer_id})]
        )
    return Response(status_code=204)


@router.get(
    "/{offer_id}",
    response_model=OfferPublic,
    responses={304: NOT_MODIFIED, 404: PROBLEM_SCHEMA},
)
async def get_offer(offer_id: ResourceId, request: Request, context: ContextDep) -> Response:
    async with context.database.engine.connect() as connection:
        row = (await connection.execute(select(offers).where(offers.c.id == offer_id))).first()
    if row is None:
        raise not_found("offer", offer_id)
    return cached_json(request, {"id": row.id, "description": row.description}, max_age=0)


definition = ServiceDefinition(
    name="special-offers",
    description="Special offers: commands on offers, published as events on the feed.",
    routers=[router],
    metadata=[metadata],
)
