"""The ingest process: MQTT (shared subscription) -> validate -> Kafka, nothing lost.

Everything runs on one asyncio loop: paho's socket is registered with the loop (no paho
network thread), so each message is converted and queued right where it is read. A batch
is validated, produced to Kafka (idempotent producer, ``acks=all``) and only when Kafka has
acknowledged every record of the batch are the MQTT PUBACKs sent (paho ``manual_ack``), in
arrival order. If ingest dies mid-flight the broker still holds the unacknowledged messages
for the persistent session and redelivers them; the duplicates collapse downstream by
``reading_id``. The broker never has more than ``receive_maximum`` messages in flight to
us, which bounds our memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import struct
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from paho.mqtt.client import PUBACK
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram

from civic_iot.broker import INGEST_USER
from civic_iot.registry import Registry, load_registry
from civic_iot.settings import Settings, mqtt_password
from civic_iot.topics import Topics
from ingest.deadletter import deadletter_record, device_of
from ingest.models import Limits, ReadingRefusedError
from ingest.validate import validate

logger = logging.getLogger(__name__)

MESSAGES = PromCounter("civic_ingest_messages_total", "MQTT messages handled", ["outcome"])
DEADLETTERS = PromCounter("civic_ingest_deadletters_total", "Refused messages", ["reason"])
BATCH_SECONDS = Histogram("civic_ingest_batch_seconds", "Validate+produce+ack time per batch")
CONNECTED = Gauge("civic_ingest_mqtt_connected", "1 while connected to the broker")
# Bound once: ``labels()`` takes a lock and a dict lookup, and this runs per message.
_ACCEPTED = MESSAGES.labels("accepted")
_LATE = MESSAGES.labels("late")
_REFUSED = MESSAGES.labels("deadletter")


@dataclass(frozen=True, slots=True)
class Inbound:
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


class _BufferedClient(mqtt.Client):
    """paho's client with two shortcuts on its receive path, the bulk of ingest's CPU.

    - paho 2.x reads each packet with at least three ``recv`` calls (command byte, length
      bytes, body). Here one ``recv`` takes whatever the kernel holds and paho's parser is
      served from that buffer. ``_sock_recv`` is paho's one read primitive (its contract:
      bytes, ``b""`` at EOF, ``BlockingIOError`` when nothing is there), which this keeps.
    - For a QoS 1 PUBLISH without MQTT 5 properties (what Mosquitto forwards from a
      device that set none), the topic, packet id and payload are sliced out directly:
      paho's decoder builds and clears a ``Properties`` object per message, about a third
      of its cost. Anything else goes to paho's own decoder.

    Both override private methods of paho 2.x (pinned in constraints.txt);
    ``tests/unit/ingest/test_source.py`` checks them against paho's own parser.
    """

    _CHUNK = 256 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = bytearray()

    @property
    def buffered(self) -> bool:
        """True while bytes already read from the socket wait to be parsed."""
        return bool(self._rbuf)

    def drop_buffer(self) -> None:
        """Forget unparsed bytes: they belong to a connection that is gone."""
        self._rbuf.clear()

    def _sock_recv(self, bufsize: int) -> bytes:
        buf = self._rbuf
        if not buf:
            data = super()._sock_recv(self._CHUNK)
            if len(data) <= bufsize:
                return data  # also b"" (EOF), as paho expects
            buf += data
        out = bytes(buf[:bufsize])
        del buf[:bufsize]  # cheap: a bytearray drops its head without copying the rest
        return out

    def puback_many(self, mids: list[int]) -> None:
        """PUBACKs for these QoS 1 messages, in this order, in one write.

        The bytes ``ack(mid, 1)`` would queue one packet at a time (a PUBACK without
        reason code or properties: 0x40, length 2, the packet id), queued as one
        buffer so the loop's next writable event sends a whole batch in one ``send``.
        """
        if mids:
            packet = b"".join([_PUBACK.pack(0x40, 2, mid) for mid in mids])
            self._packet_queue(PUBACK, packet, 0, 1)

    def _handle_publish(self) -> MQTTErrorCode:
        header: int = self._in_packet["command"]
        packet: bytearray = self._in_packet["packet"]
        # [topic length:2][topic][packet id:2][properties length:varint][properties][payload]
        if header & 0x06 == 0x02 and self._protocol == mqtt.MQTTv5 and len(packet) >= 2:
            end = 2 + ((packet[0] << 8) | packet[1])
            if end > 2 and len(packet) > end + 2 and packet[end + 2] == 0:
                message = mqtt.MQTTMessage(
                    mid=(packet[end] << 8) | packet[end + 1], topic=bytes(packet[2:end])
                )
                message.dup = bool(header & 0x08)
                message.qos = 1
                message.retain = bool(header & 0x01)
                message.payload = bytes(packet[end + 3 :])
                message.timestamp = mqtt.time_func()
                self._handle_on_message(message)
                if self._manual_ack:
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
                return self._send_puback(message.mid)
        return super()._handle_publish()


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
        self._stopping = False
        self._closed = asyncio.Event()
        self._closed.set()
        self._delay = 0.0  # before the next connection attempt; the first is at once
        self._connector: asyncio.Task[None] | None = None
        self._misc: asyncio.Task[None] | None = None
        self.connected = False
        cid = f"civic-ingest-{settings.ingest.instance}"
        self.client = _BufferedClient(
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
        self.client.on_message = self._on_message
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
        """Make :meth:`wait` return although the inbox is empty (to stop)."""
        self._woken = True
        self._ready.set()

    async def wait(self) -> None:
        """Return once at least one message is in the inbox (or :meth:`wake` was called)."""
        while not self._inbox and not self._woken:
            self._ready.clear()
            await self._ready.wait()

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
        """The socket is readable: parse every packet that came (each loop_read parses one)."""
        client = self.client
        while client.loop_read() == mqtt.MQTT_ERR_SUCCESS and client.buffered:
            pass

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
        group = self._settings.mqtt.share_group
        # devices/# (not devices/+/+): a malformed topic under a device's tree must reach us
        # to be dead-lettered with its reason instead of vanishing.
        client.subscribe(f"$share/{group}/devices/#", qos=1)
        CONNECTED.set(1)
        self.connected = True
        logger.info("mqtt connected session_present=%s group=%s", flags.session_present, group)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        CONNECTED.set(0)
        self.connected = False
        if self._stopping:
            return
        logger.warning("mqtt disconnected reason=%s; reconnecting in %.0f s", rc, self._delay)
        self._reconnect_later()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self._inbox.append(
            Inbound(msg.topic, bytes(msg.payload), msg.mid, msg.qos, datetime.now(UTC))
        )
        self._ready.set()


class Ingest:
    """Validate and forward batches; the only place that decides accept or dead-letter."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.topics = Topics.from_settings(settings.kafka)
        i = settings.ingest
        self.limits = Limits(
            max_future_skew=timedelta(seconds=i.max_future_skew_s),
            lateness=timedelta(seconds=i.lateness_s),
            max_payload_bytes=i.max_payload_bytes,
        )
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
            reading.model_dump_json().encode(),
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


#: What ``AIOKafkaProducer.send`` uses when no partitioner is configured (none is, in run):
#: murmur2 of the key over the topic's partitions, so a device's readings share a partition.
_PARTITIONER = DefaultPartitioner()


async def _send_grouped(
    producer: AIOKafkaProducer, records: list[tuple[str, bytes, bytes]]
) -> list[asyncio.Future[Any]]:
    """Hand the records to the producer as one Kafka batch per (topic, partition).

    The same records, partitions and order as one ``send`` per record, without a
    coroutine, a future and an accumulator lookup per record. Returns a future per batch.
    """
    partitions: dict[str, list[int]] = {}
    batches: dict[tuple[str, int], Any] = {}
    futures: list[asyncio.Future[Any]] = []
    for topic, key, value in records:
        parts = partitions.get(topic)
        if parts is None:
            parts = partitions[topic] = sorted(await producer.partitions_for(topic))
        tp = (topic, _PARTITIONER(key, parts, parts))
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
    try:
        while not stop.is_set():
            await source.wait()
            if stop.is_set():
                break
            batch = source.take(settings.ingest.max_batch)
            started = time.perf_counter()
            await _produce_batch(producer, [ingest.route(item) for item in batch])
            source.ack(batch)  # PUBACKs in arrival order, only after Kafka has the batch
            BATCH_SECONDS.observe(time.perf_counter() - started)
            if time.monotonic() - last_reload > 10:
                ingest.maybe_reload_registry()
                last_reload = time.monotonic()
    finally:
        stopper.cancel()
        await source.stop()
        await producer.stop()
        if http is not None:
            await http.cleanup()
        logger.info("ingest stopped counts=%s", dict(ingest.counts))
    return ingest.counts
