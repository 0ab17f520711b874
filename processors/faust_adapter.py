"""Everything the processors rely on in faust-streaming (and mode) beyond its public API.

faust-streaming is pinned to exactly :data:`FAUST_VERSION` (``pyproject.toml``,
``constraints.txt``); ``tests/unit/processors/test_faust_adapter.py`` fails when the
installed version differs or when one of the behaviours below changes. Nothing else in
the project touches a private name of faust or mode.

* :func:`batches`: ``Stream.noack_take`` yields buffered *events* and never acks them
  (faust/streams.py: the ``await self.ack(event)`` of ``take()`` is commented out
  there), so an agent acks each event itself, after its points are stored.
* :func:`closing_take`: ``noack_take`` with a batch that closes early (its processor,
  passive draining and buffer hand-over written as faust's, see there).
* :func:`write_table`: a table write goes to the changelog partition of the *current
  event*, which ``Table.partition_for_key`` reads from faust's task-local
  ``faust.streams._current_event``. ``Stream._set_current_event`` would also
  overwrite the stream's ``current_event``, which ``noack_take``'s buffering processor
  reads in the background, and lose events; so only the task-local variable is set.
* :func:`write_changelog`: a batch's table writes at once, each changelog partition's
  records appended to one aiokafka record batch (``AIOKafkaProducer.create_batch``) and
  handed over with ``send_batch``, instead of ``table[key] = value``'s
  ``Topic.send_soon``: that puts each record in faust's ``ProducerBuffer``, drained one
  record per event-loop wake-up by a task of its own, and the consumer's flush before a
  commit then waits for it one record at a time, each through an ``asyncio.wait_for`` (a
  task and a timer per record; measured: a third of the worker's CPU outside its
  handlers); and instead of a ``Producer.send`` per record (faust's and aiokafka's checks,
  a future and a done callback per record: at Taiwan's trickle a reading's state is a
  record of its own). The bytes (key and value through the topic's own
  ``prepare_key``/``prepare_value``), the partition, the order within it and the flush
  before a commit (``Producer.flush`` flushes aiokafka's accumulator, which holds the
  batches too) are the same; the table's data is set as ``__setitem__`` does, and its set
  sensor called. The aiokafka producer is faust's ``Producer._producer``. A record too
  large for a request goes alone through ``Producer.send``, which refuses it, so that it
  fails alone. What faust's send callback adds, the changelog offset it persists
  (``Store.set_persisted_offset``), means nothing to the in-memory store the worker uses
  (it always recovers from the changelog's start): with another store, or without a
  running producer (an app under ``test_context()``), it writes as :func:`write_table`
  does.
* :func:`wait_for_fetches`: faust creates aiokafka's consumer
  (``AIOKafkaConsumerThread._create_worker_consumer``) without ``fetch_min_bytes``, so
  aiokafka's default of 1 byte applies: the broker answers a fetch as soon as one record
  is there, and a trickle of records costs a fetch request, a response and a wake-up of
  faust's consumer thread each. The consumer it creates gets its fetch wait set
  (``_fetch_min_bytes``, ``_fetch_max_wait_ms``: what ``AIOKafkaConsumer.start`` gives its
  fetcher) before it starts.
* :func:`seek_uncommitted_to_start`: after a rebalance faust seeks every partition to
  its committed offset (``Consumer.perform_seek``), but aiokafka's
  ``seek_to_committed`` seeks only where an offset above 0 is committed: a partition
  with none stays at whatever position the fetcher reached. Records faust read from it
  but did not hand to an agent (the read offset moves on when the flow is suspended
  mid-delivery, and a skipped record is not delivered) are then never read again in
  this session: the partition stalls with nothing committed (seen in CI: a worker
  started on an uncommitted backlog stored 0 and then 33 of 40 readings). Such a
  partition is sought to its start, as ``auto_offset_reset="earliest"`` means.
* :func:`committed_offsets`: the consumer's last committed offset per partition
  (``Consumer._committed_offset``; there is no public accessor), for the lag.
* :func:`on_rebalance_complete`: mode's signal handler type spells out the ``signal``
  keyword every receiver gets; the callback here takes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
    MutableMapping,
    Sequence,
)
from contextlib import aclosing
from typing import Any, TypeVar, cast

import faust
from faust.stores.memory import Store as MemoryStore
from faust.streams import Stream, _current_event
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP, EventT
from mode.types.signals import BaseSignalT
from mode.utils.futures import notify

from civic_iot.topology import PRODUCER_BATCH_BYTES

#: The faust-streaming release whose behaviour this module is written against.
FAUST_VERSION = "0.15.3"

logger = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


async def batches(
    stream: Stream[Any],
    max_events: int,
    within_s: float,
    closes: Callable[[EventT[Any]], bool] | None = None,
) -> AsyncIterator[Sequence[EventT[Any]]]:
    """Up to ``max_events`` events at a time (or what came within ``within_s``), none
    of them acked: ack each with ``await stream.ack(event)`` once it is done with.

    With ``closes`` (:func:`closing_take`), a batch also closes as soon as ``closes``
    says so for an event it took, and ``within_s`` counts from its first event's arrival."""
    taking: AsyncGenerator[Sequence[Any], None] = (
        stream.noack_take(max_events, within_s)
        if closes is None
        else closing_take(stream, max_events, within_s, closes)
    )
    async with aclosing(taking) as taken:
        async for events in taken:
            yield cast(Sequence[EventT[Any]], events)


async def closing_take(
    stream: Stream[Any],
    max_events: int,
    within_s: float,
    closes: Callable[[EventT[Any]], bool],
) -> AsyncGenerator[Sequence[EventT[Any]], None]:
    """``Stream.noack_take`` (faust/streams.py: a processor fills a buffer while the
    stream is drained passively; nothing acked), with two differences for a batch on the
    alert path:

    * it closes as soon as ``closes(event)`` is true for an event it took while no other
      is queued (or at ``max_events``), not only when its wait expires: that event is
      its last;
    * its wait, ``within_s``, counts from when its first event reached the stream,
      not from the end of the batch before (``noack_take`` restarts its timer then): an
      event that waited through a long batch is taken at once with what else is fetched.
    """
    s: Any = stream
    loop = asyncio.get_running_loop()
    buffer: list[EventT[Any]] = []
    first_s = 0.0  # loop time the buffer's first event reached the stream
    started = asyncio.Event()  # the buffer holds an event
    close = asyncio.Event()  # full, or ``closes`` said so
    consumed = asyncio.Event()
    consuming: asyncio.Future[None] | None = None

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming, first_s
        try:
            arrived = loop.time()
            if consuming is not None:  # the batch before is being handled: wait
                try:
                    await consuming
                finally:
                    consuming = None
            event = s.current_event
            if event is None:
                raise RuntimeError("Take buffer found current_event is None")
            if not buffer:
                first_s = arrived
                started.set()
            buffer.append(event)
            if len(buffer) >= max_events:
                close.set()
                consumed.clear()  # never more than max_events: wait until taken
                await s.wait(consumed)
            elif closes(event) and _nothing_queued(s):
                # (Behind, with more fetched, the batch takes that too: a backlog goes
                # in batches of its wait or max_events, not a second at a time.)
                close.set()
                # The batch ends here: the next event waits until it is handed over.
                consuming = loop.create_future()
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:  # as noack_take: the stream crashes
            s.log.exception("Error adding to take buffer: %r", exc)
            await s.crash(exc)
        return value

    enable_acks = s.enable_acks
    s.enable_acks = False  # acked by the caller, after its points are stored
    s.add_processor(add_to_buffer)
    s._enable_passive(aiter(s.channel))
    try:
        while not s.should_stop:
            if not buffer:
                await s.wait_for_stopped(started, timeout=within_s)
            left = first_s + within_s - loop.time()
            if buffer and left > 0 and not close.is_set() and not s.should_stop:
                await s.wait_for_stopped(close, timeout=left)
            elif buffer and not close.is_set():
                # Overdue (it waited through the batch before): what is already fetched
                # joins it, one loop turn at a time while that adds events, not one
                # event's worth of a backlog per batch.
                n = -1
                while n != len(buffer) and not close.is_set() and not s.should_stop:
                    n = len(buffer)
                    await asyncio.sleep(0)
            if buffer:
                if consuming is None or consuming.done():
                    consuming = loop.create_future()
                try:
                    yield list(buffer)
                finally:
                    buffer.clear()
                    notify(consuming)
                    started.clear()
                    close.clear()
                    consumed.set()
    finally:
        s.enable_acks = enable_acks
        s._processors.remove(add_to_buffer)


def _nothing_queued(stream: Any) -> bool:
    """Whether the stream's channel holds no event yet to be taken (faust's conductor
    puts what the consumer fetched there)."""
    try:
        return bool(stream.channel.empty())
    except (AttributeError, TypeError):  # a channel without a queue: as if empty
        return True


def write_table(table: MutableMapping[K, V], key: K, value: V, event: EventT[Any]) -> None:
    """``table[key] = value``, its changelog record in ``event``'s partition."""
    _current_event.set(weakref.ref(event))
    try:
        table[key] = value
    finally:
        _current_event.set(None)


async def write_changelog(
    table: MutableMapping[K, V], writes: Iterable[tuple[K, V, EventT[Any]]]
) -> None:
    """``table[key] = value`` for each ``(key, value, event)``, its changelog record in
    ``event``'s partition, sent in one record batch per partition (module doc)."""
    if (
        not isinstance(table, faust.Table)
        or not isinstance(table.data, MemoryStore)
        or not table.app.producer.started
    ):
        for key, value, event in writes:
            write_table(table, key, value, event)
        return
    t: Any = table
    producer = t.app.producer
    client = producer._producer  # aiokafka's, started with faust's
    topic = t.changelog_topic
    name = topic.get_topic_name()
    data = t.data
    on_set = t._sensor_on_set
    key_serializer, value_serializer = t.key_serializer, t.value_serializer
    keys = _KEYS.setdefault(name, {})
    open_batches: dict[int, Any] = {}
    for key, value, event in writes:
        k = keys.get(key)
        if k is None:
            if len(keys) >= _KEYS_KEPT:
                keys.clear()
            k = keys[key] = topic.prepare_key(key, key_serializer)[0]
        v, _ = topic.prepare_value(value, value_serializer)
        partition = event.message.partition
        if len(k) + len(v) > _ALONE_BYTES:
            await _send_alone(producer, name, k, v, partition, t.name, key)
        else:
            batch = open_batches.get(partition)
            if batch is None:
                batch = open_batches[partition] = client.create_batch()
            if batch.append(key=k, value=v, timestamp=None) is None:  # full: send it
                await _send_batch(client, batch, name, partition, t.name)
                batch = open_batches[partition] = client.create_batch()
                batch.append(key=k, value=v, timestamp=None)  # a batch takes its first
        data[key] = value
        on_set(table, key, value)
    for partition, batch in open_batches.items():
        await _send_batch(client, batch, name, partition, t.name)


#: A changelog record at least this large (key and value, bytes) is sent alone
#: (:func:`write_changelog`): the producer refuses one beyond its request size, and it
#: must not take a batch of other keys' records with it.
_ALONE_BYTES = PRODUCER_BATCH_BYTES


async def _send_batch(client: Any, batch: Any, topic: str, partition: int, table: str) -> None:
    try:
        fut = await client.send_batch(batch, topic, partition=partition)
    except Exception as exc:  # noqa: BLE001 - logged as a record not sent would be
        logger.error(
            "changelog batch not sent table=%s partition=%d error=%r", table, partition, exc
        )
    else:
        fut.add_done_callback(sent_logged)


async def _send_alone(
    producer: Any, topic: str, k: bytes, v: bytes, partition: int, table: str, key: Any
) -> None:
    try:
        fut = await producer.send(topic, k, v, partition, None, None)
    except Exception as exc:  # noqa: BLE001 - e.g. a record too large: the next key goes on
        logger.error("changelog record not sent table=%s key=%s error=%r", table, key, exc)
    else:
        fut.add_done_callback(sent_logged)


#: Changelog topic -> key -> its serialized bytes: the same few thousand devices again
#: and again. Emptied when it holds ``_KEYS_KEPT`` keys.
_KEYS: dict[str, dict[Any, bytes]] = {}
_KEYS_KEPT = 100_000


def sent_logged(fut: asyncio.Future[Any]) -> None:
    """A producer future's done callback: a record that could not be sent is logged
    (aiokafka retries it until its delivery timeout first)."""
    if not fut.cancelled() and (exc := fut.exception()) is not None:
        logger.error("record not sent error=%r", exc)


def wait_for_fetches(app: faust.App, min_bytes: int, max_wait_s: float) -> None:
    """Let ``app``'s Kafka fetches wait until ``min_bytes`` are there or ``max_wait_s``
    has passed (module doc), instead of answering at the first record."""
    _FETCH_WAITS[app] = (min_bytes, round(max_wait_s * 1000))
    thread: Any = AIOKafkaConsumerThread
    if getattr(thread, "_civic_fetch_waits", False):
        return
    create = thread._create_worker_consumer

    def created(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        wait = _FETCH_WAITS.get(self.app)
        if wait is not None:
            consumer._fetch_min_bytes, consumer._fetch_max_wait_ms = wait
        return consumer

    thread._create_worker_consumer = created
    thread._civic_fetch_waits = True


#: App -> (fetch_min_bytes, fetch_max_wait_ms) of its consumer (:func:`wait_for_fetches`).
_FETCH_WAITS: weakref.WeakKeyDictionary[faust.App, tuple[int, int]] = weakref.WeakKeyDictionary()


def seek_uncommitted_to_start(app: faust.App) -> None:
    """Make the consumer's seek to the committed offsets also seek every stream partition
    without a committed offset to its start (module doc); changelogs are faust's."""
    consumer: Any = app.consumer
    seek_to_committed = consumer.seek_to_committed

    async def seek_committed_or_start() -> Mapping[TP, int]:
        committed: Mapping[TP, int] = await seek_to_committed()
        changelogs = app.tables.changelog_topics
        fresh = [tp for tp, at in committed.items() if not at and tp.topic not in changelogs]
        if fresh:
            for tp, start in (await consumer.earliest_offsets(*fresh)).items():
                await consumer.seek(tp, start)
        return committed

    consumer.seek_to_committed = seek_committed_or_start


def committed_offsets(consumer: Any) -> Mapping[TP, int | None]:
    """The consumer's committed offset per topic partition (None: nothing committed)."""
    return cast(Mapping[TP, int | None], consumer._committed_offset)


def on_rebalance_complete(app: faust.App, callback: Callable[[], None]) -> None:
    """Call ``callback`` after every rebalance, once the tables are recovered."""

    def receiver(_sender: Any, /, *_args: Any, signal: BaseSignalT[Any], **_kw: Any) -> None:
        callback()

    app.on_rebalance_complete.connect(receiver)


__all__ = [
    "FAUST_VERSION",
    "batches",
    "closing_take",
    "committed_offsets",
    "on_rebalance_complete",
    "seek_uncommitted_to_start",
    "sent_logged",
    "wait_for_fetches",
    "write_changelog",
    "write_table",
]
