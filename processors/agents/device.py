"""The device agents: ``readings.{air,water,seismic}`` -> detectors -> points, township
reports and, from the seismic stations, ticks for the earthquake associator.

Each reading is decoded (a record that is no :class:`~civic_iot.contracts.readings.Reading`
is logged and counted, not stored: ingest validated it), handed with its device's state
to the kind's pure handler (:mod:`processors.handlers`), and its outcome staged: the
state for the table, the points for the sink, the reports for ``processors.township``
keyed by township. A reading read again after a restart (:func:`seen`) has its raw point
rewritten only; a detector that fails stores the raw point and the stream moves on.
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from faust.types import EventT
from pydantic import ValidationError

from civic_iot.contracts.processing import NETWORK_KEY, Observation, SeismicTick, StationStatus
from civic_iot.contracts.readings import Reading
from civic_iot.storage.points import Point
from civic_iot.storage.sink import PointSink
from processors.agents.guard import ReadingGuard
from processors.agents.loop import BatchAgent
from processors.agents.outbox import Outbox
from processors.agents.stats import Activity, Stats, record_ms
from processors.agents.tables import BatchState, seen
from processors.handlers import (
    Context,
    DeviceOutcome,
    SeismicOutcome,
    handle_air,
    handle_seismic,
    handle_water,
)
from processors.points import reading_points
from processors.states import AirDevice, DeviceState, SeismicDevice, ShakingMark, WaterDevice

logger = logging.getLogger(__name__)

S = TypeVar("S", bound=DeviceState)
S_co = TypeVar("S_co", bound=DeviceState, covariant=True)


class Outcome(Protocol[S_co]):
    """What every device handler returns: the new state and the points to store."""

    @property
    def state(self) -> S_co: ...

    @property
    def points(self) -> list[Point]: ...


OutcomeT = TypeVar("OutcomeT", bound=Outcome[Any])


@dataclass(frozen=True, slots=True)
class DeviceDeps:
    """What every device agent is built with."""

    ctx: Context
    sink: PointSink
    outbox: Outbox
    stats: Stats
    activity: Activity
    guard: ReadingGuard


class DeviceAgent(BatchAgent, Generic[S, OutcomeT]):
    """One kind of device: decode, replay check, handler, stage the outcome."""

    kind: str
    model: type[S]

    def __init__(self, deps: DeviceDeps, table: MutableMapping[str, S]) -> None:
        self.name = self.kind
        self.sink = deps.sink
        self.ctx = deps.ctx
        self.outbox = deps.outbox
        self.stats = deps.stats
        self.activity = deps.activity
        self.guard = deps.guard
        self.states: BatchState[S] = BatchState(table, self.model)
        self.state = self.states

    @abstractmethod
    def decide(self, env: S, reading: Reading) -> OutcomeT:
        """The kind's pure handler."""

    @abstractmethod
    async def emit(self, outcome: OutcomeT, event: EventT[Any]) -> None:
        """Send what the outcome has for other agents."""

    async def on_event(self, event: EventT[Any]) -> None:
        if not await self.guard.marked(event):  # not written by ingest: dead-lettered
            return
        reading = await self.guard.admit(event, self._decode(event), self.sink)
        if reading is None:
            return
        msg = event.message
        self.activity.observe(
            self.kind, reading.device_id, msg.partition, reading.event_time.timestamp()
        )
        env = self.states.get(reading.device_id)
        if seen(env, event):
            # Replayed after a restart: the state already holds it (its changelog was
            # written, the offset not yet committed). Rewrite the raw point only.
            self.stats.counters["replayed"] += 1
            self.sink.add(reading_points(reading, self.ctx.buckets))
            return
        try:
            out = self.decide(env, reading)
        except Exception:
            # A detector bug must not lose the reading nor stop the stream.
            logger.exception("detector failed reading=%s kind=%s", reading.reading_id, self.kind)
            self.stats.counters["detector_errors"] += 1
            self.sink.add(reading_points(reading, self.ctx.buckets))
            return
        self.states.set(reading.device_id, out.state, event)
        self.sink.add(out.points)
        await self.emit(out, event)

    def on_stored(self, events: Sequence[EventT[Any]]) -> None:
        self.stats.stored([ms for e in events if (ms := record_ms(e)) is not None])

    def _decode(self, event: EventT[Any]) -> Reading | None:
        self.stats.counters["readings_in"] += 1
        try:
            return Reading.from_record(event.value)
        except ValidationError as exc:
            # ingest validated it: a message that is no Reading is not ours to store.
            self.stats.counters["deadletters"] += 1
            msg = event.message
            logger.error(
                "not a reading topic=%s partition=%d offset=%d kind=%s error=%s",
                msg.topic,
                msg.partition,
                msg.offset,
                self.kind,
                exc.errors(include_url=False)[:3],
            )
            return None


class ReportingAgent(DeviceAgent[S, DeviceOutcome[S]]):
    """A device agent whose readings report a level per hazard to their township."""

    async def emit(self, outcome: DeviceOutcome[S], event: EventT[Any]) -> None:
        for r in outcome.reports:
            await self.outbox.send(self.outbox.topics.township, r.township, r)


class AirAgent(ReportingAgent[AirDevice]):
    kind = "air"
    model = AirDevice

    def decide(self, env: AirDevice, reading: Reading) -> DeviceOutcome[AirDevice]:
        return handle_air(env, reading, self.ctx)


class WaterAgent(ReportingAgent[WaterDevice]):
    """Water readings; a rain gauge's debris flow is judged with the strong shaking the
    ``shaking`` agent stored for the device. ``processors.shaking`` and
    ``readings.water`` are co-partitioned (same partitions, same key), so this worker
    holds the device's ``shaking-state`` partition (see :mod:`processors.app`)."""

    kind = "water"
    model = WaterDevice

    def __init__(
        self,
        deps: DeviceDeps,
        table: MutableMapping[str, WaterDevice],
        shaking: MutableMapping[str, ShakingMark],
    ) -> None:
        super().__init__(deps, table)
        self.shaking = shaking

    def decide(self, env: WaterDevice, reading: Reading) -> DeviceOutcome[WaterDevice]:
        mark = self.shaking.get(reading.device_id)
        return handle_water(env, reading, self.ctx, shaking=mark.shaking if mark else None)


class SeismicAgent(DeviceAgent[SeismicDevice, SeismicOutcome]):
    """Seismic packets; after each batch, ticks for the associator (:func:`seismic_ticks`)."""

    kind = "seismic"
    model = SeismicDevice

    def __init__(self, deps: DeviceDeps, table: MutableMapping[str, SeismicDevice]) -> None:
        super().__init__(deps, table)
        self._batch: list[tuple[SeismicOutcome, int | None, int]] = []

    def decide(self, env: SeismicDevice, reading: Reading) -> SeismicOutcome:
        return handle_seismic(env, reading, self.ctx)

    def begin_batch(self) -> None:
        super().begin_batch()
        self._batch = []

    async def emit(self, outcome: SeismicOutcome, event: EventT[Any]) -> None:
        self._batch.append((outcome, record_ms(event), event.message.partition))

    async def on_batch(self) -> None:
        batch, self._batch = self._batch, []
        for tick in seismic_ticks(batch):
            await self.outbox.send(self.outbox.topics.triggers, NETWORK_KEY, tick)


def seismic_ticks(batch: Sequence[tuple[SeismicOutcome, int | None, int]]) -> list[SeismicTick]:
    """The associator's messages for a batch of (outcome, Kafka record ms, partition).

    One per source partition and packet second, in time order (triggers, observations,
    station statuses, clock), so that a backlog replays as it happened: a batch may span
    many seconds, events close on that clock, and the clock is the slowest partition's
    (see :func:`processors.handlers.handle_quake`). Within a tick the order of packets
    does not matter: the associator takes triggers in P-time order.
    ``trigger_record_ms`` is the earliest record time of a triggering packet (for the
    alert latency).
    """
    groups: dict[tuple[int, int], list[tuple[SeismicOutcome, int | None]]] = {}
    for o, ts, part in batch:
        groups.setdefault((math.ceil(o.end_s), part), []).append((o, ts))
    return [
        SeismicTick(
            now_s=max(o.end_s for o, _ in group),
            triggers=tuple(
                sorted(
                    (o.trigger for o, _ in group if o.trigger),
                    key=lambda t: (t.p_time_s, t.station_id),
                )
            ),
            observations=tuple(_latest_obs([o.observation for o, _ in group])),
            stations=tuple(_latest_status([o.status for o, _ in group])),
            trigger_record_ms=min((ts for o, ts in group if o.trigger and ts), default=None),
            partition=part,
        )
        for (_, part), group in sorted(groups.items())
    ]


def _latest_obs(observations: Sequence[Observation | None]) -> list[Observation]:
    """The newest observation per station and window (peaks only grow within a window),
    by station id."""
    latest: dict[tuple[str, float | None], Observation] = {}
    for o in observations:
        if o is not None:
            key = (o.station_id, o.p_time_s)
            old = latest.get(key)
            if old is None or (o.at_s or 0.0) >= (old.at_s or 0.0):
                latest[key] = o
    return [latest[k] for k in sorted(latest, key=lambda k: (k[0], k[1] or 0.0))]


def _latest_status(statuses: Sequence[StationStatus | None]) -> list[StationStatus]:
    """The newest status per station, by station id."""
    latest: dict[str, StationStatus] = {}
    for s in statuses:
        if s is not None and (
            s.station_id not in latest or s.until_s >= latest[s.station_id].until_s
        ):
            latest[s.station_id] = s
    return [latest[k] for k in sorted(latest)]


__all__ = ["AirAgent", "DeviceAgent", "DeviceDeps", "SeismicAgent", "WaterAgent", "seismic_ticks"]
