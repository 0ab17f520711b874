"""The one InfluxDB sink of every service, and its one failure policy.

Agents and services build :class:`~civic_iot.storage.points.Point` values without I/O and
hand them to a :class:`PointSink` (``add``, ``flush``, ``close``). :class:`InfluxSink`
writes them per bucket in requests of ``InfluxSettings.batch_size`` lines to InfluxDB's
``/api/v2/write`` (aiohttp, nanosecond precision) and turns every answer into one of three
outcomes (:func:`judge`):

Written (HTTP 2xx)
    The points leave the sink.

Unavailable: InfluxDB did not take the request, and the same bytes may succeed later
    Connection refused or reset, timeout, HTTP 5xx, 408, 425, 429
    (:func:`civic_iot.retry.retryable_status`), and also 401, 403 and 404: a wrong token,
    organisation or bucket is a configuration outage that the operator fixes, not a
    verdict on the points. The request is retried ``write_max_attempts`` times with
    exponential backoff and full jitter (:mod:`civic_iot.retry`); then :meth:`flush`
    raises :class:`StorageUnavailable` and **keeps every point not yet stored**.
    :attr:`InfluxSink.failing_since` holds the start of the outage, and each service
    shows it on ``/health``. The processors await :func:`store`, which keeps flushing
    until everything is stored: their Kafka offsets are committed only after it returns,
    so an outage holds the stream and loses nothing. The alert service cannot hold its
    input back (alerts go out while InfluxDB is down); its sink keeps up to
    ``InfluxSettings.max_pending_points`` points, and each point beyond that goes to the
    dead-letter topic with reason ``overflow`` (counted, logged), never dropped silently.
    When the alert service stops while InfluxDB is still unavailable, the points it holds
    go there too (reason ``unavailable``, :meth:`InfluxSink.set_aside`).

Refused: InfluxDB answered that it will not store some lines as they are
    Measured on InfluxDB 2.7.12: a field type conflict and a point outside the bucket's
    retention give **HTTP 422 "partial write"**: every other line of the request *is*
    written, the dropped lines are not named (the message gives the first conflict only,
    and its ``dropped=`` count covers one cause only). A line that does not parse,
    including a timestamp outside 1677-2262, gives **HTTP 400** and *nothing* of the
    request is written (the message names each such line). Other 4xx (413 too large)
    are treated alike. The answer is therefore not parsed for lines (only a 400 names
    them); a refused request is **bisected** instead (:func:`next_step`): each half is
    written again until every line is either written or refused on its own, which also
    gives each refused line InfluxDB's own reason for it.
    Writing a line again is harmless (same series, time and values), so halves already
    written by a partial write cost one request and change nothing. Finding k refused
    lines among n costs about 2 k log2(n / k) requests: 25 requests (0.13 s) for one
    line in 5,000 on the development machine; 10,000 requests (13 s) when half of the
    lines are refused. A line refused alone becomes a
    :class:`~civic_iot.contracts.storage.StorageDeadLetter` with InfluxDB's answer to
    that line (its status and message, and a :data:`reason class <ReasonClass>`), sent
    to ``storage.deadletter`` (:attr:`civic_iot.topology.Topology.storage_deadletter`)
    through a :class:`Publisher`. A refusal is a data problem, not an outage: it never
    blocks the other points, never holds offsets, and never makes ``/health`` unhealthy.
    It is counted (``civic_storage_deadletters_total{sink,reason}`` and
    :attr:`InfluxSink.deadletters`), logged, and ``/health`` reports the count and the
    last reason per sink (:func:`deadletter_report`).

:meth:`InfluxSink.flush` returns only once every point added before it is stored or
its dead-letter record is acknowledged by Kafka; a dead-letter topic that cannot be
written is unavailability too (the records are kept and sent again: at least once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from urllib.parse import quote

import aiohttp
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from civic_iot import retry
from civic_iot.contracts.storage import ReasonClass, StorageDeadLetter
from civic_iot.settings import InfluxClient, Settings, influx_token
from civic_iot.storage.points import Point
from civic_iot.topology import Topology

logger = logging.getLogger(__name__)

__all__ = [
    "AIOKafkaPublisher",
    "Answer",
    "InfluxSink",
    "PointSink",
    "Publisher",
    "StorageMetrics",
    "StorageUnavailable",
    "deadletter_report",
    "judge",
    "next_step",
    "reason_class",
    "store",
]

#: InfluxDB's message is kept up to this many characters in a dead-letter record.
MAX_REASON_CHARS = 2000


class StorageUnavailable(Exception):  # noqa: N818 - the project's name for it
    """InfluxDB (or the dead-letter topic) could not take the points now; retry later.
    Every point not yet stored stays in the sink for the next :meth:`PointSink.flush`."""


class SinkClosed(Exception):  # noqa: N818 - a state, like StorageUnavailable
    """The sink was closed (the process is stopping): nothing more is stored, the points
    held stay unstored and their offsets uncommitted, so Kafka delivers them again."""


class PointSink(Protocol):
    """Points in, stored on :meth:`flush`."""

    def add(self, points: Iterable[Point]) -> None:
        """Buffer points (no I/O)."""

    async def flush(self) -> None:
        """Return once every buffered point is stored or set aside with its reason;
        raise :class:`StorageUnavailable` after retries (the points are kept)."""

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


class _Producer(Protocol):
    """What :class:`AIOKafkaPublisher` needs of ``aiokafka.AIOKafkaProducer``."""

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> Any: ...


class AIOKafkaPublisher:
    """:class:`Publisher` on an aiokafka producer that its owner starts and stops
    (``producer`` is called at each send: the owner may create it later)."""

    def __init__(self, producer: Callable[[], _Producer]) -> None:
        self._producer = producer

    async def add(self, topic: str, key: str, value: bytes) -> None:
        # Dead letters are rare: wait for each acknowledgement instead of batching.
        await self._producer().send_and_wait(topic, value, key=key.encode())

    async def flush(self) -> None:
        return None  # every add was acknowledged

    async def close(self) -> None:
        return None  # the owner stops its producer


# --------------------------------------------------------------------------- policy (pure)


@dataclass(frozen=True, slots=True)
class Answer:
    """What one write request came to: ``status`` 0 when there was no HTTP answer."""

    outcome: Literal["written", "unavailable", "refused"]
    status: int
    message: str


#: Configuration outages: the request is fine, the token, organisation or bucket is not.
_CONFIG_STATUSES = (401, 403, 404)


def judge(status: int, body: str) -> Answer:
    """The outcome of an HTTP answer from ``/api/v2/write`` (see the module doc).

    ``message`` is InfluxDB's ``message`` from its JSON error body, else the body as text.
    """
    message = body.strip()
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        message = doc["message"]
    if 200 <= status < 300:
        return Answer("written", status, message)
    if retry.retryable_status(status) or status in _CONFIG_STATUSES or status < 400:
        return Answer("unavailable", status, message or f"HTTP {status}")
    return Answer("refused", status, message or f"HTTP {status}")


def reason_class(answer: Answer, line: str) -> ReasonClass:
    """The class of InfluxDB's refusal of ``line`` written alone (for metrics and triage)."""
    m = answer.message
    if "field type conflict" in m:
        return "type_conflict"
    if "outside retention policy" in m:
        return "retention"
    timestamp = line.rsplit(" ", 1)[-1]
    if "time outside range" in m or f'parsing "{timestamp}": value out of range' in m:
        return "timestamp"
    if "unable to parse" in m:
        return "malformed"
    return "refused"


Step = Literal["done", "retry", "set_aside", "split"]


def next_step(answer: Answer, lines: int) -> Step:
    """What to do with a request of ``lines`` lines after ``answer``: ``done`` (stored),
    ``retry`` (the same lines, later), ``set_aside`` (the one line InfluxDB refused), or
    ``split`` (write each half again to find the refused lines: see the module doc)."""
    if answer.outcome == "written":
        return "done"
    if answer.outcome == "unavailable":
        return "retry"
    return "set_aside" if lines == 1 else "split"


def halves(lo: int, hi: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The two halves of the index range ``[lo, hi)`` (at least two lines)."""
    mid = (lo + hi) // 2
    return (lo, mid), (mid, hi)


# --------------------------------------------------------------------------- metrics


class StorageMetrics:
    """Prometheus counters of the sinks of one registry (one set per registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter(
            "civic_storage_points_written",
            "Points InfluxDB stored, by sink",
            ["sink"],
            registry=registry,
        )
        self.deadletters = Counter(
            "civic_storage_deadletters",
            "Points set aside to storage.deadletter instead of stored, by sink and reason "
            "class (type_conflict, retention, timestamp, malformed, refused, overflow, "
            "unavailable)",
            ["sink", "reason"],
            registry=registry,
        )
        self.write_failures = Counter(
            "civic_storage_write_failures",
            "Write requests InfluxDB did not take (unavailable: retried), by sink",
            ["sink"],
            registry=registry,
        )

    @classmethod
    def of(cls, registry: CollectorRegistry = REGISTRY) -> StorageMetrics:
        """The counters in ``registry``, created on first use (a registry refuses a
        metric name twice, and a process has several sinks)."""
        metrics = _METRICS.get(registry)
        if metrics is None:
            metrics = _METRICS[registry] = cls(registry)
        return metrics


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, StorageMetrics] = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------- the sink


class InfluxSink:
    """:class:`PointSink` on InfluxDB with the failure policy of the module doc.

    ``name`` names the sink in logs, metrics, ``/health`` and dead-letter records (a
    processors agent, or ``alerts``); ``service`` the process. Refused points go to
    ``deadletter_topic`` through ``deadletters``. ``max_pending`` bounds the points kept
    while InfluxDB is unavailable (``None``: no bound, for callers that hold their input).
    """

    def __init__(
        self,
        *,
        url: str,
        token: str,
        org: str,
        name: str,
        service: str,
        deadletters: Publisher,
        deadletter_topic: str,
        chunk_lines: int = 5000,
        timeout_s: float = 10.0,
        max_attempts: int = 5,
        backoff_base_s: float = 0.2,
        backoff_cap_s: float = 5.0,
        max_pending: int | None = None,
        metrics: StorageMetrics | None = None,
        rng: retry.RandomSource | None = None,
    ) -> None:
        if chunk_lines < 1 or max_attempts < 1:
            msg = f"chunk_lines and max_attempts must be >= 1, got {chunk_lines}, {max_attempts}"
            raise ValueError(msg)
        self.name = name
        self.service = service
        self._write_url = f"{url.rstrip('/')}/api/v2/write"
        self._org = org
        self._headers = {
            "Authorization": f"Token {token}",
            "Content-Type": "text/plain; charset=utf-8",
        }
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._publisher = deadletters
        self._topic = deadletter_topic
        self._chunk = chunk_lines
        self._attempts = max_attempts
        self._base, self._cap = backoff_base_s, backoff_cap_s
        self._max_pending = max_pending
        self._metrics = metrics or StorageMetrics.of()
        self._rng: retry.RandomSource = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._lock = asyncio.Lock()
        self._pending: list[Point] = []
        #: Points of the flush under way not yet written or set aside.
        self._in_flight = 0
        #: Set aside, not yet acknowledged by Kafka.
        self._unsent: list[StorageDeadLetter] = []
        #: Points stored, write requests that failed (unavailable), points set aside,
        #: since start; the last point set aside.
        self.written = 0
        self.write_errors = 0
        self.deadletters = 0
        self.last_deadletter: StorageDeadLetter | None = None
        #: Monotonic time of the first failure of an ongoing outage (None: writing).
        self.failing_since: float | None = None
        self._overflowed = 0

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        name: str,
        *,
        service: InfluxClient,
        deadletters: Publisher,
        bounded: bool = False,
        metrics: StorageMetrics | None = None,
    ) -> InfluxSink:
        """A sink as ``settings.influx`` configures it, with ``service``'s own token;
        ``bounded`` for a service that cannot hold its input back
        (``InfluxSettings.max_pending_points``)."""
        i = settings.influx
        return cls(
            url=i.url,
            token=influx_token(settings, service),
            org=i.org,
            name=name,
            service=service,
            deadletters=deadletters,
            deadletter_topic=Topology.of(settings).storage_deadletter,
            chunk_lines=i.batch_size,
            timeout_s=i.write_timeout_s,
            max_attempts=i.write_max_attempts,
            backoff_base_s=i.write_backoff_base_s,
            backoff_cap_s=i.write_backoff_cap_s,
            max_pending=i.max_pending_points if bounded else None,
            metrics=metrics,
        )

    @property
    def pending(self) -> int:
        """Points waiting to be written (those of a flush under way included)."""
        return len(self._pending) + self._in_flight

    def add(self, points: Iterable[Point]) -> None:
        for p in points:
            if self._max_pending is not None and self.pending >= self._max_pending:
                # The newest point goes: the ones held are older, and none is lost (the
                # record keeps its line protocol for writing it again).
                why = f"{self.pending} points waiting for InfluxDB (the most it keeps)"
                self._set_aside(p, p.line(), "overflow", 0, why)
                self._overflowed += 1
                if self._overflowed % 1000 == 1:  # the first, then every 1000th: not a flood
                    logger.error(
                        "storage buffer full: points go to the dead-letter topic sink=%s "
                        "topic=%s overflowed=%d reason=%s",
                        self.name,
                        self._topic,
                        self._overflowed,
                        why,
                    )
                continue
            self._pending.append(p)

    async def flush(self) -> None:
        async with self._lock:
            await self._send_deadletters()
            while self._pending:
                # What is buffered now; points added meanwhile wait for the next round.
                todo, self._pending = self._pending, []
                await self._store(todo)
            await self._send_deadletters()

    async def set_aside(self, why: str) -> int:
        """Send every point still waiting to the dead-letter topic (reason class
        ``unavailable``) instead of InfluxDB; returns how many. For a service that stops
        while InfluxDB is unavailable and has no input to read again."""
        async with self._lock:
            points, self._pending = self._pending, []
            for p in points:
                self._set_aside(p, p.line(), "unavailable", 0, why)
            if points:
                logger.error(
                    "points set aside without InfluxDB sink=%s topic=%s count=%d reason=%s",
                    self.name,
                    self._topic,
                    len(points),
                    why,
                )
            await self._send_deadletters()
            return len(points)

    async def close(self) -> None:
        # Points still held are not lost by closing: the processors read them again from
        # Kafka (offsets not committed); the alert service calls set_aside() first.
        # Closed for good: a write in flight or after this raises SinkClosed instead of
        # opening a new session or failing on the closed one (a crash while stopping).
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ internals

    async def _store(self, todo: list[Point]) -> None:
        """Write ``todo`` per bucket in chunks; what an outage (or a cancellation) leaves
        neither written nor set aside goes back in front of the buffer, in order."""
        by_bucket: dict[str, list[Point]] = {}
        for p in todo:
            by_bucket.setdefault(p.bucket, []).append(p)
        settled: set[int] = set()
        self._in_flight = len(todo)
        try:
            for bucket, points in by_bucket.items():
                for i in range(0, len(points), self._chunk):
                    await self._store_chunk(bucket, points[i : i + self._chunk], settled)
        finally:
            self._in_flight = 0
            if len(settled) < len(todo):
                self._pending[:0] = [p for p in todo if id(p) not in settled]

    async def _store_chunk(self, bucket: str, chunk: Sequence[Point], settled: set[int]) -> None:
        """Write ``chunk`` (one bucket), bisecting refused requests; adds the points
        written or set aside to ``settled``."""
        lines = [p.line() for p in chunk]
        parts = [(0, len(chunk))]
        refused = 0
        try:
            while parts:
                lo, hi = parts.pop()
                answer = await self._write(bucket, lines[lo:hi])
                step = next_step(answer, hi - lo)
                if step == "split":
                    first, second = halves(lo, hi)
                    parts += [second, first]  # the first half next: the lines' order
                    continue
                if step == "set_aside":
                    refused += 1
                    cls = reason_class(answer, lines[lo])
                    self._set_aside(chunk[lo], lines[lo], cls, answer.status, answer.message)
                elif step == "done":
                    self.written += hi - lo
                    self._metrics.written.labels(self.name).inc(hi - lo)
                else:  # pragma: no cover - _write raises instead of answering "unavailable"
                    raise AssertionError(step)
                settled.update(id(p) for p in chunk[lo:hi])
                self._in_flight -= hi - lo
        finally:
            if refused:
                logger.error(
                    "influxdb refused points sink=%s bucket=%s refused=%d of=%d last_reason=%s",
                    self.name,
                    bucket,
                    refused,
                    len(chunk),
                    self.last_deadletter.reason if self.last_deadletter else "",
                )

    async def _write(self, bucket: str, lines: Sequence[str]) -> Answer:
        """One request, retried while InfluxDB is unavailable; raises
        :class:`StorageUnavailable` after ``max_attempts``."""
        body = "\n".join(lines).encode()
        for attempt in range(self._attempts):
            answer = await self._post(bucket, body)
            if answer.outcome != "unavailable":
                self.failing_since = None  # InfluxDB answered: not an outage
                return answer
            self._failed()
            if attempt + 1 == self._attempts:
                msg = (
                    f"bucket {bucket!r}: {len(lines)} points not stored after {attempt + 1} "
                    f"attempts: {answer.message}"
                )
                raise StorageUnavailable(msg)
            pause = retry.delay(attempt, self._base, self._cap, self._rng)
            logger.warning(
                "influxdb write failed sink=%s bucket=%s attempt=%d status=%d retry_in_s=%.2f "
                "error=%s",
                self.name,
                bucket,
                attempt + 1,
                answer.status,
                pause,
                answer.message,
            )
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _post(self, bucket: str, body: bytes) -> Answer:
        if self._closed:
            raise SinkClosed(self.name)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        url = f"{self._write_url}?org={quote(self._org)}&bucket={quote(bucket)}&precision=ns"
        try:
            async with self._session.post(url, data=body, headers=self._headers) as resp:
                return judge(resp.status, await resp.text(errors="replace"))
        except TimeoutError:
            answer = Answer("unavailable", 0, f"no answer within {self._timeout.total:g} s")
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            # RuntimeError: aiohttp's "Session is closed", when close() came mid-request.
            if self._closed:
                raise SinkClosed(self.name) from exc
            if isinstance(exc, RuntimeError):
                raise
            answer = Answer("unavailable", 0, f"{type(exc).__name__}: {exc}")
        if self._closed:
            raise SinkClosed(self.name)
        return answer

    def _failed(self) -> None:
        self.write_errors += 1
        self._metrics.write_failures.labels(self.name).inc()
        if self.failing_since is None:
            self.failing_since = time.monotonic()

    def _set_aside(self, p: Point, line: str, cls: ReasonClass, status: int, reason: str) -> None:
        record = StorageDeadLetter(
            line=line,
            bucket=p.bucket,
            measurement=p.measurement,
            service=self.service,
            sink=self.name,
            reason_class=cls,
            reason=reason[:MAX_REASON_CHARS],
            status=status,
            at=datetime.now(UTC),
        )
        self._unsent.append(record)
        self.deadletters += 1
        self.last_deadletter = record
        self._metrics.deadletters.labels(self.name, cls).inc()

    async def _send_deadletters(self) -> None:
        """Every record set aside, to the dead-letter topic; kept until acknowledged."""
        if not self._unsent:
            return
        batch = list(self._unsent)
        try:
            for record in batch:
                await self._publisher.add(self._topic, record.measurement, record.encode())
            await self._publisher.flush()
        except Exception as exc:  # any producer error: keep them, send them again later
            self._failed()
            msg = f"{len(batch)} dead-letter records not sent to {self._topic}: {exc!r}"
            raise StorageUnavailable(msg) from exc
        del self._unsent[: len(batch)]
        logger.warning(
            "points sent to the storage dead-letter topic sink=%s topic=%s count=%d",
            self.name,
            self._topic,
            len(batch),
        )


# --------------------------------------------------------------------------- callers


async def store(sink: PointSink, *, what: str, retry_s: float = 5.0) -> None:
    """Flush until every point is stored or set aside: an outage blocks the caller (and so
    its Kafka offsets, committed after this returns) instead of losing points. Refused
    points never block: the sink sets them aside and returns."""
    while True:
        try:
            await sink.flush()
        except StorageUnavailable as exc:
            logger.warning("storage unavailable, holding offsets what=%s error=%s", what, exc)
            await asyncio.sleep(retry_s)
        else:
            return


def deadletter_report(sinks: Mapping[str, object]) -> dict[str, dict[str, object]]:
    """For ``/health``: per sink that set points aside, how many and the last reason.
    Reported, never judged: a refused point is a data problem, not an outage."""
    out: dict[str, dict[str, object]] = {}
    for name, sink in sorted(sinks.items()):
        last = getattr(sink, "last_deadletter", None)
        if not isinstance(last, StorageDeadLetter):
            continue
        out[name] = {
            "count": int(getattr(sink, "deadletters", 0)),
            "last_reason_class": last.reason_class,
            "last_reason": last.reason,
            "last_at": last.at.isoformat(),
        }
    return out
