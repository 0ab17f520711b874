"""``GET /health``: the one endpoint open to all without a limit (probes call it)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.deps import context
from api.livehub import LiveHub

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    storage: Literal["ok", "unavailable"]
    live: dict[str, Any] = Field(
        description="the live hub: `status` ok once Kafka is read and the open alerts are "
        "rebuilt, else starting; the alert service's role; streams open"
    )


@router.get(
    "/health",
    response_model=Health,
    responses={
        503: {"model": Health, "description": "InfluxDB does not answer, or live push is not ready"}
    },
    summary="Whether the API, InfluxDB and the live push answer",
)
async def health(request: Request) -> JSONResponse:
    ok = await context(request).flux.ping()
    hub = getattr(request.app.state, "live_hub", None)
    live = hub.health() if isinstance(hub, LiveHub) else {"status": "stopped"}
    up = ok and live["status"] == "ok"
    body = Health(
        status="ok" if up else "degraded", storage="ok" if ok else "unavailable", live=live
    )
    return JSONResponse(body.model_dump(), status_code=200 if up else 503)
