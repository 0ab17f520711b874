"""The webhook subscriptions of a deployment, kept in the compacted Kafka topic
``alerts.subscriptions`` (key: subscription id; value: :class:`~alerts.subscriptions.Subscription`
as JSON; a tombstone deletes).

Every instance of the alert service, active or standby, reads the topic from the
beginning when it starts and then follows it, so all of them see the same subscriptions
(a change made through one instance reaches the others within a poll, ~0.2 s). Writes go
through any instance: :meth:`SubscriptionStore.put` returns once this instance has read its
own write back, so a ``GET`` after a ``POST`` on the same instance sees it. The topic is
the one place subscriptions live (no file edited by hand); compaction keeps the last
record per id, and the tombstone of a deleted one until ``delete.retention.ms``.

The installation key that secrets are derived from (:func:`webhook_key`) is
``CIVIC_ALERTS__WEBHOOK_SECRET_KEY``, or the file ``secrets/alerts-webhook-key`` of the
data dir, created once (0600, never overwritten: two instances starting at once agree).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import SecretStr, ValidationError

from alerts.subscriptions import Subscription, signing_secrets
from alerts.text import get_logger
from civic_iot.settings import Settings

logger = get_logger(__name__)

__all__ = ["SubscriptionStore", "webhook_key"]

#: Produces ``value`` (None: a tombstone) under ``key``; returns the record's offset.
Send = Callable[[bytes, bytes | None], Awaitable[int]]

KEY_FILE = "alerts-webhook-key"


def webhook_key(settings: Settings) -> bytes:
    """The installation key webhook secrets are derived from (module doc)."""
    configured = settings.alerts.webhook_secret_key
    if configured is not None:
        value = configured.get_secret_value().encode()
        if len(value) < 32:
            msg = "CIVIC_ALERTS__WEBHOOK_SECRET_KEY must be at least 32 characters"
            raise ValueError(msg)
        return value
    path = settings.data_dir / "secrets" / KEY_FILE
    return _key_file(path)


def _key_file(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
    key = path.read_text(encoding="ascii").strip()
    if len(key) < 32:
        # Created by another process that has not written it yet: read it again soon.
        msg = f"{path}: webhook secret key too short or still being written"
        raise RuntimeError(msg)
    return key.encode()


class SubscriptionStore:
    """This instance's view of ``alerts.subscriptions``, and writes to it (module doc)."""

    def __init__(self, *, bootstrap: str, topic: str, key: bytes, send: Send) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._key = key
        self._send = send
        self._subs: dict[str, Subscription] = {}
        #: Offset of the next record to read (what has been applied is below it).
        self._position = 0
        self._advanced = asyncio.Condition()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._tp = TopicPartition(topic, 0)

    # ------------------------------------------------------------------ reading

    def get(self, sub_id: str) -> Subscription | None:
        return self._subs.get(sub_id)

    def all(self) -> list[Subscription]:
        """Every subscription, oldest first."""
        return sorted(self._subs.values(), key=lambda s: (s.created_at, s.id))

    def of_owner(self, owner: str) -> list[Subscription]:
        return [s for s in self.all() if s.owner == owner]

    def secrets(self, sub: Subscription, now: datetime) -> list[SecretStr]:
        """The secrets a webhook of ``sub`` is signed with at ``now`` (two during a
        rotation)."""
        return signing_secrets(sub, self._key, now)

    @property
    def key(self) -> bytes:
        return self._key

    # ------------------------------------------------------------------ writing

    async def put(self, sub: Subscription, timeout_s: float = 10.0) -> None:
        """Write ``sub``; return once this instance has read it back."""
        offset = await self._send(sub.id.encode(), sub.model_dump_json().encode())
        await self._wait_applied(offset, timeout_s)

    async def delete(self, sub_id: str, timeout_s: float = 10.0) -> None:
        """Delete subscription ``sub_id`` (a tombstone); return once read back."""
        offset = await self._send(sub_id.encode(), None)
        await self._wait_applied(offset, timeout_s)

    async def _wait_applied(self, offset: int, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s), self._advanced:
            await self._advanced.wait_for(lambda: self._position > offset)

    # ------------------------------------------------------------------ running

    async def start(self, timeout_s: float = 30.0) -> None:
        """Read the topic to its end, then follow it in the background."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            group_id=None,
            client_id="civic-alerts-subscriptions",
            fetch_max_wait_ms=200,
        )
        await consumer.start()
        self._consumer = consumer
        consumer.assign([self._tp])
        await consumer.seek_to_beginning(self._tp)
        end = (await consumer.end_offsets([self._tp]))[self._tp]
        async with asyncio.timeout(timeout_s):
            while self._position < end:
                await self._poll(consumer)
        logger.info(
            "webhook subscriptions loaded topic=%s subscriptions=%d", self._topic, len(self._subs)
        )
        self._task = asyncio.create_task(self._follow(consumer), name="alerts-subscriptions")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._consumer is not None:
            with contextlib.suppress(KafkaError, TimeoutError):
                await self._consumer.stop()
            self._consumer = None

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                await self._poll(consumer)
            except KafkaError as exc:
                # The consumer reconnects by itself; the view is only late meanwhile.
                logger.warning("webhook subscriptions not read topic=%s error=%s", self._topic, exc)
                await asyncio.sleep(1.0)

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        batch = await consumer.getmany(self._tp, timeout_ms=200)
        records = batch.get(self._tp, [])
        for r in records:
            self._apply(r.key, r.value, r.offset)
        position = await consumer.position(self._tp)
        async with self._advanced:
            self._position = max(self._position, position)
            self._advanced.notify_all()

    def _apply(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        if key is None:
            return
        sub_id = key.decode("utf-8", "replace")
        if value is None:
            self._subs.pop(sub_id, None)
            return
        try:
            sub = Subscription.model_validate_json(value)
        except ValidationError as exc:
            # Not written by this service (or a newer one): keep the rest working.
            logger.error(
                "unreadable subscription record topic=%s offset=%d id=%s errors=%d",
                self._topic,
                offset,
                sub_id,
                exc.error_count(),
            )
            return
        if sub.id != sub_id:
            logger.error("subscription record key mismatch offset=%d key=%s", offset, sub_id)
            return
        self._subs[sub_id] = sub
