"""Operations figures for operators (token needed): the workers' statistics and the
readings refused at the door."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from api.deps import context, principal
from api.errors import ApiError, ErrorBody
from api.influx import format_ns
from api.models import DeadLetterCount, DeadLetters, PipelineInstance
from api.paging import now_ns, time_ns
from civic_iot.auth import Principal

router = APIRouter(
    prefix="/api/v1",
    tags=["operations"],
    responses={
        401: {"model": ErrorBody, "description": "No valid token"},
        403: {"model": ErrorBody, "description": "Role below operator"},
        503: {"model": ErrorBody, "description": "InfluxDB unavailable"},
    },
)

_HOUR_NS = 3600 * 1_000_000_000


@router.get(
    "/pipeline",
    response_model=list[PipelineInstance],
    summary="Each worker's newest statistics (token: operator)",
)
async def pipeline(
    request: Request, _who: Annotated[Principal, Depends(principal("operator"))]
) -> list[PipelineInstance]:
    """The ``pipeline`` measurement (written every few seconds by each worker) of the last
    hour: counters since start, Kafka lag, latency percentiles, readings in per second."""
    start = now_ns() - _HOUR_NS
    newest, rates = await context(request).store.pipeline(start)
    rate = {(r.get("process"), r.get("instance")): r["_value"] for r in rates}
    out = [
        PipelineInstance(
            process=p.get("process", ""),
            instance=p.get("instance", ""),
            at=format_ns(p["_time"]),
            figures={
                k: v
                for k, v in p.items()
                if not k.startswith("_") and k not in ("process", "instance") and v is not None
            },
            readings_in_per_s=rate.get((p.get("process"), p.get("instance"))),
        )
        for p in newest
    ]
    return sorted(out, key=lambda p: (p.process, p.instance))


@router.get(
    "/deadletters",
    response_model=DeadLetters,
    summary="Readings refused at the door, counted by reason and kind (token: operator)",
)
async def deadletters(
    request: Request,
    _who: Annotated[Principal, Depends(principal("operator"))],
    since: Annotated[datetime | None, Query(description="RFC 3339; default 1 hour ago")] = None,
) -> DeadLetters:
    if since is not None and since.tzinfo is None:
        raise ApiError(400, "query parameter 'since': give a UTC offset (Z or +08:00)")
    start = time_ns(since, now_ns() - _HOUR_NS)
    rows = await context(request).store.deadletters(start)
    counts = [
        DeadLetterCount(reason=r.get("reason", ""), kind=r.get("kind", ""), count=int(r["_value"]))
        for r in rows
        if r.get("_value") is not None
    ]
    counts.sort(key=lambda c: (-c.count, c.reason, c.kind))
    return DeadLetters(since=format_ns(start), counts=counts)
