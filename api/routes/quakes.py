"""Earthquakes: the events the associator estimated, and an event's intensity grid."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from api.deps import PUBLIC, context, public
from api.errors import ApiError, ErrorBody
from api.models import Page, QuakeDetail, QuakeEvent
from api.paging import Limit, Offset, next_url, now_ns, page_size, time_ns
from civic_iot.auth import Principal

router = APIRouter(
    prefix="/api/v1",
    tags=["earthquakes"],
    responses={
        429: {"model": ErrorBody, "description": "Rate limit without a token spent"},
        503: {"model": ErrorBody, "description": "InfluxDB unavailable"},
    },
)

_DAY_NS = 86_400 * 1_000_000_000


@router.get(
    "/quakes",
    response_model=Page[QuakeEvent],
    summary="Earthquake events, newest origin first",
    openapi_extra=PUBLIC,
)
async def quakes(
    request: Request,
    _who: Annotated[Principal | None, Depends(public)],
    since: Annotated[
        datetime | None, Query(description="estimates from (RFC 3339); default 30 days ago")
    ] = None,
    until: Annotated[datetime | None, Query(description="estimates before; default open")] = None,
    limit: Limit = None,
    offset: Offset = 0,
) -> Page[QuakeEvent]:
    """Each event as its latest estimate in the range has it (epicentre, depth,
    magnitude, stations, the highest expected intensity)."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise ApiError(400, f"query parameter {name!r}: give a UTC offset (Z or +08:00)")
    size = page_size(request, limit)
    events = await context(request).store.quake_events(
        start_ns=time_ns(since, now_ns() - 30 * _DAY_NS),
        stop_ns=None if until is None else time_ns(until, 0),
    )
    return Page[QuakeEvent](
        items=events[offset : offset + size],
        limit=size,
        offset=offset,
        total=len(events),
        next=next_url(request, offset, size, offset + size < len(events)),
    )


@router.get(
    "/quakes/{event_id}",
    response_model=QuakeDetail,
    responses={404: {"model": ErrorBody, "description": "No such event"}},
    summary="One earthquake and the expected shaking of every 0.1 degree cell",
    openapi_extra=PUBLIC,
)
async def quake(
    request: Request,
    _who: Annotated[Principal | None, Depends(public)],
    event_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")],
    min_intensity_rank: Annotated[
        int, Query(ge=0, le=9, description="only cells at least this rank (0-9)")
    ] = 0,
) -> QuakeDetail:
    """The latest estimate of the event and its grid: each cell's expected CWA intensity
    and when the S wave reaches it (``s_wave_at``: the countdown a phone shows)."""
    store = context(request).store
    events = await store.quake_events(start_ns=None, stop_ns=None, event_id=event_id)
    if not events:
        raise ApiError(404, f"no earthquake event {event_id!r}")
    event = events[0]
    cells = [
        c for c in await store.quake_cells(event) if (c.intensity_rank or 0) >= min_intensity_rank
    ]
    return QuakeDetail(**event.model_dump(), cells=cells)
