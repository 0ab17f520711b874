"""The API application: :func:`create_app` builds it, ``civic-iot api run`` serves it.

FastAPI generates the OpenAPI 3.1 document from the code (``GET /openapi.json``); the
interactive pages FastAPI offers (Swagger UI, ReDoc) are off, because they load their
scripts from a CDN. Every error answers the JSON of :class:`api.errors.ErrorBody`; bad
input is a 400 (FastAPI's 422 for a parameter that fails validation is answered as a 400
naming the parameter, and documented so).

The lifespan opens what requests share (:class:`api.context.ApiContext`: the token
store, the rate limiter, the InfluxDB client, the registry and thresholds files) and
starts the live hub (:class:`api.livehub.LiveHub`, ``app.state.live_hub``: the push
streams and the console), returning once the hub has rebuilt the open alerts; at
shutdown it stops the hub (every open stream ends) and closes the client. The API reads
InfluxDB with its own read-only token (``influx_token(settings, "api")``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import console, live
from api.context import ApiContext
from api.errors import ApiError, ErrorBody, error_code
from api.influx import QueryFailed, StorageUnavailable
from api.livehub import LiveHub
from api.routes import alerts, devices, health, operations, quakes, townships
from api.sensorthings import routes as sensorthings
from civic_iot.settings import Settings, influx_token

logger = logging.getLogger(__name__)

__all__ = ["API_VERSION", "create_app"]

API_VERSION = "1.0.0"

DESCRIPTION = """\
Read access to civic-iot: devices and their status, readings (latest and as time series),
alerts (open and history), earthquake events with their intensity grid, and the same
sensor data as OGC SensorThings API v1.1 (read part) under `/sta/v1.1/` and `/sta/v1.0/`;
live push as server-sent events (`/live/...`: alerts, earthquakes, readings, the warning
for a place) and the operations console (`/console/`).

**Access.** Public data (devices, readings, alerts, earthquakes, SensorThings) needs no
token; without one, each client IP may send bursts of requests refilled at a steady rate
(429 with `Retry-After` when spent). Everything else needs `Authorization: Bearer <token>`
with the role the operation names (`agency` < `operator` < `admin`).

**Errors.** Every error is JSON `{"status", "error", "message"}`; the message names the
parameter or value that was wrong and what was expected.
"""


def _json_error(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(status=status, error=error_code(status), message=message)
    return JSONResponse(body.model_dump(), status_code=status, headers=dict(headers or {}))


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        where = f"{loc[0]} parameter {'.'.join(loc[1:])!r}" if len(loc) > 1 else ".".join(loc)
        got = err.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
        parts.append(f"{where}: {err.get('msg', 'invalid')}{shown}")
    return "; ".join(parts) or "invalid request"


def _install_errors(app: FastAPI) -> None:
    async def api_error(_r: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return _json_error(exc.status, exc.message, exc.headers)

    async def invalid(_r: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _json_error(400, _validation_message(exc))

    async def http_error(_r: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "no such path; the API is described at /openapi.json"
        return _json_error(exc.status_code, message, exc.headers)

    async def unavailable(_r: Request, exc: Exception) -> JSONResponse:
        logger.warning("storage unavailable error=%s", exc)
        return _json_error(503, f"storage unavailable: {exc}", {"Retry-After": "5"})

    async def failed(_r: Request, exc: Exception) -> JSONResponse:
        return _json_error(500, f"internal error: a storage query failed ({exc})")

    async def crashed(_r: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error error=%r", exc)
        return _json_error(500, "internal error; the service log has the details")

    app.add_exception_handler(Exception, crashed)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(StorageUnavailable, unavailable)
    app.add_exception_handler(QueryFailed, failed)


_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


def _errors_documented(doc: dict[str, Any]) -> dict[str, Any]:
    """The generated document with FastAPI's 422 replaced by the 400 this API answers,
    and the error schema every error response uses."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorBody"] = ErrorBody.model_json_schema()
    for ops in doc.get("paths", {}).values():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            if responses.pop("422", None) is not None or op.get("parameters"):
                responses.setdefault(
                    "400",
                    {
                        "description": "Bad input: the message names the parameter",
                        "content": {"application/json": {"schema": _ERROR_REF}},
                    },
                )
    used = str(doc["paths"])
    for name in ("HTTPValidationError", "ValidationError"):
        if name in schemas and f"/{name}'" not in used:
            del schemas[name]
    return doc


def create_app(
    settings: Settings, *, ctx: ApiContext | None = None, hub: LiveHub | None = None
) -> FastAPI:
    """The application. ``ctx`` / ``hub`` when the caller built them and owns them (the
    lifespan neither closes that context nor starts or stops that hub); otherwise the
    lifespan builds both from ``settings`` (the InfluxDB token is the API's own)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        shared = ctx if ctx is not None else ApiContext.of(settings, influx_token(settings, "api"))
        live = hub if hub is not None else LiveHub(settings, flux=shared.flux)
        app.state.ctx = shared
        app.state.live_hub = live
        if hub is None:
            await live.start()
        logger.info(
            "api ready host=%s port=%s influxdb=%s", settings.api.host, settings.api.port,
            settings.influx.url,
        )  # fmt: skip
        try:
            yield
        finally:
            if hub is None:
                await live.stop()
            if ctx is None:
                await shared.flux.close()

    app = FastAPI(
        title="civic-iot API",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    if ctx is not None:
        app.state.ctx = ctx
    if hub is not None:
        app.state.live_hub = hub
    _install_errors(app)
    routers: Sequence[Any] = (
        health.router,
        devices.router,
        townships.router,
        alerts.router,
        quakes.router,
        operations.router,
        sensorthings.router,
        live.router,
        console.router,
    )
    for router in routers:
        app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = _errors_documented(jsonable_encoder(doc))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
