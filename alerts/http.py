"""The alert service's HTTP endpoint (aiohttp), and the client the CLI uses to acknowledge.

- ``GET /health``: 200 when the instance is active or standby (or taking over) and
  connected to the broker, else 503; ``role`` says which (``joining``, ``standby``,
  ``taking_over``, ``active``).
- ``GET /alerts``: the open alerts as JSON (times in CAP format, the configured time zone).
  Only the active instance holds the lifecycle state: elsewhere 503, naming the role.
- ``POST /alerts/{alert_id}/ack`` with JSON ``{"by": "...", "note": "..."}``: records an
  operator's acknowledgement (``alert_id`` may also be the ``hazard:area`` key). 200 with
  the acknowledgement, 404 for an unknown alert, 400 for a bad body, 503 with the role on
  an instance that is not active.
- ``GET /metrics``: Prometheus text (``civic_alerts_role`` says the role).

A standby does not forward an acknowledgement to the active instance: the election does
not tell it where that instance listens (``http_host`` is loopback by default), and an
answer that names the role lets the operator, or a proxy that routes on ``/health``'s
``role``, go to the right instance instead of hiding the misrouting.

The endpoint has no authentication: it binds to ``AlertSettings.http_host`` (loopback by
default); put it behind an authenticating proxy before exposing it.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from alerts.cap import DEFAULT_CAP_CONFIG, CapConfig, cap_time
from alerts.election import NotActiveError, Role
from alerts.lifecycle import AckRecord, AlertRecord, UnknownAlertError

logger = logging.getLogger(__name__)

__all__ = [
    "AckError",
    "AlertsBackend",
    "HttpServer",
    "ack_json",
    "ack_via_http",
    "build_app",
    "open_alert_json",
]

MAX_BY_LEN = 200
MAX_NOTE_LEN = 2000


class AlertsBackend(Protocol):
    """What the endpoint needs from the service (:class:`alerts.service.AlertService`)."""

    @property
    def role(self) -> Role: ...

    @property
    def cap_config(self) -> CapConfig: ...

    def health(self) -> dict[str, Any]: ...

    def open_alerts(self) -> list[AlertRecord]: ...

    async def acknowledge(self, key_or_alert_id: str, by: str, note: str = "") -> AckRecord: ...

    @property
    def metrics(self) -> _Metrics: ...


class _Metrics(Protocol):
    def render(self) -> tuple[bytes, str]: ...


class AckError(RuntimeError):
    """The service refused or could not take an acknowledgement."""


# --------------------------------------------------------------------------- views (pure)


def ack_json(ack: AckRecord, tz: str = DEFAULT_CAP_CONFIG.timezone) -> dict[str, Any]:
    return {
        "alert_id": ack.alert_id,
        "key": ack.key,
        "by": ack.by,
        "at": cap_time(ack.at, tz),
        "note": ack.note,
    }


def open_alert_json(rec: AlertRecord, tz: str = DEFAULT_CAP_CONFIG.timezone) -> dict[str, Any]:
    """One open alert for ``GET /alerts``: what was announced, and what is pending."""
    a = rec.announced
    return {
        "key": rec.key,
        "alert_id": rec.alert_id,
        "hazard": a.hazard,
        "area_code": a.area_code,
        "area_desc": a.area_desc,
        "level": a.level,
        "severity": a.severity,
        "peak_severity": rec.peak_severity,
        "headline": a.headline,
        "sequence": rec.sequence,
        "opened": cap_time(rec.references[0].sent, tz),
        "last_identifier": rec.references[-1].identifier,
        "last_sent": cap_time(rec.references[-1].sent, tz),
        "latest_level": rec.latest.level,
        "latest_value": rec.latest.value,
        "metric": rec.latest.metric,
        "clearing_since": None if rec.zero_since is None else cap_time(rec.zero_since, tz),
        "acknowledgements": [ack_json(x, tz) for x in rec.acks],
    }


# --------------------------------------------------------------------------- server


def build_app(backend: AlertsBackend) -> web.Application:
    """The aiohttp application over ``backend``."""
    tz = backend.cap_config.timezone

    async def health(_req: web.Request) -> web.Response:
        body = backend.health()
        ok = body.get("status") == "ok"
        return web.json_response(body, status=200 if ok else 503)

    async def alerts(_req: web.Request) -> web.Response:
        if backend.role != "active":
            return _not_active(NotActiveError(backend.role, "ask the active instance"))
        return web.json_response([open_alert_json(r, tz) for r in backend.open_alerts()])

    async def ack(req: web.Request) -> web.Response:
        alert_id = req.match_info["alert_id"]
        try:
            data = await req.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, 'body must be JSON: {"by": "operator name", "note": "..."}')
        if not isinstance(data, dict):
            return _error(400, "body must be a JSON object with 'by' and optional 'note'")
        by, note = data.get("by"), data.get("note", "")
        if not isinstance(by, str) or not by.strip() or len(by) > MAX_BY_LEN:
            return _error(400, f"'by' must be a non-empty string of at most {MAX_BY_LEN} chars")
        if not isinstance(note, str) or len(note) > MAX_NOTE_LEN:
            return _error(400, f"'note' must be a string of at most {MAX_NOTE_LEN} chars")
        try:
            record = await backend.acknowledge(alert_id, by.strip(), note)
        except UnknownAlertError as exc:
            return _error(404, str(exc))
        except NotActiveError as exc:
            return _not_active(exc)
        return web.json_response(ack_json(record, tz))

    async def metrics(_req: web.Request) -> web.Response:
        body, content_type = backend.metrics.render()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/alerts", alerts)
    app.router.add_post("/alerts/{alert_id}/ack", ack)
    app.router.add_get("/metrics", metrics)
    return app


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _not_active(exc: NotActiveError) -> web.Response:
    """503: this instance is not the active one (try another; taking over: retry soon)."""
    resp = web.json_response({"error": str(exc), "role": exc.role}, status=503)
    if exc.role in ("joining", "taking_over"):
        resp.headers["Retry-After"] = "2"
    return resp


class HttpServer:
    """Runs :func:`build_app` on ``host:port`` (port 0: an ephemeral port, see ``port``)."""

    def __init__(self, backend: AlertsBackend, *, host: str, port: int) -> None:
        self._runner = web.AppRunner(build_app(backend), access_log=None, shutdown_timeout=5.0)
        self._host, self._port = host, port
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        # With port 0 the system picked a port: report the one actually bound.
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        logger.info("alerts http listening host=%s port=%d", self._host, self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()


# --------------------------------------------------------------------------- client


async def ack_via_http(
    base_url: str, alert_id: str, by: str, note: str = "", *, timeout_s: float = 10.0
) -> dict[str, Any]:
    """POST an acknowledgement to a running service; returns the recorded acknowledgement.

    Raises:
        AckError: the service answered with an error, or could not be reached.
    """
    url = f"{base_url.rstrip('/')}/alerts/{alert_id}/ack"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.post(url, json={"by": by, "note": note}) as resp,
        ):
            body: Any = await resp.json(content_type=None)
            if resp.status != 200:
                detail = body.get("error") if isinstance(body, dict) else body
                msg = f"acknowledging {alert_id} at {url}: HTTP {resp.status}: {detail}"
                raise AckError(msg)
    except (aiohttp.ClientError, TimeoutError) as exc:
        msg = f"alert service not reachable at {url}: {exc or type(exc).__name__}"
        raise AckError(msg) from exc
    if not isinstance(body, dict):
        msg = f"unexpected answer from {url}: {body!r}"
        raise AckError(msg)
    return body
