"""The processors' Faust app: settings, tables, topics, the agents and timers, health.

Topics (``p`` = ``settings.kafka.topic_prefix``, names from :mod:`civic_iot.topology`)
and agents (:mod:`processors.agents`, one module each), all ``concurrency=1``:

===========================  ==================  ==========================================
topic (key)                  agent               state table (key) and value
===========================  ==================  ==========================================
``p readings.air`` (device)     ``air``          ``air-state`` (device) ``AirDevice``
``p readings.water`` (device)   ``water``        ``water-state`` (device) ``WaterDevice``
``p readings.seismic`` (dev.)   ``seismic``      ``seismic-state`` (device) ``SeismicDevice``
``p processors.township``       ``township``     ``township-state`` (township)
(township, N partitions)                         ``TownshipState``
``p seismic.triggers``          ``quake``        ``quake-state`` (``network``) ``QuakeState``
(constant key, 1 partition)
``p processors.shaking``        ``shaking``      ``shaking-state`` (device) ``ShakingMark``
(device, N partitions)
``p readings.deadletter``       ``deadletter``   (none)
===========================  ==================  ==========================================

Device agents report each reading's level to ``processors.township`` keyed by township,
so per-township state is co-partitioned with its own input and the app scales out on
partitions. The earthquake associator needs every station's triggers in one place:
``seismic.triggers`` has one partition and is the one serial point, deliberately.

Strong shaking reaches the rain gauges through Kafka, never through the worker's memory
(the quake agent and a gauge's water agent may run in different workers): the quake agent
sends a notice per water device of a township shaken at intensity >= 5- to
``processors.shaking`` keyed by device id; the ``shaking`` agent keeps it in
``shaking-state``; the ``water`` agent reads that table for the reading's device and
judges its rain against R50 (``processors.handlers.handle_water``). This works because
``processors.shaking`` and ``readings.water`` have the same partition count and are
keyed alike (murmur2, the default partitioner of ingest's and Faust's producers): Faust
assigns co-partitioned topics by partition number (``PartitionAssignor``), so the worker
holding a device's ``readings.water`` partition holds its ``shaking-state`` partition
(:func:`processors.cli.copartitioning_errors` refuses to start otherwise).

A worker runs every agent (``CIVIC_PROCESSORS__ROLE=all``), or one of two halves in
processes of their own: ``bulk`` (air, water, township, shaking, dead letters) and
``seismic`` (the stations and the associator, app id and consumer group
``{processors_app}-seismic``: :func:`processors_app_id`). The halves share no table and
talk only through Kafka (``processors.shaking``), so a seismic worker's event loop,
producer buffer and partitions never wait behind an air or water backlog. The seismic
half may be split again: ``stations`` (the station agent, group
``{processors_app}-seismic``) and ``quake`` (the associator, group
``{processors_app}-quake``), which talk only through ``seismic.triggers``, so that an
associator step during an earthquake never holds the next second's packets back (one
worker of each; a ``seismic`` worker does not join them). The stations and the
associator have batch waits of their own (``seismic_within_s``, ``quake_within_s``): they
are on the warning path.

Every agent runs the commit-after-sink loop (:mod:`processors.agents.loop`): a batch's
events are acked, and its state written to the tables, only once its points are stored.
Faust's own files go under ``{data dir}/processors/{app id}``.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaClient
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.types import TopicT

from civic_iot.contracts.provenance import Marker
from civic_iot.health import KAFKA_ASK_INTERVAL_S, KafkaWatch
from civic_iot.registry import Registry, load_registry
from civic_iot.settings import ProcessorSettings, Settings, mark_key
from civic_iot.storage.sink import InfluxSink, PointSink, Publisher, deadletter_report
from civic_iot.thresholds import Thresholds, load_thresholds
from civic_iot.timebounds import TimeBounds
from civic_iot.topology import PRODUCER_BATCH_BYTES, STATE_RECORD_MAX_BYTES, Topology
from processors.agents.deadletter import DeadletterAgent
from processors.agents.device import AirAgent, DeviceDeps, SeismicAgent, WaterAgent
from processors.agents.faults import contained
from processors.agents.guard import ReadingGuard
from processors.agents.loop import BatchAgent, StallRepair, commit_after_sink
from processors.agents.outbox import FaustPublisher, Outbox
from processors.agents.quake import QuakeAgent
from processors.agents.shaking import ShakingAgent
from processors.agents.stats import Activity, Stats, consumer_lag
from processors.agents.tables import state_table
from processors.agents.timers import PipelineStats, Republish, SilenceWatch
from processors.agents.township import TownshipAgent
from processors.faust_adapter import (
    committed_offsets,
    on_rebalance_complete,
    seek_uncommitted_to_start,
    wait_for_fetches,
)
from processors.handlers import Context
from processors.states import (
    AirDevice,
    QuakeState,
    SeismicDevice,
    ShakingMark,
    TownshipState,
    WaterDevice,
)

logger = logging.getLogger(__name__)

#: Kafka session of a worker, s: a worker that died (and is not restarted with the same
#: instance, see :func:`group_instance_id`) loses its partitions to the others after this,
#: not Faust's 60 s; the broker's minimum is 6 s.
SESSION_TIMEOUT_S = 10.0

#: How often the worker asks Kafka whether it answers and looks at its progress, s
#: (for ``/health``).
HEALTH_CHECK_INTERVAL_S = KAFKA_ASK_INTERVAL_S

SinkFactory = Callable[[str], PointSink]
#: Events buffered per agent stream (Faust's default is 4096).
STREAM_BUFFER = 64


def group_instance_id(settings: Settings) -> str | None:
    """The worker's static group membership (KIP-345), when ``CIVIC_PROCESSORS__INSTANCE``
    is set: a worker killed and restarted with the same instance takes its partitions
    back at once (measured in the README's chaos table), without waiting for the dead
    process's session to time out and without a rebalance of the others. Two workers
    with one instance fence each other (the older one stops), so a deployment that sets
    it gives every worker its own; left unset (``docker compose --scale`` starts
    replicas alike), membership is dynamic and a killed worker costs one session
    timeout. A worker stopped with SIGTERM keeps its membership until the session times
    out too, so that a restart finds its partitions waiting."""
    p = settings.processors
    return f"worker-{p.instance}" if "instance" in p.model_fields_set else None


def create_app(
    settings: Settings,
    *,
    registry: Registry | None = None,
    thresholds: Thresholds | None = None,
    sink_factory: SinkFactory | None = None,
    publisher: Publisher | None = None,
    clock: Callable[[], float] = time.time,
) -> faust.App:
    """The processors app. ``sink_factory(name)`` gives each agent its own sink and
    ``publisher`` sends to Kafka; both default to the real ones (InfluxDB, the app's
    producer) and are replaced by in-memory recorders in unit tests. ``thresholds``
    default to the file ``settings.thresholds``, checked against the registry (a wrong
    file stops the worker here, before it consumes anything). Without the key of
    ingest's record mark (:func:`civic_iot.settings.mark_key`) the worker refuses to
    start. ``clock`` is the wall clock the readings' times are judged against, epoch s
    (:mod:`processors.agents.guard`)."""
    key = mark_key(settings)
    p = settings.processors
    topics = Topology.of(settings)
    n = settings.kafka.partitions
    app_id = processors_app_id(topics, p.role)
    app = faust.App(
        app_id,
        broker=f"kafka://{settings.kafka.bootstrap}",
        store="memory://",
        datadir=settings.data_dir / "processors" / app_id,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=p.batch_max,
        # A readings record holds up to 256 KB of readings: a few per agent buffered
        # are enough to keep it busy, and bound the worker's memory in a backlog.
        stream_buffer_maxsize=STREAM_BUFFER,
        # A table's state record may exceed Kafka's default 1 MB (the changelogs are made
        # to take it: civic_iot.topology.STATE_RECORD_MAX_BYTES).
        producer_max_request_size=STATE_RECORD_MAX_BYTES,
        # A batch's changelog records go out as one record batch per partition
        # (processors.faust_adapter.write_changelog): one that fills up waits for the
        # one before it to leave, a broker round trip. 1 MiB holds a backlog batch's
        # states of one partition (500 air devices x 2.5 KB over 4 partitions: ~310 KB).
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        topic_partitions=n,
        table_standby_replicas=0,
        stream_wait_empty=False,
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=SESSION_TIMEOUT_S / 3,  # one lost heartbeat costs nothing
        consumer_group_instance_id=group_instance_id(settings),
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
    bounds = TimeBounds.of(settings)
    ctx = dataclasses.replace(Context.build(settings.influx, reg, thr), bounds=bounds)
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
    retry_s = settings.influx.write_backoff_cap_s
    outbox = Outbox(pub, topics)
    stats = Stats()
    activity = Activity()

    bulk = p.role in ("all", "bulk")
    stations = p.role in ("all", "seismic", "stations")
    quake = p.role in ("all", "seismic", "quake")

    guard = ReadingGuard(
        marker=Marker(key),
        bounds=bounds,
        publisher=pub,
        deadletter_topic=topics.deadletter,
        stats=stats,
        buckets=ctx.buckets,
        clock=clock,
    )

    def deps(kind: str) -> DeviceDeps:
        return DeviceDeps(ctx, new_sink(kind), outbox, stats, activity, guard)

    devices: list[BatchAgent] = []
    agents: list[tuple[TopicT, BatchAgent]] = []
    watched: dict[str, Any] = {}  # kind -> its device table, for the silence watch
    republished: list[Any] = []  # tables whose open candidates are re-sent
    if bulk:
        air_table = state_table(app, "air-state", AirDevice, n)
        water_table = state_table(app, "water-state", WaterDevice, n)
        township_table = state_table(app, "township-state", TownshipState, n)
        shaking_table = state_table(app, "shaking-state", ShakingMark, n)
        devices += [
            AirAgent(deps("air"), air_table),
            WaterAgent(deps("water"), water_table, shaking_table),
        ]
        watched |= {"air": air_table, "water": water_table}
        republished.append(township_table)
        agents += [
            (
                app.topic(topics.deadletter),
                DeadletterAgent(ctx.buckets, new_sink("deadletter"), stats),
            ),
            (
                app.topic(topics.township, partitions=n, internal=True),
                TownshipAgent(ctx, township_table, new_sink("township"), outbox, stats),
            ),
            (
                app.topic(topics.shaking, partitions=n, internal=True),
                ShakingAgent(ctx, shaking_table, new_sink("shaking"), stats),
            ),
        ]
    if stations:
        seismic_table = state_table(app, "seismic-state", SeismicDevice, n)
        devices.append(
            SeismicAgent(deps("seismic"), seismic_table, close_on_second=p.seismic_close_on_second)
        )
        watched["seismic"] = seismic_table
    if quake:
        quake_table = state_table(app, "quake-state", QuakeState, 1)
        republished.append(quake_table)
        agents.append(
            (
                app.topic(topics.triggers, partitions=1, internal=True),
                QuakeAgent(ctx, quake_table, new_sink("quake"), outbox, stats),
            )
        )
    agents[:0] = [(app.topic(topics.readings(a.name)), a) for a in devices]
    for topic, agent in agents:
        _register(
            app,
            topics,
            topic,
            agent,
            batch_max=p.batch_max,
            within_s=batch_within_s(p, agent.name),
            retry_s=retry_s,
        )
    # A partition without a committed offset is read again from its start after every
    # rebalance, not from wherever the fetcher had got to (processors.faust_adapter).
    seek_uncommitted_to_start(app)
    if p.role == "bulk":
        wait_for_fetches(app, p.bulk_fetch_min_bytes, p.bulk_fetch_wait_s)
    else:
        wait_for_fetches(app, 1, settings.kafka.warning_fetch_wait_s)
    repair_stalls = _stall_repair(app, {t.get_topic_name(): a for t, a in agents}, p)

    timer_sink = new_sink("timers")
    republish = Republish(republished, outbox)
    silence = SilenceWatch(
        tables=watched,
        activity=activity,
        ctx=ctx,
        registry=reg,
        sink=timer_sink,
    )
    app.timer(interval=p.republish_interval_s)(contained(republish.run, stats, "republish"))
    app.timer(interval=p.silence_check_interval_s)(contained(silence.run, stats, "silence"))
    if p.stats_interval_s > 0:
        pipeline = PipelineStats(
            instance=p.instance,
            stats=stats,
            sinks=[a.sink for a in devices],
            lag=lambda: consumer_lag(app),
            ctx=ctx,
            sink=timer_sink,
        )
        app.timer(interval=p.stats_interval_s)(contained(pipeline.run, stats, "pipeline"))

    recovered: list[bool] = []

    def ready() -> None:
        # After every rebalance once the tables are recovered: from the first on, the
        # worker consumes.
        if not recovered:
            recovered.append(True)
            settle_heap(
                GC_YOUNG_THRESHOLD_STATIONS if stations and not bulk else GC_YOUNG_THRESHOLD
            )
            logger.info("worker ready instance=%s", p.instance)

    on_rebalance_complete(app, ready)
    app.timer(interval=HEALTH_CHECK_INTERVAL_S)(
        contained(lambda: repair_stalls(bool(recovered)), stats, "stall-repair")
    )

    if p.web_port > 0:
        kafka = KafkaWatch(f"processors worker instance={p.instance}")
        progress = Progress()
        probes: list[AIOKafkaClient] = []  # made in the worker's loop, bootstrapped

        async def check_health() -> None:
            # Its own client: the consumer's and producer's are faust's, and retry alone.
            if not probes:
                probe = AIOKafkaClient(bootstrap_servers=settings.kafka.bootstrap)
                try:
                    await probe.bootstrap()
                except Exception as exc:  # noqa: BLE001 - Kafka down: /health says so
                    await probe.close()
                    kafka.record(repr(exc))
                    return
                probes.append(probe)
            await kafka.ask(probes[0], HEALTH_CHECK_INTERVAL_S)
            progress.observe(time.monotonic(), committed_total(app), consumer_lag(app))

        app.timer(interval=HEALTH_CHECK_INTERVAL_S)(check_health)

        @app.page("/health")
        async def health(web: Any, _request: Any) -> Any:
            failing = {n: getattr(s, "failing_since", None) for n, s in sinks.items()}
            now = time.monotonic()
            report = worker_health(
                failing,
                now=now,
                grace_s=p.health_storage_grace_s,
                lag=consumer_lag(app),
                partitions=len(app.consumer.assignment()) if app.consumer else 0,
                instance=p.instance,
                ready=bool(recovered),
                rebalancing=bool(app.rebalancing),
                kafka=kafka.reason(),
                stalled_s=progress.stalled_s(now),
            )
            report["storage_deadletters"] = deadletter_report(sinks)
            return web.json(report, status=200 if report["healthy"] else 503)

    return app


#: Allocations (minus deallocations) between two collections of the youngest generation
#: (Python's default: 700). Every reading makes and drops a few hundred small objects;
#: collecting that often cost about a tenth of the worker's CPU (bench/processors.py).
GC_YOUNG_THRESHOLD = 20_000
#: The same for a worker of the seismic path alone (roles ``seismic``, ``stations``). A
#: young collection walks every young object alive, and a stations batch keeps about 40
#: per packet alive until it is decided (the samples as decoded, the new states): with
#: 20,000 a batch of ``batch_max`` (500) packets was walked once or twice, 10-20 ms each
#: (bench/stations.py: 35 us a packet, a seventh of the pure work). With this a batch is
#: decided and dropped between two collections.
GC_YOUNG_THRESHOLD_STATIONS = 100_000


def settle_heap(young: int = GC_YOUNG_THRESHOLD) -> None:
    """Once started: collect, then move everything alive (modules, faust and aiokafka,
    the topic metadata of the broker, the recovered tables) out of the collector's
    reach (``gc.freeze``), and collect the young generation less often. Full collections
    then walk what came after the start instead of the whole heap: with thousands of
    topics on the broker each took about 0.1 s, and they came every few seconds.
    Reference counting still frees everything as before; only cycles among frozen
    objects stay (none are made after the start that matter)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young, older, oldest)


def batch_within_s(p: ProcessorSettings, agent: str) -> float:
    """The longest wait, s, for a batch of the agent named ``agent``: the stations' and the
    associator's are shorter, they are on the warning path; the townships' longer, each
    of its batches writes every township state it reached."""
    waits = {
        "seismic": p.seismic_within_s,
        "quake": p.quake_within_s,
        "township": p.township_within_s,
    }
    return waits.get(agent, p.batch_within_s)


def processors_app_id(topics: Topology, role: str) -> str:
    """The Faust app id (the consumer group, and the prefix of its tables' changelogs) of
    a worker of ``role`` (:attr:`Topology.processors_seismic` for the seismic path and its
    stations, :attr:`Topology.processors_quake` for the associator alone)."""
    if role in ("seismic", "stations"):
        return topics.processors_seismic
    return topics.processors_quake if role == "quake" else topics.processors_app


def _stall_repair(
    app: faust.App, agents: Mapping[str, BatchAgent], p: ProcessorSettings
) -> Callable[[bool], Awaitable[None]]:
    """The timer's work of :class:`StallRepair`: a stalled input partition is sought to its
    committed offset (its start when none), with a warning."""
    repair = StallRepair(p.stall_repair_after_s)

    async def run(ready: bool) -> None:
        if not ready or app.rebalancing:
            return
        consumer: Any = app.consumer
        committed = committed_offsets(consumer)
        partitions = {
            tp: (committed.get(tp), consumer.highwater(tp) or 0)
            for tp in consumer.assignment()
            if tp.topic in agents
        }
        idle = {topic: agent.idle_since_s for topic, agent in agents.items()}
        now = time.monotonic()
        for tp in repair.due(now, partitions, idle):
            at, end = partitions[tp]
            if at is None:
                at = (await consumer.earliest_offsets(tp))[tp]
            logger.warning(
                "partition stalled, read again from its committed offset topic=%s "
                "partition=%d offset=%d end=%d stalled_s>=%.0f",
                tp.topic,
                tp.partition,
                at,
                end,
                p.stall_repair_after_s,
            )
            await consumer.seek(tp, at)

    return run


def _register(
    app: faust.App,
    topics: Topology,
    topic: TopicT,
    agent: BatchAgent,
    *,
    batch_max: int,
    within_s: float,
    retry_s: float,
) -> None:
    """``agent`` as a Faust agent on ``topic``, run by the commit-after-sink loop."""

    async def run(stream: Any) -> None:
        await commit_after_sink(
            stream, agent, batch_max=batch_max, within_s=within_s, retry_s=retry_s
        )

    # One at a time: with more, faust-streaming can commit past an unfinished message
    # (faust-streaming #606).
    app.agent(topic, name=topics.agent(agent.name), concurrency=1)(run)


class Progress:
    """Whether the worker commits while it has something to commit: sampled every
    :data:`HEALTH_CHECK_INTERVAL_S`, progress is a change of the committed offsets or no
    lag at all."""

    def __init__(self) -> None:
        self._committed: int | None = None
        self._since: float | None = None

    def observe(self, now: float, committed: int, lag: int) -> None:
        """One sample: offsets committed so far (summed) and the lag, at ``now`` (s)."""
        if lag == 0 or committed != self._committed or self._since is None:
            self._since = now
        self._committed = committed

    def stalled_s(self, now: float) -> float:
        """How long, s, the worker has had a lag and committed nothing (0: progressing)."""
        return 0.0 if self._since is None else now - self._since


def committed_total(app: faust.App) -> int:
    """Offsets committed on this worker's input partitions, summed (changelogs, read only
    to recover tables, are never committed)."""
    try:
        changelogs = app.tables.changelog_topics
        return sum(
            offset or 0
            for tp, offset in committed_offsets(app.consumer).items()
            if tp.topic not in changelogs
        )
    except Exception:  # a statistic must never stop the worker
        logger.debug("committed offsets unavailable", exc_info=True)
        return 0


def worker_health(
    failing_since: Mapping[str, float | None],
    *,
    now: float,
    grace_s: float,
    lag: int,
    partitions: int,
    instance: str,
    ready: bool = True,
    rebalancing: bool = False,
    kafka: str = "",
    stalled_s: float = 0.0,
) -> dict[str, Any]:
    """The worker's ``/health`` body: healthy only while it consumes, so unhealthy (with
    the ``reason``) until its first rebalance and table recovery are done (``ready``;
    before that it consumes nothing), during a rebalance, with no partition assigned (a
    worker beyond the partition count idles: 503 says so), while Kafka does not answer
    (``kafka``: why, "" while it does), once it has had a lag and committed nothing for
    ``grace_s`` (``stalled_s``), and once any sink's InfluxDB writes have been failing
    for ``grace_s`` (its agent then holds its offsets: nothing is stored, nothing lost).
    A lag alone is reported, not judged: a backlog drains by itself."""
    down = {
        name: round(now - since, 1)
        for name, since in sorted(failing_since.items())
        if since is not None and now - since >= grace_s
    }
    reasons = []
    if not ready:
        reasons.append("starting: first rebalance and table recovery not done")
    elif rebalancing:
        reasons.append("rebalancing")
    elif partitions == 0:
        reasons.append("no partition assigned")
    if kafka:
        reasons.append(kafka)
    if stalled_s >= grace_s:
        reasons.append(f"nothing committed for {stalled_s:.0f} s with a lag of {lag}")
    if down:
        reasons.append("storage unavailable: " + ", ".join(sorted(down)))
    return {
        "healthy": not reasons,
        "reason": "; ".join(reasons),
        "ready": ready,
        "instance": instance,
        "storage": "unavailable" if down else "ok",
        "storage_failing_s": down,
        "kafka": "unavailable" if kafka else "ok",
        "partitions": partitions,
        "lag": lag,
    }


__all__ = [
    "FaustPublisher",
    "Progress",
    "batch_within_s",
    "create_app",
    "processors_app_id",
    "worker_health",
]
