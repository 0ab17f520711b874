"""The alert service: candidates from Kafka in, alert messages out to every channel.

A thin asyncio shell around the pure lifecycle (:mod:`alerts.lifecycle`):

1. On start, the lifecycle state is rebuilt by reading the compacted ``alerts.state``
   topic from the beginning to its end offsets, *before* any candidate is consumed, so
   a restart neither repeats an Alert nor loses a pending Cancel.
2. Each candidate from ``alerts.candidates`` (consumer group ``AlertSettings.consumer_group``)
   goes through :func:`~alerts.lifecycle.on_candidate`; a timer runs
   :func:`~alerts.lifecycle.on_tick` every ``tick_interval_s``; operators' acknowledgements
   go through :func:`~alerts.lifecycle.acknowledge`. One lock serialises the three.
3. Each step, in this order: the issued messages are produced to the ``alerts`` topic
   (key alert id; the JSON form and the CAP XML) and acknowledged by Kafka; then the
   changed records are written to ``alerts.state`` (key ``hazard:area``, a tombstone for a
   pruned key); only then is the in-memory state replaced and, for candidates, the offset
   committed (after the batch). A crash in between repeats a step on restart: the same
   message identifiers come out again (the lifecycle derives them from the input), so
   receivers drop the repeat by ``X-Civic-Message-Id``; nothing is lost.
4. Each issued message is written as an ``alert`` point and handed to the delivery
   channels (:mod:`alerts.delivery`); their results become ``delivery`` points, metrics,
   and for failures a dead-letter record on ``alerts.deadletter``.

Delivery runs after the commit: a crash after the commit and before a webhook answered
loses that delivery attempt (the message itself is in the ``alerts`` topic, so it can be
re-sent from there). One instance runs at a time: the state is global, not per partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr, ValidationError

from alerts.cap import DEFAULT_CAP_CONFIG, CapConfig, CapStatus, to_cap_xml
from alerts.delivery import (
    DeliveryResult,
    InfluxPoints,
    MqttChannel,
    Sink,
    WebhookChannel,
    ack_point,
    alert_point,
    delivery_point,
    load_subscriptions,
)
from alerts.lifecycle import (
    STATE_VERSION,
    AckRecord,
    AlertMessage,
    AlertRecord,
    LifecycleConfig,
    LifecycleState,
    acknowledge,
    changed_keys,
    on_candidate,
    on_tick,
)
from alerts.messages import to_json_dict
from alerts.subscriptions import Subscription
from civic_iot.events import AlertCandidate
from civic_iot.settings import Settings, influx_token, mqtt_password
from civic_iot.topics import Topics

logger = logging.getLogger(__name__)

__all__ = [
    "STATE_VERSION_HEADER",
    "AlertMetrics",
    "AlertService",
    "alerts_topic_record",
    "deadletter_record",
    "deadletter_topic",
    "lifecycle_config",
    "replay_state",
    "state_updates",
]

#: Kafka header on every ``alerts.state`` record: the lifecycle's state version.
STATE_VERSION_HEADER = "civic-state-version"

Step = Callable[[LifecycleState, datetime], tuple[LifecycleState, list[AlertMessage]]]


def utc_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- pure helpers


def deadletter_topic(topics: Topics) -> str:
    """Webhook and MQTT deliveries that failed for good, keyed by message identifier."""
    return f"{topics.prefix}alerts.deadletter"


def lifecycle_config(settings: Settings) -> LifecycleConfig:
    """The lifecycle configuration of a deployment (sender from ``CIVIC_ALERTS__SENDER``)."""
    return LifecycleConfig(sender=settings.alerts.sender)


def _dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def alerts_topic_record(
    msg: AlertMessage, status: CapStatus, *, cap_config: CapConfig = DEFAULT_CAP_CONFIG
) -> tuple[bytes, bytes]:
    """Key and value of ``msg`` on the ``alerts`` topic: the JSON form and the CAP XML."""
    value = {
        "identifier": msg.identifier,
        "alert_id": msg.alert_id,
        "key": msg.key,
        "msg_type": msg.msg_type,
        "status": status,
        "json": to_json_dict(msg, status, config=cap_config),
        "cap_xml": to_cap_xml(msg, status, config=cap_config).decode(),
    }
    return msg.alert_id.encode(), _dumps(value)


def state_updates(
    before: LifecycleState, after: LifecycleState
) -> list[tuple[bytes, bytes | None]]:
    """The ``alerts.state`` records that turn ``before`` into ``after``, by key.

    A key missing from ``after`` gets a tombstone (value ``None``), so compaction forgets it.
    """
    out: list[tuple[bytes, bytes | None]] = []
    for key in sorted(changed_keys(before, after)):
        rec = after.records.get(key)
        out.append((key.encode(), None if rec is None else rec.model_dump_json().encode()))
    return out


def replay_state(
    records: Iterable[tuple[bytes | None, bytes | None, int | None]],
) -> LifecycleState:
    """The state from ``alerts.state`` records ``(key, value, version)``, oldest first.

    The last value per key wins; a tombstone removes the key. A record written by another
    state version is refused (a silent misread could re-send or lose alerts).
    """
    latest: dict[str, dict[str, Any]] = {}
    for key, value, version in records:
        if key is None:
            continue
        k = key.decode()
        if value is None:
            latest.pop(k, None)
            continue
        if version is not None and version != STATE_VERSION:
            msg = f"alerts.state record {k!r} has state version {version}; expected {STATE_VERSION}"
            raise ValueError(msg)
        latest[k] = json.loads(value)
    return LifecycleState.from_records(latest)


def deadletter_record(result: DeliveryResult) -> tuple[bytes, bytes]:
    """Key and value of a failed delivery on ``alerts.deadletter`` (no secrets, no body)."""
    msg = result.message
    value = {
        "identifier": msg.identifier,
        "alert_id": msg.alert_id,
        "key": msg.key,
        "msg_type": msg.msg_type,
        "channel": result.channel,
        "subscriber": result.subscriber,
        "attempts": result.attempt,
        "status_code": result.status_code,
        "error": result.error,
        "failed_at_ns": result.at_ns,
    }
    return msg.identifier.encode(), _dumps(value)


# --------------------------------------------------------------------------- metrics


class AlertMetrics:
    """Prometheus metrics of one service instance (its own registry, for ``/metrics``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.alerts = Gauge(
            "civic_alerts_alerts",
            "Alerts held by the lifecycle, by state (open, closed and kept for replays)",
            ["state"],
            registry=self.registry,
        )
        self.messages = Counter(
            "civic_alerts_messages",
            "Alert messages issued, by CAP msgType",
            ["msg_type"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "civic_alerts_deliveries",
            "Delivery attempts by channel and outcome (delivered, retry, failed)",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.candidates = Counter(
            "civic_alerts_candidates",
            "Alert candidates consumed, by result (ok, invalid)",
            ["result"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "civic_alerts_latency_seconds",
            "Detector decision (candidate detected_at) -> published, seconds, by channel "
            "(kafka = alerts topic acknowledged, mqtt = PUBACK, webhook = 2xx answer)",
            ["channel"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )

    def observe_state(self, state: LifecycleState) -> None:
        n_open = sum(1 for r in state.records.values() if r.status == "open")
        self.alerts.labels("open").set(n_open)
        self.alerts.labels("closed").set(len(state.records) - n_open)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# --------------------------------------------------------------------------- service


class AlertService:
    """Candidates in, alert messages out; see the module doc for the order of writes.

    Everything comes from one :class:`~civic_iot.settings.Settings`; ``lifecycle``,
    ``subscriptions`` and ``cap_config`` override what would be derived from it (tests
    use short hold times and their own receivers).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        lifecycle: LifecycleConfig | None = None,
        subscriptions: Sequence[tuple[Subscription, SecretStr]] | None = None,
        cap_config: CapConfig = DEFAULT_CAP_CONFIG,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self.topics = Topics.from_settings(settings.kafka)
        self.lifecycle = lifecycle or lifecycle_config(settings)
        self.cap_config = cap_config
        self.status: CapStatus = settings.alerts.cap_status
        self.metrics = AlertMetrics()
        self._clock = clock
        if subscriptions is None:
            subscriptions = load_subscriptions(settings.alerts.subscriptions_file)
        a = settings.alerts
        self._state = LifecycleState()
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = False
        self._producer_: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self.points = InfluxPoints(
            url=settings.influx.url,
            token=SecretStr(influx_token(settings)),
            org=settings.influx.org,
            bucket=settings.influx.bucket_alerts,
        )
        password = settings.mqtt.alerts_password or SecretStr(
            mqtt_password(settings, settings.mqtt.alerts_username)
        )
        self.mqtt = MqttChannel(
            host=settings.mqtt.host,
            port=settings.mqtt.port,
            username=settings.mqtt.alerts_username,
            password=password,
            status=self.status,
            report=self._record_delivery,
            cap_config=cap_config,
            publish_timeout_s=a.mqtt_publish_timeout_s,
            max_attempts=a.webhook_max_attempts,
            keepalive_s=settings.mqtt.keepalive_s,
        )
        self.webhooks = WebhookChannel(
            subscriptions,
            status=self.status,
            report=self._record_delivery,
            cap_config=cap_config,
            max_attempts=a.webhook_max_attempts,
            timeout_s=a.webhook_timeout_s,
            backoff_base_s=a.webhook_backoff_base_s,
            backoff_cap_s=a.webhook_backoff_cap_s,
            queue_size=a.webhook_queue_size,
        )
        self._channels: list[Sink[AlertMessage]] = [self.mqtt, self.webhooks]

    # ------------------------------------------------------------------ views

    @property
    def ready(self) -> bool:
        """Started, state loaded, consuming."""
        return self._ready

    @property
    def state(self) -> LifecycleState:
        return self._state

    def open_alerts(self) -> list[AlertRecord]:
        return self._state.open_alerts()

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self._ready and self.mqtt.connected else "degraded",
            "ready": self._ready,
            "mqtt_connected": self.mqtt.connected,
            "open_alerts": len(self._state.open_alerts()),
            "webhook_subscribers": self.webhooks.subscribers,
            "cap_status": self.status,
        }

    # ------------------------------------------------------------------ lifecycle

    @property
    def _producer(self) -> AIOKafkaProducer:
        if self._producer_ is None:
            msg = "AlertService used before start()"
            raise RuntimeError(msg)
        return self._producer_

    async def start(self) -> None:
        """Connect everything, rebuild the state, then start consuming and ticking."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        await self._check_topics()
        self._producer_ = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            client_id="civic-alerts",
        )
        await self._producer_.start()
        await self.mqtt.start()
        await self.webhooks.start()
        self._state = await self._load_state()
        self.metrics.observe_state(self._state)
        consumer = AIOKafkaConsumer(
            self.topics.candidates,
            bootstrap_servers=self.settings.kafka.bootstrap,
            group_id=self.settings.alerts.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="civic-alerts",
        )
        await consumer.start()
        self._consumer = consumer
        self._tasks = [
            asyncio.create_task(self._consume(consumer), name="alerts-consume"),
            asyncio.create_task(self._tick_loop(), name="alerts-tick"),
            asyncio.create_task(self._flush_loop(), name="alerts-flush"),
        ]
        self._ready = True
        logger.info(
            "alert service started candidates=%s group=%s open_alerts=%d webhooks=%d status=%s",
            self.topics.candidates,
            self.settings.alerts.consumer_group,
            len(self._state.open_alerts()),
            len(self.webhooks.subscribers),
            self.status,
        )

    async def wait(self) -> None:
        """Return when a background task stops; raise its error if it failed."""
        if not self._tasks:
            return
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]

    async def stop(self) -> None:
        """Finish the current step, stop consuming, drain the channels, close everything."""
        self._ready = False
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=10)
            for t in pending:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        for ch in self._channels:
            await ch.close()
        await self.points.close()
        if self._producer_ is not None:
            await self._producer_.stop()
            self._producer_ = None
        logger.info("alert service stopped open_alerts=%d", len(self._state.open_alerts()))

    # ------------------------------------------------------------------ operator actions

    async def acknowledge(self, key_or_alert_id: str, by: str, note: str = "") -> AckRecord:
        """Record an operator's acknowledgement (state topic and an ``ack`` point).

        Raises:
            alerts.lifecycle.UnknownAlertError: no such alert.
        """
        async with self._lock:
            before = self._state
            after, ack = acknowledge(before, key_or_alert_id, by, self._clock(), note)
            await self._write_state(before, after)
            self._state = after
        await self.points.add(ack_point(ack))
        await self.points.flush()
        return ack

    # ------------------------------------------------------------------ internals

    async def _check_topics(self) -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.settings.kafka.bootstrap, request_timeout_ms=15000
        )
        await admin.start()
        try:
            needed = [self.topics.candidates, self.topics.alerts, self.topics.alert_state]
            for _ in range(50):
                existing = set(await admin.list_topics())
                missing = [t for t in needed if t not in existing]
                if not missing:
                    break
                # A topic created a moment ago reaches the broker's metadata shortly after.
                await asyncio.sleep(0.2)
            if missing:
                # Auto-creation would make alerts.state an uncompacted topic: refuse.
                msg = (
                    f"Kafka topics missing: {', '.join(missing)}; create them with "
                    "`python -m civic_iot.kafka_setup` (same CIVIC_KAFKA__TOPIC_PREFIX)"
                )
                raise RuntimeError(msg)
            dlq = deadletter_topic(self.topics)
            if dlq not in existing:
                await admin.create_topics(
                    [
                        NewTopic(
                            dlq,
                            self.settings.kafka.partitions,
                            1,
                            topic_configs={"retention.ms": "-1"},
                        )
                    ]
                )
                logger.info("kafka topic created name=%s", dlq)
        finally:
            await admin.close()

    async def _load_state(self) -> LifecycleState:
        """Read ``alerts.state`` from the beginning to the end offsets of now."""
        topic = self.topics.alert_state
        # Without a group, a subscription is assigned every partition of the topic.
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.settings.kafka.bootstrap,
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
            client_id="civic-alerts-state",
        )
        await consumer.start()
        try:
            async with asyncio.timeout(30):
                while not consumer.assignment():  # noqa: ASYNC110 - aiokafka has no event
                    await asyncio.sleep(0.05)
            tps = sorted(consumer.assignment())
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            records: list[tuple[bytes | None, bytes | None, int | None]] = []
            remaining = {tp for tp in tps if end[tp] > 0}
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=1000)
                for tp, recs in batch.items():
                    for r in recs:
                        if r.offset < end[tp]:
                            records.append((r.key, r.value, _version(r.headers)))
                for tp in list(remaining):
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
        state = replay_state(records)
        logger.info(
            "alert state loaded topic=%s records=%d keys=%d open=%d",
            topic,
            len(records),
            len(state.records),
            len(state.open_alerts()),
        )
        return state

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while not self._stopping.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            if not batch:
                continue
            for tp, recs in batch.items():
                for r in recs:
                    await self._on_candidate(r.value, tp.partition, r.offset)
            # Every message of the batch is in the alerts topic and its state written.
            await consumer.commit()

    async def _on_candidate(self, value: bytes | None, partition: int, offset: int) -> None:
        try:
            cand = AlertCandidate.model_validate_json(value or b"")
        except ValidationError as exc:
            self.metrics.candidates.labels("invalid").inc()
            logger.warning(
                "invalid alert candidate topic=%s partition=%d offset=%d errors=%d first=%s",
                self.topics.candidates,
                partition,
                offset,
                exc.error_count(),
                exc.errors()[0]["msg"] if exc.error_count() else "",
            )
            return
        self.metrics.candidates.labels("ok").inc()
        config = self.lifecycle
        await self._step(lambda s, now: on_candidate(s, cand, now, config=config))

    async def _tick_loop(self) -> None:
        config = self.lifecycle
        interval = self.settings.alerts.tick_interval_s
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
            if self._stopping.is_set():
                return
            await self._step(lambda s, now: on_tick(s, now, config=config))

    async def _flush_loop(self) -> None:
        interval = self.settings.influx.flush_interval_ms / 1000
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
            await self.points.flush()

    async def _step(self, step: Step) -> None:
        """Run one lifecycle step; persist messages and state before anything else sees it."""
        async with self._lock:
            before = self._state
            after, messages = step(before, self._clock())
            if messages:
                await self._produce_messages(messages)
            await self._write_state(before, after)
            self._state = after
        if after is not before:
            self.metrics.observe_state(after)
        for msg in messages:
            await self._dispatch(msg)

    async def _produce_messages(self, messages: list[AlertMessage]) -> None:
        futures = []
        for msg in messages:
            key, value = alerts_topic_record(msg, self.status, cap_config=self.cap_config)
            futures.append(await self._producer.send(self.topics.alerts, value, key=key))
        await asyncio.gather(*futures)
        done_s = self._clock().timestamp()
        for msg in messages:
            self.metrics.latency.labels("kafka").observe(done_s - msg.detected_at.timestamp())

    async def _write_state(self, before: LifecycleState, after: LifecycleState) -> None:
        updates = state_updates(before, after)
        if not updates:
            return
        header = [(STATE_VERSION_HEADER, str(STATE_VERSION).encode())]
        futures = [
            await self._producer.send(self.topics.alert_state, value, key=key, headers=header)
            for key, value in updates
        ]
        await asyncio.gather(*futures)

    async def _dispatch(self, msg: AlertMessage) -> None:
        self.metrics.messages.labels(msg.msg_type).inc()
        await self.points.add(alert_point(msg, self.status))
        for ch in self._channels:
            await ch.add(msg)

    async def _record_delivery(self, result: DeliveryResult) -> None:
        self.metrics.deliveries.labels(result.channel, result.outcome).inc()
        await self.points.add(delivery_point(result))
        if result.outcome == "delivered":
            seconds = result.at_ns / 1e9 - result.message.detected_at.timestamp()
            self.metrics.latency.labels(result.channel).observe(seconds)
        elif result.outcome == "failed":
            key, value = deadletter_record(result)
            try:
                await self._producer.send_and_wait(deadletter_topic(self.topics), value, key=key)
            except Exception:
                logger.exception(
                    "dead-letter write failed identifier=%s subscriber=%s",
                    result.message.identifier,
                    result.subscriber,
                )
            logger.error(
                "delivery failed channel=%s subscriber=%s identifier=%s attempts=%d error=%s",
                result.channel,
                result.subscriber,
                result.message.identifier,
                result.attempt,
                result.error,
            )


def _version(headers: Sequence[tuple[str, bytes]] | None) -> int | None:
    for name, value in headers or ():
        if name == STATE_VERSION_HEADER:
            try:
                return int(value)
            except ValueError:
                return -1
    return None


async def run_service(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run the service and its HTTP endpoint until ``stop`` is set (or SIGINT/SIGTERM)."""
    import signal  # noqa: PLC0415 - only the entry point handles signals

    from alerts.http import HttpServer  # noqa: PLC0415 - http depends on this module's views

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    service = AlertService(settings)
    await service.start()
    http = HttpServer(service, host=settings.alerts.http_host, port=settings.alerts.http_port)
    try:
        await http.start()
        waiters: list[asyncio.Task[Any]] = [
            asyncio.create_task(stop.wait()),
            asyncio.create_task(service.wait()),
        ]
        done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        for t in done:
            t.result()  # re-raise a failed background task
    finally:
        await http.stop()
        await service.stop()
