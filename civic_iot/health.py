"""A tiny /health and /metrics endpoint shared by the processes (aiohttp), and the one
question every process asks Kafka for its ``/health``."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

logger = logging.getLogger(__name__)

#: How often a process asks Kafka whether it answers (for ``/health``), and how long it
#: waits for the answer, s: a healthy Kafka answers in milliseconds, a loaded machine's
#: in well under this.
KAFKA_ASK_INTERVAL_S = 5.0


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


class KafkaWatch:
    """Since when Kafka has not answered :func:`kafka_answers`, and why, for a process's
    ``/health``; the change is logged once each way (not per question)."""

    def __init__(self, service: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self._clock = clock
        #: Monotonic s of the first unanswered question of this outage; None: it answers.
        self.failing_since: float | None = None
        self.error = ""

    def record(self, error: str) -> None:
        """The answer to one question: "" (Kafka answered) or why not."""
        if not error:
            if self.failing_since is not None:
                logger.info(
                    "%s kafka answers again after_s=%.1f",
                    self.service,
                    self._clock() - self.failing_since,
                )
            self.failing_since = None
        elif self.failing_since is None:
            self.failing_since = self._clock()
            logger.warning("%s kafka unavailable error=%s", self.service, error)
        self.error = error

    async def ask(self, client: Any, timeout_s: float) -> None:
        """Ask Kafka once through ``client`` (see :func:`kafka_answers`)."""
        self.record(await kafka_answers(client, timeout_s))

    def reason(self) -> str:
        """Why Kafka counts as unavailable ("" while it answers)."""
        if self.failing_since is None:
            return ""
        return f"kafka unavailable for {self._clock() - self.failing_since:.0f} s ({self.error})"


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
