"""The dead-letter agent: ``readings.deadletter`` -> one ``deadletter`` point per record,
counted in InfluxDB for the pipeline dashboard (the raw bytes stay on the Kafka topic).
No state: a plain batch of points, committed after the sink."""

from __future__ import annotations

import json
import logging
from typing import Any

from faust.types import EventT

from civic_iot.settings import InfluxSettings
from civic_iot.storage.sink import PointSink
from processors.agents.faults import failed
from processors.agents.loop import BatchAgent
from processors.agents.stats import Stats
from processors.points import deadletter_point

logger = logging.getLogger(__name__)


class DeadletterAgent(BatchAgent):
    name = "deadletter"

    def __init__(
        self, buckets: InfluxSettings, sink: PointSink, stats: Stats | None = None
    ) -> None:
        self.buckets = buckets
        self.sink = sink
        self.stats = stats if stats is not None else Stats()

    async def on_event(self, event: EventT[Any]) -> None:
        try:
            pt = deadletter_point(json.loads(event.value), self.buckets)
        except Exception as exc:  # noqa: BLE001 - anyone may write to the topic: never stop on one
            failed(self.stats, self.name, exc, event)
            return
        self.sink.add([pt] if pt else [])


__all__ = ["DeadletterAgent"]
