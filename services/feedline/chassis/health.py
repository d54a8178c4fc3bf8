"""Liveness (the process answers) and readiness (its database answers)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text
from starlette.responses import JSONResponse, Response

from feedline.chassis.problems import PROBLEM_SCHEMA, problem
from feedline_contracts.database import Database


def health_router(database: Database) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health/live", summary="The process is alive")
    async def live() -> Response:
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})

    @router.get("/health/ready", summary="The database answers", responses={503: PROBLEM_SCHEMA})
    async def ready() -> Response:
        try:
            async with database.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:  # any failure means "not ready"; the reason goes out
            return problem(503, "Not Ready", f"database check failed: {type(exc).__name__}: {exc}")
        return JSONResponse({"status": "ready"}, headers={"Cache-Control": "no-store"})

    return router
