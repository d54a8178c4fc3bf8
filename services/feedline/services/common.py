"""Small pieces the example services share: path parameters and 404s."""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Path
from sqlalchemy import BigInteger, Integer

MAX_ID = 2**63 - 1

# Ids are positive BIGINTs; anything else is a 400 naming the parameter.
ResourceId = Annotated[int, Path(ge=1, le=MAX_ID, description="a positive integer id")]


def not_found(kind: str, identifier: object) -> HTTPException:
    return HTTPException(404, f"{kind} {identifier} does not exist")


# BIGINT ids; on SQLite only INTEGER PRIMARY KEY auto-numbers (it is the rowid).
IdType = BigInteger().with_variant(Integer(), "sqlite")
