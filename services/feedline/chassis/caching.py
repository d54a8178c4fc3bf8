"""Cache-Control and ETag for query responses (the book's cacheable queries)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response

# The OpenAPI description of the 304 that ``cached_json`` answers to a matching If-None-Match.
NOT_MODIFIED: dict[str, Any] = {
    "description": "Not modified since the ETag in If-None-Match (no body, the same headers)"
}


def etag_for(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


def cached_json(
    request: Request, payload: Any, *, max_age: int, status_code: int = 200
) -> Response:
    """A JSON answer with ``Cache-Control: max-age`` and an ETag; 304 when it matches."""
    body = orjson.dumps(payload)
    etag = etag_for(body)
    headers = {"ETag": etag, "Cache-Control": f"max-age={max_age}" if max_age else "no-cache"}
    sent = request.headers.get("if-none-match", "")
    if etag in {tag.strip().removeprefix("W/") for tag in sent.split(",")}:
        return Response(status_code=304, headers=headers)
    return Response(body, status_code=status_code, media_type="application/json", headers=headers)
