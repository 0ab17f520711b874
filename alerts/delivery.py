"""Delivery: where issued alert messages go, and the record of what happened to them.

Every sink and publisher has one shape, :class:`Sink` (``add``, ``flush``, ``close``):

- :class:`MqttChannel`: ``alerts/{hazard}/{area}`` on Mosquitto as ``civic-alerts``, QoS 1,
  the JSON form retained so that a subscriber connecting late sees what is open now.
  A Cancel is published *not* retained (live subscribers see that it is over), then an
  empty retained payload clears the topic (a late subscriber sees nothing: nothing is open).
  Both go out on one connection in that order, so the clear cannot overtake the cancel.
- :class:`WebhookChannel`: one queue and one worker per subscriber, so a slow or hanging
  receiver delays only itself. Each POST is signed (:mod:`alerts.signing`), carries the
  message identifier in ``X-Civic-Message-Id`` (receivers drop duplicates by it), has a
  per-request timeout, and is retried with exponential backoff and full jitter
  (:mod:`alerts.backoff`) until ``max_attempts``; then it is reported ``failed`` (the
  service dead-letters it).

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
import logging
import os
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import aiohttp
import yaml
from pydantic import SecretStr, ValidationError

from alerts.cap import DEFAULT_CAP_CONFIG, CapConfig, CapStatus, to_cap_xml
from alerts.lifecycle import AckRecord, AlertMessage
from alerts.messages import to_json_bytes
from alerts.signing import sign
from alerts.subscriptions import Subscription, matches
from civic_iot import retry
from civic_iot.mqtt import MqttConnection, MqttError, Reason
from civic_iot.retry import retryable_status
from civic_iot.settings import InfluxSettings
from civic_iot.storage.points import FieldValue, Point
from civic_iot.storage.schema import measurement
from civic_iot.times import to_ns

logger = logging.getLogger(__name__)

__all__ = [
    "MESSAGE_ID_HEADER",
    "DeliveryError",
    "DeliveryResult",
    "MqttChannel",
    "Outcome",
    "Report",
    "Sink",
    "SubscriptionError",
    "Webhook",
    "WebhookChannel",
    "ack_point",
    "alert_point",
    "delivery_point",
    "load_subscriptions",
    "mqtt_topic",
    "resolve_secret",
    "retryable_status",
    "webhook_request",
]

T_contra = TypeVar("T_contra", contravariant=True)

#: The message identifier, stable across retries and re-sends: receivers drop duplicates
#: by it (the lifecycle derives it from alert id and sequence, so a replay after a restart
#: gives the same one).
MESSAGE_ID_HEADER = "X-Civic-Message-Id"
ATTEMPT_HEADER = "X-Civic-Delivery-Attempt"
STATUS_HEADER = "X-Civic-Status"

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


class SubscriptionError(ValueError):
    """The subscriptions file or a subscription's secret is wrong."""


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """One delivery attempt of one message to one subscriber (or the MQTT broker)."""

    channel: Channel
    subscriber: str
    message: AlertMessage
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
        return (self.at_ns / 1e6) - self.message.sent.timestamp() * 1000.0


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


def mqtt_topic(msg: AlertMessage, root: str = "alerts") -> str:
    """``alerts/{hazard}/{area}``; MQTT's special characters in an area code become ``_``."""
    area = msg.area_code
    for ch in ("/", "+", "#", "\x00"):
        area = area.replace(ch, "_")
    return f"{root}/{msg.hazard}/{area}"


# --------------------------------------------------------------------------- MQTT


class MqttChannel:
    """:class:`Sink` of alert messages to ``{root}/{hazard}/{area}``, QoS 1, retained
    (``root``: :attr:`civic_iot.topology.Topology.mqtt_alerts_root`).

    One worker publishes in order, so per topic the broker sees Alert, Update, Cancel and
    the clear in the order they were issued. The connection (:mod:`civic_iot.mqtt`: paho
    on this asyncio loop) reconnects by itself; a QoS 1 message published while
    disconnected stays in paho's queue and goes out on reconnect, so a missing PUBACK is
    waited for again (reported as ``retry``), never published a second time.
    ``tls_ca``: connect to the broker's TLS listener, trusting that CA.
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
    ) -> None:
        self._host, self._port = host, port
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
                    DeliveryResult("mqtt", "broker", msg, "failed", 1, 0, time.time_ns(), str(exc))
                )
                continue
            task = asyncio.create_task(self._confirm(msg, acks))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            task.add_done_callback(lambda _t: self._queue.task_done())

    def _publish_message(self, msg: AlertMessage) -> list[asyncio.Future[Reason]]:
        topic = mqtt_topic(msg, self._root)
        payload = to_json_bytes(msg, self._status, config=self._cap_config)
        if msg.msg_type == "Cancel":
            # Live subscribers get the Cancel itself; then the retained state is cleared.
            return [
                self._mqtt.publish(topic, payload, retain=False),
                self._mqtt.publish(topic, b"", retain=True),
            ]
        return [self._mqtt.publish(topic, payload, retain=True)]

    async def _confirm(self, msg: AlertMessage, acks: list[asyncio.Future[Reason]]) -> None:
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
                            mqtt_topic(msg, self._root),
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
                    mqtt_topic(msg, self._root),
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


# --------------------------------------------------------------------------- webhooks


def resolve_secret(sub: Subscription, environ: Mapping[str, str]) -> SecretStr:
    """The HMAC key of ``sub``: its ``secret``, or the environment variable ``secret_ref``."""
    if sub.secret is not None:
        return sub.secret
    assert sub.secret_ref is not None  # the model requires exactly one of the two
    value = environ.get(sub.secret_ref, "")
    if not value:
        msg = (
            f"webhook subscription {sub.id!r}: environment variable {sub.secret_ref!r} "
            "(its secret_ref) is unset or empty"
        )
        raise SubscriptionError(msg)
    return SecretStr(value)


def load_subscriptions(
    path: Path, environ: Mapping[str, str] | None = None
) -> list[tuple[Subscription, SecretStr]]:
    """Subscriptions from a YAML file ``{subscriptions: [...]}``, each with its secret.

    A missing file means no subscriptions. A ``secret`` written in the file is refused:
    secrets live in the environment (``secret_ref``), never in the repository.
    """
    env = os.environ if environ is None else environ
    if not path.exists():
        logger.info("no webhook subscriptions file path=%s", path)
        return []
    data: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    items = data.get("subscriptions") if isinstance(data, dict) else None
    if items is None:
        items = []
    if not isinstance(items, list):
        msg = f"{path}: 'subscriptions' must be a list of subscriptions"
        raise SubscriptionError(msg)
    out: list[tuple[Subscription, SecretStr]] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            msg = f"{path}: subscriptions[{i}] must be a mapping, got {type(item).__name__}"
            raise SubscriptionError(msg)
        if "secret" in item:
            msg = (
                f"{path}: subscriptions[{i}] ({item.get('id', '?')}) writes its secret in the "
                "file; name an environment variable with secret_ref instead"
            )
            raise SubscriptionError(msg)
        try:
            sub = Subscription.model_validate(item)
        except ValidationError as exc:
            msg = f"{path}: subscriptions[{i}] is invalid: {exc}"
            raise SubscriptionError(msg) from exc
        if sub.id in seen:
            msg = f"{path}: subscription id {sub.id!r} appears twice"
            raise SubscriptionError(msg)
        seen.add(sub.id)
        out.append((sub, resolve_secret(sub, env)))
    return out


@dataclass(frozen=True, slots=True)
class Webhook:
    """What one POST of one message to one subscriber consists of."""

    url: str
    body: bytes
    headers: dict[str, str]


def webhook_request(
    sub: Subscription,
    secret: SecretStr,
    msg: AlertMessage,
    status: CapStatus,
    *,
    attempt: int,
    now_s: int,
    cap_config: CapConfig = DEFAULT_CAP_CONFIG,
) -> Webhook:
    """The POST of ``msg`` to ``sub`` (pure): body in the subscriber's format, signed at
    ``now_s`` (Unix seconds; each attempt is signed afresh so its timestamp is current).
    """
    if sub.format == "cap":
        body = to_cap_xml(msg, status, config=cap_config)
        content_type = "application/cap+xml; charset=utf-8"
    else:
        body = to_json_bytes(msg, status, config=cap_config)
        content_type = "application/json; charset=utf-8"
    headers = {
        "Content-Type": content_type,
        MESSAGE_ID_HEADER: msg.identifier,
        "X-Civic-Alert-Id": msg.alert_id,
        ATTEMPT_HEADER: str(attempt),
        STATUS_HEADER: status,
        **sign(secret, body, now_s),
    }
    return Webhook(url=str(sub.url), body=body, headers=headers)


class _SubscriberWorker:
    """One subscriber's queue and worker: retries here wait for nobody else."""

    def __init__(
        self, channel: WebhookChannel, sub: Subscription, secret: SecretStr, queue_size: int
    ) -> None:
        self.sub = sub
        self._secret = secret
        self._channel = channel
        self.queue: asyncio.Queue[AlertMessage] = asyncio.Queue(maxsize=queue_size)
        # Identifiers delivered by this process: a message handed over twice (a re-issued
        # message after a restart overlapping with this run) is not POSTed twice.
        self._delivered: OrderedDict[str, None] = OrderedDict()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"alerts-webhook-{self.sub.id}")

    async def _run(self) -> None:
        while True:
            msg = await self.queue.get()
            try:
                if msg.identifier not in self._delivered:
                    await self._deliver(msg)
            except Exception:
                logger.exception(
                    "webhook delivery crashed subscriber=%s identifier=%s",
                    self.sub.id,
                    msg.identifier,
                )
            finally:
                self.queue.task_done()

    async def _deliver(self, msg: AlertMessage) -> None:
        ch = self._channel
        for attempt in range(1, ch.max_attempts + 1):
            req = webhook_request(
                self.sub,
                self._secret,
                msg,
                ch.status,
                attempt=attempt,
                now_s=int(time.time()),
                cap_config=ch.cap_config,
            )
            status_code, error = 0, ""
            try:
                async with ch.session.post(
                    req.url, data=req.body, headers=req.headers, timeout=ch.timeout
                ) as resp:
                    status_code = resp.status
                    await resp.read()
            except TimeoutError:
                error = f"no answer within {ch.timeout.total:g} s"
            except aiohttp.ClientError as exc:
                error = f"{type(exc).__name__}: {exc}"
            if 200 <= status_code < 300:
                self._remember(msg.identifier)
                await ch.report(
                    DeliveryResult(
                        "webhook",
                        self.sub.id,
                        msg,
                        "delivered",
                        attempt,
                        status_code,
                        time.time_ns(),
                    )
                )
                return
            error = error or f"HTTP {status_code}"
            final = attempt >= ch.max_attempts or (
                status_code != 0 and not retryable_status(status_code)
            )
            logger.warning(
                "webhook attempt failed subscriber=%s identifier=%s attempt=%d status=%d "
                "error=%s final=%s",
                self.sub.id,
                msg.identifier,
                attempt,
                status_code,
                error,
                final,
            )
            outcome: Outcome = "failed" if final else "retry"
            await ch.report(
                DeliveryResult(
                    "webhook",
                    self.sub.id,
                    msg,
                    outcome,
                    attempt,
                    status_code,
                    time.time_ns(),
                    error,
                )
            )
            if final:
                return
            await asyncio.sleep(
                retry.delay(attempt - 1, ch.backoff_base_s, ch.backoff_cap_s, ch.rng)
            )

    def _remember(self, identifier: str) -> None:
        self._delivered[identifier] = None
        while len(self._delivered) > 10_000:
            self._delivered.popitem(last=False)


class WebhookChannel:
    """:class:`Sink` of alert messages to webhook subscribers, one worker per subscriber."""

    def __init__(
        self,
        subscriptions: Sequence[tuple[Subscription, SecretStr]],
        *,
        status: CapStatus,
        report: Report,
        cap_config: CapConfig = DEFAULT_CAP_CONFIG,
        max_attempts: int = 6,
        timeout_s: float = 5.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 60.0,
        queue_size: int = 10_000,
        rng: retry.RandomSource | None = None,
    ) -> None:
        if max_attempts < 1:
            msg = f"webhook max_attempts must be >= 1, got {max_attempts}"
            raise ValueError(msg)
        self.status = status
        self.report = report
        self.cap_config = cap_config
        self.max_attempts = max_attempts
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s
        self.rng: retry.RandomSource = rng or random.Random()
        self._workers = [_SubscriberWorker(self, s, k, queue_size) for s, k in subscriptions]
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            msg = "WebhookChannel used before start()"
            raise RuntimeError(msg)
        return self._session

    @property
    def subscribers(self) -> list[str]:
        return [w.sub.id for w in self._workers]

    async def start(self) -> None:
        # No connection limit per host across subscribers: one hanging receiver must not
        # take the pool's connections away from the others.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": "civic-iot-alerts/1"}
        )
        for w in self._workers:
            w.start()

    async def add(self, item: AlertMessage) -> None:
        for w in self._workers:
            if not matches(w.sub, item):
                continue
            try:
                w.queue.put_nowait(item)
            except asyncio.QueueFull:
                logger.error(
                    "webhook queue full subscriber=%s identifier=%s size=%d",
                    w.sub.id,
                    item.identifier,
                    w.queue.qsize(),
                )
                await self.report(
                    DeliveryResult(
                        "webhook", w.sub.id, item, "failed", 0, 0, time.time_ns(), "queue full"
                    )
                )

    async def flush(self) -> None:
        await asyncio.gather(*(w.queue.join() for w in self._workers))

    async def close(self, timeout_s: float | None = None) -> None:
        """Give the queues ``timeout_s`` (default: one request timeout) to drain, then stop."""
        limit = self.timeout.total if timeout_s is None else timeout_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await self.flush()
        tasks = [w.task for w in self._workers if w.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        left = sum(w.queue.qsize() for w in self._workers)
        if left:
            logger.warning("webhook messages left undelivered at close count=%d", left)
        if self._session is not None:
            await self._session.close()
            self._session = None


def subscriptions_from(
    items: Iterable[Subscription], environ: Mapping[str, str] | None = None
) -> list[tuple[Subscription, SecretStr]]:
    """Pair already-built subscriptions with their secrets (tests, embedding)."""
    env = os.environ if environ is None else environ
    return [(s, resolve_secret(s, env)) for s in items]


def utc_now() -> datetime:
    return datetime.now(UTC)
