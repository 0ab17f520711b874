"""Devices: status (last seen, health, level, open alerts), newest readings, time series,
and the thresholds in force (the last needs a token)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from api import views
from api.catalogue import level_of, quantities_of
from api.deps import PUBLIC, context, principal, public
from api.errors import ApiError, ErrorBody
from api.influx import Row, format_ns
from api.models import (
    DeviceDetail,
    DeviceStatus,
    DeviceThresholds,
    Page,
    Point,
    Reading,
    Series,
)
from api.paging import Limit, Offset, next_url, now_ns, page_size, time_ns, window_s
from api.queries import Aggregate, Where, Window
from civic_iot.auth import Principal
from civic_iot.registry import DEVICE_ID_PATTERN, Device, DeviceKind, Registry

router = APIRouter(
    prefix="/api/v1",
    tags=["devices"],
    responses={
        429: {"model": ErrorBody, "description": "Rate limit without a token spent"},
        503: {"model": ErrorBody, "description": "InfluxDB unavailable"},
    },
)

DeviceId = Annotated[
    str, Path(pattern=DEVICE_ID_PATTERN, description="device id", examples=["air-0001"])
]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such device"}
}


def device_of(registry: Registry, device_id: str) -> Device:
    device = registry.get(device_id)
    if device is None:
        raise ApiError(404, f"no device {device_id!r} in the registry")
    return device


async def statuses(
    request: Request, devices: Sequence[Device], where: Where, *, detail: bool = False
) -> tuple[list[dict[str, object]], list[Row]]:
    """The status fields of each device (``where``: the storage tags selecting them);
    with ``detail``, every field of the level point and the newest readings too (their
    rows, from which the last reading's time is taken as well)."""
    ctx = context(request)
    registry = ctx.registry.get()
    found, alerts = await asyncio.gather(
        ctx.store.status(devices, where, detail=detail), ctx.store.open_alerts(registry)
    )
    seen, levels, issues, rows = found.last_seen, found.levels, found.issues, found.readings
    refs = [views.alert_ref(a) for a in alerts]
    out = [
        views.device_status(
            d,
            registry,
            last_seen_ns=seen.get(d.id),
            issues=issues.get(d.id, []),
            level_point=levels.get(d.id),
            level_at=level_of(d),
            alerts=refs,
        )
        for d in devices
    ]
    return out, rows


@router.get(
    "/devices",
    response_model=Page[DeviceStatus],
    summary="Devices with their status",
    openapi_extra=PUBLIC,
)
async def list_devices(
    request: Request,
    _who: Annotated[Principal | None, Depends(public)],
    kind: Annotated[DeviceKind | None, Query(description="only this kind")] = None,
    township: Annotated[str | None, Query(description="only this township code")] = None,
    sensor: Annotated[str | None, Query(description="only this sensor (river, rain ...)")] = None,
    limit: Limit = None,
    offset: Offset = 0,
) -> Page[DeviceStatus]:
    """Registered devices sorted by id, each with its last reading's time, open health
    issues, the detectors' latest level and the open alerts of its township."""
    registry = context(request).registry.get()
    size = page_size(request, limit)
    if township is not None and registry.township(township) is None:
        raise ApiError(400, f"query parameter 'township': unknown township code {township!r}")
    chosen = sorted(
        (
            d
            for d in registry
            if (kind is None or d.kind == kind)
            and (township is None or d.township == township)
            and (sensor is None or d.sensor == sensor)
        ),
        key=lambda d: d.id,
    )
    page = chosen[offset : offset + size]
    where: Where = {}
    if township is not None:
        where = {"township": township}
    elif len(page) < len(registry):
        where = {"device": [d.id for d in page]}
    items = [DeviceStatus(**s) for s in (await statuses(request, page, where))[0]] if page else []
    return Page[DeviceStatus](
        items=items,
        limit=size,
        offset=offset,
        total=len(chosen),
        next=next_url(request, offset, size, offset + size < len(chosen)),
    )


@router.get(
    "/devices/{device_id}",
    response_model=DeviceDetail,
    responses=_NOT_FOUND,
    summary="One device: status, newest readings, level figures",
    openapi_extra=PUBLIC,
)
async def get_device(
    request: Request,
    _who: Annotated[Principal | None, Depends(public)],
    device_id: DeviceId,
) -> DeviceDetail:
    ctx = context(request)
    device = device_of(ctx.registry.get(), device_id)
    (status,), rows = await statuses(request, [device], {"device": device.id}, detail=True)
    return DeviceDetail(**status, readings=views.readings(rows, device))


@router.get(
    "/devices/{device_id}/readings/latest",
    response_model=list[Reading],
    responses=_NOT_FOUND,
    summary="A device's newest value of each quantity",
    openapi_extra=PUBLIC,
)
async def device_latest(
    request: Request,
    _who: Annotated[Principal | None, Depends(public)],
    device_id: DeviceId,
) -> list[Reading]:
    ctx = context(request)
    registry = ctx.registry.get()
    device = device_of(registry, device_id)

    async def read() -> list[Reading]:
        rows, _ = await ctx.store.readings([device], {"device": device.id})
        return views.readings(rows, device)

    answer: list[Reading] = await ctx.store.recent.get(("latest", id(registry), device.id), read)
    return answer


@router.get(
    "/devices/{device_id}/readings",
    response_model=Series,
    responses=_NOT_FOUND,
    summary="A time series of one quantity, raw or downsampled",
    openapi_extra=PUBLIC,
)
async def device_series(
    request: Request,
    _who: Annotated[Principal | None, Depends(public)],
    device_id: DeviceId,
    quantity: Annotated[str, Query(description="field name, e.g. pm2_5_ugm3")],
    start: Annotated[
        datetime | None, Query(description="RFC 3339 with offset; default stop - 1 h")
    ] = None,
    stop: Annotated[datetime | None, Query(description="RFC 3339 with offset; default now")] = None,
    every: Annotated[
        str | None, Query(description="window length (1m, 15s, 1h, 1d); default: raw points")
    ] = None,
    aggregate: Annotated[
        Aggregate, Query(description="how a window is reduced (with every)")
    ] = "mean",
    limit: Annotated[int | None, Query(ge=1, description="points per page")] = None,
    offset: Offset = 0,
) -> Series:
    """Raw points oldest first, or with ``every`` one point per window (its start time)
    reduced by ``aggregate``; windows without a point are left out."""
    ctx = context(request)
    api = ctx.settings.api
    device = device_of(ctx.registry.get(), device_id)
    known = [q.field for q in quantities_of(device)]
    if quantity not in known:
        msg = (
            f"query parameter 'quantity': {device.id} reports {', '.join(known)} (got {quantity!r})"
        )
        raise ApiError(400, msg)
    for name, value in (("start", start), ("stop", stop)):
        if value is not None and value.tzinfo is None:
            raise ApiError(400, f"query parameter {name!r}: give a UTC offset (Z or +08:00)")
    stop_ns = time_ns(stop, now_ns())
    start_ns = time_ns(start, stop_ns - 3600 * 1_000_000_000)
    if start_ns >= stop_ns:
        raise ApiError(400, "query parameters 'start' and 'stop': start must be before stop")
    window = None
    if every is not None:
        secs = window_s(every)
        n = -(-(stop_ns - start_ns) // (secs * 1_000_000_000))
        if n > api.max_series_points:
            msg = (
                f"query parameter 'every': {n} windows of {every} in the range; at most "
                f"{api.max_series_points}: take a longer window or a shorter range"
            )
            raise ApiError(400, msg)
        window = Window(secs, aggregate)
    size = limit if limit is not None else min(api.max_series_points, 1000)
    if size > api.max_series_points:
        msg = f"query parameter 'limit': at most {api.max_series_points} (got {size})"
        raise ApiError(400, msg)
    rows = await ctx.store.series(
        device, quantity, start_ns=start_ns, stop_ns=stop_ns, window=window,
        limit=size + 1, offset=offset,
    )  # fmt: skip
    q = next(q for q in quantities_of(device) if q.field == quantity)
    return Series(
        device=device.id,
        quantity=quantity,
        unit=q.unit,
        start=format_ns(start_ns),
        stop=format_ns(stop_ns),
        every=every,
        aggregate=aggregate if every else None,
        points=[Point(time=format_ns(r["_time"]), value=r["_value"]) for r in rows[:size]],
        limit=size,
        offset=offset,
        next=next_url(request, offset, size, len(rows) > size),
    )


@router.get(
    "/devices/{device_id}/thresholds",
    response_model=DeviceThresholds,
    responses={
        **_NOT_FOUND,
        401: {"model": ErrorBody, "description": "No valid token"},
        403: {"model": ErrorBody, "description": "Role below agency"},
    },
    summary="The thresholds in force for a device (token: agency)",
)
async def device_thresholds(
    request: Request,
    _who: Annotated[Principal, Depends(principal("agency"))],
    device_id: DeviceId,
) -> DeviceThresholds:
    """Every detector threshold that applies to the device: the defaults, then its
    county's, township's and its own overrides (``deploy/thresholds.yaml``)."""
    ctx = context(request)
    device = device_of(ctx.registry.get(), device_id)
    in_force = ctx.thresholds().for_device(device.id, device.township)
    return DeviceThresholds(
        device=device.id, township=device.township, thresholds=in_force.model_dump(mode="json")
    )
