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

Faults, and what ingest does about them:

- **Kafka unavailable** (down, restarting, or a producer it can no longer use: an
  idempotent producer whose batches expired gets ``OutOfOrderSequenceNumber`` for ever
  after): a batch fails when the producer says so (after ``kafka_timeout_s``) or, at the
  latest, :data:`FLIGHT_DEADLINE_TIMEOUTS` times that after it was handed over (aiokafka
  holds a batch for ever while Kafka's node cannot be reached at all); ingest drops that
  producer, waits with the retry policy's backoff until a new one starts, and
  re-sends every batch Kafka has not acknowledged, in arrival order. Nothing more is taken
  from the broker meanwhile (it keeps what it could not deliver); the outage is logged
  when it starts, once per :data:`OUTAGE_LOG_INTERVAL_S` with the count of attempts, and
  when it ends.
- **Mosquitto restarts**: ingest reconnects (backoff capped at
  :data:`MQTT_RECONNECT_CAP_S`) to its persistent session. Messages read on an earlier
  connection are still forwarded but never acknowledged on the new one: a packet id
  belongs to its connection, and the broker sends what it did not see acknowledged again
  (a duplicate downstream, never a message acknowledged unread). With the ``exclusive``
  subscription (the default) the broker keeps the subscription across its restart, so
  what devices publish before ingest is back waits in the session; see
  :class:`civic_iot.settings.IngestSettings` for why not the shared one.
- **SIGTERM**: ingest stops taking messages, gives Kafka :data:`STOP_GRACE_S` to
  acknowledge what it holds (those are acknowledged to the broker), then leaves; the
  broker redelivers the rest to the next run. It never waits longer for an absent Kafka.

``/health`` answers 200 only while the broker connection is up and Kafka takes batches
(or, when idle, answers a metadata request); 503 says which is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram

from civic_iot import retry
from civic_iot.accounts import INGEST_USER
from civic_iot.contracts.deadletter import deadletter_record, device_of
from civic_iot.contracts.provenance import Marker
from civic_iot.contracts.readings import chunked, record_value
from civic_iot.health import KAFKA_ASK_INTERVAL_S, kafka_answers, serve_health
from civic_iot.logs import limit_repeats
from civic_iot.mqtt import SERVICE_RECONNECT_CAP_S, Message, MqttConnection
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


#: Backoff (:mod:`civic_iot.retry`) between attempts to start a new Kafka producer while
#: Kafka is unavailable, s.
KAFKA_RETRY_BASE_S = 0.5
KAFKA_RETRY_CAP_S = 5.0
#: While Kafka stays unavailable, one log line per this many seconds (with the count).
OUTAGE_LOG_INTERVAL_S = 30.0
#: When no batch is on its way, Kafka is asked for metadata this often, s, so that
#: ``/health`` notices an outage without traffic.
KAFKA_PROBE_INTERVAL_S = KAFKA_ASK_INTERVAL_S
#: A batch not acknowledged within this many producer request timeouts has failed.
FLIGHT_DEADLINE_TIMEOUTS = 3
#: ``/health`` counts Kafka as unavailable once the oldest batch has waited this long, s.
STALL_S = 2.0
#: After SIGTERM, how long Kafka may take to acknowledge what ingest holds, s.
STOP_GRACE_S = 3.0
#: Widest window of the MQTT reconnect backoff, s.
MQTT_RECONNECT_CAP_S = SERVICE_RECONNECT_CAP_S


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
        #: Messages received so far / taken from the inbox so far: a message's sequence
        #: number is its place in arrival order.
        self._received = 0
        self._taken = 0
        #: Sequence number of the first message of the current connection: PUBACKs go
        #: only to messages from it on (a packet id belongs to its connection).
        self._fresh_from = 0
        m = settings.mqtt
        self._subscriptions, self._stale = subscriptions(settings)
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
            reconnect_cap_s=MQTT_RECONNECT_CAP_S,
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

    def ack(self, batch: list[Inbound], first: int) -> None:
        """Acknowledge a batch to the broker, in arrival order; ``first`` is the sequence
        number of its first message (:attr:`taken` before :meth:`take`). Messages of an
        earlier connection are left alone: the broker sends those again."""
        stale = self._fresh_from - first
        if stale > 0:
            batch = batch[stale:]
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

    @property
    def taken(self) -> int:
        """Messages taken from the inbox so far: the next one's sequence number."""
        return self._taken

    def take(self, most: int) -> list[Inbound]:
        """Up to ``most`` messages from the inbox, in arrival order."""
        inbox = self._inbox
        batch = [inbox.popleft() for _ in range(min(most, len(inbox)))]
        self._taken += len(batch)
        return batch

    def _on_messages(self, batch: list[Message]) -> None:
        now = datetime.now(UTC)  # one clock read per read: they arrived together
        self._inbox.extend([Inbound(t, p, mid, qos, now) for t, p, mid, qos, _r in batch])
        self._received += len(batch)
        self._ready.set()

    def _on_connect(self, session_present: bool) -> None:
        self._fresh_from = self._received
        if session_present:
            # A session made with the other layout keeps its subscription: drop it, or
            # every message would come twice.
            for topic in self._stale:
                self.mqtt.unsubscribe(topic)
        for topic in self._subscriptions:
            self.mqtt.subscribe(topic, qos=1)
        CONNECTED.set(1)
        logger.info(
            "mqtt connected session_present=%s subscription=%s",
            session_present,
            ",".join(self._subscriptions),
        )

    def _on_disconnect(self, _reason: object) -> None:
        CONNECTED.set(0)


def subscriptions(settings: Settings) -> tuple[list[str], list[str]]:
    """(the topic filters ingest subscribes to, those of the other layout to drop from a
    resumed session), as ``CIVIC_INGEST__SUBSCRIPTION`` says.

    ``devices/#`` (not ``devices/+/+``): a malformed topic under a device's tree must reach
    ingest to be dead-lettered with its reason instead of vanishing.
    """
    shared = [Topology.of(settings).device_subscription]
    exclusive = [t.strip() for t in settings.ingest.topic_filters.split(",") if t.strip()]
    if not exclusive:
        msg = "CIVIC_INGEST__TOPIC_FILTERS names no topic filter"
        raise ValueError(msg)
    if settings.ingest.subscription == "shared":
        return shared, exclusive
    return exclusive, shared


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


class Outage:
    """A Kafka outage as the log tells it: a line when it starts, then one per
    ``interval_s`` with the count of failed attempts, and one when it ends. Pure: the
    caller passes the clock (monotonic seconds)."""

    def __init__(self, interval_s: float = OUTAGE_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        #: When the outage began (None: Kafka takes batches).
        self.since: float | None = None
        #: Failed attempts since it began.
        self.attempts = 0
        self.last_error = ""
        self._logged_at = 0.0

    def failed(self, now: float, error: BaseException | str) -> bool:
        """Count a failed attempt; True when it should be logged now."""
        self.last_error = error if isinstance(error, str) else repr(error)
        self.attempts += 1
        if self.since is None:
            self.since = self._logged_at = now
            return True
        if now - self._logged_at >= self.interval_s:
            self._logged_at = now
            return True
        return False

    def end(self, now: float) -> tuple[float, int] | None:
        """Kafka took a batch: (how long the outage lasted, s, attempts), if there was one."""
        if self.since is None:
            return None
        out = (now - self.since, self.attempts)
        self.since = None
        self.attempts = 0
        return out


@dataclass(slots=True)
class _Flight:
    """A batch handed to Kafka: its messages (to acknowledge) and the sequence number of
    the first, its records (to re-send) and the future that completes when Kafka has all
    of them."""

    batch: list[Inbound]
    first: int
    records: list[tuple[str, bytes, bytes]]
    done: asyncio.Future[Any]
    #: When it was first handed to Kafka (``time.monotonic``).
    started: float
    #: When it was last handed to a producer (``time.monotonic``).
    launched: float = 0.0


class _Pipeline:
    """Batches in flight to Kafka, acknowledged to the broker strictly in arrival order.

    Records are handed to the producer here, in order (one batch after the other), so
    Kafka receives each partition's records in arrival order; only the waiting for Kafka's
    acknowledgement overlaps with validating the next batch.

    When the oldest batch fails (module doc: Kafka unavailable), the producer is closed
    (which settles every batch still on it) and a new one started, with backoff, until
    Kafka answers; then every batch Kafka has not acknowledged is sent again, oldest first.
    Nothing later is acknowledged to the broker before the oldest. Records of later
    batches that Kafka already took may then precede a re-sent one in their partition: a
    reading is late by the length of the outage, which consumers handle like any late
    reading; its duplicates collapse by ``reading_id``.
    """

    def __init__(
        self,
        new_producer: Callable[[], AIOKafkaProducer],
        source: MqttSource,
        depth: int,
        timeout_s: float,
        mark: Marker,
        readings: Collection[str] = frozenset(),
    ) -> None:
        self._new_producer = new_producer
        #: Put on every record (:mod:`civic_iot.contracts.provenance`).
        self._mark = mark
        #: The readings topics, whose records hold a partition's readings of a batch
        #: (a flight keeps one record per reading; they are gathered at each launch).
        self._readings = readings
        #: The producer's request timeout, s: a batch has failed by then.
        self._timeout_s = timeout_s
        #: A batch Kafka has not acknowledged this long after it was handed to the
        #: producer has failed, whatever the producer says, s.
        self.deadline_s = FLIGHT_DEADLINE_TIMEOUTS * timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._source = source
        self.depth = depth
        self._flights: deque[_Flight] = deque()
        self._backoff = retry.Backoff(KAFKA_RETRY_BASE_S, KAFKA_RETRY_CAP_S)
        self.outage = Outage()
        #: When Kafka last acknowledged a batch or answered a probe (monotonic s).
        self.last_ok = time.monotonic()
        #: Why the last probe of an idle Kafka failed ("" when it answered).
        self.probe_error = ""

    def __len__(self) -> int:
        return len(self._flights)

    async def start(self) -> None:
        """Start the first producer, waiting (with backoff) until Kafka answers."""
        await self._connect()

    async def close(self, timeout_s: float) -> None:
        """Close the producer; what it still holds after ``timeout_s`` is abandoned (the
        broker redelivers those messages: they were not acknowledged)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_producer(producer, timeout_s)

    async def send(
        self, batch: list[Inbound], first: int, records: list[tuple[str, bytes, bytes]]
    ) -> None:
        flight = _Flight(batch, first, records, _failed("not sent yet"), time.monotonic())
        await self._launch(flight)
        self._flights.append(flight)

    async def _launch(self, flight: _Flight) -> None:
        """Hand a flight's records to the producer (a failure shows in its future)."""
        producer = self._producer
        flight.launched = time.monotonic()
        done: asyncio.Future[Any]
        if producer is None:
            done = _failed("no Kafka producer")
        else:
            try:
                done = asyncio.gather(
                    *await _send_grouped(producer, flight.records, self._mark, self._readings)
                )
            except Exception as exc:  # noqa: BLE001 - e.g. no metadata: settle re-sends it
                done = _failed(exc)
        done.add_done_callback(self._landed)
        flight.done = done

    def _landed(self, done: asyncio.Future[Any]) -> None:
        if not done.cancelled():
            done.exception()  # retrieved here: settle() deals with it
        self._source.kick()  # the loop acknowledges it even if no message comes

    async def settle(self, *, wait: bool = False) -> None:
        """Acknowledge the batches Kafka has, oldest first; with ``wait``, at least the
        oldest one (recovering from a Kafka outage until Kafka has it)."""
        flights = self._flights
        while flights:
            head = flights[0]
            # aiokafka fails a batch after its request timeout only once it has been sent:
            # while Kafka's node cannot be reached at all, it holds the batch for ever.
            left = head.launched + self.deadline_s - time.monotonic()
            if not (wait or head.done.done() or left <= 0):
                break
            try:
                await asyncio.wait_for(asyncio.shield(head.done), max(left, 0.0))
            except TimeoutError:
                await self._recover(
                    KafkaTimeoutError(f"not acknowledged within {self.deadline_s:g} s")
                )
                continue
            except Exception as exc:  # noqa: BLE001 - any Kafka error: recover, re-send
                await self._recover(exc)
                continue
            flights.popleft()
            self._source.ack(head.batch, head.first)  # arrival order, after Kafka has it
            BATCH_SECONDS.observe(time.monotonic() - head.started)
            self._kafka_ok()
            wait = False

    def _kafka_ok(self) -> None:
        self.last_ok = time.monotonic()
        self.probe_error = ""
        self._backoff.reset()
        ended = self.outage.end(self.last_ok)
        if ended is not None:
            logger.warning("kafka available again after_s=%.1f attempts=%d", ended[0], ended[1])

    def _failed_attempt(self, exc: BaseException | str) -> None:
        if self.outage.failed(time.monotonic(), exc):
            since = self.outage.since or 0.0
            logger.warning(
                "kafka unavailable for_s=%.0f attempts=%d unacknowledged_batches=%d "
                "unacknowledged_records=%d error=%s",
                time.monotonic() - since,
                self.outage.attempts,
                len(self._flights),
                sum(len(f.records) for f in self._flights),
                self.outage.last_error,
            )

    async def _recover(self, exc: BaseException) -> None:
        """Replace the producer (with backoff until Kafka answers), then send again every
        batch Kafka has not acknowledged, oldest first."""
        self._failed_attempt(exc)
        # Closing settles every batch still on the old producer (within its request
        # timeout): each is then either acknowledged by Kafka or failed.
        await self.close(2 * self._timeout_s + 1)
        await self._connect()
        for flight in self._flights:
            done = flight.done
            if not done.done() or done.cancelled() or done.exception() is not None:
                await self._launch(flight)

    async def _connect(self) -> None:
        """Start a new producer, retrying with backoff until Kafka answers."""
        while True:
            producer = self._new_producer()
            try:
                await producer.start()
            except Exception as exc:  # noqa: BLE001 - Kafka down or refusing: retry
                self._failed_attempt(exc)
                await _stop_producer(producer, 1.0)
                await asyncio.sleep(self._backoff.next_delay())
                continue
            self._producer = producer
            return

    async def probe(self) -> None:
        """When nothing is on its way, ask Kafka for metadata, so that ``/health`` sees an
        outage without traffic."""
        producer = self._producer
        if self._flights:
            if time.monotonic() - self._flights[0].launched > self.deadline_s:
                self._source.kick()  # no message may come to make the loop settle it
            return
        if producer is None:
            return
        if time.monotonic() - self.last_ok < KAFKA_PROBE_INTERVAL_S:
            return
        self.probe_error = await kafka_answers(producer.client, KAFKA_PROBE_INTERVAL_S)
        if not self.probe_error:
            self.last_ok = time.monotonic()

    def health(self, now: float) -> tuple[str, str]:
        """("ok" or "unavailable", why) for ``/health``."""
        if self.outage.since is not None:
            return "unavailable", (
                f"kafka unavailable for {now - self.outage.since:.0f} s "
                f"({self.outage.attempts} attempts, last: {self.outage.last_error})"
            )
        if self._producer is None:
            return "unavailable", "no Kafka producer yet"
        if self._flights:
            # Before the oldest batch fails, Kafka is late (a batch fails after the
            # request timeout; a healthy Kafka answers in milliseconds).
            waited = now - max(self.last_ok, self._flights[0].started)
            if waited > STALL_S:
                return "unavailable", f"kafka has acknowledged nothing for {waited:.0f} s"
        if self.probe_error:
            return "unavailable", f"kafka does not answer: {self.probe_error}"
        return "ok", ""


def _failed(error: BaseException | str) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_exception(error if isinstance(error, BaseException) else RuntimeError(error))
    fut.exception()  # retrieved: it is a placeholder, settled by the pipeline
    return fut


async def _stop_producer(producer: AIOKafkaProducer, timeout_s: float) -> None:
    """Stop a producer; give up waiting after ``timeout_s`` (it flushes what it holds)."""
    try:
        async with asyncio.timeout(timeout_s):
            await producer.stop()
    except TimeoutError:
        logger.warning("kafka producer did not stop within %.0f s; abandoned", timeout_s)
    except Exception as exc:  # noqa: BLE001 - a producer that never started, say
        logger.debug("kafka producer stop error=%r", exc)


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
    once per such record instead of once per reading. Other records (dead letters) stay
    as they are; every partition keeps its order. The same records give the same
    records again (a batch re-sent after a Kafka outage is gathered alike).
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


def _new_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=512 * 1024,
        client_id=f"civic-ingest-{settings.ingest.instance}",
        # A batch fails after this; it also bounds how long aiokafka keeps retrying (and
        # logging) for a broker that is gone before ingest takes over.
        request_timeout_ms=round(settings.ingest.kafka_timeout_s * 1000),
    )


def health(
    source: MqttSource, pipeline: _Pipeline, counts: Counter[str], *, stopping: bool
) -> dict[str, object]:
    """``/health``'s body: healthy while the broker connection is up and Kafka takes
    batches; ``reason`` says what is not (the HTTP status follows ``healthy``)."""
    kafka, kafka_why = pipeline.health(time.monotonic())
    reasons = []
    if stopping:
        reasons.append("stopping")
    if not source.connected:
        reasons.append(f"mqtt disconnected ({source.mqtt.last_error or 'reconnecting'})")
    if kafka != "ok":
        reasons.append(kafka_why)
    return {
        "healthy": not reasons,
        "reason": "; ".join(reasons),
        "mqtt_connected": source.connected,
        "kafka": kafka,
        "inbox": source.pending,
        "kafka_batches_in_flight": len(pipeline),
        **counts,
    }


async def run(settings: Settings, stop: asyncio.Event | None = None) -> Counter[str]:
    """Run ingest until ``stop`` is set (or SIGINT/SIGTERM). Returns the counts."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    limit_repeats("aiokafka")
    ingest = Ingest(settings, load_registry(settings.registry))
    mark = Marker(mark_key(settings))  # no key: ingest refuses to start
    source = MqttSource(settings)
    topics = Topology.of(settings)
    pipeline = _Pipeline(
        functools.partial(_new_producer, settings),
        source,
        settings.ingest.batches_in_flight,
        settings.ingest.kafka_timeout_s,
        mark,
        frozenset(topics.readings(k) for k in READING_KINDS),
    )
    http = None
    if settings.ingest.http_port:
        http = await serve_health(
            "127.0.0.1",
            settings.ingest.http_port,
            lambda: health(source, pipeline, ingest.counts, stopping=stop.is_set()),
        )
    work = asyncio.create_task(_forward(settings, ingest, source, pipeline, stop))
    probe = asyncio.create_task(_probe(pipeline))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([work, stopper], return_when=asyncio.FIRST_COMPLETED)
        source.wake()
        try:
            # What Kafka takes within the grace is acknowledged; the broker redelivers the
            # rest to the next run.
            await asyncio.wait_for(work, STOP_GRACE_S)
        except TimeoutError:
            logger.warning(
                "ingest stopping without Kafka's acknowledgement of batches=%d "
                "(the broker sends them again)",
                len(pipeline),
            )
    finally:
        for task in (work, probe, stopper):
            task.cancel()
        await asyncio.gather(work, probe, stopper, return_exceptions=True)
        await source.stop()
        await pipeline.close(1.0)
        if http is not None:
            await http.cleanup()
        logger.info("ingest stopped counts=%s", dict(ingest.counts))
    return ingest.counts


async def _forward(
    settings: Settings,
    ingest: Ingest,
    source: MqttSource,
    pipeline: _Pipeline,
    stop: asyncio.Event,
) -> None:
    """Take what the broker delivers, validate it, hand it to Kafka, acknowledge it; on
    ``stop``, finish what Kafka has."""
    # Kafka first: what the broker would deliver before then has nowhere to go.
    await pipeline.start()
    source.start()
    logger.info(
        "ingest started instance=%s registry_devices=%d",
        settings.ingest.instance,
        len(ingest.registry),
    )
    last_reload = time.monotonic()
    most, gap_s = settings.ingest.max_batch, settings.ingest.batch_gap_s
    last_batch = 0.0
    while not stop.is_set():
        await source.wait()
        if stop.is_set():
            break
        early = batch_delay(last_batch, time.monotonic(), gap_s, source.pending, most)
        if early > 0:
            await asyncio.sleep(early)
            if stop.is_set():
                break
        await pipeline.settle()
        if len(pipeline) >= pipeline.depth:
            await pipeline.settle(wait=True)
        first = source.taken
        batch = source.take(most)
        if batch:
            last_batch = time.monotonic()
            await pipeline.send(batch, first, [ingest.route(item) for item in batch])
        INBOX.set(source.pending)
        IN_FLIGHT.set(len(pipeline))
        if time.monotonic() - last_reload > 10:
            ingest.maybe_reload_registry()
            last_reload = time.monotonic()
    while len(pipeline):
        await pipeline.settle(wait=True)


def batch_delay(last_s: float, now_s: float, gap_s: float, pending: int, most: int) -> float:
    """How long to wait before taking the next batch, s: until ``gap_s`` after the last
    one was taken (at ``last_s``, monotonic), so that what comes meanwhile joins it
    (:attr:`~civic_iot.settings.IngestSettings.batch_gap_s`); not at all once a whole
    batch (``most``) is pending."""
    if pending >= most:
        return 0.0
    return max(0.0, last_s + gap_s - now_s)


async def _probe(pipeline: _Pipeline) -> None:
    while True:
        await asyncio.sleep(KAFKA_PROBE_INTERVAL_S)
        try:
            await pipeline.probe()
        except Exception:  # a health probe never stops ingest
            logger.exception("kafka probe failed")
