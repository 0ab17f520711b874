"""The township agent: ``processors.township`` (the device agents' reports, one message
per township and batch of readings, keyed by township) ->
:func:`~processors.handlers.handle_township_reports` -> township points and alert
candidates.

Per-township state (air sensors agreeing, the water hazards' device levels) is keyed by
township like its input, so it is co-partitioned with it and the app scales out on
partitions.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

from faust.types import EventT
from pydantic import ValidationError

from civic_iot.contracts.processing import TownshipReport, TownshipReports
from civic_iot.storage.sink import PointSink
from processors.agents.faults import failed
from processors.agents.loop import BatchAgent
from processors.agents.outbox import Outbox
from processors.agents.stats import Stats
from processors.agents.tables import BatchState, seen
from processors.handlers import Context, handle_township_reports
from processors.states import TownshipState


class TownshipAgent(BatchAgent):
    name = "township"

    def __init__(
        self,
        ctx: Context,
        table: MutableMapping[str, TownshipState],
        sink: PointSink,
        outbox: Outbox,
        stats: Stats | None = None,
    ) -> None:
        self.ctx = ctx
        self.sink = sink
        self.outbox = outbox
        self.stats = stats if stats is not None else Stats()
        self.states = BatchState(table, TownshipState)
        self.state = self.states

    async def on_event(self, event: EventT[Any]) -> int:
        try:
            msg = decode_reports(event.value)
            env = self.states.get(msg.township)
            if seen(env, event):
                return len(msg.reports)
            decision = handle_township_reports(env, msg.reports, self.ctx, datetime.now(UTC))
        except Exception as exc:  # noqa: BLE001 - one record must not stop the agent
            failed(self.stats, self.name, exc, event)
            return 1
        self.states.set(msg.township, decision.state, event)
        await self.outbox.candidates(decision.candidates)
        self.sink.add(decision.points)
        return len(msg.reports)


def decode_reports(value: bytes) -> TownshipReports:
    """A message of ``processors.township``: a batch's reports, or one report as workers
    before batches wrote them (still on the topic after an upgrade)."""
    try:
        return TownshipReports.model_validate_json(value)
    except ValidationError:
        report = TownshipReport.model_validate_json(value)
        return TownshipReports(township=report.township, reports=(report,))


__all__ = ["TownshipAgent", "decode_reports"]
