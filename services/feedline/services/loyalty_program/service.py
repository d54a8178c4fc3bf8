"""loyalty-program: users (commands, queries) and the offers that interest them.

``GET /users/{id}/offers`` answers from the read model of special offers that a
subscriber builds from the special-offers feed (``read_model.py``): an offer
interests a user when its description mentions one of the user's interests,
and every offer interests a user who named none.
Events: ``UserRegistered`` and ``UserUpdated`` (``{"userId", "name", "interests"}``).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import Column, MetaData, Table, Text, select, update

from feedline.chassis.app import ContextDep, ServiceDefinition
from feedline.chassis.caching import NOT_MODIFIED, cached_json
from feedline.chassis.eventstore import NewEvent
from feedline.chassis.problems import PROBLEM_SCHEMA
from feedline.services.common import NO_NUL, NOT_BLANK_NO_NUL, IdType, ResourceId, not_found
from feedline.services.loyalty_program.read_model import read_model_metadata, special_offers

metadata = MetaData()
users = Table(
    "users",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),
    Column("interests", Text, nullable=False),  # JSON array of strings
)

# Stripped: an interest of white space only is refused (422), as the pattern declares.
Interest = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=100, strip_whitespace=True, pattern=NOT_BLANK_NO_NUL
    ),
]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, pattern=NO_NUL, examples=["Ada"])
    interests: list[Interest] = Field(default_factory=list, max_length=50, examples=[["books"]])


class UserUpdate(UserCreate):
    pass


class UserPublic(BaseModel):
    id: int
    name: str
    interests: list[str]


class OfferForUser(BaseModel):
    offerId: int  # noqa: N815 - the feed's JSON field names
    description: str


router = APIRouter(prefix="/users", tags=["users"], responses={400: PROBLEM_SCHEMA})


def _user_event(name: str, user_id: int, body: UserCreate) -> NewEvent:
    return NewEvent(name, {"userId": user_id, "name": body.name, "interests": body.interests})


@router.post("", status_code=201, response_model=UserPublic, responses={422: PROBLEM_SCHEMA})
async def register_user(body: UserCreate, context: ContextDep, response: Response) -> UserPublic:
    async with context.store.transaction() as connection:
        result = await connection.execute(
            users.insert()
            .values(name=body.name, interests=orjson.dumps(body.interests).decode())
            .returning(users.c.id)
        )
        user_id = int(result.scalar_one())
        await context.store.append(connection, [_user_event("UserRegistered", user_id, body)])
    response.headers["Location"] = f"/users/{user_id}"
    return UserPublic(id=user_id, name=body.name, interests=body.interests)


@router.put(
    "/{user_id}", response_model=UserPublic, responses={404: PROBLEM_SCHEMA, 422: PROBLEM_SCHEMA}
)
async def update_user(user_id: ResourceId, body: UserUpdate, context: ContextDep) -> UserPublic:
    async with context.store.transaction() as connection:
        result = await connection.execute(
            update(users)
            .where(users.c.id == user_id)
            .values(name=body.name, interests=orjson.dumps(body.interests).decode())
        )
        if result.rowcount == 0:
            raise not_found("user", user_id)
        await context.store.append(connection, [_user_event("UserUpdated", user_id, body)])
    return UserPublic(id=user_id, name=body.name, interests=body.interests)


async def _load_user(context: ContextDep, user_id: int) -> dict[str, Any]:
    async with context.database.engine.connect() as connection:
        row = (await connection.execute(select(users).where(users.c.id == user_id))).first()
    if row is None:
        raise not_found("user", user_id)
    return {"id": row.id, "name": row.name, "interests": orjson.loads(row.interests)}


@router.get(
    "/{user_id}", response_model=UserPublic, responses={304: NOT_MODIFIED, 404: PROBLEM_SCHEMA}
)
async def get_user(user_id: ResourceId, request: Request, context: ContextDep) -> Response:
    return cached_json(request, await _load_user(context, user_id), max_age=0)


@router.get(
    "/{user_id}/offers",
    response_model=list[OfferForUser],
    responses={304: NOT_MODIFIED, 404: PROBLEM_SCHEMA},
)
async def offers_for_user(user_id: ResourceId, request: Request, context: ContextDep) -> Response:
    user = await _load_user(context, user_id)
    interests = [interest.lower() for interest in user["interests"]]
    async with context.database.engine.connect() as connection:
        rows = (
            await connection.execute(select(special_offers).order_by(special_offers.c.offer_id))
        ).all()
    matching = [
        {"offerId": row.offer_id, "description": row.description}
        for row in rows
        if not interests or any(interest in row.description.lower() for interest in interests)
    ]
    return cached_json(request, matching, max_age=0)


definition = ServiceDefinition(
    name="loyalty-program",
    description="Loyalty program: users, and the special offers that interest them.",
    routers=[router],
    metadata=[metadata, read_model_metadata],
)
