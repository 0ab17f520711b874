"""What a worker observes of its own work: the pipeline counters and latencies, the
processing-clock activity the silence watch needs, and its consumer lag."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import faust
from faust.types import EventT

from processors.detectors.silence import KindActivity
from processors.faust_adapter import committed_offsets

logger = logging.getLogger(__name__)


class Stats:
    """Counters and latencies of this worker for the ``pipeline`` measurement."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        #: Kafka record time -> points stored, ms, since the last snapshot.
        self.latencies_ms: list[float] = []

    def stored(self, record_ms: Sequence[int]) -> None:
        now_ms = time.time() * 1000
        self.counters["readings_out"] += len(record_ms)
        self.latencies_ms += [now_ms - t for t in record_ms]

    def snapshot(self) -> dict[str, float]:
        lat = sorted(self.latencies_ms)
        self.latencies_ms = []
        out: dict[str, float] = {k: float(v) for k, v in self.counters.items()}
        if lat:
            out["latency_p50_ms"] = lat[len(lat) // 2]
            out["latency_p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return out


def record_ms(event: EventT[Any]) -> int | None:
    """The Kafka record timestamp in ms (faust keeps it as float seconds)."""
    ts = event.message.timestamp
    return None if not ts else round(float(ts) * 1000)


class Activity:
    """When readings arrived on the processing clock, and the newest event time per
    kind and source partition: what :func:`~processors.detectors.silence.check_silence`
    judges by, besides the devices' stored last readings."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        #: Kind -> processing time of its latest reading.
        self._arrived: dict[str, float] = {}
        #: Kind -> source partition -> newest event time, epoch s.
        self._clocks: dict[str, dict[int, float]] = {}
        self._partition_of: dict[str, int] = {}
        #: Device -> processing time of its latest reading.
        self._received: dict[str, float] = {}

    def observe(self, kind: str, device: str, partition: int, event_s: float) -> None:
        """A reading of ``device`` from ``partition`` with event time ``event_s`` arrived."""
        now = self._clock()
        self._arrived[kind] = now
        clocks = self._clocks.setdefault(kind, {})
        if event_s > clocks.get(partition, float("-inf")):
            clocks[partition] = event_s
        self._partition_of[device] = partition
        self._received[device] = now

    def of_kind(self, kind: str, last_seen: Mapping[str, float]) -> KindActivity:
        """What was seen of ``kind`` until now, for the devices of ``last_seen``."""
        now = self._clock()
        return KindActivity(
            last_seen=last_seen,
            quiet_s=now - self._arrived.get(kind, self.started),
            uptime_s=now - self.started,
            clocks=dict(self._clocks.get(kind, {})),
            partition_of={d: p for d in last_seen if (p := self._partition_of.get(d)) is not None},
            received_ago_s={
                d: now - r for d in last_seen if (r := self._received.get(d)) is not None
            },
        )


def consumer_lag(app: faust.App) -> int:
    """Records not yet committed on this worker's input partitions (highwater -
    committed). The tables' changelog partitions, also assigned to the consumer, are
    read only to recover state and never committed: they are not lag."""
    try:
        consumer = app.consumer
        committed = committed_offsets(consumer)
        changelogs = app.tables.changelog_topics
        return sum(
            max(0, (consumer.highwater(tp) or 0) - (committed.get(tp) or 0))
            for tp in consumer.assignment()
            if tp.topic not in changelogs
        )
    except Exception:  # a statistic must never stop the worker
        logger.debug("consumer lag unavailable", exc_info=True)
        return 0


__all__ = ["Activity", "Stats", "consumer_lag", "record_ms"]
