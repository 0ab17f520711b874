"""What the processors rely on in faust-streaming beyond its public API
(:mod:`processors.faust_adapter`) still holds in the installed, pinned version.

A failure here after an upgrade means: read the adapter's docstring, check each
behaviour in the new release, adapt the adapter, then move the pin. The lag's
committed offsets are checked against the real Kafka in
``tests/integration/test_processors.py`` (``/health`` lag while storage is down).
"""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
import uuid
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.producer.message_accumulator import MessageAccumulator
from faust.events import Event
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import Producer
from faust.types import TP, EventT, Message

from processors import faust_adapter
from processors.agents.tables import StateCodec, state_table
from processors.faust_adapter import (
    FAUST_VERSION,
    batches,
    committed_offsets,
    on_rebalance_complete,
    seek_uncommitted_to_start,
    wait_for_fetches,
    write_changelog,
    write_table,
)
from processors.states import AirDevice

REPO = Path(__file__).resolve().parents[3]


def _app() -> faust.App:
    app = faust.App(f"adapter-{uuid.uuid4().hex[:8]}", store="memory://", web_enabled=False)
    app.finalize()
    app.flow_control.resume()
    return app


def _event(app: faust.App, partition: int, offset: int) -> EventT[Any]:
    message = Message("topic", partition, offset, 0.0, 0, [], b"k", b"v", None)
    return Event(app, b"k", b"v", [], message)


def test_the_installed_faust_is_the_pinned_one() -> None:
    assert version("faust-streaming") == FAUST_VERSION
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"faust-streaming=={FAUST_VERSION}" in deps
    constraints = (REPO / "constraints.txt").read_text().splitlines()
    assert f"faust-streaming=={FAUST_VERSION}" in constraints


def test_noack_take_never_acks_the_events_it_yields() -> None:
    app = _app()
    taken: list[list[EventT[Any]]] = []
    acked: list[list[bool]] = []

    async def probe(stream: Any) -> None:
        async for events in batches(stream, 2, 0.01):
            taken.append(list(events))
            if len(taken) == 2:
                # take() would have acked the first batch when the second was asked for.
                acked.append([e.message.acked for e in taken[0]])
                for e in taken[0]:
                    await stream.ack(e)
                acked.append([e.message.acked for e in taken[0]])

    agent = app.agent(app.channel(), name="probe")(probe)

    async def run() -> None:
        async with agent.test_context() as ctx:
            for i in range(4):
                await ctx.put(key=b"k", value=str(i).encode())
            for _ in range(500):
                if len(acked) == 2:
                    break
                await asyncio.sleep(0.01)

    asyncio.run(run())
    assert [len(b) for b in taken] == [2, 2]
    assert acked == [[False, False], [True, True]]


def test_a_closing_take_closes_when_told_and_never_acks() -> None:
    """``closes`` ends a batch at once although its wait (1000 s) is far off; ``max``
    still cuts one; nothing is acked by the take."""
    app = _app()
    taken: list[list[bytes]] = []
    acked: list[bool] = []

    def closes(event: EventT[Any]) -> bool:
        return bool(event.value == b"close")

    async def probe(stream: Any) -> None:
        async for events in batches(stream, 3, 1000.0, closes):
            taken.append([e.value for e in events])
            acked.extend(e.message.acked for e in events)
            for e in events:
                await stream.ack(e)

    agent = app.agent(app.channel(), name="closing")(probe)

    async def run() -> None:
        async with agent.test_context() as ctx:
            for value in (b"a", b"close", b"b", b"c", b"d", b"e", b"close"):
                await ctx.put(key=b"k", value=value)
            for _ in range(3000):
                if sum(map(len, taken)) == 7:
                    break
                await asyncio.sleep(0.01)

    asyncio.run(run())
    assert taken == [[b"a", b"close"], [b"b", b"c", b"d"], [b"e", b"close"]]
    assert acked == [False] * 7


def test_a_table_write_goes_to_the_changelog_partition_of_its_event() -> None:
    app = _app()
    table: Any = state_table(app, "state", AirDevice, 8)
    sent: list[tuple[int | None, Any, bytes]] = []

    def send_changelog(partition: int | None, key: Any, value: Any, *_a: Any, **_k: Any) -> Any:
        sent.append((partition, key, table.value_serializer.dumps(value)))
        return SimpleNamespace(message=SimpleNamespace(partition=partition))

    table.send_changelog = send_changelog
    value = AirDevice(last_seen=5.0, offset=7)
    write_table(table, "air-1", value, _event(app, partition=5, offset=7))
    write_table(table, "air-2", value, _event(app, partition=3, offset=9))
    assert [(p, k) for p, k, _ in sent] == [(5, "air-1"), (3, "air-2")]
    # The table's own codec writes the changelog and reads it back as the model.
    assert table.changelog_topic.value_serializer is table.value_serializer
    assert isinstance(table.value_serializer, StateCodec)
    assert table.value_serializer.loads(sent[0][2]) == value
    assert table["air-1"] == value
    # No event is left current for the next writer (a write without one fails).
    assert faust.current_event() is None


class _Batch:
    """aiokafka's ``BatchBuilder`` as write_changelog uses it: takes ``room`` records
    (always the first), then says it is full (None)."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, *, timestamp: Any, key: bytes, value: bytes) -> object | None:
        assert timestamp is None  # the time of sending, as Producer.send gives it
        if self.records and len(self.records) >= self.room:
            return None
        self.records.append((key, value))
        return object()


class _StartedProducer:
    """What :func:`write_changelog` uses of a running faust producer: ``started``,
    ``send`` (records what it is given, returns the future aiokafka would) and its
    aiokafka producer's ``create_batch``/``send_batch``."""

    started = True

    def __init__(self, room: int = 100) -> None:
        self.sent: list[tuple[str, bytes, bytes, int | None]] = []
        self.batches: list[tuple[str, int, list[tuple[bytes, bytes]]]] = []
        self._producer = SimpleNamespace(create_batch=lambda: _Batch(room), send_batch=self._batch)

    async def send(
        self, topic: str, key: bytes, value: bytes, partition: int | None, *_a: Any
    ) -> asyncio.Future[Any]:
        self.sent.append((topic, key, value, partition))
        return self._done()

    async def _batch(self, batch: _Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        self.batches.append((topic, partition, batch.records))
        for k, v in batch.records:
            self.sent.append((topic, k, v, partition))
        return self._done()

    @staticmethod
    def _done() -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def _faust_bytes(table: Any, writes: list[tuple[str, AirDevice, EventT[Any]]]) -> list[Any]:
    """(partition, key, value) of the records ``table[key] = value`` sends for ``writes``."""
    faust_sent: list[tuple[int | None, bytes, bytes]] = []

    def send_changelog(partition: int | None, key: Any, value: Any, *_a: Any, **_k: Any) -> Any:
        topic = table.changelog_topic
        k, _ = topic.prepare_key(key, table.key_serializer)
        v, _ = topic.prepare_value(value, table.value_serializer)
        faust_sent.append((partition, k, v))
        return SimpleNamespace(message=SimpleNamespace(partition=partition))

    table.send_changelog = send_changelog
    for key, value, event in writes:  # faust's own path, for the bytes it would send
        write_table(table, key, value, event)
    table.data.clear()
    return faust_sent


def test_a_batch_of_table_writes_goes_straight_to_the_producer_as_faust_would_send_it() -> None:
    """The same records as ``table[key] = value`` (key and value bytes through the
    topic's own serializers, the event's partition), one record batch per partition
    with its records in order, the table's data set, and nothing left in faust's
    producer buffer (the per-record path write_changelog avoids)."""
    app = _app()
    table: Any = state_table(app, "state", AirDevice, 8)
    one, two = AirDevice(last_seen=5.0, offset=7), AirDevice(last_seen=6.0, offset=9, index=2)
    three = AirDevice(last_seen=7.0, offset=10)
    writes = [
        ("air-1", one, _event(app, 5, 7)),
        ("air-2", two, _event(app, 3, 9)),
        ("air-3", three, _event(app, 5, 10)),
    ]
    faust_sent = _faust_bytes(table, writes)
    producer = _StartedProducer()
    app.producer = producer  # type: ignore[assignment]
    asyncio.run(write_changelog(table, writes))
    changelog = table.changelog_topic.get_topic_name()
    assert sorted(producer.sent, key=lambda r: r[3] or 0) == sorted(
        [(changelog, k, v, p) for p, k, v in faust_sent], key=lambda r: r[3] or 0
    )
    assert [(p, len(records)) for _, p, records in producer.batches] == [(5, 2), (3, 1)]
    assert [k for k, _ in producer.batches[0][2]] == [faust_sent[0][1], faust_sent[2][1]]
    assert table.value_serializer.loads(producer.batches[1][2][0][1]) == two
    assert (table["air-1"], table["air-2"], table["air-3"]) == (one, two, three)
    assert faust.current_event() is None


def test_a_full_record_batch_is_sent_and_the_partition_goes_on_in_a_new_one() -> None:
    app = _app()
    table: Any = state_table(app, "state", AirDevice, 8)
    writes = [(f"air-{i}", AirDevice(last_seen=float(i)), _event(app, 2, i)) for i in range(5)]
    faust_sent = _faust_bytes(table, writes)
    producer = _StartedProducer(room=2)
    app.producer = producer  # type: ignore[assignment]
    asyncio.run(write_changelog(table, writes))
    assert [len(records) for _, _, records in producer.batches] == [2, 2, 1]
    assert [(k, v) for *_, records in producer.batches for k, v in records] == [
        (k, v) for _, k, v in faust_sent
    ]


def test_a_record_too_large_for_a_batch_goes_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Alone through ``Producer.send``, which refuses a record beyond its request size
    (then only that key's record is lost, logged, not its batch's)."""
    app = _app()
    table: Any = state_table(app, "state", AirDevice, 8)
    big, small = AirDevice(last_seen=1.0), AirDevice(last_seen=2.0)
    writes = [("air-big", big, _event(app, 1, 1)), ("air-1", small, _event(app, 1, 2))]
    faust_sent = _faust_bytes(table, writes)
    monkeypatch.setattr(faust_adapter, "_ALONE_BYTES", len(faust_sent[0][2]) + 8 - 1)
    producer = _StartedProducer()
    app.producer = producer  # type: ignore[assignment]
    asyncio.run(write_changelog(table, writes))
    changelog = table.changelog_topic.get_topic_name()
    assert producer.sent[0] == (changelog, faust_sent[0][1], faust_sent[0][2], 1)
    assert [(p, len(records)) for _, p, records in producer.batches] == [(1, 1)]
    assert (table["air-big"], table["air-1"]) == (big, small)


def test_without_a_running_producer_table_writes_take_faust_s_own_path() -> None:
    """An app under ``test_context()`` has no running producer: the writes go through
    ``table[key] = value`` (the event's partition) as before."""
    app = _app()
    table: Any = state_table(app, "state", AirDevice, 8)
    sent: list[tuple[int | None, Any]] = []

    def send_changelog(partition: int | None, key: Any, *_a: Any, **_k: Any) -> Any:
        sent.append((partition, key))
        return SimpleNamespace(message=SimpleNamespace(partition=partition))

    table.send_changelog = send_changelog
    value = AirDevice(last_seen=5.0, offset=7)
    asyncio.run(write_changelog(table, [("air-1", value, _event(app, 6, 7))]))
    assert sent == [(6, "air-1")]
    assert table["air-1"] == value


def test_the_consumer_keeps_its_committed_offsets_by_partition() -> None:
    app = _app()
    offsets = committed_offsets(app.consumer)
    assert isinstance(offsets, Mapping)
    assert offsets.get(TP("readings.air", 0)) is None  # nothing committed yet


def test_rebalance_complete_calls_back_with_nothing() -> None:
    app = _app()
    calls: list[int] = []
    on_rebalance_complete(app, lambda: calls.append(1))
    asyncio.run(app.on_rebalance_complete.send())
    asyncio.run(app.on_rebalance_complete.send())
    assert calls == [1, 1]


def test_a_partition_without_a_committed_offset_is_sought_to_its_start() -> None:
    """aiokafka's seek_to_committed leaves such a partition where the fetcher got to; the
    adapter seeks it to its start, streams only (a changelog is faust's own)."""
    app = _app()
    table: Any = state_table(app, "state", AirDevice, 4)
    changelog = table.changelog_topic.get_topic_name()
    committed = {
        TP("readings.air", 0): None,  # never committed
        TP("readings.air", 1): 0,  # committed at the start
        TP("readings.air", 2): 7,
        TP(changelog, 0): None,
    }
    calls: list[tuple[str, tuple[TP, ...]]] = []

    async def seek_to_committed() -> Mapping[TP, int | None]:
        calls.append(("committed", ()))
        return committed

    async def earliest_offsets(*tps: TP) -> Mapping[TP, int]:
        calls.append(("earliest", tps))
        return dict.fromkeys(tps, 3)  # the log starts at 3 (older records deleted)

    async def seek(tp: TP, offset: int) -> None:
        calls.append(("seek", (tp, offset)))

    consumer: Any = app.consumer
    consumer.seek_to_committed = seek_to_committed
    consumer.earliest_offsets = earliest_offsets
    consumer.seek = seek
    seek_uncommitted_to_start(app)
    assert asyncio.run(consumer.seek_to_committed()) == committed
    fresh = (TP("readings.air", 0), TP("readings.air", 1))
    assert calls == [
        ("committed", ()),
        ("earliest", fresh),
        ("seek", (fresh[0], 3)),
        ("seek", (fresh[1], 3)),
    ]


def test_aiokafka_seeks_only_to_a_committed_offset_above_zero() -> None:
    """What seek_uncommitted_to_start makes up for, in the pinned aiokafka: without a
    committed offset (or at 0) the position is left where it is."""
    source = inspect.getsource(AIOKafkaConsumer.seek_to_committed)
    assert "if offset and offset > 0:" in source


def test_the_consumer_flushes_the_producer_and_its_aiokafka_producer_before_a_commit() -> None:
    """What write_changelog and FaustPublisher rely on, in the pinned faust: records
    handed straight to the producer (aiokafka's accumulator, not faust's buffer) are
    sent before the offsets after them are committed."""
    commit = inspect.getsource(Consumer._commit_offsets)
    assert commit.index("await self.app.producer.flush()") < commit.index("await self._commit(")
    assert "await self._producer.flush()" in inspect.getsource(Producer.flush)


def test_record_batches_go_through_faust_s_aiokafka_producer_and_its_flush() -> None:
    """What write_changelog relies on, in the pinned faust and aiokafka: faust's producer
    keeps the aiokafka producer it starts as ``_producer``; a batch handed over with
    ``send_batch`` waits in the accumulator that ``flush`` (before a commit) waits for."""
    assert "producer = self._producer = self._new_producer()" in inspect.getsource(
        Producer.on_start
    )
    assert "self._message_accumulator.add_batch(" in inspect.getsource(AIOKafkaProducer.send_batch)
    add_batch = inspect.getsource(MessageAccumulator.add_batch)
    assert "self._append_batch(builder, tp)" in add_batch
    assert "self._batches[tp].append(batch)" in inspect.getsource(MessageAccumulator._append_batch)
    assert "for batches in self._batches.values()" in inspect.getsource(MessageAccumulator.flush)
    assert "await self._message_accumulator.flush()" in inspect.getsource(AIOKafkaProducer.flush)


def worker_consumer(app: faust.App) -> AIOKafkaConsumer:
    """The aiokafka consumer faust's consumer thread creates for ``app`` (not started)."""

    async def create() -> AIOKafkaConsumer:
        thread: Any = app.consumer._thread  # type: ignore[attr-defined]
        made: AIOKafkaConsumer = thread._create_worker_consumer(app.transport)
        return made

    return asyncio.run(create())


def test_fetches_wait_for_bytes_only_in_an_app_that_asks_for_it() -> None:
    """faust gives aiokafka no fetch_min_bytes (1 byte: a fetch per trickling record);
    wait_for_fetches sets it on the consumer faust creates, for that app only."""
    waiting, other = _app(), _app()
    wait_for_fetches(waiting, 262_144, 0.2)
    tuned, untouched = worker_consumer(waiting), worker_consumer(other)
    assert (tuned._fetch_min_bytes, tuned._fetch_max_wait_ms) == (262_144, 200)
    assert (untouched._fetch_min_bytes, untouched._fetch_max_wait_ms) == (1, 1500)
    # What the fetcher is built from, in the pinned aiokafka.
    start = inspect.getsource(AIOKafkaConsumer.start)
    assert "fetch_min_bytes=self._fetch_min_bytes" in start
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in start


def test_the_adapter_is_the_only_module_with_private_faust_names() -> None:
    private = re.compile(
        r"\b(_current_event|_committed_offset|_sensor_on_set|_create_worker_consumer"
        r"|_fetch_min_bytes|_fetch_max_wait_ms|_producer)\b"
    )
    users = {
        str(path.relative_to(REPO))
        for path in sorted((REPO / "processors").rglob("*.py"))
        if private.search(path.read_text(encoding="utf-8"))
    }
    assert users == {"processors/faust_adapter.py"}
