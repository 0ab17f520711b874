"""The township agent: ``processors.township`` (the device agents' reports, one message
per partition and batch of readings, a line per township) ->
:func:`~processors.handlers.handle_township_reports` -> township points and alert
candidates.

Per-township state (air sensors agreeing, the water hazards' device levels) is keyed by
township like its input, so it is co-partitioned with it and the app scales out on
partitions.

A message holds the reports of every township of one partition (:func:`encode_reports`:
JSON Lines, one :class:`~civic_iot.contracts.processing.TownshipReports` a line, keyed
by its first township, each of its townships hashing to that partition:
:func:`partition_of`): at Taiwan's trickle a batch of readings reaches most of its
townships with a report or two each, and a message per township cost the bulk worker a
Kafka record, a Faust event and a changelog record around every report. Each line's
township keeps its place in the message (its index) for the replay check.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka.partitioner import murmur2
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
            messages = decode_reports(event.value)
        except Exception as exc:  # noqa: BLE001 - one record must not stop the agent
            failed(self.stats, self.name, exc, event)
            return 1
        for index, msg in enumerate(messages):
            try:
                env = self.states.get(msg.township)
                if seen(env, event, index):
                    continue
                decision = handle_township_reports(env, msg.reports, self.ctx, datetime.now(UTC))
            except Exception as exc:  # noqa: BLE001 - one township must not stop the others
                failed(self.stats, self.name, exc, event)
                continue
            self.states.set(msg.township, decision.state, event, index)
            await self.outbox.candidates(decision.candidates)
            self.sink.add(decision.points)
        return sum(len(m.reports) for m in messages) or 1


def encode_reports(messages: Sequence[TownshipReports]) -> bytes:
    """A message of ``processors.township``: townships' reports, one township a line."""
    return b"\n".join([m.__pydantic_serializer__.to_json(m) for m in messages])


def decode_reports(value: bytes) -> list[TownshipReports]:
    """A message of ``processors.township`` (:func:`encode_reports`); a line may also be one
    report alone, as workers before batches wrote them (still on the topic after an
    upgrade)."""
    out = []
    for line in value.split(b"\n"):
        try:
            out.append(TownshipReports.model_validate_json(line))
        except ValidationError:
            report = TownshipReport.model_validate_json(line)
            out.append(TownshipReports(township=report.township, reports=(report,)))
    return out


def partition_of(township: str, partitions: int) -> int:
    """The partition of ``processors.township`` (of ``partitions``) the producer's default
    partitioner gives the key ``township`` (Kafka's: murmur2 of the key's bytes)."""
    key = (township, partitions)
    hit = _PARTITION_OF.get(key)
    if hit is None:
        hit = _PARTITION_OF[key] = (murmur2(township.encode()) & 0x7FFFFFFF) % partitions
    return hit


#: (township, partitions) -> partition: a few hundred townships, hashed once each.
_PARTITION_OF: dict[tuple[str, int], int] = {}


__all__ = ["TownshipAgent", "decode_reports", "encode_reports", "partition_of"]
