"""A tiny /health and /metrics endpoint shared by the processes (aiohttp), and the one
question every process asks Kafka for its ``/health``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


async def kafka_answers(client: Any, timeout_s: float) -> str:
    """Whether Kafka answers a metadata request through ``client`` (an ``AIOKafkaClient``:
    a producer's or consumer's ``client``) within ``timeout_s``: "" if it does, else why
    not. The request names only the topics the client already uses."""
    try:
        async with asyncio.timeout(timeout_s):
            ok = await client.force_metadata_update()
    except TimeoutError:
        return f"no answer to a metadata request within {timeout_s:g} s"
    except Exception as exc:  # noqa: BLE001 - a closed client, a Kafka error: all say no
        return repr(exc)
    return "" if ok else "no broker answered a metadata request"


async def serve_health(
    host: str, port: int, status: Callable[[], Mapping[str, object]]
) -> web.AppRunner:
    """Serve ``GET /health`` (JSON from ``status``) and ``GET /metrics`` (Prometheus).

    ``/health`` answers 503 when the body says ``"healthy": false`` (its other fields say
    why), 200 otherwise.
    """

    async def health(_request: web.Request) -> web.Response:
        body = dict(status())
        return web.Response(
            text=json.dumps(body, default=str),
            content_type="application/json",
            status=503 if body.get("healthy") is False else 200,
        )

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
