"""Small pieces the example services share: path parameters and 404s."""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Path
from sqlalchemy import BigInteger, Integer

MAX_ID = 2**63 - 1

# Ids are positive BIGINTs; anything else is a 400 naming the parameter.
ResourceId = Annotated[int, Path(ge=1, le=MAX_ID, description="a positive integer id")]


# Text that both databases store: PostgreSQL's text cannot hold U+0000 (a NUL made a 500
# there, found by tests/integration/test_api_fuzzing.py); declared, so it is a 422.
NO_NUL = r"^[^\x00]*$"
# The same, and at least one character that is not white space (for stripped fields). The
# white space that pydantic strips (Unicode's White_Space), spelled out: ``\s`` differs
# between regex engines (Python's also matches U+001C..U+001F).
WHITE_SPACE = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK_NO_NUL = rf"^[^\x00]*[^{WHITE_SPACE}\x00][^\x00]*$"


def not_found(kind: str, identifier: object) -> HTTPException:
    return HTTPException(404, f"{kind} {identifier} does not exist")


# BIGINT ids; on SQLite only INTEGER PRIMARY KEY auto-numbers (it is the rowid).
IdType = BigInteger().with_variant(Integer(), "sqlite")
