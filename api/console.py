"""The operations console: one page and its assets, served from ``api/console/``.

Nothing is fetched from elsewhere at run time: plain JavaScript and CSS, and the Taiwan
coastline (``taiwan.geojson``, Natural Earth 1:10m, public domain; see
``api/console/outline.py``). The page reads the public stream ``/live/console``, and with
an operator's token (pasted, kept in the tab's ``sessionStorage``, sent as a bearer
header, never in a URL the server sees) also ``/live/ops`` and acknowledges alerts.

- ``GET /console/``: the page; ``GET /console/{asset}``: its scripts, styles, outline.
- ``GET /console/me``: who the token belongs to (role ``agency`` or higher).
- ``POST /console/alerts/{alert_id}/ack`` (role ``operator``), JSON ``{"note": "..."}``:
  acknowledges at the alert service in the caller's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import BaseModel, Field

from api.live import HubDep, principal
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
MAX_NOTE_LEN = 2000


@router.get("/console", include_in_schema=False)
def console_root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=308)


@router.get("/console/", include_in_schema=False)
def console_page() -> FileResponse:
    return _asset("index.html")


@router.get("/console/me", tags=["console"], summary="Who the bearer token belongs to")
def console_me(who: Annotated[Principal, Depends(principal("agency"))]) -> dict[str, str]:
    return {"name": who.name, "role": who.role}


class AckBody(BaseModel):
    note: str = Field(default="", max_length=MAX_NOTE_LEN)


@router.post(
    "/console/alerts/{alert_id}/ack",
    tags=["console"],
    summary="Acknowledge an open alert (operator)",
    responses={
        401: {"description": "no valid token"},
        403: {"description": "the token's role is below operator"},
        404: {"description": "no such open alert"},
        503: {"description": "the alert service is not reachable or not active"},
    },
)
async def console_ack(
    alert_id: str,
    hub: HubDep,
    who: Annotated[Principal, Depends(principal("operator"))],
    body: Annotated[AckBody | None, Body()] = None,
) -> dict[str, Any]:
    """Acknowledge at the alert service, as the token's principal."""
    try:
        return await hub.acknowledge(alert_id, who.name, body.note if body else "")
    except AckFailedError as exc:
        raise HTTPException(exc.status, exc.message) from None


@router.get("/console/{asset}", include_in_schema=False)
def console_asset(asset: str) -> FileResponse:
    return _asset(asset)


def _asset(name: str) -> FileResponse:
    media = ASSETS.get(name)
    if media is None:
        raise HTTPException(404, f"no console asset {name!r}")
    # Small files, changed only by a deploy: revalidate each load (ETag), never stale.
    return FileResponse(CONSOLE_DIR / name, media_type=media, headers={"Cache-Control": "no-cache"})
