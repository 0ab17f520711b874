"""The ingest process: MQTT (shared subscription) -> validate -> Kafka, nothing lost.

paho-mqtt runs its network loop in its own thread and hands each message to the asyncio
loop; the asyncio side validates a batch, produces it to Kafka (idempotent producer,
``acks=all``) and only when Kafka has acknowledged every record of the batch sends the
MQTT PUBACKs (paho ``manual_ack``), in arrival order. If ingest dies mid-flight the broker
still holds the unacknowledged messages for the persistent session and redelivers them;
the duplicates collapse downstream by ``reading_id``. The broker never has more than
``receive_maximum`` messages in flight to us, which bounds our memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from paho.mqtt.enums import CallbackAPIVersion
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


class MqttSource:
    """A paho client with a persistent session and manual acknowledgements.

    paho's network thread appends each message to an inbox and wakes the asyncio loop
    only when it may be waiting (once per burst, not once per message: a wake-up is a
    syscall and a callback). The inbox is bounded by the broker: it never has more than
    ``receive_maximum`` unacknowledged messages in flight to us.
    """

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        self._settings = settings
        self._loop = loop
        self._inbox: deque[Inbound] = deque()
        self._ready = asyncio.Event()
        self.connected = threading.Event()
        cid = f"civic-ingest-{settings.ingest.instance}"
        self.client = mqtt.Client(
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
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._settings.mqtt.session_expiry_s
        props.ReceiveMaximum = self._settings.ingest.receive_maximum
        self.client.connect_async(
            self._settings.mqtt.host,
            self._settings.mqtt.port,
            keepalive=self._settings.mqtt.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def ack(self, mid: int, qos: int) -> None:
        self.client.ack(mid, qos)

    async def wait(self) -> None:
        """Return once at least one message is in the inbox."""
        while not self._inbox:
            # Clear before looking again: a message appended after this look finds the
            # event clear and schedules a wake-up; one appended before it is seen here.
            self._ready.clear()
            if self._inbox:
                break
            await self._ready.wait()

    def take(self, most: int) -> list[Inbound]:
        """Up to ``most`` messages from the inbox, in arrival order."""
        inbox = self._inbox
        return [inbox.popleft() for _ in range(min(most, len(inbox)))]

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
        group = self._settings.mqtt.share_group
        # devices/# (not devices/+/+): a malformed topic under a device's tree must reach us
        # to be dead-lettered with its reason instead of vanishing.
        client.subscribe(f"$share/{group}/devices/#", qos=1)
        CONNECTED.set(1)
        self.connected.set()
        logger.info("mqtt connected session_present=%s group=%s", flags.session_present, group)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        CONNECTED.set(0)
        self.connected.clear()
        logger.warning("mqtt disconnected reason=%s (paho reconnects with backoff)", rc)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        item = Inbound(msg.topic, bytes(msg.payload), msg.mid, msg.qos, datetime.now(UTC))
        self._inbox.append(item)
        if not self._ready.is_set():
            self._loop.call_soon_threadsafe(self._ready.set)


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
        futures = [await producer.send(t, value=v, key=k) for t, k, v in records]
        try:
            await asyncio.gather(*futures)
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
            lambda: {"mqtt_connected": source.connected.is_set(), **ingest.counts},
        )
    source.start()
    logger.info(
        "ingest started instance=%s registry_devices=%d",
        settings.ingest.instance,
        len(ingest.registry),
    )
    last_reload = time.monotonic()
    try:
        while not stop.is_set():
            waiter = asyncio.ensure_future(source.wait())
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                waiter.cancel()
                break
            stopper.cancel()
            batch = source.take(settings.ingest.max_batch)
            started = time.perf_counter()
            await _produce_batch(producer, [ingest.route(item) for item in batch])
            for item in batch:  # PUBACK in arrival order, only after Kafka has the batch
                source.ack(item.mid, item.qos)
            BATCH_SECONDS.observe(time.perf_counter() - started)
            if time.monotonic() - last_reload > 10:
                ingest.maybe_reload_registry()
                last_reload = time.monotonic()
    finally:
        source.stop()
        await producer.stop()
        if http is not None:
            await http.cleanup()
        logger.info("ingest stopped counts=%s", dict(ingest.counts))
    return ingest.counts
