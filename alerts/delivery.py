"""Delivery: where issued alert messages go, and the record of what happened to them.

Every sink and publisher has one shape, :class:`Sink` (``add``, ``flush``, ``close``):

- :class:`MqttChannel`: ``alerts/{hazard}/{area}`` on Mosquitto as ``civic-alerts``, QoS 1,
  the JSON form retained so that a subscriber connecting late sees what is open now.
  A Cancel is published *not* retained (live subscribers see that it is over), then an
  empty retained payload clears the topic (a late subscriber sees nothing: nothing is open).
  Both go out on one connection in that order, so the clear cannot overtake the cancel.
  A payload beyond Mosquitto's packet limit (:mod:`alerts.limits`; the caps make that
  impossible for the default limits) is reported ``failed``, never sent.
  An earthquake message also goes to ``alerts/earthquake/{township}`` for every township
  it concerns (:func:`alerts.messages.township_warnings`), QoS 1, *not* retained: one
  township topic carries every quake there, so a retained one would be overwritten by
  another quake's or cleared by its Cancel; an agency that must not miss one keeps a
  persistent session. The event's own topic keeps the retained state.
- Webhooks are not a channel of the step: they have their own consumer of the ``alerts``
  topic (:mod:`alerts.webhooks`), so a crash cannot lose one.

Channels do not write records themselves: each attempt becomes a :class:`DeliveryResult`
handed to a ``report`` callback, and the service turns it into a ``delivery`` point, a
metric and, on failure, a dead-letter record. The point builders (:func:`alert_point`,
:func:`delivery_point`, :func:`ack_point`) are pure, follow ``docs/storage.md`` and build
the core's :class:`~civic_iot.storage.points.Point`; the service stores them through the
one InfluxDB sink (:mod:`civic_iot.storage.sink`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeVar

from pydantic import SecretStr

from alerts.cap import DEFAULT_CAP_CONFIG, CapConfig, CapStatus
from alerts.lifecycle import AckRecord, AlertMessage
from alerts.limits import MQTT_PAYLOAD_BUDGET
from alerts.messages import to_json_bytes, township_json_bytes, township_warnings
from alerts.text import get_logger
from civic_iot.mqtt import SERVICE_RECONNECT_CAP_S, MqttConnection, MqttError, Reason
from civic_iot.settings import InfluxSettings
from civic_iot.storage.points import FieldValue, Point
from civic_iot.storage.schema import measurement
from civic_iot.times import to_ns

logger = get_logger(__name__)

__all__ = [
    "DeliveryError",
    "DeliveryResult",
    "MessageRef",
    "MqttChannel",
    "Outcome",
    "Report",
    "Sink",
    "ack_point",
    "alert_point",
    "delivery_point",
    "mqtt_topic",
]

T_contra = TypeVar("T_contra", contravariant=True)

Outcome = Literal["delivered", "retry", "failed"]
Channel = Literal["mqtt", "webhook"]


class Sink(Protocol[T_contra]):
    """The one shape of every sink and publisher of the alert service.

    ``add`` takes an item without waiting for the outside world (it buffers or queues);
    ``flush`` waits until what was added has been handled; ``close`` flushes (within the
    sink's own time limits) and releases connections. After ``close`` nothing is added.
    """

    async def add(self, item: T_contra) -> None:
        """Take ``item``; may buffer or queue it."""
        ...

    async def flush(self) -> None:
        """Wait until every item added so far has been handled."""
        ...

    async def close(self) -> None:
        """Flush what can be flushed and release resources."""
        ...


class DeliveryError(RuntimeError):
    """A delivery channel could not do its job (connection refused, broker gone)."""


@dataclass(frozen=True, slots=True)
class MessageRef:
    """What a delivery record says about the message it delivered."""

    identifier: str
    alert_id: str
    key: str
    msg_type: str
    #: When the message was issued, and when the detector decided (Unix ns).
    sent_ns: int
    detected_at_ns: int

    @classmethod
    def of(cls, msg: AlertMessage) -> MessageRef:
        return cls(
            msg.identifier,
            msg.alert_id,
            msg.key,
            msg.msg_type,
            to_ns(msg.sent),
            to_ns(msg.detected_at),
        )


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """One delivery attempt of one message to one subscriber (or the MQTT broker)."""

    channel: Channel
    subscriber: str
    message: MessageRef
    outcome: Outcome
    #: 1 for the first attempt.
    attempt: int
    #: HTTP status code; 0 when there was none (timeout, connection error, MQTT).
    status_code: int
    #: When the attempt ended (Unix time, nanoseconds).
    at_ns: int
    #: Why it failed; empty when delivered. Never holds a secret.
    error: str = ""

    @property
    def latency_ms(self) -> float:
        """Issued (the message's ``sent``) -> this attempt's end, milliseconds."""
        return (self.at_ns - self.message.sent_ns) / 1e6


Report = Callable[[DeliveryResult], Awaitable[None]]


# --------------------------------------------------------------------------- records (pure)


def alert_point(msg: AlertMessage, status: CapStatus, buckets: InfluxSettings) -> Point:
    """The ``alert`` point of an issued message (``docs/storage.md``); time = ``sent``.

    ``latency_ms`` is the detector's decision (``detected_at``) -> issued (``sent``).
    """
    latency_ms = (msg.sent - msg.detected_at).total_seconds() * 1000.0
    tags = {
        "hazard": msg.hazard,
        "area": msg.area_code,
        "msg_type": msg.msg_type,
        "severity": msg.severity,
        "status": status,
    }
    fields: dict[str, FieldValue | None] = {
        "identifier": msg.identifier,
        "alert_id": msg.alert_id,
        "sequence": int(msg.sequence),
        "level": int(msg.level),
        "headline": msg.headline,
        "reason": msg.reason,
        "latency_ms": float(latency_ms),
    }
    return _point(buckets, "alert", tags, fields, to_ns(msg.sent))


def delivery_point(result: DeliveryResult, buckets: InfluxSettings) -> Point:
    """The ``delivery`` point of one attempt; time = the attempt's end."""
    tags = {"channel": result.channel, "subscriber": result.subscriber, "outcome": result.outcome}
    fields: dict[str, FieldValue | None] = {
        "identifier": result.message.identifier,
        "attempt": int(result.attempt),
        "status_code": int(result.status_code),
        "latency_ms": float(result.latency_ms),
    }
    return _point(buckets, "delivery", tags, fields, result.at_ns)


def ack_point(ack: AckRecord, buckets: InfluxSettings) -> Point:
    """The ``ack`` point of an operator's acknowledgement; time = when it was made."""
    hazard, _, area = ack.key.partition(":")
    fields: dict[str, FieldValue | None] = {
        "alert_id": ack.alert_id,
        "by": ack.by,
        "note": ack.note,
    }
    return _point(buckets, "ack", {"hazard": hazard, "area": area}, fields, to_ns(ack.at))


def _point(
    buckets: InfluxSettings,
    name: str,
    tags: Mapping[str, str | None],
    fields: Mapping[str, FieldValue | None],
    time_ns: int,
) -> Point:
    """A point of the storage schema's measurement ``name`` (its bucket, field types)."""
    p = measurement(name).point(buckets, tags, fields, time_ns)
    if p is None:  # every alerts point carries an identifier: never happens
        msg = f"{name} point without fields"
        raise ValueError(msg)
    return p


def mqtt_topic(msg: AlertMessage, root: str = "alerts", area: str | None = None) -> str:
    """``alerts/{hazard}/{area}`` (``area``: the message's area code unless given, e.g. a
    township of an earthquake); MQTT's special characters in it become ``_``."""
    area = msg.area_code if area is None else area
    for ch in ("/", "+", "#", "\x00"):
        area = area.replace(ch, "_")
    return f"{root}/{msg.hazard}/{area}"


# --------------------------------------------------------------------------- MQTT


def _check_budget(payload: bytes) -> None:
    if len(payload) > MQTT_PAYLOAD_BUDGET:
        msg = f"payload of {len(payload)} bytes exceeds the MQTT budget of {MQTT_PAYLOAD_BUDGET}"
        raise MqttError(msg)


class MqttChannel:
    """:class:`Sink` of alert messages to ``{root}/{hazard}/{area}``, QoS 1, retained
    (``root``: :attr:`civic_iot.topology.Topology.mqtt_alerts_root`).

    One worker publishes in order, so per topic the broker sees Alert, Update, Cancel and
    the clear in the order they were issued. The connection (:mod:`civic_iot.mqtt`: paho
    on this asyncio loop) reconnects by itself; a QoS 1 message published while
    disconnected stays in paho's queue and goes out on reconnect, so a missing PUBACK is
    waited for again (reported as ``retry``), never published a second time.
    ``tls_ca``: connect to the broker's TLS listener, trusting that CA. ``townships``:
    township code -> centroid (lat, lon degrees) for the per-township earthquake topics.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: SecretStr,
        status: CapStatus,
        report: Report,
        cap_config: CapConfig = DEFAULT_CAP_CONFIG,
        publish_timeout_s: float = 10.0,
        max_attempts: int = 6,
        client_id: str | None = None,
        keepalive_s: int = 30,
        root: str = "alerts",
        tls_ca: Path | None = None,
        townships: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._townships: Mapping[str, tuple[float, float]] = dict(townships or {})
        self._root = root
        self._username = username
        self._status = status
        self._report = report
        self._cap_config = cap_config
        self._timeout = publish_timeout_s
        self._max_attempts = max(1, max_attempts)
        self._mqtt = MqttConnection(
            host=host,
            port=port,
            client_id=client_id or f"civic-alerts-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            username=username,
            password=password.get_secret_value(),
            keepalive_s=keepalive_s,
            tls_ca=tls_ca,
            on_connect=self._on_connect,
            reconnect_cap_s=SERVICE_RECONNECT_CAP_S,
        )
        self._queue: asyncio.Queue[AlertMessage] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up (for /health)."""
        return self._mqtt.connected

    def _on_connect(self, _session_present: bool) -> None:
        logger.info(
            "mqtt connected host=%s port=%d user=%s", self._host, self._port, self._username
        )

    async def start(self, timeout_s: float = 10.0) -> None:
        """Connect (it reconnects by itself afterwards) and start the publisher."""
        self._mqtt.start()
        try:
            await self._mqtt.wait_connected(timeout_s)
        except MqttError as exc:
            await self._mqtt.stop()
            raise DeliveryError(str(exc)) from exc
        self._worker = asyncio.create_task(self._run(), name="alerts-mqtt")

    async def add(self, item: AlertMessage) -> None:
        self._queue.put_nowait(item)

    async def flush(self) -> None:
        await self._queue.join()

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout):
                await self.flush()
        tasks = [t for t in (self._worker, *self._inflight) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._mqtt.stop()

    async def _run(self) -> None:
        # Publishing is in order; waiting for PUBACKs is not serialised, so one slow
        # acknowledgement does not hold back the messages behind it.
        inflight = self._inflight
        while True:
            msg = await self._queue.get()
            try:
                acks = self._publish_message(msg)
            except MqttError as exc:
                logger.error("mqtt publish refused identifier=%s error=%s", msg.identifier, exc)
                self._queue.task_done()
                await self._report(
                    DeliveryResult(
                        "mqtt",
                        "broker",
                        MessageRef.of(msg),
                        "failed",
                        1,
                        0,
                        time.time_ns(),
                        str(exc),
                    )
                )
                continue
            task = asyncio.create_task(self._confirm(msg, acks))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            task.add_done_callback(lambda _t: self._queue.task_done())

    def _publish_message(self, msg: AlertMessage) -> list[asyncio.Future[Reason]]:
        topic = mqtt_topic(msg, self._root)
        payload = to_json_bytes(msg, self._status, config=self._cap_config)
        _check_budget(payload)
        if msg.msg_type == "Cancel":
            # Live subscribers get the Cancel itself; then the retained state is cleared.
            acks = [
                self._mqtt.publish(topic, payload, retain=False),
                self._mqtt.publish(topic, b"", retain=True),
            ]
        else:
            acks = [self._mqtt.publish(topic, payload, retain=True)]
        # After the event's own topic: the townships' payloads take a moment to compute.
        for code, body in self._township_payloads(msg):
            acks.append(self._mqtt.publish(mqtt_topic(msg, self._root, code), body, retain=False))
        return acks

    def _township_payloads(self, msg: AlertMessage) -> list[tuple[str, bytes]]:
        """Each concerned township's payload (earthquakes only), countdown as of now."""
        if msg.hazard != "earthquake":
            return []
        now_s = time.time()
        out = []
        for code, warning in township_warnings(
            msg, self._status, self._townships, config=self._cap_config
        ):
            body = township_json_bytes(msg, code, warning, now_s, config=self._cap_config)
            if len(body) > MQTT_PAYLOAD_BUDGET:  # the caps make it impossible (limits tests)
                logger.error(
                    "mqtt township payload too large identifier=%s township=%s bytes=%d",
                    msg.identifier,
                    code,
                    len(body),
                )
                continue
            out.append((code, body))
        return out

    async def _confirm(self, message: AlertMessage, acks: list[asyncio.Future[Reason]]) -> None:
        msg = MessageRef.of(message)
        topic = mqtt_topic(message, self._root)
        try:
            for attempt in range(1, self._max_attempts + 1):
                _, pending = await asyncio.wait(acks, timeout=self._timeout)
                if not pending:
                    refusals = [str(a.result()) for a in acks if a.result().is_failure]
                    if refusals:
                        # The broker answered no (its ACL, say): sending again cannot help.
                        error = f"PUBACK {', '.join(refusals)}"
                        logger.error(
                            "mqtt publish refused topic=%s identifier=%s reason=%s",
                            topic,
                            msg.identifier,
                            error,
                        )
                        await self._report(
                            DeliveryResult(
                                "mqtt", "broker", msg, "failed", attempt, 0, time.time_ns(), error
                            )
                        )
                        return
                    await self._report(
                        DeliveryResult(
                            "mqtt", "broker", msg, "delivered", attempt, 0, time.time_ns()
                        )
                    )
                    return
                error = f"no PUBACK within {self._timeout:g} s (connected={self.connected})"
                outcome: Outcome = "failed" if attempt == self._max_attempts else "retry"
                logger.warning(
                    "mqtt publish not acknowledged topic=%s identifier=%s attempt=%d outcome=%s",
                    topic,
                    msg.identifier,
                    attempt,
                    outcome,
                )
                await self._report(
                    DeliveryResult(
                        "mqtt", "broker", msg, outcome, attempt, 0, time.time_ns(), error
                    )
                )
        except Exception:
            logger.exception("mqtt delivery report failed identifier=%s", msg.identifier)
