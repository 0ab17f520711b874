"""Durable webhook delivery: a consumer of the ``alerts`` topic of its own.

Every instance of the alert service (active and standby) runs one
:class:`WebhookDelivery` in the consumer group
:attr:`~civic_iot.topology.Topology.webhook_group`; the group shares the partitions of
the ``alerts`` topic among them, so webhooks go on while any instance lives.

For each message read, every subscription that :func:`~alerts.subscriptions.matches` it
and was created before the message was sent gets one POST (:func:`webhook_request`):

- one worker per subscription, so a slow or hanging receiver delays only itself;
- each attempt signed afresh (:mod:`alerts.signing`: timestamp, message id, body), with a
  per-request timeout, retried with exponential backoff and full jitter
  (:mod:`civic_iot.retry`) on a connection error, a timeout, 5xx, 408, 425 or 429, until
  ``max_attempts``;
- redirects are never followed: a 3xx is a failure (the signed body is not resent
  anywhere), as is any other 4xx, and an address the SSRF guard refuses
  (:mod:`alerts.urls`);
- a failure for good is written to ``alerts.deadletter`` (its source record's topic,
  partition and offset, no body, no secret) and acknowledged by Kafka before it counts.

Offsets are committed only below the first record that some subscription still waits
for (:class:`OffsetTracker`): a record counts as done once each of its deliveries got a
2xx or was dead-lettered. A crash (SIGKILL included) therefore loses nothing: the next
owner of the partition reads every record from the first one not done and delivers it
again. Receivers see such a repeat with the same ``X-Civic-Message-Id`` and drop it
(:mod:`alerts.receiver`): delivery is at least once.

Memory is bounded: at most ``max_pending`` records are held at once (the consumer stops
reading until deliveries catch up).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from alerts.delivery import DeliveryResult, MessageRef, Outcome, Report
from alerts.signing import MESSAGE_ID_HEADER, SIGNATURE_HEADER, header_value
from alerts.subscription_store import SubscriptionStore
from alerts.subscriptions import Routing, Subscription, matches
from alerts.text import get_logger
from alerts.urls import GuardedResolver, UrlPolicy, UrlRefusedError, describe
from civic_iot import retry
from civic_iot.retry import retryable_status
from civic_iot.times import to_ns

logger = get_logger(__name__)

__all__ = [
    "ATTEMPT_HEADER",
    "STATUS_HEADER",
    "Dispatch",
    "MessageView",
    "OffsetTracker",
    "Webhook",
    "WebhookDelivery",
    "deadletter_value",
    "webhook_request",
]

ATTEMPT_HEADER = "X-Civic-Delivery-Attempt"
STATUS_HEADER = "X-Civic-Status"
ALERT_ID_HEADER = "X-Civic-Alert-Id"
#: Bytes of a receiver's answer read (and thrown away); the rest is not waited for.
_MAX_ANSWER_BYTES = 64 * 1024


# --------------------------------------------------------------------------- pure parts


@dataclass(frozen=True, slots=True)
class MessageView:
    """One record of the ``alerts`` topic as the webhook consumer needs it."""

    ref: MessageRef
    status: str
    routing: Routing
    json_body: bytes
    cap_body: bytes

    @classmethod
    def from_record(cls, value: bytes | None) -> MessageView:
        """Parse a value written by :func:`alerts.service.alerts_topic_record`.

        Raises:
            ValueError: not such a record.
        """
        try:
            data = json.loads(value or b"")
            body: dict[str, Any] = data["json"]
            ref = MessageRef(
                identifier=str(data["identifier"]),
                alert_id=str(data["alert_id"]),
                key=str(data["key"]),
                msg_type=str(data["msg_type"]),
                sent_ns=int(data["sent_ns"]),
                detected_at_ns=int(data["detected_at_ns"]),
            )
            routing = Routing.of_json(body)
            cap = str(data["cap_xml"]).encode()
            status = str(data["status"])
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            msg = f"not an alerts topic record: {type(exc).__name__}: {exc}"
            raise ValueError(msg) from None
        # The same bytes as alerts.messages.to_json_bytes gives for the message.
        json_body = json.dumps(
            body, ensure_ascii=False, sort_keys=True, separators=(",", ":")
        ).encode()
        return cls(ref=ref, status=status, routing=routing, json_body=json_body, cap_body=cap)


@dataclass(frozen=True, slots=True)
class Webhook:
    """What one POST of one message to one subscriber consists of."""

    url: str
    body: bytes
    headers: dict[str, str]


def webhook_request(
    sub: Subscription,
    secrets: list[Any],
    view: MessageView,
    *,
    attempt: int,
    now_s: int,
) -> Webhook:
    """The POST of ``view`` to ``sub`` (pure): the body in the subscriber's format, signed
    at ``now_s`` (Unix seconds) with each of ``secrets``."""
    if sub.format == "cap":
        body, content_type = view.cap_body, "application/cap+xml; charset=utf-8"
    else:
        body, content_type = view.json_body, "application/json; charset=utf-8"
    ident = view.ref.identifier
    headers = {
        "Content-Type": content_type,
        MESSAGE_ID_HEADER: ident,
        SIGNATURE_HEADER: header_value(secrets, ident, body, now_s),
        ALERT_ID_HEADER: view.ref.alert_id,
        ATTEMPT_HEADER: str(attempt),
        STATUS_HEADER: view.status,
    }
    return Webhook(url=sub.url, body=body, headers=headers)


def deadletter_value(
    result: DeliveryResult, source: tuple[str, int, int] | None = None
) -> tuple[bytes, bytes]:
    """Key and value of a failed delivery on ``alerts.deadletter`` (no secret, no body;
    ``source`` = the ``alerts`` record's topic, partition and offset, to send it again)."""
    msg = result.message
    value: dict[str, Any] = {
        "identifier": msg.identifier,
        "alert_id": msg.alert_id,
        "key": msg.key,
        "msg_type": msg.msg_type,
        "channel": result.channel,
        "subscriber": result.subscriber,
        "attempts": result.attempt,
        "status_code": result.status_code,
        "error": result.error[:1000],
        "failed_at_ns": result.at_ns,
    }
    if source is not None:
        value["source"] = {"topic": source[0], "partition": source[1], "offset": source[2]}
    data = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return msg.identifier.encode(), data.encode()


class OffsetTracker:
    """Which records of each partition are done, and the offset that may be committed.

    A record is taken with the number of deliveries it needs; it is done when that many
    have ended. The committable offset of a partition is its first record not done (or
    the one after the last taken), so a commit never skips a pending delivery.
    """

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, dict[int, int]] = {}
        self._next: dict[TopicPartition, int] = {}

    def take(self, tp: TopicPartition, offset: int, deliveries: int) -> None:
        if deliveries > 0:
            self._pending.setdefault(tp, {})[offset] = deliveries
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def done(self, tp: TopicPartition, offset: int) -> None:
        pending = self._pending.get(tp)
        if pending is None or offset not in pending:
            return  # the partition was revoked meanwhile
        pending[offset] -= 1
        if pending[offset] <= 0:
            del pending[offset]

    def committable(self) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        for tp, nxt in self._next.items():
            pending = self._pending.get(tp)
            out[tp] = min(pending) if pending else nxt
        return out

    def forget(self, tps: Any) -> None:
        for tp in tps:
            self._pending.pop(tp, None)
            self._next.pop(tp, None)

    @property
    def pending(self) -> int:
        """Records taken and not done."""
        return sum(len(p) for p in self._pending.values())


# --------------------------------------------------------------------------- I/O


DeadLetter = Callable[[bytes, bytes], Awaitable[None]]


@dataclass(slots=True)
class Dispatch:
    """One delivery of one record to one subscription."""

    view: MessageView
    tp: TopicPartition
    offset: int
    #: The partition's assignment generation when taken: a revoked one is skipped.
    epoch: int


@dataclass(slots=True)
class _Worker:
    sub_id: str
    queue: asyncio.Queue[Dispatch] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: WebhookDelivery) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._owner._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        logger.info(
            "webhook partitions assigned partitions=%s", sorted(p.partition for p in assigned)
        )


class WebhookDelivery:
    """The webhook consumer of one instance (module doc)."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        deadletter_topic: str,
        store: SubscriptionStore,
        policy: UrlPolicy,
        report: Report,
        deadletter: DeadLetter,
        max_attempts: int = 6,
        timeout_s: float = 5.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 60.0,
        max_pending: int = 1000,
        session_timeout_s: float = 10.0,
        heartbeat_interval_s: float = 3.0,
        fetch_wait_s: float,
        rng: retry.RandomSource | None = None,
        resolver: Any = None,
    ) -> None:
        if max_attempts < 1:
            msg = f"webhook max_attempts must be >= 1, got {max_attempts}"
            raise ValueError(msg)
        self._bootstrap, self._topic, self._group = bootstrap, topic, group
        self._deadletter_topic = deadletter_topic
        self.store = store
        self.policy = policy
        self._report = report
        self._deadletter = deadletter
        self.max_attempts = max_attempts
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._backoff = (backoff_base_s, backoff_cap_s)
        self._max_pending = max(1, max_pending)
        self._session_timeout_ms = round(session_timeout_s * 1000)
        self._heartbeat_ms = round(heartbeat_interval_s * 1000)
        self._fetch_wait_ms = round(fetch_wait_s * 1000)
        self._rng: retry.RandomSource = rng or random.Random()
        self._resolver = resolver
        self._tracker = OffsetTracker()
        self._epochs: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._workers: dict[str, _Worker] = {}
        self._progress = asyncio.Event()
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        #: Deliveries that got a 2xx, by this process (for /health and tests).
        self.delivered = 0

    @property
    def pending(self) -> int:
        """Records read and not yet delivered to (or dead-lettered for) every subscriber."""
        return self._tracker.pending

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            msg = "WebhookDelivery used before start()"
            raise RuntimeError(msg)
        return self._session

    async def start(self) -> None:
        # No connection limit per host across subscribers: one hanging receiver must not
        # take the pool's connections away from the others. The resolver is the SSRF
        # guard's: aiohttp connects to the addresses it checked.
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=0, resolver=GuardedResolver(self.policy, self._resolver)
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": "civic-iot-alerts/2"},
            trust_env=False,
            auto_decompress=False,
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="civic-alerts-webhooks",
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=self._heartbeat_ms,
            fetch_max_wait_ms=self._fetch_wait_ms,
        )
        await consumer.start()
        consumer.subscribe([self._topic], listener=_Rebalance(self))
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name="alerts-webhooks")

    async def wait(self) -> None:
        """Return when the consumer loop ends (raise its error)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def stop(self) -> None:
        """Stop reading and delivering; commit what is done; leave the group.

        Deliveries not done are left uncommitted: the next owner of the partition
        delivers them (at least once).
        """
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        workers = [w.task for w in self._workers.values() if w.task is not None]
        for t in workers:
            t.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        self._workers.clear()
        if self._consumer is not None:
            with contextlib.suppress(
                KafkaError, TimeoutError, CommitFailedError, IllegalStateError
            ):
                async with asyncio.timeout(5):
                    await self._commit(self._consumer)
            with contextlib.suppress(KafkaError, TimeoutError):
                async with asyncio.timeout(10):
                    await self._consumer.stop()
            self._consumer = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        left = self._tracker.pending
        if left:
            logger.info("webhook records left for the next owner count=%d", left)

    # ------------------------------------------------------------------ consuming

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while not self._stopping.is_set():
            if self._tracker.pending >= self._max_pending:
                self._progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), 0.2)
            else:
                batch = await consumer.getmany(timeout_ms=200, max_records=200)
                for tp, records in batch.items():
                    for r in records:
                        self._take(tp, r.offset, r.value)
            try:
                await self._commit(consumer)
            except (CommitFailedError, IllegalStateError, KafkaError) as exc:
                # A rebalance in progress: the revocation commits, or the next round does.
                logger.info("webhook offsets not committed now group=%s error=%s", self._group, exc)

    def _take(self, tp: TopicPartition, offset: int, value: bytes | None) -> None:
        try:
            view = MessageView.from_record(value)
        except ValueError as exc:
            logger.error(
                "unreadable alerts record skipped by webhooks topic=%s partition=%d offset=%d "
                "error=%s",
                tp.topic,
                tp.partition,
                offset,
                exc,
            )
            self._tracker.take(tp, offset, 0)
            return
        targets = [
            s
            for s in self.store.all()
            if to_ns(s.created_at) <= view.ref.sent_ns and matches(s, view.routing)
        ]
        self._tracker.take(tp, offset, len(targets))
        epoch = self._epochs.setdefault(tp, 0)
        for sub in targets:
            worker = self._workers.get(sub.id)
            if worker is None or worker.task is None or worker.task.done():
                worker = _Worker(sub.id)
                worker.task = asyncio.create_task(self._work(worker), name=f"webhook-{sub.id}")
                self._workers[sub.id] = worker
            worker.queue.put_nowait(Dispatch(view, tp, offset, epoch))

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        assigned = consumer.assignment()
        offsets = {
            tp: off
            for tp, off in self._tracker.committable().items()
            if tp in assigned and self._committed.get(tp) != off
        }
        if offsets:
            await consumer.commit(offsets)
            self._committed.update(offsets)

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        consumer = self._consumer
        if consumer is not None and revoked:
            offsets = {tp: off for tp, off in self._tracker.committable().items() if tp in revoked}
            if offsets:
                with contextlib.suppress(CommitFailedError, IllegalStateError, KafkaError):
                    await consumer.commit(offsets)
        for tp in revoked:
            # Deliveries of these records not started yet are the next owner's now.
            self._epochs[tp] = self._epochs.get(tp, 0) + 1
            self._committed.pop(tp, None)
        self._tracker.forget(revoked)

    # ------------------------------------------------------------------ delivering

    async def _work(self, worker: _Worker) -> None:
        while True:
            item = await worker.queue.get()
            if self._epochs.get(item.tp, 0) != item.epoch:
                continue  # the partition was revoked: its next owner delivers it
            try:
                await self._deliver(worker.sub_id, item)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug, not a receiver's answer: keep the record pending (redelivered by
                # the next owner) rather than counting it done.
                logger.exception(
                    "webhook delivery crashed subscriber=%s identifier=%s",
                    worker.sub_id,
                    item.view.ref.identifier,
                )
                continue
            if self._epochs.get(item.tp, 0) == item.epoch:
                self._tracker.done(item.tp, item.offset)
            self._progress.set()

    async def _deliver(self, sub_id: str, item: Dispatch) -> None:
        view = item.view
        base, cap = self._backoff
        for attempt in range(1, self.max_attempts + 1):
            sub = self.store.get(sub_id)
            if sub is None:
                return  # deleted meanwhile: nobody to deliver to
            status_code, error, final = await self._attempt(sub, view, attempt)
            at_ns = time.time_ns()
            if 200 <= status_code < 300:
                self.delivered += 1
                await self._report(
                    DeliveryResult(
                        "webhook", sub_id, view.ref, "delivered", attempt, status_code, at_ns
                    )
                )
                return
            final = final or attempt >= self.max_attempts
            outcome: Outcome = "failed" if final else "retry"
            logger.warning(
                "webhook attempt failed subscriber=%s identifier=%s attempt=%d status=%d "
                "error=%s final=%s",
                sub_id,
                view.ref.identifier,
                attempt,
                status_code,
                error,
                final,
            )
            result = DeliveryResult(
                "webhook", sub_id, view.ref, outcome, attempt, status_code, at_ns, error
            )
            await self._report(result)
            if final:
                await self._dead_letter(result, item)
                return
            await self._sleep(retry.delay(attempt - 1, base, cap, self._rng))

    async def _attempt(
        self, sub: Subscription, view: MessageView, attempt: int
    ) -> tuple[int, str, bool]:
        """(HTTP status or 0, error, whether it is final) of one POST."""
        try:
            self.policy.check_url(sub.url)
        except UrlRefusedError as exc:
            return 0, f"URL refused: {exc}", True
        req = webhook_request(
            sub,
            self.store.secrets(sub, datetime.now(UTC)),
            view,
            attempt=attempt,
            now_s=int(time.time()),
        )
        try:
            async with self.session.post(
                req.url,
                data=req.body,
                headers=req.headers,
                timeout=self.timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                location = resp.headers.get("Location", "")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    await resp.content.read(_MAX_ANSWER_BYTES)
        except TimeoutError:
            return 0, f"no answer within {self.timeout.total:g} s", False
        except aiohttp.ClientError as exc:
            refused = describe(exc)
            if refused is not None:
                return 0, f"address refused: {refused}", True
            return 0, f"{type(exc).__name__}: {exc}", False
        if 300 <= status < 400:
            return status, f"HTTP {status}: redirect to {location[:200]!r} not followed", True
        if 200 <= status < 300:
            return status, "", False
        return status, f"HTTP {status}", not retryable_status(status)

    async def _dead_letter(self, result: DeliveryResult, item: Dispatch) -> None:
        """Write the dead letter; retry until Kafka takes it (the record stays pending)."""
        key, value = deadletter_value(result, (item.tp.topic, item.tp.partition, item.offset))
        failures = retry.Backoff(*self._backoff, rng=self._rng)
        while True:
            try:
                await self._deadletter(key, value)
            except (KafkaError, TimeoutError) as exc:
                wait = failures.next_delay()
                logger.warning(
                    "webhook dead letter not written topic=%s identifier=%s error=%s "
                    "retry_in_s=%.1f",
                    self._deadletter_topic,
                    result.message.identifier,
                    exc,
                    wait,
                )
                await self._sleep(wait)
            else:
                return

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        if self._stopping.is_set():
            raise asyncio.CancelledError
