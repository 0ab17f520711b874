"""Alerts: the open ones, the message history (by hazard, area, time), one alert's
messages and acknowledgements. Read from InfluxDB's ``alert`` and ``ack`` measurements,
which the alert service writes for every message it issues (so this works whichever
alert service instance is active, and while none is)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from starlette.datastructures import URL

from api.deps import PUBLIC, context, public
from api.errors import ApiError, ErrorBody
from api.influx import format_ns, parse_time_ns
from api.models import AlertHistory, AlertMessage, OpenAlert, Page
from api.paging import Limit, Offset, next_url, page_size, time_ns
from api.queries import Where
from civic_iot.auth import Principal
from civic_iot.contracts.alerts import Hazard

router = APIRouter(
    prefix="/api/v1",
    tags=["alerts"],
    responses={
        429: {"model": ErrorBody, "description": "Rate limit without a token spent"},
        503: {"model": ErrorBody, "description": "InfluxDB unavailable"},
    },
)

Area = Annotated[
    str | None,
    Query(
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="township code, or quake-<event id>",
        examples=["63000010"],
    ),
]


def _where(hazard: str | None, area: str | None, msg_type: str | None = None) -> Where:
    where: dict[str, str] = {}
    if hazard is not None:
        where["hazard"] = hazard
    if area is not None:
        where["area"] = area
    if msg_type is not None:
        where["msg_type"] = msg_type
    return where


@router.get(
    "/alerts/open",
    response_model=list[OpenAlert],
    summary="Open alerts, newest first",
    openapi_extra=PUBLIC,
)
async def open_alerts(
    request: Request,
    _who: Annotated[Principal | None, Depends(public)],
    hazard: Annotated[Hazard | None, Query(description="only this hazard")] = None,
    area: Area = None,
) -> list[OpenAlert]:
    """Every alert whose newest message is not a Cancel, with its opening time, its
    newest message and its acknowledgements."""
    ctx = context(request)
    return await ctx.store.open_alerts(ctx.registry.get(), _where(hazard, area))


@router.get(
    "/alerts",
    response_model=Page[AlertMessage],
    summary="Alert messages, newest first",
    openapi_extra=PUBLIC,
)
async def alert_messages(
    request: Request,
    _who: Annotated[Principal | None, Depends(public)],
    hazard: Annotated[Hazard | None, Query(description="only this hazard")] = None,
    area: Area = None,
    msg_type: Annotated[
        Literal["Alert", "Update", "Cancel"] | None, Query(description="only this type")
    ] = None,
    since: Annotated[datetime | None, Query(description="RFC 3339; default: all")] = None,
    until: Annotated[
        datetime | None,
        Query(description="RFC 3339; default: open. The next page's URL fixes it"),
    ] = None,
    limit: Limit = None,
    offset: Offset = 0,
) -> Page[AlertMessage]:
    """Every issued message (Alert, Update, Cancel) in ``[since, until)``. Pages count
    from the newest; messages issued after ``until`` never shift them."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise ApiError(400, f"query parameter {name!r}: give a UTC offset (Z or +08:00)")
    size = page_size(request, limit)
    stop = time_ns(until, 0) if until is not None else None
    messages = await context(request).store.alert_messages(
        _where(hazard, area, msg_type),
        start_ns=None if since is None else time_ns(since, 0),
        stop_ns=stop,
        limit=size + 1,
        offset=offset,
    )
    more = len(messages) > size
    nxt = next_url(request, offset, size, more)
    if nxt is not None and until is None and messages:
        # Fix the page boundary: later messages must not shift the next pages.
        nxt = str(URL(nxt).include_query_params(until=_after(messages[0].sent)))
    return Page[AlertMessage](
        items=messages[:size], limit=size, offset=offset, total=None, next=nxt
    )


def _after(sent: str) -> str:
    """The first whole microsecond after ``sent`` (``until`` is exclusive, and a query
    parameter's time is read to the microsecond)."""
    return format_ns((parse_time_ns(sent) // 1000 + 1) * 1000)


@router.get(
    "/alerts/{alert_id}",
    response_model=AlertHistory,
    responses={404: {"model": ErrorBody, "description": "No such alert"}},
    summary="One alert: every message, oldest first, and its acknowledgements",
    openapi_extra=PUBLIC,
)
async def alert(
    request: Request,
    _who: Annotated[Principal | None, Depends(public)],
    alert_id: UUID,
) -> AlertHistory:
    store = context(request).store
    key = str(alert_id)
    messages, acks = await asyncio.gather(
        store.alert_messages({}, start_ns=None, stop_ns=None, limit=10_000, offset=0,
                             alert_id=key, newest_first=False),
        store.acknowledgements(key),
    )  # fmt: skip
    if not messages:
        raise ApiError(404, f"no alert {key!r} was issued")
    return AlertHistory(
        alert_id=key,
        open=messages[-1].msg_type != "Cancel",
        messages=messages,
        acknowledgements=acks,
    )
