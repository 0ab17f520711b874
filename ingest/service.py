"""The ingest process: MQTT (shared subscription) -> validate -> Kafka, nothing lost.

Everything runs on one asyncio loop: paho is driven from it by :mod:`civic_iot.mqtt` (no
paho network thread), whose ``own`` reader slices device readings out of what the socket
holds. A batch is validated and handed to Kafka (idempotent producer, ``acks=all``); while
Kafka acknowledges it, the next batch is validated (up to ``batches_in_flight``). Only when
Kafka has every record of a batch are its MQTT PUBACKs sent (manual acknowledgements),
batches strictly in arrival order. If ingest dies mid-flight the broker still holds the
unacknowledged messages for the persistent session and redelivers them; the duplicates
collapse downstream by ``reading_id``. The broker never has more than ``receive_maximum``
messages in flight to us, which bounds our memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections import Counter, deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram

from civic_iot import retry
from civic_iot.accounts import INGEST_USER
from civic_iot.contracts.deadletter import deadletter_record, device_of
from civic_iot.contracts.provenance import Marker
from civic_iot.contracts.readings import chunked, record_value
from civic_iot.mqtt import Message, MqttConnection
from civic_iot.registry import Registry, load_registry
from civic_iot.settings import Settings, mark_key, mqtt_endpoint, mqtt_password
from civic_iot.topology import READING_KINDS, Topology
from ingest.refusals import Limits, ReadingRefusedError
from ingest.validate import validate

logger = logging.getLogger(__name__)

MESSAGES = PromCounter("civic_ingest_messages_total", "MQTT messages handled", ["outcome"])
DEADLETTERS = PromCounter("civic_ingest_deadletters_total", "Refused messages", ["reason"])
BATCH_SECONDS = Histogram(
    "civic_ingest_batch_seconds", "A batch handed to Kafka -> acknowledged by Kafka and the broker"
)
CONNECTED = Gauge("civic_ingest_mqtt_connected", "1 while connected to the broker")
INBOX = Gauge("civic_ingest_inbox_messages", "Read from MQTT, not yet handed to Kafka")
IN_FLIGHT = Gauge("civic_ingest_kafka_batches_in_flight", "Batches Kafka has not acknowledged")
# Bound once: ``labels()`` takes a lock and a dict lookup, and this runs per message.
_ACCEPTED = MESSAGES.labels("accepted")
_LATE = MESSAGES.labels("late")
_REFUSED = MESSAGES.labels("deadletter")


#: Backoff (:mod:`civic_iot.retry`) between re-sends of a batch Kafka did not take, s.
KAFKA_RETRY_BASE_S = 0.5
KAFKA_RETRY_CAP_S = 10.0


class Inbound(NamedTuple):
    """One MQTT message, converted at the edge (paho's type does not travel inward)."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    received_at: datetime


class MqttSource:
    """The device door's MQTT side: a persistent session on the shared subscription, with
    manual acknowledgements, on :class:`civic_iot.mqtt.MqttConnection` (paho driven by
    the asyncio loop, reconnecting with the retry policy's backoff).

    Messages land in an inbox, a whole read at a time; :meth:`ack` sends their PUBACKs
    once Kafka has them. The inbox is bounded by the broker: it never has more than
    ``receive_maximum`` unacknowledged messages in flight to us.
    """

    def __init__(self, settings: Settings) -> None:
        self._inbox: deque[Inbound] = deque()
        self._ready = asyncio.Event()
        self._woken = False
        self._kicked = False
        m = settings.mqtt
        self._subscription = Topology.of(settings).device_subscription
        broker = mqtt_endpoint(settings)
        self.mqtt = MqttConnection(
            host=broker.host,
            port=broker.port,
            tls_ca=broker.tls_ca,
            client_id=f"civic-ingest-{settings.ingest.instance}",
            username=m.ingest_username,
            password=m.ingest_password.get_secret_value()
            if m.ingest_password
            else mqtt_password(settings, INGEST_USER),
            keepalive_s=m.keepalive_s,
            clean_start=False,
            session_expiry_s=m.session_expiry_s,
            receive_maximum=settings.ingest.receive_maximum,
            manual_ack=True,
            reader=settings.ingest.mqtt_reader,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            on_messages=self._on_messages,
        )

    @property
    def connected(self) -> bool:
        return self.mqtt.connected

    def start(self) -> None:
        self.mqtt.start()

    async def stop(self) -> None:
        """Say goodbye to the broker (unacknowledged messages stay in the session)."""
        await self.mqtt.stop()
        CONNECTED.set(0)

    def ack(self, batch: list[Inbound]) -> None:
        """Acknowledge a batch to the broker, in arrival order."""
        if all(item.qos <= 1 for item in batch):  # QoS 0 needs none; we subscribe at 1
            self.mqtt.ack([item.mid for item in batch if item.qos == 1])
        else:
            for item in batch:
                if item.qos:
                    self.mqtt.ack([item.mid], item.qos)

    def wake(self) -> None:
        """Make :meth:`wait` return although the inbox is empty, from now on (to stop)."""
        self._woken = True
        self._ready.set()

    def kick(self) -> None:
        """Make :meth:`wait` return once although the inbox may be empty."""
        self._kicked = True
        self._ready.set()

    async def wait(self) -> None:
        """Return once a message is in the inbox (or :meth:`wake` or :meth:`kick` was called)."""
        while not self._inbox and not self._woken and not self._kicked:
            self._ready.clear()
            await self._ready.wait()
        self._kicked = False

    @property
    def pending(self) -> int:
        """Messages in the inbox."""
        return len(self._inbox)

    def take(self, most: int) -> list[Inbound]:
        """Up to ``most`` messages from the inbox, in arrival order."""
        inbox = self._inbox
        return [inbox.popleft() for _ in range(min(most, len(inbox)))]

    def _on_messages(self, batch: list[Message]) -> None:
        now = datetime.now(UTC)  # one clock read per read: they arrived together
        self._inbox.extend([Inbound(t, p, mid, qos, now) for t, p, mid, qos, _r in batch])
        self._ready.set()

    def _on_connect(self, session_present: bool) -> None:
        # devices/# (not devices/+/+): a malformed topic under a device's tree must reach us
        # to be dead-lettered with its reason instead of vanishing.
        self.mqtt.subscribe(self._subscription, qos=1)
        CONNECTED.set(1)
        logger.info(
            "mqtt connected session_present=%s subscription=%s",
            session_present,
            self._subscription,
        )

    def _on_disconnect(self, _reason: object) -> None:
        CONNECTED.set(0)


class Ingest:
    """Validate and forward batches; the only place that decides accept or dead-letter."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.topics = Topology.of(settings)
        self.limits = Limits.of(settings)
        self.counts: Counter[str] = Counter()
        self._registry_mtime = _mtime(settings.registry)

    def route(self, item: Inbound) -> tuple[str, bytes, bytes]:
        """(Kafka topic, key, value) for one message: a reading or a dead letter."""
        try:
            reading = validate(
                item.topic,
                item.payload,
                registry=self.registry,
                limits=self.limits,
                now=item.received_at,
            )
        except ReadingRefusedError as exc:
            self.counts[f"deadletter:{exc.reason}"] += 1
            DEADLETTERS.labels(exc.reason).inc()
            _REFUSED.inc()
            device = device_of(item.topic)
            logger.info("refused device=%s topic=%s reason=%s", device, item.topic, exc.reason)
            value = deadletter_record(
                topic=item.topic,
                raw=item.payload,
                reason=exc.reason,
                error=exc.message,
                device_id=device,
                received_at=item.received_at,
            )
            return self.topics.deadletter, (device or item.topic).encode(), value
        self.counts["accepted"] += 1
        _ACCEPTED.inc()
        if reading.late:
            _LATE.inc()
        return (
            self.topics.readings(reading.kind),
            reading.device_id.encode(),
            reading.to_record(),
        )

    def maybe_reload_registry(self) -> None:
        """Pick up ``civic-iot devices add`` without a restart."""
        mtime = _mtime(self.settings.registry)
        if mtime != self._registry_mtime:
            try:
                self.registry = load_registry(self.settings.registry)
            except Exception:
                logger.exception(
                    "registry reload failed path=%s; keeping the old one", self.settings.registry
                )
            else:
                logger.info("registry reloaded devices=%d", len(self.registry))
            self._registry_mtime = mtime


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


async def _produce_batch(
    producer: AIOKafkaProducer,
    records: list[tuple[str, bytes, bytes]],
    mark: Marker,
    readings: Collection[str] = frozenset(),
) -> None:
    """Produce until Kafka has every record; retry the whole batch on failure (idempotent)."""
    backoff = retry.Backoff(KAFKA_RETRY_BASE_S, KAFKA_RETRY_CAP_S)
    while True:
        try:
            await asyncio.gather(*await _send_grouped(producer, records, mark, readings))
            return
        except Exception as exc:  # noqa: BLE001 - any Kafka error: keep the batch, retry
            delay = backoff.next_delay()
            logger.warning(
                "kafka produce failed records=%d error=%r; retrying in %.1fs",
                len(records),
                exc,
                delay,
            )
            await asyncio.sleep(delay)


@dataclass(slots=True)
class _Flight:
    """A batch handed to Kafka: its messages (to acknowledge), records (to re-send) and
    the future that completes when Kafka has all of them."""

    batch: list[Inbound]
    records: list[tuple[str, bytes, bytes]]
    done: asyncio.Future[Any]
    started: float


class _Pipeline:
    """Batches in flight to Kafka, acknowledged to the broker strictly in arrival order.

    Records are handed to the producer here, in order (one batch after the other), so
    Kafka receives each partition's records in arrival order; only the waiting for Kafka's
    acknowledgement overlaps with validating the next batch. A batch whose send failed is
    re-sent when it is the oldest, until Kafka has it (nothing later is acknowledged to the
    broker before it). Records of later batches that Kafka already took may then precede
    it in their partition: a reading is late by the length of the Kafka outage, which
    consumers handle like any late reading; its redelivered duplicates collapse by
    ``reading_id``.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        source: MqttSource,
        depth: int,
        mark: Marker,
        readings: Collection[str] = frozenset(),
    ) -> None:
        self._producer = producer
        self._mark = mark
        #: The readings topics, whose records hold a partition's readings of a batch.
        self._readings = readings
        self._source = source
        self.depth = depth
        self._flights: deque[_Flight] = deque()

    def __len__(self) -> int:
        return len(self._flights)

    async def send(self, batch: list[Inbound], records: list[tuple[str, bytes, bytes]]) -> None:
        started = time.perf_counter()
        try:
            done: asyncio.Future[Any] = asyncio.gather(
                *await _send_grouped(self._producer, records, self._mark, self._readings)
            )
        except Exception as exc:  # noqa: BLE001 - e.g. no metadata: settle re-sends it
            done = asyncio.get_running_loop().create_future()
            done.set_exception(exc)
        done.add_done_callback(self._landed)
        self._flights.append(_Flight(batch, records, done, started))

    def _landed(self, done: asyncio.Future[Any]) -> None:
        if not done.cancelled():
            done.exception()  # retrieved here: settle() deals with it
        self._source.kick()  # the loop acknowledges it even if no message comes

    async def settle(self, *, wait: bool = False) -> None:
        """Acknowledge the batches Kafka has, oldest first; with ``wait``, at least the
        oldest one (re-sending it until Kafka has it)."""
        flights = self._flights
        while flights and (wait or flights[0].done.done()):
            head = flights[0]
            try:
                await head.done
            except Exception as exc:  # noqa: BLE001 - any Kafka error: re-send, in order
                logger.warning(
                    "kafka produce failed records=%d error=%r; re-sending",
                    len(head.records),
                    exc,
                )
                await _produce_batch(self._producer, head.records, self._mark, self._readings)
            flights.popleft()
            self._source.ack(head.batch)  # PUBACKs in arrival order, after Kafka has it
            BATCH_SECONDS.observe(time.perf_counter() - head.started)
            wait = False


#: What ``AIOKafkaProducer.send`` uses when no partitioner is configured (none is, in run):
#: murmur2 of the key over the topic's partitions, so a device's readings share a partition.
_PARTITIONER = DefaultPartitioner()


@functools.lru_cache(maxsize=1 << 16)
def _partition(key: bytes, partitions: tuple[int, ...]) -> int:
    """The partition for a key, remembered: murmur2 is pure Python and keys repeat."""
    return int(_PARTITIONER(key, partitions, partitions))


async def _send_grouped(
    producer: AIOKafkaProducer,
    records: list[tuple[str, bytes, bytes]],
    mark: Marker,
    readings: Collection[str] = frozenset(),
) -> list[asyncio.Future[Any]]:
    """Hand the records to the producer as one Kafka batch per (topic, partition).

    The same records, partitions and order as one ``send`` per record, without a
    coroutine, a future and an accumulator lookup per record. Returns a future per batch.
    Each record carries ingest's ``mark`` (:mod:`civic_iot.contracts.provenance`). The
    readings of the ``readings`` topics go in records of several (:func:`readings_records`).
    """
    if readings:
        records = await readings_records(producer, records, readings=readings)
    partitions: dict[str, tuple[int, ...]] = {}
    batches: dict[tuple[str, int], Any] = {}
    futures: list[asyncio.Future[Any]] = []
    for topic, key, value in records:
        parts = partitions.get(topic)
        if parts is None:
            parts = partitions[topic] = tuple(sorted(await producer.partitions_for(topic)))
        tp = (topic, _partition(key, parts))
        batch = batches.get(tp)
        if batch is None:
            batch = batches[tp] = producer.create_batch()
        headers = mark.headers(topic, key, value)
        if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:  # full
            futures.append(await producer.send_batch(batch, topic, partition=tp[1]))
            batch = batches[tp] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                msg = f"record of {len(value)} bytes for {topic} exceeds the Kafka batch size"
                raise ValueError(msg)
    for (topic, partition), batch in batches.items():
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


async def readings_records(
    producer: AIOKafkaProducer,
    records: Sequence[tuple[str, bytes, bytes]],
    *,
    readings: Collection[str],
) -> list[tuple[str, bytes, bytes]]:
    """A batch's records with the readings gathered into records of several.

    Readings of one ``readings`` topic that go to one partition share a record (JSON
    Lines in arrival order, at most
    :data:`~civic_iot.contracts.readings.MAX_RECORD_BYTES` each:
    :func:`~civic_iot.contracts.readings.record_value`), keyed by its first reading's
    device, so that it lands where each of its readings would alone; ingest marks it
    like any record (:func:`_send_grouped`). The processors pay their per-record cost
    once per such record instead of once per reading, and take a marked record's
    readings without validating them again. Other records (dead letters) stay as they
    are; every partition keeps its order.
    """
    partitions: dict[str, tuple[int, ...]] = {}
    groups: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
    others: list[tuple[str, bytes, bytes]] = []
    for topic, key, value in records:
        if topic not in readings:
            others.append((topic, key, value))
            continue
        parts = partitions.get(topic)
        if parts is None:
            parts = partitions[topic] = tuple(sorted(await producer.partitions_for(topic)))
        groups.setdefault((topic, _partition(key, parts)), []).append((key, value))
    out: list[tuple[str, bytes, bytes]] = []
    for (topic, _), group in groups.items():
        first = 0
        for lines in chunked(v for _, v in group):
            value = record_value(lines)
            out.append((topic, group[first][0], value))
            first += len(lines)
    return out + others


async def run(settings: Settings, stop: asyncio.Event | None = None) -> Counter[str]:
    """Run ingest until ``stop`` is set (or SIGINT/SIGTERM). Returns the counts."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    ingest = Ingest(settings, load_registry(settings.registry))
    mark = Marker(mark_key(settings))  # no key: ingest refuses to start
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=512 * 1024,
        client_id=f"civic-ingest-{settings.ingest.instance}",
    )
    await producer.start()
    source = MqttSource(settings)
    http = None
    if settings.ingest.http_port:
        from civic_iot.health import serve_health  # noqa: PLC0415 - optional HTTP endpoint

        http = await serve_health(
            "127.0.0.1",
            settings.ingest.http_port,
            lambda: {"mqtt_connected": source.connected, **ingest.counts},
        )
    source.start()
    logger.info(
        "ingest started instance=%s registry_devices=%d",
        settings.ingest.instance,
        len(ingest.registry),
    )
    last_reload = time.monotonic()
    stopper = asyncio.ensure_future(stop.wait())
    stopper.add_done_callback(lambda _: source.wake())
    topics = Topology.of(settings)
    readings = frozenset(topics.readings(k) for k in READING_KINDS)
    pipeline = _Pipeline(producer, source, settings.ingest.batches_in_flight, mark, readings)
    try:
        while not stop.is_set():
            await source.wait()
            if stop.is_set():
                break
            await pipeline.settle()
            if len(pipeline) >= pipeline.depth:
                await pipeline.settle(wait=True)
            batch = source.take(settings.ingest.max_batch)
            if batch:
                await pipeline.send(batch, [ingest.route(item) for item in batch])
            INBOX.set(source.pending)
            IN_FLIGHT.set(len(pipeline))
            if time.monotonic() - last_reload > 10:
                ingest.maybe_reload_registry()
                last_reload = time.monotonic()
    finally:
        stopper.cancel()
        # What Kafka already has is acknowledged; anything else the broker redelivers.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_drain(pipeline), timeout=5)
        await source.stop()
        await producer.stop()
        if http is not None:
            await http.cleanup()
        logger.info("ingest stopped counts=%s", dict(ingest.counts))
    return ingest.counts


async def _drain(pipeline: _Pipeline) -> None:
    while len(pipeline):
        await pipeline.settle(wait=True)
