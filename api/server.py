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
    """Serve until SIGINT/SIGTERM (uvicorn stops accepting, gives what runs, open streams
    included, 3 s, then the lifespan stops the live hub and closes the InfluxDB client)."""
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
        # Live streams never end by themselves: without this a stop would wait for every
        # client to leave before the lifespan could stop the live hub.
        timeout_graceful_shutdown=3,
    )
    uvicorn.Server(config).run()
