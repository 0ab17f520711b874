"""The quake agent: ``seismic.triggers`` (every station's ticks, one partition, one key)
-> the associator (:func:`~processors.handlers.handle_quake`) -> earthquake candidates,
``quake_event``/``quake_cell`` points, and a strong-shaking notice per water device of a
township shaken at intensity >= 5- (to ``processors.shaking``, keyed by device).

The associator needs every station's triggers in one place: ``seismic.triggers`` has one
partition and is the one serial point, deliberately (one small message per seismic
batch). The agent's batches are short (``CIVIC_PROCESSORS__QUAKE_WITHIN_S``): it is on
the alert latency path.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import MutableMapping, Sequence
from datetime import UTC, datetime
from typing import Any

from faust.types import EventT

from civic_iot.contracts.processing import NETWORK_KEY, SeismicTick
from civic_iot.storage.points import Point
from civic_iot.storage.sink import PointSink
from processors.agents.faults import failed
from processors.agents.loop import BatchAgent
from processors.agents.outbox import Outbox
from processors.agents.stats import Stats, record_ms
from processors.agents.tables import BatchState, seen
from processors.handlers import Context, handle_quake
from processors.states import QuakeState

logger = logging.getLogger(__name__)


class QuakeAgent(BatchAgent):
    name = "quake"

    def __init__(
        self,
        ctx: Context,
        table: MutableMapping[str, QuakeState],
        sink: PointSink,
        outbox: Outbox,
        stats: Stats | None = None,
    ) -> None:
        self.stats = stats if stats is not None else Stats()
        self.ctx = ctx
        self.sink = sink
        self.outbox = outbox
        self.states = BatchState(table, QuakeState)
        self.state = self.states
        self._ticks: list[SeismicTick] = []
        #: Per tick of the batch (by id): its own Kafka record time and when this agent
        #: took it, epoch ms, for the stages of the candidate latency.
        self._arrived: dict[int, tuple[float, float]] = {}
        self._last: EventT[Any] | None = None

    def begin_batch(self) -> None:
        super().begin_batch()
        self._ticks, self._last, self._arrived = [], None, {}

    async def on_event(self, event: EventT[Any]) -> None:
        if not seen(self.states.get(NETWORK_KEY), event):
            try:
                tick = SeismicTick.model_validate_json(event.value)
            except Exception as exc:  # noqa: BLE001 - one record must not stop the agent
                failed(self.stats, self.name, exc, event)
            else:
                self._ticks.append(tick)
                now_ms = time.time() * 1000
                self._arrived[id(tick)] = (float(record_ms(event) or now_ms), now_ms)
            self._last = event

    async def on_batch(self) -> None:
        ticks, last = self._ticks, self._last
        self._ticks, self._last = [], None
        if not ticks or last is None:
            return
        # One associator step per stream second of the batch, in order (a backlog replays
        # as it happened), with every tick of that second (Associator.step).
        state = self.states.get(NETWORK_KEY)
        points: list[Point] = []
        steps = tick_seconds(ticks)
        # From the first trigger's record, for the latency line.
        first = min((t.trigger_record_ms for t in ticks if t.trigger_record_ms), default=None)
        timed_yet = False
        for second in steps:
            try:
                decision = handle_quake(state, second, self.ctx, datetime.now(UTC))
            except Exception as exc:  # noqa: BLE001 - one tick must not stop the associator
                failed(self.stats, self.name, exc)
                continue
            state = decision.state
            await self.outbox.candidates(decision.candidates)
            timed = [(t.record_ms, t) for t in second if t.record_ms]
            if decision.candidates and timed and not timed_yet:
                # The packet that decided: the newest of the second's (its tick came
                # last); a candidate may come from a tick after the triggers', when the
                # stream clock closes the event. Timed as the candidates leave, not after
                # the batch's notices and points.
                self._log_latency(max(timed, key=lambda d: d[0]), first, len(ticks), len(steps))
                timed_yet = True
            for notice in decision.notices:
                await self.outbox.send(self.outbox.topics.shaking, notice.device, notice)
            points += decision.points
        self.states.set(NETWORK_KEY, state, last)
        self.sink.add(points)

    def _log_latency(
        self, deciding: tuple[int, SeismicTick], first: int | None, ticks: int, steps: int
    ) -> None:
        """The candidate latency's stages: the deciding packet's record -> its tick's
        record (the seismic agent's batch), -> this agent took it (its batch wait), ->
        the candidate sent (the associator's step); and from the first trigger's record."""
        now_ms = time.time() * 1000
        packet_ms, tick = deciding
        tick_ms, took_ms = self._arrived.get(id(tick), (now_ms, now_ms))
        logger.info(
            "quake candidate latency_ms=%.1f from_trigger_ms=%.1f to_tick_ms=%.1f "
            "tick_wait_ms=%.1f step_ms=%.1f ticks=%d steps=%d",
            now_ms - packet_ms,
            now_ms - first if first is not None else -1.0,
            tick_ms - packet_ms,
            took_ms - tick_ms,
            now_ms - took_ms,
            ticks,
            steps,
        )


def tick_seconds(ticks: Sequence[SeismicTick]) -> list[list[SeismicTick]]:
    """The ticks of a batch as associator steps: one per stream second (``now_s``
    rounded up, as :func:`processors.agents.device.seismic_ticks` groups packets), in
    time order, each with every partition's ticks of that second.

    Why not a step per tick: a second's packets reach the associator in several ticks
    (one per source partition, and more when a partition's second spans two station
    batches), and each tick whose items the watermark has already passed is a full step
    (relocation, magnitudes, intensities: 0.1-1 s at Taiwan's scale during an
    earthquake). Together they are one step, taking that second's items in time order as
    the associator would have had they come in one tick."""
    by_second: dict[float, list[SeismicTick]] = {}
    for t in ticks:
        # A time that is no number (a hostile record) steps last, alone with its like:
        # handle_quake bounds it by the wall clock.
        second = float(math.ceil(t.now_s)) if math.isfinite(t.now_s) else math.inf
        by_second.setdefault(second, []).append(t)
    return [sorted(by_second[s], key=lambda k: k.now_s) for s in sorted(by_second)]


__all__ = ["QuakeAgent", "tick_seconds"]
