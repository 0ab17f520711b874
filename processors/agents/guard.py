"""The device agents' door: a record on ``readings.{kind}`` reaches a detector only if
ingest wrote it and its time lies within the bounds.

Anyone who can produce to Kafka can write to a readings topic. :meth:`ReadingGuard.marked`
checks ingest's mark (:mod:`civic_iot.contracts.provenance`) before the record is even
decoded; :meth:`ReadingGuard.admit` checks that it decoded, and the reading's time
(:func:`processors.guard.judge_time`). A refused record is counted (``foreign_records``,
``future_records``, ``bad_records`` in the worker's statistics and
``civic_processors_refused_records_total`` on ``/metrics``), logged, and written to
``readings.deadletter`` with its reason and exact bytes (the dead-letter contract of
ingest, :func:`civic_iot.contracts.deadletter.deadletter_record`; ``topic`` names the Kafka
topic); its offset moves on with the batch. The dead letter goes through the app's
producer, which the consumer flushes before it commits.

A reading older than its kind's max age (a backlog after a long outage) is not refused:
its raw point is stored and the detectors do not see it (``stale_records``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from faust.types import EventT
from prometheus_client import Counter as PromCounter

from civic_iot.contracts.deadletter import deadletter_record
from civic_iot.contracts.provenance import Marker
from civic_iot.contracts.readings import Reading
from civic_iot.settings import InfluxSettings
from civic_iot.storage.sink import PointSink, Publisher
from civic_iot.timebounds import TimeBounds
from processors.agents.stats import Stats
from processors.guard import judge_time
from processors.points import reading_points

logger = logging.getLogger(__name__)

REFUSED = PromCounter(
    "civic_processors_refused_records_total",
    "Records on a readings topic the processors refused or kept from the detectors",
    ["reason"],
)

#: Statistics counter of each refusal reason.
COUNTERS = {
    "unmarked": "foreign_records",
    "bad_mark": "foreign_records",
    "future_timestamp": "future_records",
    "schema": "bad_records",
    "too_old": "stale_records",
}


class ReadingGuard:
    """Checks the records of the device agents (module doc); one per worker."""

    def __init__(
        self,
        *,
        marker: Marker,
        bounds: TimeBounds,
        publisher: Publisher,
        deadletter_topic: str,
        stats: Stats,
        buckets: InfluxSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.marker = marker
        self.bounds = bounds
        self.publisher = publisher
        self.deadletter_topic = deadletter_topic
        self.stats = stats
        self.buckets = buckets
        self.clock = clock

    async def marked(self, event: EventT[Any]) -> bool:
        """Whether the record carries ingest's mark; if not, it is dead-lettered."""
        msg = event.message
        value = msg.value if isinstance(msg.value, bytes) else None
        key = msg.key if isinstance(msg.key, bytes) else None
        problem = self.marker.problem(msg.topic, key, value, msg.headers)
        if problem is None:
            return True
        await self._refuse(
            event,
            problem,
            f"record on {msg.topic} partition {msg.partition} offset {msg.offset} "
            + ("carries no mark" if problem == "unmarked" else "carries a wrong mark")
            + ": not written by ingest",
        )
        return False

    async def admit(
        self, event: EventT[Any], reading: Reading | None, sink: PointSink
    ) -> Reading | None:
        """The reading, if it may reach the detectors. A marked record that is no reading
        (``reading`` None: the agent could not decode it) and a reading from the future
        are dead-lettered; an old one is only stored (module doc)."""
        if reading is None:
            msg = event.message
            await self._refuse(
                event,
                "schema",
                f"record on {msg.topic} partition {msg.partition} offset {msg.offset} "
                "carries ingest's mark but is no reading (the worker's log has why)",
            )
            return None
        found = judge_time(reading, self.clock(), self.bounds)
        if found is None:
            return reading
        problem, message = found
        if problem == "too_old":
            self._count(problem)
            logger.warning("reading kept from the detectors reason=too_old %s", message)
            sink.add(reading_points(reading, self.buckets))
            return None
        await self._refuse(event, problem, message)
        return None

    def _count(self, reason: str) -> None:
        self.stats.counters[COUNTERS.get(reason, "bad_records")] += 1
        REFUSED.labels(reason).inc()

    async def _refuse(self, event: EventT[Any], reason: str, error: str) -> None:
        self._count(reason)
        msg = event.message
        raw = msg.value if isinstance(msg.value, bytes) else b""
        key = msg.key.decode(errors="replace") if isinstance(msg.key, bytes) else None
        logger.warning(
            "record refused topic=%s partition=%s offset=%s reason=%s error=%s",
            msg.topic,
            msg.partition,
            msg.offset,
            reason,
            error,
        )
        record = deadletter_record(
            topic=str(msg.topic),
            raw=raw,
            reason=reason,
            error=error,
            device_id=key,
            received_at=datetime.now(UTC),
        )
        await self.publisher.add(self.deadletter_topic, key or str(msg.topic), record)


__all__ = ["COUNTERS", "REFUSED", "ReadingGuard"]
