"""Townships: the registry's areas, and the newest readings of every device in one."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from api import queries, views
from api.deps import PUBLIC, context, public
from api.errors import ApiError, ErrorBody
from api.influx import format_ns
from api.models import TownshipAir, TownshipDevice, TownshipInfo, TownshipLatest
from civic_iot.auth import Principal
from civic_iot.registry import Registry, Township
from civic_iot.storage import schema

router = APIRouter(
    prefix="/api/v1",
    tags=["townships"],
    responses={
        429: {"model": ErrorBody, "description": "Rate limit without a token spent"},
        503: {"model": ErrorBody, "description": "InfluxDB unavailable"},
    },
)

Code = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="township code", examples=["63000010"])
]


def info(t: Township, counts: Counter[str]) -> TownshipInfo:
    return TownshipInfo(
        code=t.code, name=t.name, county=t.county, lat=t.lat, lon=t.lon, devices=counts[t.code]
    )


def township_of(registry: Registry, code: str) -> Township:
    town = registry.township(code)
    if town is None:
        raise ApiError(404, f"no township {code!r} in the registry")
    return town


@router.get(
    "/townships",
    response_model=list[TownshipInfo],
    summary="Every township of the registry",
    openapi_extra=PUBLIC,
)
async def list_townships(
    request: Request, _who: Annotated[Principal | None, Depends(public)]
) -> list[TownshipInfo]:
    registry = context(request).registry.get()
    counts = Counter(d.township for d in registry)
    return [info(t, counts) for t in sorted(registry.townships, key=lambda t: t.code)]


@router.get(
    "/townships/{code}/readings/latest",
    response_model=TownshipLatest,
    responses={404: {"model": ErrorBody, "description": "No such township"}},
    summary="The newest readings of every device in a township, its air level, its alerts",
    openapi_extra=PUBLIC,
)
async def township_latest(
    request: Request, _who: Annotated[Principal | None, Depends(public)], code: Code
) -> TownshipLatest:
    ctx = context(request)
    registry = ctx.registry.get()
    town = township_of(registry, code)
    answer: TownshipLatest = await ctx.store.recent.get(
        ("township", id(registry), code), lambda: _township_latest(request, registry, town)
    )
    return answer


async def _township_latest(request: Request, registry: Registry, town: Township) -> TownshipLatest:
    ctx = context(request)
    code = town.code
    devices = sorted((d for d in registry if d.township == code), key=lambda d: d.id)
    where = {"township": code}
    air_q = queries.latest(schema.TOWNSHIP_AIR, ctx.settings.influx, where)
    (rows, (air_rows,)), alerts = await asyncio.gather(
        ctx.store.readings(devices, where, also=[air_q]),
        ctx.store.open_alerts(registry, {"area": code}),
    )
    seen = views.last_seen(rows)
    air = None
    points = views.newest_points(air_rows, schema.TOWNSHIP_AIR)
    if points:
        p = max(points, key=lambda p: p["_time"])
        air = TownshipAir(
            level=int(p.get("level") or 0),
            sensors_agreeing=p.get("sensors_agreeing"),
            max_aqi=p.get("max_aqi"),
            at=format_ns(p["_time"]),
        )
    counts = Counter(d.township for d in registry)
    return TownshipLatest(
        township=info(town, counts),
        air=air,
        devices=[
            TownshipDevice(
                id=d.id,
                kind=d.kind,
                sensor=d.sensor,
                last_seen=format_ns(seen[d.id]) if d.id in seen else None,
                readings=views.readings(rows, d),
            )
            for d in devices
        ],
        open_alerts=[views.alert_ref(a) for a in alerts],
    )
