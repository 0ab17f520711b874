"""Live push over server-sent events: alerts, readings, earthquake warnings, per place.

Every stream is ``text/event-stream``. Each event has an ``id`` (``{epoch}-{seq}``, see
:mod:`api.livehub`), an ``event`` name and one line of JSON ``data``. A stream starts with
``retry: 2000`` and either a snapshot (the state now) or, when the client sends
``Last-Event-ID`` from the same server and nothing after it was dropped, the events it
missed; then live events, and a ``: keep-alive`` comment after ``live_heartbeat_s`` of
silence. A client that falls ``live_client_buffer`` events behind is sent ``reset`` and
disconnected; it reconnects and gets a snapshot.

Public (:func:`api.deps.public`: no token needed, a token sent must be valid; without
one, per client IP at most ``live_streams_per_ip`` streams open and
``live_connects_per_minute`` new ones a minute, else 429 with ``Retry-After``):

============================ ====================================================================
``GET /live/alerts``          ``snapshot`` (open alerts), ``alert`` (each Alert / Update / Cancel
                              as issued, JSON form ``civic-iot.alert/1``), ``ack``; filters
                              ``hazard``, ``area``, ``township``
``GET /live/quakes``          ``snapshot``, ``quake``: epicentre, magnitude, 0.1 degree cells,
                              per township the expected level and S-wave arrival
``GET /live/readings``        ``ready``, ``reading`` (the validated reading) of one ``device`` or
                              every device of a ``township``
``GET /live/place``           the phone warning for ``lat``/``lon`` or a ``township``:
                              ``warning`` (expected CWA level, S-wave arrival, seconds left),
                              ``countdown`` every second until the S wave, ``end``; always a
                              fresh snapshot on connect (the warning is a state)
``GET /live/console``         the console's public layers: ``snapshot``, ``devices``, ``alert``,
                              ``ack``, ``quake``
============================ ====================================================================

Operators (:func:`api.deps.principal`, role ``agency`` or higher): ``GET /live/ops``: ``snapshot``,
``health`` (sensor-health issues per device), ``stats`` (throughput, consumer lag,
alert service role, clients).

Browsers' ``EventSource`` cannot send an ``Authorization`` header; the console reads the
streams with ``fetch`` instead (``api/console/console.js``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from api.deps import PUBLIC, client_ip, principal, public
from api.errors import ApiError, ErrorBody
from api.livehub import ClientTooSlowError, LiveEvent, LiveHub, Subscription
from api.livehub import sse_frame as frame
from civic_iot.auth import Principal
from civic_iot.warning import PlaceWarning, Quake, warn_point, warn_township

logger = logging.getLogger(__name__)

__all__ = ["HubDep", "get_hub", "router"]

router = APIRouter()

#: Milliseconds a browser waits before reconnecting (the SSE ``retry`` field).
RETRY_MS = 2000
_SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "a server-sent event stream",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    429: {"model": ErrorBody, "description": "too many streams from this client"},
}
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def get_hub(request: Request) -> LiveHub:
    """The app's live hub (``app.state.live_hub``, started by the lifespan)."""
    hub = getattr(request.app.state, "live_hub", None)
    if not isinstance(hub, LiveHub):
        raise ApiError(503, "live push is not running")
    return hub


HubDep = Annotated[LiveHub, Depends(get_hub)]
#: Public streams: anyone; a token sent must be valid (401 otherwise, never silently
#: anonymous), and then the stream does not count against the client's per-IP limits.
PublicDep = Annotated[Principal | None, Depends(public)]


# --------------------------------------------------------------------------- SSE plumbing


def _json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _too_many(hub: LiveHub, ip: str, reason: str) -> ApiError:
    return ApiError(429, reason, {"Retry-After": str(hub.limiter.retry_after_s(ip))})


class _Stream:
    """One client's stream: its subscription, its slot, released once."""

    def __init__(self, hub: LiveHub, ip: str, sub: Subscription) -> None:
        self.hub, self.ip, self.sub = hub, ip, sub
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.hub.unsubscribe(self.sub)
            self.hub.limiter.release(self.ip)


def _open(
    request: Request,
    hub: LiveHub,
    streams: Iterable[str],
    *,
    keys: Iterable[str] | None = None,
    last_event_id: str | None = None,
    public: bool = True,
) -> tuple[_Stream, list[LiveEvent] | None]:
    """A subscription and its slot; 429 (:class:`ApiError`) when the client may not
    open another stream."""
    ip = client_ip(request)
    refused = hub.limiter.acquire(ip, public=public)
    if refused is not None:
        logger.info("live stream refused ip=%s reason=%s", ip, refused)
        raise _too_many(hub, ip, refused)
    sub, replay = hub.subscribe(streams, keys, last_event_id)
    return _Stream(hub, ip, sub), replay


def _respond(stream: _Stream, body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers=_SSE_HEADERS,
        background=BackgroundTask(stream.close),
    )


async def _pump(stream: _Stream, first: list[str]) -> AsyncIterator[str]:
    """``first`` (snapshot or replay, built when the client subscribed), then live
    events and heartbeats until the client leaves or falls too far behind."""
    hub = stream.hub
    try:
        yield f"retry: {RETRY_MS}\n\n"
        for text in first:
            yield text
        while True:
            ev = await stream.sub.get(hub.api.live_heartbeat_s)
            if ev is None:
                yield ": keep-alive\n\n"
            else:
                yield ev.frame
    except ClientTooSlowError:
        yield frame("reset", _json({"reason": "client too slow or server stopping"}))
    finally:
        stream.close()


def _first(hub: LiveHub, replay: list[LiveEvent] | None, snapshot: Callable[[], Any]) -> list[str]:
    """The frames a client gets before live events: what it missed, or a snapshot taken
    now (synchronously, right after subscribing: nothing can fall in between)."""
    if replay is not None:
        return [ev.frame for ev in replay]
    return [frame("snapshot", _json(snapshot()), hub.event_id(hub.seq))]


LastEventId = Annotated[str | None, Header(alias="Last-Event-ID")]


# --------------------------------------------------------------------------- public feeds


@router.get(
    "/live/alerts",
    response_class=StreamingResponse,
    responses=_SSE_RESPONSE,
    openapi_extra=PUBLIC,
    summary="Alerts as the alert service issues them (SSE)",
    tags=["live"],
)
def live_alerts(
    request: Request,
    hub: HubDep,
    who: PublicDep,
    hazard: Annotated[str | None, Query(description="only this hazard, e.g. flood")] = None,
    area: Annotated[str | None, Query(description="only this area code")] = None,
    township: Annotated[str | None, Query(description="only alerts naming this township")] = None,
    last_event_id: LastEventId = None,
) -> Any:
    keys = [f"hazard:{hazard}"] if hazard else []
    keys += [f"area:{area}"] if area else []
    keys += [f"township:{township}"] if township else []
    if len(keys) > 1:
        raise ApiError(400, "give at most one of hazard, area, township")
    stream, replay = _open(
        request, hub, ["alerts"], keys=keys or None, last_event_id=last_event_id, public=who is None
    )

    def snapshot() -> Any:
        return [a for a in hub.alerts_view() if not keys or _alert_matches(a, keys[0])]

    return _respond(stream, _pump(stream, _first(hub, replay, snapshot)))


def _alert_matches(msg: dict[str, Any], key: str) -> bool:
    kind, _, value = key.partition(":")
    area = msg.get("area") or {}
    if kind == "hazard":
        return bool(msg.get("hazard") == value)
    if kind == "area":
        return bool(area.get("code") == value)
    return value in (area.get("geocodes") or ())


@router.get(
    "/live/quakes",
    response_class=StreamingResponse,
    responses=_SSE_RESPONSE,
    openapi_extra=PUBLIC,
    summary="Earthquake warnings: epicentre, intensity grid, S-wave arrival per township (SSE)",
    tags=["live"],
)
def live_quakes(
    request: Request, hub: HubDep, who: PublicDep, last_event_id: LastEventId = None
) -> Any:
    stream, replay = _open(
        request, hub, ["quakes"], last_event_id=last_event_id, public=who is None
    )
    return _respond(stream, _pump(stream, _first(hub, replay, hub.quakes_view)))


@router.get(
    "/live/readings",
    response_class=StreamingResponse,
    responses=_SSE_RESPONSE,
    openapi_extra=PUBLIC,
    summary="Readings of one device or of every device of a township (SSE)",
    tags=["live"],
)
def live_readings(
    request: Request,
    hub: HubDep,
    who: PublicDep,
    device: Annotated[str | None, Query(description="a device id, e.g. air-0001")] = None,
    township: Annotated[str | None, Query(description="a township code")] = None,
    last_event_id: LastEventId = None,
) -> Any:
    if (device is None) == (township is None):
        raise ApiError(400, "give exactly one of device, township")
    if device is not None and device not in hub.devices:
        raise ApiError(404, f"no device {device!r} in the registry")
    if township is not None and hub.registry.township(township) is None:
        raise ApiError(404, f"no township {township!r} in the registry")
    key = f"device:{device}" if device is not None else f"township:{township}"
    stream, replay = _open(
        request, hub, ["readings"], keys=[key], last_event_id=last_event_id, public=who is None
    )
    ready = {"device": device, "township": township}
    first = _first(hub, replay, lambda: ready)
    if replay is None:  # nothing to restore for readings: say the stream is ready
        first = [frame("ready", _json(ready), hub.event_id(hub.seq))]
    return _respond(stream, _pump(stream, first))


@router.get(
    "/live/console",
    response_class=StreamingResponse,
    responses=_SSE_RESPONSE,
    openapi_extra=PUBLIC,
    summary="The console's public layers: devices, alerts, earthquakes (SSE)",
    tags=["live"],
)
def live_console(
    request: Request, hub: HubDep, who: PublicDep, last_event_id: LastEventId = None
) -> Any:
    stream, replay = _open(
        request,
        hub,
        ["alerts", "quakes", "devices"],
        last_event_id=last_event_id,
        public=who is None,
    )

    def snapshot() -> Any:
        return {
            "epoch": hub.epoch,
            "now_s": hub.clock(),
            "townships": hub.townships_view(),
            "devices": [d.public() for d in hub.devices.values()],
            "alerts": hub.alerts_view(),
            "quakes": hub.quakes_view(),
        }

    return _respond(stream, _pump(stream, _first(hub, replay, snapshot)))


@router.get(
    "/live/ops",
    response_class=StreamingResponse,
    responses={
        **_SSE_RESPONSE,
        401: {"model": ErrorBody, "description": "no valid token"},
        403: {"model": ErrorBody, "description": "the token's role is below agency"},
    },
    summary="Operators: sensor health and pipeline throughput and lag (SSE)",
    tags=["live"],
)
def live_ops(
    request: Request,
    hub: HubDep,
    _who: Annotated[Principal, Depends(principal("agency"))],
    last_event_id: LastEventId = None,
) -> Any:
    stream, replay = _open(
        request, hub, ["health", "stats"], last_event_id=last_event_id, public=False
    )

    def snapshot() -> Any:
        return {
            "health": [d.health_view() for d in hub.devices.values() if d.health],
            "stats": hub.stats_view(),
        }

    return _respond(stream, _pump(stream, _first(hub, replay, snapshot)))


# --------------------------------------------------------------------------- per place


@router.get(
    "/live/place",
    response_class=StreamingResponse,
    responses=_SSE_RESPONSE,
    openapi_extra=PUBLIC,
    summary="The phone warning for a place: expected intensity and seconds to the S wave (SSE)",
    tags=["live"],
)
def live_place(
    request: Request,
    hub: HubDep,
    who: PublicDep,
    lat: Annotated[float | None, Query(ge=-90, le=90, description="degrees")] = None,
    lon: Annotated[float | None, Query(ge=-180, le=180, description="degrees")] = None,
    township: Annotated[str | None, Query(description="a township code")] = None,
) -> Any:
    point = lat is not None and lon is not None
    if point == (township is not None) or (lat is None) != (lon is None):
        raise ApiError(400, "give either lat and lon, or township")
    if township is not None:
        town = hub.registry.township(township)
        if town is None:
            raise ApiError(404, f"no township {township!r} in the registry")
        place: dict[str, Any] = {"township": township, "name": town.name}

        def warn(q: Quake) -> PlaceWarning:
            return warn_township(q, town.code, town.lat, town.lon)

    else:
        at = (float(lat or 0.0), float(lon or 0.0))
        place = {"lat": at[0], "lon": at[1]}

        def warn(q: Quake) -> PlaceWarning:
            return warn_point(q, *at)

    stream, _ = _open(request, hub, ["quakes"], public=who is None)
    warnings = {q.alert_id: warn(q) for q in hub.quakes.values()}
    return _respond(stream, _place_pump(stream, place, warnings, warn))


async def _place_pump(
    stream: _Stream,
    place: dict[str, Any],
    warnings: dict[str, PlaceWarning],
    warn: Callable[[Quake], PlaceWarning],
) -> AsyncIterator[str]:
    """Warnings for one place, then a countdown every second until each S wave."""
    hub = stream.hub
    counting: set[str] = set()

    def emit(w: PlaceWarning) -> str:
        body = {"place": place, **w.to_json(hub.clock())}
        if not body["arrived"]:
            counting.add(w.quake.alert_id)
        return frame("warning", _json(body), hub.event_id(hub.seq))

    try:
        yield f"retry: {RETRY_MS}\n\n"
        yield frame("ready", _json({"place": place, "quakes": len(warnings)}))
        for w in warnings.values():
            yield emit(w)
        last_beat = time.monotonic()
        while True:
            wait = 1.0 if counting else hub.api.live_heartbeat_s
            ev = await stream.sub.get(wait)
            if ev is not None:
                alert_id = str(json.loads(ev.data).get("alert_id"))
                quake = hub.quakes.get(alert_id)
                if quake is None:  # cancelled: the earthquake is over
                    if warnings.pop(alert_id, None) is not None:
                        counting.discard(alert_id)
                        yield frame("end", _json({"alert_id": alert_id, "place": place}))
                    continue
                warnings[alert_id] = warn(quake)
                yield emit(warnings[alert_id])
                continue
            now = hub.clock()
            for alert_id in sorted(counting):
                w = warnings[alert_id]
                left = w.seconds_left(now)
                body = {
                    "alert_id": alert_id,
                    "intensity": w.intensity,
                    "below": w.to_json(now)["below"],
                    "seconds_left": round(left, 1),
                    "arrived": left <= 0,
                }
                yield frame("countdown", _json(body))
                if left <= 0:
                    counting.discard(alert_id)
            if time.monotonic() - last_beat >= hub.api.live_heartbeat_s:
                last_beat = time.monotonic()
                yield ": keep-alive\n\n"
    except ClientTooSlowError:
        yield frame("reset", _json({"reason": "client too slow or server stopping"}))
    finally:
        stream.close()
