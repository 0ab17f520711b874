"""A stand-in app with only the live push and the console, until ``api/app.py`` lands.

``python -m api._dev`` serves them on ``CIVIC_API__HOST``:``CIVIC_API__PORT`` with a
``/health`` like the real app's; :class:`ops.pipeline.Pipeline` starts it as its ``api``
process. The integrator replaces this module by ``api.app.create_app`` (its lifespan
starts a :class:`~api.livehub.LiveHub` the same way) and deletes it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from api import console, live
from api.livehub import LiveHub
from civic_iot.logs import setup_logging
from civic_iot.settings import Settings, get_settings


def create_app(settings: Settings, hub: LiveHub | None = None) -> FastAPI:
    """An app serving the live routers; ``hub`` (default: one over ``settings``) is
    started and stopped by the app's lifespan."""
    the_hub = hub or LiveHub(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await the_hub.start()
        app.state.live_hub = the_hub
        try:
            yield
        finally:
            await the_hub.stop()

    app = FastAPI(title="civic-iot live (development)", lifespan=lifespan)
    app.include_router(live.router)
    app.include_router(console.router)

    @app.get("/health", include_in_schema=False)
    def health() -> JSONResponse:
        body = the_hub.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    return app


def main() -> None:
    settings = get_settings()
    setup_logging(settings.log_level)
    logging.getLogger(__name__).info(
        "api (live, development) host=%s port=%d", settings.api.host, settings.api.port
    )
    uvicorn.run(
        create_app(settings),
        host=settings.api.host,
        port=settings.api.port,
        log_level="warning",
        access_log=False,
        # Open streams never end by themselves: without this a stop waits for every
        # browser to leave before the lifespan (and the hub) can shut down.
        timeout_graceful_shutdown=3,
    )


if __name__ == "__main__":
    main()
