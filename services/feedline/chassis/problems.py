"""RFC 9457 problem details: every error a service returns has this shape."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

PROBLEM_CONTENT_TYPE = "application/problem+json"

log = structlog.get_logger("feedline.problems")


class ProblemResponse(Response):
    media_type = PROBLEM_CONTENT_TYPE


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> ProblemResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    body.update(extensions)
    return ProblemResponse(orjson.dumps(body), status_code=status, headers=headers)


# The OpenAPI description of an error body, shared by every route that can fail.
PROBLEM_SCHEMA: dict[str, Any] = {
    "content": {
        PROBLEM_CONTENT_TYPE: {
            "schema": {
                "type": "object",
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "errors": {"type": "array", "items": {"type": "object"}},
                },
                "required": ["title", "status"],
            }
        }
    },
    "description": "Problem details (RFC 9457)",
}


def _describe(error: dict[str, Any]) -> dict[str, Any]:
    where, *path = error.get("loc", ("body",))
    name = ".".join(str(part) for part in path) or str(where)
    return {"in": where, "name": name, "message": error.get("msg", "invalid")}


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [_describe(dict(e)) for e in exc.errors()]
    # Bad query or path values are the client's addressing mistake (400); a
    # well-addressed command with a bad body is unprocessable (422).
    status = 422 if all(e["in"] == "body" for e in errors) else 400
    detail = "; ".join(f"{e['in']} parameter {e['name']!r}: {e['message']}" for e in errors)
    return problem(status, "Invalid request", detail, errors=errors)


def allowed_methods(request: Request) -> list[str]:
    """Every method that some route serves at the request's path.

    The router answers 405 from the first route whose path matched, so its
    ``Allow`` names that one route's methods only (``PUT`` where ``GET`` and
    ``PUT`` are served by two routes of one path).
    """
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    if root and path.startswith(f"{root}/"):
        path = path.removeprefix(root)
    allowed: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        pattern = getattr(route, "path_regex", None)
        if route.methods and pattern is not None and pattern.match(path):
            allowed.update(route.methods)
    return sorted(allowed)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    title = {
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
        422: "Unprocessable Content",
        502: "Bad Gateway",
        503: "Service Unavailable",
    }.get(exc.status_code, "Error")
    detail = exc.detail if isinstance(exc.detail, str) else None
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        allowed = allowed_methods(request)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
    return problem(exc.status_code, title, detail, headers=headers)


async def _unexpected_error(_request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return problem(500, "Internal Server Error", "the service failed; see its logs")


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
