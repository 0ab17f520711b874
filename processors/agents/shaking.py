"""The shaking agent: ``processors.shaking`` (strong-shaking notices keyed by water
device) -> :func:`~processors.handlers.handle_shaking` -> the device's mark in
``shaking-state`` and a ``strong_shaking`` point.

Strong shaking reaches the rain gauges through Kafka, never through the worker's memory
(the quake agent and a gauge's water agent may run in different workers); the water
agent reads the mark of its reading's device from the same worker's table partition.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from faust.types import EventT

from civic_iot.contracts.processing import StrongShakingNotice
from civic_iot.storage.sink import PointSink
from processors.agents.faults import failed
from processors.agents.loop import BatchAgent
from processors.agents.stats import Stats
from processors.agents.tables import BatchState, seen
from processors.handlers import Context, handle_shaking
from processors.states import ShakingMark

logger = logging.getLogger(__name__)


class ShakingAgent(BatchAgent):
    name = "shaking"

    def __init__(
        self,
        ctx: Context,
        table: MutableMapping[str, ShakingMark],
        sink: PointSink,
        stats: Stats | None = None,
    ) -> None:
        self.ctx = ctx
        self.sink = sink
        self.stats = stats if stats is not None else Stats()
        self.states = BatchState(table, ShakingMark)
        self.state = self.states

    async def on_event(self, event: EventT[Any]) -> None:
        try:
            notice = StrongShakingNotice.model_validate_json(event.value)
            env = self.states.get(notice.device)
            if seen(env, event):
                return
            decision = handle_shaking(env, notice, self.ctx)
        except Exception as exc:  # noqa: BLE001 - one record must not stop the agent
            failed(self.stats, self.name, exc, event)
            return
        self.states.set(notice.device, decision.state, event)
        self.sink.add(decision.points)
        logger.info(
            "strong shaking device=%s township=%s event=%s intensity=%s",
            notice.device,
            notice.township,
            notice.event_id,
            notice.intensity,
        )


__all__ = ["ShakingAgent"]
