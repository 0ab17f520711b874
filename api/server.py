"""Serve the API with uvicorn (``civic-iot api run``): one process, asyncio, loopback by
default (``CIVIC_API__HOST``/``CIVIC_API__PORT``)."""

from __future__ import annotations

import logging

import uvicorn

from api.app import create_app
from civic_iot.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["run"]


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn stops accepting, finishes what runs, then the
    lifespan closes the InfluxDB client)."""
    api = settings.api
    proxies = list(api.trusted_proxies)
    config = uvicorn.Config(
        create_app(settings),
        host=api.host,
        port=api.port,
        # X-Forwarded-For names the client only when sent by a trusted proxy; otherwise
        # the socket's peer is the client the rate limit counts.
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
        server_header=False,
        log_config=None,  # the process's logging (civic_iot.logs) applies
        access_log=False,
    )
    uvicorn.Server(config).run()
