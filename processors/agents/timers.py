"""The worker's periodic work, each a thin shell around pure code: open alert
candidates re-sent, the silence watch, the pipeline statistics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime

from civic_iot.registry import Registry
from civic_iot.storage.sink import PointSink
from processors.agents.outbox import Outbox
from processors.agents.stats import Activity, Stats
from processors.detectors.silence import check_silence
from processors.detectors.windows import from_epoch
from processors.handlers import Context, open_candidates
from processors.points import pipeline_point, sensor_health_point
from processors.states import DeviceState, QuakeState, TownshipState

logger = logging.getLogger(__name__)


class Republish:
    """Open candidates (level >= 1) sent again: identical candidates raise no new alert
    message; they keep it from expiring."""

    def __init__(
        self,
        tables: Iterable[Mapping[str, TownshipState | QuakeState | None]],
        outbox: Outbox,
    ) -> None:
        self.tables = list(tables)
        self.outbox = outbox

    async def run(self) -> None:
        sent = 0
        for table in self.tables:
            for _, state in list(table.items()):
                for c in open_candidates(state):
                    await self.outbox.send(self.outbox.topics.candidates, c.key, c)
                    sent += 1
        if sent:
            logger.info("open alert candidates re-sent count=%d", sent)


class SilenceWatch:
    """Devices gone silent (:func:`~processors.detectors.silence.check_silence`), each
    stored once as an active ``silent`` finding of ``sensor_health``; a device that
    reads again clears it (:func:`processors.handlers.handle_air` and its kind)."""

    def __init__(
        self,
        *,
        tables: Mapping[str, Mapping[str, DeviceState | None]],
        activity: Activity,
        ctx: Context,
        registry: Registry,
        sink: PointSink,
    ) -> None:
        self.tables = tables
        self.activity = activity
        self.ctx = ctx
        self.registry = registry
        self.sink = sink
        #: Devices whose silence is stored (reported once, until they read again).
        self.reported: frozenset[str] = frozenset()

    async def run(self) -> None:
        now = datetime.now(UTC)
        activity = {
            kind: self.activity.of_kind(
                kind,
                {
                    k: v.last_seen
                    for k, v in list(table.items())
                    if v is not None and v.last_seen is not None
                },
            )
            for kind, table in self.tables.items()
        }
        check = check_silence(
            activity,
            now_s=now.timestamp(),
            silent_after_s=self.ctx.silent_after_s,
            reported=self.reported,
        )
        self.reported = check.reported
        if not check.new:
            return
        for s in check.new:
            dev = self.registry.get(s.device_id)
            pt = sensor_health_point(
                s.device_id,
                dev.township if dev else "",
                "silent",
                active=True,
                detail=f"no reading since {from_epoch(s.last_seen_s).isoformat(timespec='seconds')}"
                f" (judged at {from_epoch(s.judged_at_s).isoformat(timespec='seconds')})",
                at=now,
                buckets=self.ctx.buckets,
            )
            self.sink.add([pt] if pt else [])
        try:
            await self.sink.flush()
        except Exception as exc:  # noqa: BLE001 - retried at the next check
            logger.warning("silent devices not stored, retry next check error=%s", exc)
            return
        self.reported |= {s.device_id for s in check.new}
        logger.info("devices silent count=%d", len(check.new))


class PipelineStats:
    """This worker's counters, latencies, write errors and lag as a ``pipeline`` point."""

    def __init__(
        self,
        *,
        instance: str,
        stats: Stats,
        sinks: Iterable[PointSink],
        lag: Callable[[], int],
        ctx: Context,
        sink: PointSink,
    ) -> None:
        self.instance = instance
        self.stats = stats
        self.sinks = list(sinks)
        self.lag = lag
        self.ctx = ctx
        self.sink = sink

    async def run(self) -> None:
        snap = self.stats.snapshot()
        snap["write_errors"] = float(sum(getattr(s, "write_errors", 0) for s in self.sinks))
        snap["lag"] = float(self.lag())
        pt = pipeline_point(self.instance, snap, time.time_ns(), self.ctx.buckets)
        if pt is None:
            return
        self.sink.add([pt])
        try:
            await self.sink.flush()
        except Exception as exc:  # noqa: BLE001 - statistics are best effort
            logger.warning("pipeline statistics not stored error=%s", exc)


__all__ = ["PipelineStats", "Republish", "SilenceWatch"]
