"""The ingest process: MQTT (shared subscription) -> validate -> Kafka, nothing lost.

Everything runs on one asyncio loop: paho's socket is registered with the loop (no paho
network thread) and ingest's own reader slices device readings out of what the socket
holds. A batch is validated and handed to Kafka (idempotent producer, ``acks=all``); while
Kafka acknowledges it, the next batch is validated (up to ``batches_in_flight``). Only when
Kafka has every record of a batch are its MQTT PUBACKs sent (paho ``manual_ack``), batches
strictly in arrival order. If ingest dies mid-flight the broker still holds the
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
import struct
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from paho.mqtt.client import PUBACK
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram

from civic_iot.accounts import INGEST_USER
from civic_iot.contracts.deadletter import deadletter_record, device_of
from civic_iot.registry import Registry, load_registry
from civic_iot.settings import Settings, mqtt_password
from civic_iot.topology import Topology
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


class Inbound(NamedTuple):
    """One MQTT message, converted at the edge (paho's type does not travel inward)."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    received_at: datetime


_PUBACK = struct.Struct("!BBH")

#: Reconnect backoff, seconds: the first retry, and the most between two retries.
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0


class _FastClient(mqtt.Client):
    """paho's client with its own reader for the one packet that matters: device readings.

    :meth:`read_publishes` takes whatever the kernel holds in one ``recv`` and splits it into
    packets. A QoS 1 PUBLISH without MQTT 5 properties (what Mosquitto forwards from a
    device that set none) is sliced into (topic, payload, packet id) right there: no
    ``MQTTMessage``, no callback, none of paho's three reads per packet. Every other packet
    (CONNACK, SUBACK, PINGRESP, DISCONNECT, a PUBLISH with properties or another QoS) is
    handed whole to paho's own parser, so paho keeps its state machine and callbacks; a
    message paho makes of it joins the same list, in its place in the stream.

    Overrides ``_sock_recv``, a private method of paho 2.x (pinned in constraints.txt);
    ``tests/unit/ingest/test_source.py`` checks the result against paho's own parser.
    """

    _CHUNK = 256 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = bytearray()  # read, not yet a whole packet
        self._paho_in = bytearray()  # one whole packet for paho's parser
        self._feeding = False
        #: Messages of the current read, sliced or parsed by paho, in arrival order.
        self._received: list[tuple[str, bytes, int, int]] = []

    @property
    def buffered(self) -> bool:
        """True while bytes already read from the socket wait for the rest of their packet."""
        return bool(self._rbuf)

    def drop_buffer(self) -> None:
        """Forget unparsed bytes: they belong to a connection that is gone."""
        self._rbuf.clear()

    def _sock_recv(self, bufsize: int) -> bytes:
        if not self._feeding:
            return super()._sock_recv(bufsize)
        buf = self._paho_in
        if not buf:
            raise BlockingIOError  # paho's "nothing more now": its packet is done
        out = bytes(buf[:bufsize])
        del buf[:bufsize]
        return out

    def read_publishes(self) -> list[tuple[str, bytes, int, int]]:
        """Read the socket once; the messages in it as (topic, payload, packet id, QoS).

        Other packets go to paho as they come. EOF or a socket error is paho's to handle
        (it closes the socket and calls ``on_disconnect``), as is a malformed packet.
        """
        try:
            data = super()._sock_recv(self._CHUNK)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            self.loop_read()  # paho meets the EOF or the error itself
            return []
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        buf = self._rbuf
        buf += data
        try:
            self._split(buf)
        finally:
            out, self._received = self._received, []
        return out

    def _split(self, buf: bytearray) -> None:
        """Take every whole packet off the head of ``buf``; messages go to ``_received``."""
        out = self._received
        pos, n = 0, len(buf)
        while n - pos >= 2:
            header = buf[pos]
            i, length, shift = pos + 1, 0, 0
            while i < n and shift < 28:  # remaining length: 1-4 bytes, 7 bits each
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if byte < 0x80:
                    break
            else:
                if shift < 28:
                    break  # the length itself is not all here yet
                self._to_paho(buf[pos:])  # 5 length bytes: malformed, paho disconnects
                pos = n
                break
            end = i + length
            if end > n:
                break  # the rest of this packet is still on its way
            # PUBLISH, QoS 1 (any DUP/RETAIN): [topic len:2][topic][id:2][props len][payload]
            if header & 0xF6 == 0x32 and length >= 5:
                t_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
                if t_end + 3 <= end and buf[t_end + 2] == 0:
                    out.append(
                        (
                            buf[i + 2 : t_end].decode("utf-8", "replace"),
                            bytes(buf[t_end + 3 : end]),
                            (buf[t_end] << 8) | buf[t_end + 1],
                            1,
                        )
                    )
                    pos = end
                    continue
            self._to_paho(buf[pos:end])
            pos = end
            if self._sock is None:  # paho closed the connection (DISCONNECT, protocol error)
                pos = n
                break
        del buf[:pos]  # cheap: a bytearray drops its head without copying the rest

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        """A message from paho's parser (a PUBLISH with properties, say): into the same
        list as the sliced ones, so the order of arrival is kept. paho only parses inside
        :meth:`read_publishes`, so this is the one way a message comes in."""
        self._received.append((message.topic, bytes(message.payload), message.mid, message.qos))

    def _to_paho(self, packet: bytearray) -> None:
        """Let paho's own parser read and handle one whole packet."""
        self._paho_in += packet
        self._feeding = True
        try:
            self.loop_read()
        finally:
            self._feeding = False
            self._paho_in.clear()

    def puback_many(self, mids: list[int]) -> None:
        """PUBACKs for these QoS 1 messages, in this order, in one write.

        The bytes ``ack(mid, 1)`` would queue one packet at a time (a PUBACK without
        reason code or properties: 0x40, length 2, the packet id), queued as one
        buffer so the loop's next writable event sends a whole batch in one ``send``.
        """
        if mids:
            packet = b"".join([_PUBACK.pack(0x40, 2, mid) for mid in mids])
            self._packet_queue(PUBACK, packet, 0, 1)


class MqttSource:
    """A paho client with a persistent session and manual acknowledgements, driven by the
    asyncio loop (as aiomqtt drives it) instead of paho's own network thread.

    The socket is registered with the loop: readable -> ``loop_read`` (which calls
    ``on_message`` right here, on the loop's thread), writable while paho has packets
    queued -> ``loop_write``. A task calls ``loop_misc`` (keepalive) every second, and
    reconnects with exponential backoff are ours to drive. No thread, no cross-thread
    wake-up per message, and a batch of PUBACKs leaves in one writable event. The inbox is
    bounded by the broker: it never has more than ``receive_maximum`` unacknowledged
    messages in flight to us.
    """

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        self._settings = settings
        self._loop = loop
        self._inbox: deque[Inbound] = deque()
        self._ready = asyncio.Event()
        self._woken = False
        self._kicked = False
        self._stopping = False
        self._closed = asyncio.Event()
        self._closed.set()
        self._delay = 0.0  # before the next connection attempt; the first is at once
        self._connector: asyncio.Task[None] | None = None
        self._misc: asyncio.Task[None] | None = None
        self.connected = False
        cid = f"civic-ingest-{settings.ingest.instance}"
        self.client = _FastClient(
            CallbackAPIVersion.VERSION2,
            client_id=cid,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        self.client.username_pw_set(
            settings.mqtt.ingest_username,
            settings.mqtt.ingest_password.get_secret_value()
            if settings.mqtt.ingest_password
            else mqtt_password(settings, INGEST_USER),
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_socket_open = self._on_socket_open
        self.client.on_socket_close = self._on_socket_close
        self.client.on_socket_register_write = self._on_socket_register_write
        self.client.on_socket_unregister_write = self._on_socket_unregister_write

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._settings.mqtt.session_expiry_s
        props.ReceiveMaximum = self._settings.ingest.receive_maximum
        # Only records where and how to connect; _connect_loop makes the connection.
        self.client.connect_async(
            self._settings.mqtt.host,
            self._settings.mqtt.port,
            keepalive=self._settings.mqtt.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self._reconnect_later()
        self._misc = self._loop.create_task(self._misc_loop())

    async def stop(self) -> None:
        """Say goodbye to the broker (unacknowledged messages stay in the session)."""
        self._stopping = True
        for task in (self._connector, self._misc):
            if task is not None:
                task.cancel()
        if self.client.socket() is not None:
            self.client.disconnect()  # queued; the writer sends it and paho closes the socket
            try:
                await asyncio.wait_for(self._closed.wait(), timeout=5)
            except TimeoutError:
                logger.warning("mqtt disconnect not sent within 5 s; closing anyway")
                self.client._sock_close()  # paho has no public close
        self.connected = False
        CONNECTED.set(0)

    def ack(self, batch: list[Inbound]) -> None:
        """Acknowledge a batch to the broker, in arrival order."""
        if all(item.qos <= 1 for item in batch):  # QoS 0 needs none; we subscribe at 1
            self.client.puback_many([item.mid for item in batch if item.qos == 1])
        else:
            for item in batch:
                self.client.ack(item.mid, item.qos)

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

    # ------------------------------------------------------------ connection

    def _reconnect_later(self) -> None:
        if self._stopping or (self._connector is not None and not self._connector.done()):
            return
        self._connector = self._loop.create_task(self._connect_loop())

    async def _connect_loop(self) -> None:
        """Open a connection, retrying with exponential backoff until one is made.

        A made connection may still be refused at CONNACK or dropped; then
        ``_on_disconnect`` comes back here, and the delay keeps doubling until a CONNACK
        says yes (``_on_connect`` sets it back to the minimum).
        """
        while not self._stopping:
            if self._delay:
                await asyncio.sleep(self._delay)
            self._delay = min(max(self._delay * 2, RECONNECT_MIN_S), RECONNECT_MAX_S)
            try:
                # Blocking TCP connect on the loop, bounded by paho's connect timeout
                # (5 s); the broker is on this machine or its LAN.
                self.client.reconnect()
            except Exception as exc:  # noqa: BLE001 - refused, unreachable, DNS: retry all
                logger.warning(
                    "mqtt connect failed host=%s port=%d error=%r; retrying in %.0f s",
                    self._settings.mqtt.host,
                    self._settings.mqtt.port,
                    exc,
                    self._delay,
                )
            else:
                return

    async def _misc_loop(self) -> None:
        """paho's housekeeping (keepalive PINGREQ, a dead connection noticed) every second."""
        while True:
            await asyncio.sleep(1)
            self.client.loop_misc()

    def _on_socket_open(self, _c: mqtt.Client, _u: object, sock: Any) -> None:
        self.client.drop_buffer()
        self._closed.clear()
        self._loop.add_reader(sock, self._read)

    def _on_socket_close(self, _c: mqtt.Client, _u: object, sock: Any) -> None:
        self._loop.remove_reader(sock)
        self.client.drop_buffer()
        self._closed.set()

    def _on_socket_register_write(self, _c: mqtt.Client, _u: object, sock: Any) -> None:
        self._loop.add_writer(sock, self.client.loop_write)

    def _on_socket_unregister_write(self, _c: mqtt.Client, _u: object, sock: Any) -> None:
        self._loop.remove_writer(sock)

    def _read(self) -> None:
        """The socket is readable: every whole packet that came is parsed now."""
        publishes = self.client.read_publishes()
        if publishes:
            now = datetime.now(UTC)  # one clock read per chunk: they arrived together
            self._inbox.extend([Inbound(t, p, mid, qos, now) for t, p, mid, qos in publishes])
            self._ready.set()

    # ------------------------------------------------------------ paho callbacks

    def _on_connect(
        self,
        client: mqtt.Client,
        _u: object,
        flags: mqtt.ConnectFlags,
        rc: ReasonCode,
        _p: object,
    ) -> None:
        if rc.is_failure:
            logger.error("mqtt connect refused reason=%s", rc)
            return
        self._delay = RECONNECT_MIN_S  # for the next drop: like paho, not at once
        # devices/# (not devices/+/+): a malformed topic under a device's tree must reach us
        # to be dead-lettered with its reason instead of vanishing.
        subscription = Topology.of(self._settings).device_subscription
        client.subscribe(subscription, qos=1)
        CONNECTED.set(1)
        self.connected = True
        logger.info(
            "mqtt connected session_present=%s subscription=%s",
            flags.session_present,
            subscription,
        )

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        CONNECTED.set(0)
        self.connected = False
        if self._stopping:
            return
        logger.warning("mqtt disconnected reason=%s; reconnecting in %.0f s", rc, self._delay)
        self._reconnect_later()


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
    producer: AIOKafkaProducer, records: list[tuple[str, bytes, bytes]]
) -> None:
    """Produce until Kafka has every record; retry the whole batch on failure (idempotent)."""
    delay = 0.5
    while True:
        try:
            await asyncio.gather(*await _send_grouped(producer, records))
            return
        except Exception as exc:  # noqa: BLE001 - any Kafka error: keep the batch, retry
            logger.warning(
                "kafka produce failed records=%d error=%r; retrying in %.1fs",
                len(records),
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


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

    def __init__(self, producer: AIOKafkaProducer, source: MqttSource, depth: int) -> None:
        self._producer = producer
        self._source = source
        self.depth = depth
        self._flights: deque[_Flight] = deque()

    def __len__(self) -> int:
        return len(self._flights)

    async def send(self, batch: list[Inbound], records: list[tuple[str, bytes, bytes]]) -> None:
        started = time.perf_counter()
        try:
            done: asyncio.Future[Any] = asyncio.gather(
                *await _send_grouped(self._producer, records)
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
                await _produce_batch(self._producer, head.records)
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
    producer: AIOKafkaProducer, records: list[tuple[str, bytes, bytes]]
) -> list[asyncio.Future[Any]]:
    """Hand the records to the producer as one Kafka batch per (topic, partition).

    The same records, partitions and order as one ``send`` per record, without a
    coroutine, a future and an accumulator lookup per record. Returns a future per batch.
    """
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
        if batch.append(key=key, value=value, timestamp=None) is None:  # full
            futures.append(await producer.send_batch(batch, topic, partition=tp[1]))
            batch = batches[tp] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                msg = f"record of {len(value)} bytes for {topic} exceeds the Kafka batch size"
                raise ValueError(msg)
    for (topic, partition), batch in batches.items():
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


async def run(settings: Settings, stop: asyncio.Event | None = None) -> Counter[str]:
    """Run ingest until ``stop`` is set (or SIGINT/SIGTERM). Returns the counts."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    ingest = Ingest(settings, load_registry(settings.registry))
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=512 * 1024,
        client_id=f"civic-ingest-{settings.ingest.instance}",
    )
    await producer.start()
    source = MqttSource(settings, loop)
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
    pipeline = _Pipeline(producer, source, settings.ingest.batches_in_flight)
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
