"""``GET /health``: the one endpoint open to all without a limit (probes call it)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.deps import context

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    storage: Literal["ok", "unavailable"]


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "InfluxDB does not answer"}},
    summary="Whether the API and InfluxDB answer",
)
async def health(request: Request) -> JSONResponse:
    ok = await context(request).flux.ping()
    body = Health(status="ok" if ok else "degraded", storage="ok" if ok else "unavailable")
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
