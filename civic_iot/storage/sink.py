"""Where the processors' output goes: InfluxDB points and Kafka messages.

Both are declared as a :class:`typing.Protocol` with one shape (``add``, ``flush``,
``close``) beside their implementations, so agents depend on the shape and unit tests
pass in-memory recorders.

:class:`InfluxSink` writes with influxdb-client's *synchronous* write API in a thread
(one HTTP request per chunk, awaited), never the batching ``WriteApi``: that one can drop
points on close (influxdb-client issue #504) and reports failures out of band, and the
worker commits Kafka offsets only after :meth:`InfluxSink.flush` returned. Vendor errors
become the project's own: :class:`StorageUnavailable` (retry later: server down, timeout,
5xx, 429) and :class:`StorageRejected` (InfluxDB refused the points: retrying the same
bytes cannot help).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from civic_iot.settings import Settings, influx_token
from civic_iot.storage.points import Point

logger = logging.getLogger(__name__)

__all__ = [
    "InfluxSink",
    "PointSink",
    "Publisher",
    "StorageRejected",
    "StorageUnavailable",
]


class StorageUnavailable(Exception):  # noqa: N818 - the project's name for it
    """InfluxDB could not be reached or did not accept the write in time; retry later.
    The points stay in the sink and the next :meth:`PointSink.flush` sends them again."""


class StorageRejected(Exception):  # noqa: N818
    """InfluxDB refused points (HTTP 4xx other than 408/429): a schema conflict or a bug.
    Those points were dropped from the sink; the message holds InfluxDB's reason."""


class PointSink(Protocol):
    """Points in, stored on :meth:`flush`."""

    def add(self, points: Iterable[Point]) -> None:
        """Buffer points (no I/O)."""

    async def flush(self) -> None:
        """Return once every buffered point is stored; raise :class:`StorageUnavailable`
        after retries (the points are kept) or :class:`StorageRejected`."""

    async def close(self) -> None:
        """Release connections; does not flush."""


class Publisher(Protocol):
    """Kafka messages out: sent on :meth:`add` (the alert path does not wait for a
    batch), delivery confirmed by :meth:`flush`."""

    async def add(self, topic: str, key: str, value: bytes) -> None:
        """Hand one message to the producer now."""

    async def flush(self) -> None:
        """Return once every message handed over is acknowledged by the broker."""

    async def close(self) -> None:
        """Release resources."""


def _transient(exc: BaseException) -> bool:
    status = getattr(exc, "status", None)
    if isinstance(exc, ApiException | InfluxDBError) and isinstance(status, int):
        return status >= 500 or status in (408, 429)
    return True  # connection refused, reset, timeout: the server may come back


class InfluxSink:
    """Buffers points and writes them per bucket in chunks of ``chunk_lines``.

    A failed chunk is retried ``max_attempts`` times with exponential backoff and full
    jitter (``backoff_base_s`` doubling up to ``backoff_cap_s``); the points written so
    far are dropped from the buffer, the rest are kept for the next flush. Rewriting a
    point is harmless (same series and time), so a retry after a timeout that in fact
    succeeded duplicates nothing.
    """

    def __init__(
        self,
        client: InfluxDBClient,
        org: str,
        *,
        executor: ThreadPoolExecutor,
        chunk_lines: int = 5000,
        max_attempts: int = 5,
        backoff_base_s: float = 0.2,
        backoff_cap_s: float = 5.0,
        name: str = "sink",
    ) -> None:
        self._client = client
        self._write = client.write_api(write_options=SYNCHRONOUS)
        self._org = org
        self._executor = executor
        self._chunk = chunk_lines
        self._attempts = max_attempts
        self._base = backoff_base_s
        self._cap = backoff_cap_s
        self._name = name
        self._pending: list[Point] = []
        #: Points stored and points refused since start (for pipeline statistics).
        self.written = 0
        self.rejected = 0
        self.write_errors = 0
        #: Monotonic time of the first failed write of an ongoing outage (None: writing).
        self.failing_since: float | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, executor: ThreadPoolExecutor, name: str = "sink"
    ) -> InfluxSink:
        i = settings.influx
        p = settings.processors
        client = InfluxDBClient(
            url=i.url,
            token=influx_token(settings),
            org=i.org,
            timeout=int(p.influx_timeout_s * 1000),
        )
        return cls(
            client,
            i.org,
            executor=executor,
            chunk_lines=i.batch_size,
            max_attempts=p.influx_max_attempts,
            backoff_base_s=p.influx_backoff_base_s,
            backoff_cap_s=p.influx_backoff_cap_s,
            name=name,
        )

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, points: Iterable[Point]) -> None:
        self._pending.extend(points)

    async def flush(self) -> None:
        while self._pending:
            bucket = self._pending[0].bucket
            chunk = [p for p in self._pending if p.bucket == bucket][: self._chunk]
            await self._write_chunk(bucket, chunk)
            done = {id(p) for p in chunk}
            self._pending = [p for p in self._pending if id(p) not in done]

    async def _write_chunk(self, bucket: str, chunk: Sequence[Point]) -> None:
        body = "\n".join(p.line() for p in chunk).encode()
        loop = asyncio.get_running_loop()
        for attempt in range(1, self._attempts + 1):
            try:
                await loop.run_in_executor(self._executor, self._post, bucket, body)
            except Exception as exc:
                self.write_errors += 1
                if not _transient(exc):
                    self.failing_since = None  # InfluxDB answered: not an outage
                    self.rejected += len(chunk)
                    reason = getattr(exc, "message", None) or str(exc)
                    logger.error(
                        "influxdb refused points sink=%s bucket=%s points=%d reason=%s",
                        self._name,
                        bucket,
                        len(chunk),
                        reason,
                    )
                    raise StorageRejected(f"bucket {bucket!r}: {reason}") from exc
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                if attempt == self._attempts:
                    raise StorageUnavailable(
                        f"bucket {bucket!r}: {len(chunk)} points not stored after "
                        f"{attempt} attempts: {exc}"
                    ) from exc
                delay = random.uniform(0, min(self._cap, self._base * 2**attempt))
                logger.warning(
                    "influxdb write failed sink=%s bucket=%s attempt=%d retry_in_s=%.2f error=%s",
                    self._name,
                    bucket,
                    attempt,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
            else:
                self.written += len(chunk)
                self.failing_since = None
                return

    def _post(self, bucket: str, body: bytes) -> Any:
        return self._write.write(
            bucket=bucket,
            org=self._org,
            record=body,
            write_precision=WritePrecision.NS,  # type: ignore[arg-type]
        )

    async def close(self) -> None:
        self._write.close()
        self._client.close()


async def store(sink: PointSink, *, what: str, retry_s: float = 5.0) -> None:
    """Flush until stored: an outage blocks the caller (and so its offsets) instead of
    losing points. Refused points are logged by the sink and not retried."""
    while True:
        try:
            await sink.flush()
        except StorageUnavailable as exc:
            logger.warning("storage unavailable, holding offsets what=%s error=%s", what, exc)
            await asyncio.sleep(retry_s)
        except StorageRejected:
            continue  # the refused chunk is gone; store the rest
        else:
            return
