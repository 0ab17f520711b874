"""The operations console: one page and its assets, served from ``api/console/``.

Nothing is fetched from elsewhere at run time: plain JavaScript and CSS, and the Taiwan
coastline (``taiwan.geojson``, Natural Earth 1:10m, public domain; see
``api/console/outline.py``). The page reads the public stream ``/live/console``, and with
an operator's token (pasted, kept in the tab's ``sessionStorage``, sent as a bearer
header, never in a URL the server sees) also ``/live/ops`` and acknowledges alerts.

- ``GET /console/``: the page; ``GET /console/{asset}``: its scripts, styles, outline.
- ``GET /console/me``: who the token belongs to (role ``agency`` or higher).
- ``POST /console/alerts/{alert_id}/ack`` (role ``operator``), JSON ``{"note": "..."}``:
  acknowledges at the alert service with the caller's own token, so the alert service
  checks it again and records its principal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import BaseModel, Field

from api.deps import principal
from api.errors import ApiError, ErrorBody
from api.live import HubDep
from api.livehub import AckFailedError
from civic_iot.auth import Principal

__all__ = ["ASSETS", "CONSOLE_DIR", "router"]

router = APIRouter()

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
#: What the page may load, and its media type (nothing else in the folder is served).
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "taiwan.geojson": "application/geo+json",
}
#: The alert service's own limit on a note (``alerts.api.AckIn``).
MAX_NOTE_LEN = 280


@router.get("/console", include_in_schema=False)
def console_root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=308)


@router.get("/console/", include_in_schema=False)
def console_page() -> FileResponse:
    return _asset("index.html")


@router.get(
    "/console/me",
    tags=["console"],
    summary="Who the bearer token belongs to",
    responses={
        401: {"model": ErrorBody, "description": "no valid token"},
        403: {"model": ErrorBody, "description": "the token's role is below agency"},
    },
)
def console_me(who: Annotated[Principal, Depends(principal("agency"))]) -> dict[str, str]:
    return {"name": who.name, "role": who.role}


class AckBody(BaseModel):
    note: str = Field(default="", max_length=MAX_NOTE_LEN)


@router.post(
    "/console/alerts/{alert_id}/ack",
    tags=["console"],
    summary="Acknowledge an open alert (operator)",
    responses={
        401: {"model": ErrorBody, "description": "no valid token"},
        403: {"model": ErrorBody, "description": "the token's role is below operator"},
        404: {"model": ErrorBody, "description": "no such open alert"},
        503: {
            "model": ErrorBody,
            "description": "the alert service is not reachable or not active",
        },
    },
)
async def console_ack(
    request: Request,
    alert_id: str,
    hub: HubDep,
    _who: Annotated[Principal, Depends(principal("operator"))],
    body: Annotated[AckBody | None, Body()] = None,
) -> dict[str, Any]:
    """Acknowledge at the alert service, as the token's principal."""
    authorization = request.headers["authorization"]  # checked by principal()
    try:
        return await hub.acknowledge(alert_id, authorization, body.note if body else "")
    except AckFailedError as exc:
        raise ApiError(exc.status, exc.message) from None


@router.get("/console/{asset}", include_in_schema=False)
def console_asset(asset: str) -> FileResponse:
    return _asset(asset)


def _asset(name: str) -> FileResponse:
    media = ASSETS.get(name)
    if media is None:
        raise ApiError(404, f"no console asset {name!r}")
    # Small files, changed only by a deploy: revalidate each load (ETag), never stale.
    return FileResponse(CONSOLE_DIR / name, media_type=media, headers={"Cache-Control": "no-cache"})
