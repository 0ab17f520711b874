"""The processors' Faust app: thin agents around the pure detectors.

Topics (``p`` = ``settings.kafka.topic_prefix``) and agents, all ``concurrency=1``
(faust-streaming #606: more can commit past an unfinished message):

===========================  ==================  ==========================================
topic (key)                  agent               state table (key)
===========================  ==================  ==========================================
``p readings.air`` (device)     ``air``          ``air-state`` (device)
``p readings.water`` (device)   ``water``        ``water-state`` (device)
``p readings.seismic`` (dev.)   ``seismic``      ``seismic-state`` (device)
``p processors.township``       ``township``     ``township-state`` (township)
(township, N partitions)
``p seismic.triggers``          ``quake``        ``quake-state`` (``network``)
(constant key, 1 partition)
``p processors.shaking``        ``shaking``      ``shaking-state`` (device)
(device, N partitions)
===========================  ==================  ==========================================

Device agents report each reading's level to ``processors.township`` keyed by township,
so per-township state (air sensors agreeing, water hazards) is co-partitioned with its
own input and the app scales out on partitions. The earthquake associator needs every
station's triggers in one place: ``seismic.triggers`` has one partition and is the one
serial point, deliberately (one small message per seismic batch).

Strong shaking reaches the rain gauges through Kafka, never through the worker's memory
(the quake agent and a gauge's water agent may run in different workers): the quake agent
sends a notice per water device of a township shaken at intensity >= 5- to
``processors.shaking`` keyed by device id; the ``shaking`` agent keeps it in
``shaking-state``; the ``water`` agent reads that table for the reading's device and
judges its rain against R50 (``processors.handlers.handle_water``). This works because
``processors.shaking`` and ``readings.water`` have the same partition count and are
keyed alike (murmur2, the default partitioner of ingest's and Faust's producers): Faust
assigns co-partitioned topics by partition number (``PartitionAssignor``), so the worker
holding a device's ``readings.water`` partition holds its ``shaking-state`` partition.

Commit after the sink: every agent reads with ``stream.noack_take(max, within)``, which
yields buffered *events* and never acks them (faust/streams.py, ``noack_take``: the
``await self.ack(event)`` of ``take()`` is commented out there). The agent processes the
batch, hands candidates to the producer at once, then awaits the sink until InfluxDB has
every point (retrying with backoff while it is down), and only then acks each event
(``Stream.ack`` -> ``Consumer.ack``). The consumer commits, every
``broker_commit_interval``, only the highest *contiguous* acked offset per partition
(``Consumer._new_offset``), after flushing the producer (``Consumer._commit_offsets``).
An event whose points are not stored is never acked, so neither it nor anything after it
in its partition is committed; after a crash it is read again and its points rewritten
to the same series and time. ``stream_wait_empty=False`` so that stopping the worker
commits what is acked instead of waiting for events that cannot be stored.

State is written to the tables only after the batch's points are stored
(:class:`BatchState`), so the changelog never runs ahead of storage: a re-read batch
recomputes the same figures. Table writes take the changelog partition from the *current
event*; each key is written under its own last event (faust's task-local variable only:
``Stream._set_current_event`` would also overwrite the stream's ``current_event``, which
``noack_take``'s buffering processor reads in the background, and lose events).
"""

from __future__ import annotations

import json
import logging
import math
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.streams import _current_event
from pydantic import ValidationError

from civic_iot.contracts.alerts import AlertCandidate
from civic_iot.contracts.processing import (
    NETWORK_KEY,
    Observation,
    SeismicTick,
    StrongShakingNotice,
    TownshipReport,
)
from civic_iot.contracts.readings import Reading
from civic_iot.registry import Registry, load_registry
from civic_iot.settings import Settings
from civic_iot.storage.points import Point
from civic_iot.storage.sink import InfluxSink, PointSink, Publisher, deadletter_report, store
from civic_iot.thresholds import Thresholds, load_thresholds
from civic_iot.topology import Topology
from processors.detectors.health import silent_devices
from processors.handlers import (
    Context,
    DeviceOutcome,
    handle_air,
    handle_quake,
    handle_seismic,
    handle_shaking,
    handle_township,
    handle_water,
    open_candidates,
)
from processors.points import (
    deadletter_point,
    pipeline_point,
    reading_points,
    sensor_health_point,
)

logger = logging.getLogger(__name__)

SinkFactory = Callable[[str], PointSink]


class FaustPublisher:
    """:class:`~processors.sink.Publisher` on the app's own producer, so the consumer's
    commit (which flushes that producer first) never passes an unsent message."""

    def __init__(self, app: faust.App) -> None:
        self._app = app
        self._topics: dict[str, Any] = {}

    async def add(self, topic: str, key: str, value: bytes) -> None:
        t = self._topics.get(topic)
        if t is None:
            t = self._topics[topic] = self._app.topic(topic, value_serializer="raw")
        await t.send(key=key.encode(), value=value)

    async def flush(self) -> None:
        await self._app.producer.flush()

    async def close(self) -> None:
        return None


class BatchState:
    """A table seen through the current batch: reads see the batch's own writes, and
    nothing reaches the table (and so its changelog) until :meth:`write` after the
    batch's points are stored. A crash before that leaves the old state, and the
    re-read batch recomputes the same figures; a crash after it finds each key's stored
    offset and skips what the state already holds (``_seen``)."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self._new: dict[str, tuple[dict[str, Any], Any]] = {}

    def get(self, key: str) -> dict[str, Any]:
        hit = self._new.get(key)
        return hit[0] if hit is not None else (self.table.get(key) or {})

    def set(self, key: str, value: dict[str, Any], event: Any) -> None:
        self._new[key] = ({**value, "offset": int(event.message.offset)}, event)

    def reset(self) -> None:
        """Forget a batch that did not finish (its events are not acked either)."""
        self._new.clear()

    def write(self) -> None:
        """Into the table, each key under its own last event (its changelog partition)."""
        for key, (value, event) in self._new.items():
            _current_event.set(weakref.ref(event))
            self.table[key] = value
        self._new.clear()


class Stats:
    """Counters and latencies of this worker for the ``pipeline`` measurement."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        #: Kafka record time -> points stored, ms, since the last snapshot.
        self.latencies_ms: list[float] = []
        #: Kafka time of the triggering packet -> quake candidate sent, ms.
        self.quake_latencies_ms: list[float] = []

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


def create_app(
    settings: Settings,
    *,
    registry: Registry | None = None,
    thresholds: Thresholds | None = None,
    sink_factory: SinkFactory | None = None,
    publisher: Publisher | None = None,
) -> faust.App:
    """The processors app. ``sink_factory(name)`` gives each agent its own sink and
    ``publisher`` sends to Kafka; both default to the real ones (InfluxDB, the app's
    producer) and are replaced by in-memory recorders in unit tests. ``thresholds``
    default to the file ``settings.thresholds``, checked against the registry (a wrong
    file stops the worker here, before it consumes anything)."""
    p = settings.processors
    topics = Topology.of(settings)
    n = settings.kafka.partitions
    app = faust.App(
        topics.processors_app,
        broker=f"kafka://{settings.kafka.bootstrap}",
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=p.batch_max,
        topic_partitions=n,
        table_standby_replicas=0,
        stream_wait_empty=False,
        # A killed worker's partitions move to the survivors after this, not Faust's 60 s.
        broker_session_timeout=15.0,
        broker_heartbeat_interval=3.0,
        web_enabled=p.web_port > 0,
        web_port=p.web_port or 6066,
        web_bind=p.web_host,
        web_host=p.web_host,
    )
    if p.web_port > 0:
        # Prometheus /metrics on the worker's web port: events, lag by partition, commits.
        setup_prometheus_sensors(app)
    reg = registry if registry is not None else load_registry(settings.registry)
    thr = thresholds if thresholds is not None else load_thresholds(settings.thresholds, reg)
    thr.log_in_force()
    ctx = Context.build(settings.influx, reg, thr)
    if sink_factory is None:

        def sink_factory(name: str) -> PointSink:
            # Refused points go to storage.deadletter on the app's producer, which the
            # consumer flushes before it commits.
            return InfluxSink.from_settings(settings, name, service="processors", deadletters=pub)

    sinks: dict[str, PointSink] = {}  # by name, for /health
    make_sink = sink_factory

    async def close_sinks(*_args: Any, **_kw: Any) -> None:
        for sink in sinks.values():
            await sink.close()

    app.on_before_shutdown.connect(close_sinks)

    def new_sink(name: str) -> PointSink:
        sinks[name] = sink = make_sink(name)
        return sink

    pub: Publisher = publisher if publisher is not None else FaustPublisher(app)
    stats = Stats()
    retry_s = settings.influx.write_backoff_cap_s

    def table(name: str, partitions: int = n) -> Any:
        return app.Table(
            name,
            default=None,
            partitions=partitions,
            schema=faust.Schema(key_serializer="json", value_serializer="json"),
        )

    air_table = table("air-state")
    water_table = table("water-state")
    seismic_table = table("seismic-state")
    township_table = table("township-state")
    quake_table = table("quake-state", partitions=1)
    shaking_table = table("shaking-state")

    town_topic = app.topic(topics.township, partitions=n, internal=True)
    trig_topic = app.topic(topics.triggers, partitions=1, internal=True)
    shake_topic = app.topic(topics.shaking, partitions=n, internal=True)

    async def publish(candidates: Sequence[AlertCandidate]) -> None:
        for c in candidates:
            await pub.add(topics.candidates, c.key, c.model_dump_json().encode())
            logger.info("alert candidate key=%s level=%d value=%s", c.key, c.level, f"{c.value:g}")

    async def batches(
        stream: Any,
        name: str,
        sink: PointSink,
        handle: Callable[[Any], Awaitable[None]],
        *,
        within: float = p.batch_within_s,
        after: Callable[[], Awaitable[None]] | None = None,
        readings: bool = False,
        state: BatchState,
    ) -> None:
        """The commit-after-sink loop shared by every agent (see the module docstring)."""
        async for events in stream.noack_take(p.batch_max, within):
            state.reset()
            for event in events:
                await handle(event)
            if after is not None:
                await after()
            await store(sink, what=name, retry_s=retry_s)
            state.write()
            _current_event.set(None)
            for event in events:
                await stream.ack(event)
            if readings:
                stats.stored([ms for e in events if (ms := _record_ms(e)) is not None])

    def reading_of(event: Any, kind: str) -> Reading | None:
        stats.counters["readings_in"] += 1
        try:
            return Reading.from_record(event.value)
        except ValidationError as exc:
            # ingest validated it: a message that is no Reading is not ours to store.
            stats.counters["deadletters"] += 1
            msg = event.message
            logger.error(
                "not a reading topic=%s partition=%d offset=%d kind=%s error=%s",
                msg.topic,
                msg.partition,
                msg.offset,
                kind,
                exc.errors(include_url=False)[:3],
            )
            return None

    #: For the silence check: processing-clock time of the latest reading per kind, the
    #: newest event time (epoch s) per kind and source partition, each device's partition.
    arrivals: dict[str, float] = {}
    clocks: dict[tuple[str, int], float] = {}
    partition_of: dict[str, int] = {}
    received: dict[str, float] = {}
    #: A device is silent only if nothing came from it on the processing clock for this
    #: long as well: per-device streams are delayed independently (publishers, broker,
    #: backlog), so a device may lag its partition's event-time clock without being silent.
    received_grace_s = 30.0
    started = time.monotonic()

    def device_agent(
        kind: str, topic: Any, state_table: Any, handler: Callable[..., Any]
    ) -> PointSink:
        sink = new_sink(kind)
        states = BatchState(state_table)
        seismic_batch: list[tuple[Any, int | None, int]] = []

        async def handle(event: Any) -> None:
            reading = reading_of(event, kind)
            if reading is None:
                return
            arrivals[kind] = time.monotonic()
            part = event.message.partition
            t = reading.event_time.timestamp()
            if t > clocks.get((kind, part), -math.inf):
                clocks[(kind, part)] = t
            partition_of[reading.device_id] = part
            received[reading.device_id] = time.monotonic()
            env = states.get(reading.device_id)
            if _seen(env, event):
                # Replayed after a restart: the state already holds it (its changelog was
                # written, the offset not yet committed). Rewrite the raw point only.
                stats.counters["replayed"] += 1
                sink.add(reading_points(reading, ctx.buckets))
                return
            try:
                out = handler(env, reading, ctx)
            except Exception:
                # A detector bug must not lose the reading nor stop the stream.
                logger.exception("detector failed reading=%s kind=%s", reading.reading_id, kind)
                stats.counters["detector_errors"] += 1
                sink.add(reading_points(reading, ctx.buckets))
                return
            states.set(reading.device_id, out.state, event)
            sink.add(out.points)
            for r in getattr(out, "reports", ()):
                await pub.add(town_name, r.township, r.model_dump_json().encode())
            if kind == "seismic":
                seismic_batch.append((out, _record_ms(event), event.message.partition))

        async def send_tick() -> None:
            """Per source partition and packet second of the batch, in time order, one
            message to the associator (triggers, observations, clock), so that a backlog
            replays as it happened: a batch may span many seconds, events close on that
            clock, and the clock is the slowest partition's (see ``handle_quake``)."""
            if not seismic_batch:
                return
            groups: dict[tuple[int, int], list[tuple[Any, int | None]]] = {}
            for o, ts, part in seismic_batch:
                groups.setdefault((math.ceil(o.end_s), part), []).append((o, ts))
            seismic_batch.clear()
            for (_, part), group in sorted(groups.items()):
                tick = SeismicTick(
                    now_s=max(o.end_s for o, _ in group),
                    triggers=tuple(o.trigger for o, _ in group if o.trigger),
                    observations=tuple(_latest_obs([o.observation for o, _ in group])),
                    trigger_record_ms=min(
                        (ts for o, ts in group if o.trigger and ts), default=None
                    ),
                    partition=part,
                )
                await pub.add(trig_name, NETWORK_KEY, tick.model_dump_json().encode())

        async def agent(stream: Any) -> None:
            await batches(stream, kind, sink, handle, after=send_tick, readings=True, state=states)

        app.agent(topic, name=topics.agent(kind), concurrency=1)(agent)
        return sink

    town_name, trig_name = topics.township, topics.triggers
    shake_name = topics.shaking

    def water_handler(env: dict[str, Any], reading: Reading, ctx: Context) -> DeviceOutcome:
        # The device's strong shaking, as the shaking agent stored it (same partition).
        return handle_water(env, reading, ctx, shaking=shaking_table.get(reading.device_id))

    device_sinks = [
        device_agent("air", app.topic(topics.readings("air")), air_table, handle_air),
        device_agent("water", app.topic(topics.readings("water")), water_table, water_handler),
        device_agent(
            "seismic", app.topic(topics.readings("seismic")), seismic_table, handle_seismic
        ),
    ]

    # Dead letters are counted in InfluxDB for the pipeline dashboard (the raw bytes stay
    # on the Kafka topic). No state: a plain batch of points, committed after the sink.
    deadletter_sink = new_sink("deadletter")
    no_state = BatchState({})

    async def deadletter_agent(stream: Any) -> None:
        async def handle(event: Any) -> None:
            try:
                pt = deadletter_point(json.loads(event.value), ctx.buckets)
            except (ValueError, KeyError, TypeError):
                logger.exception("unreadable dead-letter record offset=%s", event.message.offset)
                return
            deadletter_sink.add([pt] if pt else [])

        await batches(stream, "deadletter", deadletter_sink, handle, state=no_state)

    app.agent(app.topic(topics.deadletter), name=topics.agent("deadletter"), concurrency=1)(
        deadletter_agent
    )

    township_sink = new_sink("township")
    town_states = BatchState(township_table)

    async def township_agent(stream: Any) -> None:
        async def handle(event: Any) -> None:
            report = TownshipReport.model_validate_json(event.value)
            env = town_states.get(report.township)
            if _seen(env, event):
                return
            decision = handle_township(env, report, ctx, datetime.now(UTC))
            town_states.set(report.township, decision.state, event)
            await publish(decision.candidates)
            township_sink.add(decision.points)

        await batches(stream, "township", township_sink, handle, state=town_states)

    app.agent(town_topic, name=topics.agent("township"), concurrency=1)(township_agent)

    shaking_sink = new_sink("shaking")
    shaking_states = BatchState(shaking_table)

    async def shaking_agent(stream: Any) -> None:
        async def handle(event: Any) -> None:
            notice = StrongShakingNotice.model_validate_json(event.value)
            env = shaking_states.get(notice.device)
            if _seen(env, event):
                return
            decision = handle_shaking(env, notice, ctx)
            shaking_states.set(notice.device, decision.state, event)
            shaking_sink.add(decision.points)
            logger.info(
                "strong shaking device=%s township=%s event=%s intensity=%s",
                notice.device,
                notice.township,
                notice.event_id,
                notice.intensity,
            )

        await batches(stream, "shaking", shaking_sink, handle, state=shaking_states)

    app.agent(shake_topic, name=topics.agent("shaking"), concurrency=1)(shaking_agent)

    quake_sink = new_sink("quake")
    quake_states = BatchState(quake_table)

    async def quake_agent(stream: Any) -> None:
        ticks: list[SeismicTick] = []

        last: list[Any] = []

        async def handle(event: Any) -> None:
            if not _seen(quake_states.get(NETWORK_KEY), event):
                ticks.append(SeismicTick.model_validate_json(event.value))
                last.append(event)

        async def step() -> None:
            if not ticks:
                return
            # One associator step per tick, in stream-time order (Associator.step).
            state = quake_states.get(NETWORK_KEY)
            found: list[AlertCandidate] = []
            points: list[Point] = []
            for tick in sorted(ticks, key=lambda k: k.now_s):
                decision = handle_quake(state, [tick], ctx, datetime.now(UTC))
                state = decision.state
                await publish(decision.candidates)
                for notice in decision.notices:
                    await pub.add(shake_name, notice.device, notice.model_dump_json().encode())
                found += decision.candidates
                points += decision.points
            quake_states.set(NETWORK_KEY, state, last[-1])
            last.clear()
            first = min((t.trigger_record_ms for t in ticks if t.trigger_record_ms), default=None)
            if found and first is not None:
                latency = time.time() * 1000 - first
                stats.quake_latencies_ms.append(latency)
                logger.info("quake candidate latency_ms=%.1f", latency)
            quake_sink.add(points)
            ticks.clear()

        await batches(
            stream,
            "quake",
            quake_sink,
            handle,
            within=p.quake_within_s,
            after=step,
            state=quake_states,
        )

    app.agent(trig_topic, name=topics.agent("quake"), concurrency=1)(quake_agent)

    # --- timers ---------------------------------------------------------------------

    async def republish_open_candidates() -> None:
        """Identical candidates raise no new alert message; they keep it from expiring."""
        sent = 0
        for tbl in (township_table, quake_table):
            for _, state in list(tbl.items()):
                for key, doc in open_candidates(state):
                    await pub.add(topics.candidates, key, doc.encode())
                    sent += 1
        if sent:
            logger.info("open alert candidates re-sent count=%d", sent)

    timer_sink = new_sink("timers")
    flagged_silent: set[str] = set()

    async def silence_check() -> None:
        now = datetime.now(UTC)
        found = []
        refs: dict[str, datetime] = {}
        for kind, tbl in (("air", air_table), ("water", water_table), ("seismic", seismic_table)):
            seen = {
                k: datetime.fromtimestamp(float(v["last_seen"]), UTC)
                for k, v in list(tbl.items())
                if v and v.get("last_seen") is not None
            }
            if not seen:
                continue
            # While readings of this kind keep arriving, each device is judged against the
            # newest event time of its own partition: a replay, a backlog or a compressed
            # scenario runs on event time, and partitions progress at different speeds, so
            # a device is not silent because its clock or its partition is behind. When the
            # whole kind has gone quiet on the processing clock, the wall clock judges: an
            # outage is silence too.
            quiet_s = time.monotonic() - arrivals.get(kind, started)
            kind_clocks = [c for (k, _), c in clocks.items() if k == kind]
            silent = []
            for device, last in seen.items():
                if time.monotonic() - received.get(device, started) < received_grace_s:
                    continue
                if quiet_s >= ctx.silent_after_s[kind] or not kind_clocks:
                    ref = now
                else:
                    part_clock = clocks.get((kind, partition_of.get(device, -1)))
                    ref_s = part_clock if part_clock is not None else min(kind_clocks)
                    ref = datetime.fromtimestamp(ref_s, UTC)
                for f in silent_devices({device: last}, ref, ctx.silent_after_s[kind], factor=1):
                    silent.append(f)
                    refs[device] = ref
            found += silent
            flagged_silent.difference_update(set(seen) - {f.device_id for f in silent})
        new = [f for f in found if f.device_id not in flagged_silent]
        for f in new:
            dev = reg.get(f.device_id)
            pt = sensor_health_point(
                f.device_id,
                dev.township if dev else "",
                "silent",
                active=True,
                detail=f"no reading since {f.since.isoformat(timespec='seconds')} "
                f"(judged at {refs[f.device_id].isoformat(timespec='seconds')})",
                at=now,
                buckets=ctx.buckets,
            )
            timer_sink.add([pt] if pt else [])
        if new:
            try:
                await timer_sink.flush()
            except Exception as exc:  # noqa: BLE001 - retried at the next check
                logger.warning("silent devices not stored, retry next check error=%s", exc)
                return
            flagged_silent.update(f.device_id for f in new)
            logger.info("devices silent count=%d", len(new))

    if p.stats_interval_s > 0:

        async def pipeline_stats() -> None:
            snap = stats.snapshot()
            snap["write_errors"] = float(sum(getattr(s, "write_errors", 0) for s in device_sinks))
            snap["lag"] = float(consumer_lag(app))
            pt = pipeline_point(p.instance, snap, time.time_ns(), ctx.buckets)
            if pt is None:
                return
            timer_sink.add([pt])
            try:
                await timer_sink.flush()
            except Exception as exc:  # noqa: BLE001 - statistics are best effort
                logger.warning("pipeline statistics not stored error=%s", exc)

        app.timer(interval=p.stats_interval_s)(pipeline_stats)

    recovered: list[bool] = []

    def _on_ready(_app: Any, *_args: Any, **_kw: Any) -> None:
        # Faust sends this after every rebalance once the tables are recovered: from
        # the first one on, the worker consumes.
        if not recovered:
            recovered.append(True)
            logger.info("worker ready instance=%s", p.instance)

    # mode's handler type spells out the ``signal`` keyword every receiver gets.
    app.on_rebalance_complete.connect(_on_ready)  # type: ignore[arg-type]

    if p.web_port > 0:

        @app.page("/health")
        async def health(web: Any, _request: Any) -> Any:
            failing = {n: getattr(s, "failing_since", None) for n, s in sinks.items()}
            report = worker_health(
                failing,
                now=time.monotonic(),
                grace_s=p.health_storage_grace_s,
                lag=consumer_lag(app),
                partitions=len(app.consumer.assignment()) if app.consumer else 0,
                instance=p.instance,
                ready=bool(recovered),
            )
            report["storage_deadletters"] = deadletter_report(sinks)
            return web.json(report, status=200 if report["healthy"] else 503)

    app.timer(interval=p.republish_interval_s)(republish_open_candidates)
    app.timer(interval=p.silence_check_interval_s)(silence_check)
    return app


def worker_health(
    failing_since: Mapping[str, float | None],
    *,
    now: float,
    grace_s: float,
    lag: int,
    partitions: int,
    instance: str,
    ready: bool = True,
) -> dict[str, Any]:
    """The worker's ``/health`` body: unhealthy until its first rebalance and table
    recovery are done (``ready``; before that it consumes nothing), and once any sink's
    InfluxDB writes have been failing for ``grace_s`` (its agent then holds its offsets:
    nothing is stored, nothing lost). Lag and partitions are reported, not judged: a
    worker may own no partition when there are more workers than partitions, and a
    backlog drains by itself."""
    down = {
        name: round(now - since, 1)
        for name, since in sorted(failing_since.items())
        if since is not None and now - since >= grace_s
    }
    return {
        "healthy": ready and not down,
        "ready": ready,
        "instance": instance,
        "storage": "unavailable" if down else "ok",
        "storage_failing_s": down,
        "partitions": partitions,
        "lag": lag,
    }


def consumer_lag(app: faust.App) -> int:
    """Records not yet committed on this worker's partitions (highwater - committed)."""
    try:
        consumer = app.consumer
        committed = consumer._committed_offset  # type: ignore[attr-defined]  # no public accessor
        return sum(
            max(0, (consumer.highwater(tp) or 0) - (committed.get(tp) or 0))
            for tp in consumer.assignment()
        )
    except Exception:  # a statistic must never stop the worker
        logger.debug("consumer lag unavailable", exc_info=True)
        return 0


def _record_ms(event: Any) -> int | None:
    """The Kafka record timestamp in ms (faust keeps it as float seconds)."""
    ts = event.message.timestamp
    return None if not ts else round(float(ts) * 1000)


def _seen(state: dict[str, Any], event: Any) -> bool:
    """Whether a key's state already includes this message (the offset it stored).

    Faust writes a table's changelog as soon as the value is set, but the source offset
    is committed later; after a crash in between, the message comes again. Each key's
    input stays in one partition, so the offset of the last message applied to a key
    tells a replay from a new message, and the detectors see every reading once.
    """
    seen = state.get("offset")
    return seen is not None and int(event.message.offset) <= int(seen)


def _latest_obs(observations: Sequence[Observation | None]) -> list[Observation]:
    """The newest observation per station (peaks only grow within an event window)."""
    latest: dict[str, Observation] = {}
    for o in observations:
        if o is not None:
            latest[o.station_id] = o
    return list(latest.values())


__all__ = [
    "FaustPublisher",
    "create_app",
    "worker_health",
]
