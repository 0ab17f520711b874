"""The device agents: ``readings.{air,water,seismic}`` -> detectors -> points, township
reports and, from the seismic stations, ticks for the earthquake associator.

A record holds one reading or many (:mod:`civic_iot.contracts.readings`). A record
without ingest's mark is dead-lettered (:mod:`processors.agents.guard`); a marked one's
lines are validated (a line that is no :class:`~civic_iot.contracts.readings.Reading` is
logged, counted and dead-lettered with its record, the others go on); each reading's
time is checked against the bounds (the guard). Each reading is handed with its device's
state to the kind's pure handler (:mod:`processors.handlers`) and its outcome staged: the
state for the table, the points for the sink; after the batch, the reports go to
``processors.township``, one message per partition, a line per township
(:func:`~processors.agents.township.encode_reports`). A reading read again after a
restart (:func:`seen`) has its raw point rewritten only; a detector that fails stores the
raw point and the stream moves on.
"""

from __future__ import annotations

import logging
import math
import time
from abc import abstractmethod
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from faust.types import EventT

from civic_iot.contracts.processing import (
    NETWORK_KEY,
    Observation,
    SeismicTick,
    StationStatus,
    TownshipReport,
    TownshipReports,
)
from civic_iot.contracts.readings import Reading, RecordReadings, decode_record
from civic_iot.storage.points import Point
from civic_iot.storage.sink import PointSink
from processors.agents.guard import ReadingGuard
from processors.agents.loop import BatchAgent, Turns
from processors.agents.outbox import Outbox
from processors.agents.seconds import StreamSeconds, packet_seconds
from processors.agents.stats import Activity, Stats, record_ms
from processors.agents.tables import BatchState, seen
from processors.agents.township import encode_reports, partition_of
from processors.handlers import (
    Context,
    DeviceOutcome,
    SeismicOutcome,
    handle_air,
    handle_seismic,
    handle_seismic_many,
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
        #: Readings of each event of the batch (by id), for the statistics.
        self._inputs: dict[int, int] = {}

    def begin_batch(self) -> None:
        super().begin_batch()
        self._inputs = {}

    @abstractmethod
    def decide(self, env: S, reading: Reading) -> OutcomeT:
        """The kind's pure handler."""

    @abstractmethod
    def stage(self, outcome: OutcomeT, event: EventT[Any]) -> None:
        """Keep what the outcome has for other agents (sent in :meth:`on_batch`)."""

    async def on_event(self, event: EventT[Any]) -> int:
        inputs, admitted = await self._admitted(event)
        for index, reading in admitted:
            env = self.states.get(reading.device_id)
            if self._replayed(env, event, index, reading):
                continue
            out = self._decide_safely(env, reading)
            if out is not None:
                self._take(out, reading, event, index)
        return inputs

    def _replayed(self, env: S, event: EventT[Any], index: int, reading: Reading) -> bool:
        """A reading replayed after a restart: the state already holds it (its changelog
        was written, the offset not yet committed), so only its raw point is written."""
        if not seen(env, event, index):
            return False
        self.stats.counters["replayed"] += 1
        self.sink.add(reading_points(reading, self.ctx.buckets))
        return True

    def _decide_safely(self, env: S, reading: Reading) -> OutcomeT | None:
        """:meth:`decide`; a detector that fails stores the raw point and gives None (a
        detector bug must not lose the reading nor stop the stream)."""
        try:
            return self.decide(env, reading)
        except Exception:
            logger.exception("detector failed reading=%s kind=%s", reading.reading_id, self.kind)
            self.stats.counters["detector_errors"] += 1
            self.sink.add(reading_points(reading, self.ctx.buckets))
            return None

    def _take(self, out: OutcomeT, reading: Reading, event: EventT[Any], index: int) -> None:
        """An outcome's state into the batch's table state, its points to the sink."""
        self.states.set(reading.device_id, out.state, event, index)
        self.keep_points(out, reading)
        self.stage(out, event)

    def keep_points(self, outcome: OutcomeT, reading: Reading) -> None:
        """The outcome's points into the sink (at once; the seismic agent's later)."""
        self.sink.add(outcome.points)

    async def _admitted(self, event: EventT[Any]) -> tuple[int, list[tuple[int, Reading]]]:
        """How many inputs a record counts for, and its readings the guard admits (their
        index in the record, the reading), each seen by the activity watch."""
        if not await self.guard.marked(event):  # not written by ingest: dead-lettered
            return 1, []
        record = self._decode(event)
        if record.refused:
            # Marked, yet a line is no reading: the record is dead-lettered (its bytes
            # whole) and its other readings go on.
            await self.guard.admit(event, None, self.sink)
        partition = event.message.partition
        observe = self.activity.observe
        admit, sink = self.guard.admit, self.sink
        out: list[tuple[int, Reading]] = []
        for index, found in enumerate(record.readings):
            reading = await admit(event, found, sink)  # its time within the bounds
            if reading is not None:
                observe(self.kind, reading.device_id, partition, reading.event_time.timestamp())
                out.append((index, reading))
        return len(record.readings) + len(record.refused), out

    def on_stored(self, events: Sequence[EventT[Any]]) -> None:
        self.stats.stored(
            [
                ms
                for e in events
                if (ms := record_ms(e)) is not None
                for _ in range(self._inputs.get(id(e), 1))
            ]
        )

    def _decode(self, event: EventT[Any]) -> RecordReadings:
        """A marked record's readings, each line validated again (defence in depth: the
        mark says ingest wrote it, not that what ingest wrote is sound; the trusted path,
        ``decode_record(trusted=True)``, would halve the decoding), a line that is no
        reading refused alone."""
        msg = event.message
        value: bytes = event.value
        record = decode_record(value, trusted=False)
        n = len(record.readings) + len(record.refused)
        self._inputs[id(event)] = n
        self.stats.counters["readings_in"] += n
        if record.refused:
            # ingest validated what it wrote: a line that is no Reading is not ours to store.
            self.stats.counters["deadletters"] += len(record.refused)
            logger.error(
                "not a reading topic=%s partition=%d offset=%d kind=%s refused=%d error=%s",
                msg.topic,
                msg.partition,
                msg.offset,
                self.kind,
                len(record.refused),
                record.refused[0],
            )
        return record


class ReportingAgent(DeviceAgent[S, DeviceOutcome[S]]):
    """A device agent whose readings report a level per hazard to their township: the
    batch's reports go out after it, one message per partition of ``processors.township``
    and a line per township, in reading order."""

    def __init__(self, deps: DeviceDeps, table: MutableMapping[str, S]) -> None:
        super().__init__(deps, table)
        self._reports: dict[str, list[TownshipReport]] = {}

    def begin_batch(self) -> None:
        super().begin_batch()
        self._reports = {}

    def stage(self, outcome: DeviceOutcome[S], event: EventT[Any]) -> None:
        for r in outcome.reports:
            self._reports.setdefault(r.township, []).append(r)

    async def on_batch(self) -> None:
        reports, self._reports = self._reports, {}
        topic = self.outbox.topics.township
        n = self.outbox.partitions(topic)
        # A message per partition (processors.agents.township); a message per township
        # while the partitions are not known.
        groups: dict[int | str, list[TownshipReports]] = {}
        for township, batch in reports.items():
            msg = TownshipReports(township=township, reports=tuple(batch))
            groups.setdefault(partition_of(township, n) if n else township, []).append(msg)
        for msgs in groups.values():
            await self.outbox.publisher.add(topic, msgs[0].township, encode_reports(msgs))


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
    """Seismic packets; after each batch, ticks for the associator (:func:`seismic_ticks`).

    The packets of a batch are decided after its last event, in waves, each station at
    most once a wave (its next packet needs this one's state) and every wave's stations
    through the detector's filters together
    (:func:`~processors.handlers.handle_seismic_many`): the same outcomes as one packet
    after the other, at a fraction of the CPU (numpy's per-call overhead is most of a
    100-sample packet's filtering)."""

    kind = "seismic"
    model = SeismicDevice

    def __init__(
        self,
        deps: DeviceDeps,
        table: MutableMapping[str, SeismicDevice],
        *,
        close_on_second: bool = True,
    ) -> None:
        super().__init__(deps, table)
        #: Close a batch once the stream second is in (:mod:`processors.agents.seconds`).
        self._seconds = StreamSeconds() if close_on_second else None
        self._batch: list[tuple[SeismicOutcome, int | None, int]] = []
        #: The batch's decided packets whose points are not yet in the sink.
        self._unstored: list[tuple[SeismicOutcome, Reading]] = []
        #: The batch's admitted packets, in arrival order: (event, index in its record).
        self._pending: list[tuple[EventT[Any], int, Reading]] = []
        #: When the batch began (epoch s), for the stages of the candidate latency.
        self._began_s = time.time()

    def decide(self, env: SeismicDevice, reading: Reading) -> SeismicOutcome:
        return handle_seismic(env, reading, self.ctx)

    def batch_closer(self) -> Callable[[EventT[Any]], bool] | None:
        return None if self._seconds is None else self._second_complete

    def _second_complete(self, event: EventT[Any]) -> bool:
        """Whether the stream second is in once ``event`` is (read from its reading ids
        only: the record is decoded later, with the batch)."""
        assert self._seconds is not None
        value = event.value
        if not isinstance(value, bytes):
            return False
        return self._seconds.add(event.message.partition, packet_seconds(value))

    async def on_event(self, event: EventT[Any]) -> int:
        inputs, admitted = await self._admitted(event)
        self._pending += [(event, index, reading) for index, reading in admitted]
        return inputs

    def _decide_pending(self) -> None:
        """Decide the batch's packets, in waves of distinct stations."""
        pending, self._pending = self._pending, []
        while pending:
            wave: list[tuple[EventT[Any], int, Reading]] = []
            later: list[tuple[EventT[Any], int, Reading]] = []
            stations: set[str] = set()
            for item in pending:
                device = item[2].device_id
                (later if device in stations else wave).append(item)
                stations.add(device)
            self._decide_wave(wave)
            pending = later

    def _decide_wave(self, wave: Sequence[tuple[EventT[Any], int, Reading]]) -> None:
        """Decide and stage packets of distinct stations, as :meth:`DeviceAgent.on_event`
        does one by one: a replayed packet rewrites its raw point only, a detector that
        fails stores the raw point (then the wave is decided one by one)."""
        todo = [
            (event, index, reading, env)
            for event, index, reading in wave
            if not self._replayed(env := self.states.get(reading.device_id), event, index, reading)
        ]
        outs: list[SeismicOutcome] | None = None
        if len(todo) > 1:
            try:
                outs = handle_seismic_many([(env, r) for _, _, r, env in todo], self.ctx)
            except Exception:  # noqa: BLE001 - one bad packet: one by one below finds it
                outs = None
        for k, (event, index, reading, env) in enumerate(todo):
            out = outs[k] if outs is not None else self._decide_safely(env, reading)
            if out is not None:
                self._take(out, reading, event, index)

    def begin_batch(self) -> None:
        super().begin_batch()
        self._batch = []
        self._unstored = []
        self._pending = []
        self._began_s = time.time()

    def keep_points(self, outcome: SeismicOutcome, reading: Reading) -> None:
        """The points wait for :meth:`_add_points`, after the ticks."""
        self._unstored.append((outcome, reading))

    def stage(self, outcome: SeismicOutcome, event: EventT[Any]) -> None:
        self._batch.append((outcome, record_ms(event), event.message.partition))

    async def on_batch(self) -> None:
        self._decide_pending()
        batch, self._batch = self._batch, []
        decided_s = time.time()
        ticks = seismic_ticks(batch)
        for tick in ticks:
            await self.outbox.send(self.outbox.topics.triggers, NETWORK_KEY, tick)
        first = min((t.trigger_record_ms for t in ticks if t.trigger_record_ms), default=None)
        if first is not None:
            # Only batches with triggers (an earthquake, a door slam): the stages of the
            # warning path on this side of seismic.triggers.
            sent_s = time.time()
            logger.info(
                "seismic ticks triggers=%d packets=%d wait_ms=%.1f decide_ms=%.1f send_ms=%.1f",
                sum(len(t.triggers) for t in ticks),
                len(batch),
                self._began_s * 1000 - first,
                (decided_s - self._began_s) * 1000,
                (sent_s - decided_s) * 1000,
            )
        await self._add_points()

    async def _add_points(self) -> None:
        """The batch's points into the sink, once its ticks are sent: the warning path
        does not wait for them to be built (their store, the state and the acks do).
        Lets the other agents run every :data:`YIELD_AFTER_S`, the associator's step
        first. A packet whose points cannot be built keeps its raw point, as a failed
        detector does (:meth:`DeviceAgent._decide_safely`)."""
        unstored, self._unstored = self._unstored, []
        turns = Turns()
        for out, reading in unstored:
            try:
                points = out.points
            except Exception:
                logger.exception("points failed reading=%s kind=%s", reading.reading_id, self.kind)
                self.stats.counters["detector_errors"] += 1
                points = reading_points(reading, self.ctx.buckets)
            self.sink.add(points)
            await turns.give()


def seismic_ticks(batch: Sequence[tuple[SeismicOutcome, int | None, int]]) -> list[SeismicTick]:
    """The associator's messages for a batch of (outcome, Kafka record ms, partition).

    One per source partition and packet second, in time order (triggers, observations,
    station statuses, clock), so that a backlog replays as it happened: a batch may span
    many seconds, events close on that clock, and the clock is the slowest partition's
    (see :func:`processors.handlers.handle_quake`). Within a tick the order of packets
    does not matter: the associator takes triggers in P-time order.
    ``trigger_record_ms`` is the earliest record time of a triggering packet (for the
    alert latency), ``record_ms`` of any packet (the latency of a candidate the stream
    clock decides).
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
            record_ms=min((ts for _, ts in group if ts), default=None),
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
