"""``_send_grouped``: one Kafka batch per (topic, partition), as ``send`` would place them;
``_Pipeline``: batches in flight to Kafka, acknowledged to the broker in arrival order."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from aiokafka.errors import KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner

from civic_iot.contracts.provenance import HEADER, Marker
from ingest.service import Inbound, _Pipeline, _send_grouped

MARK = Marker(b"k" * 32)


class FakeBatch:
    def __init__(self, room: int) -> None:
        self.room = room
        self.records: list[tuple[bytes, bytes]] = []

    def append(
        self, *, key: bytes, value: bytes, timestamp: None, headers: list[tuple[str, bytes]]
    ) -> object | None:
        assert timestamp is None
        assert [k for k, _ in headers] == [HEADER]
        if len(self.records) == self.room:
            return None
        self.records.append((key, value))
        return object()


class FakeProducer:
    """The four producer calls ``_send_grouped`` makes, recording what was sent."""

    def __init__(self, room: int = 1000) -> None:
        self.room = room
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes]]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3, 4, 5} if topic == "a" else {0, 1}

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.room)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        self.sent.append((topic, partition, batch.records))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


RECORDS = [
    (topic, f"dev-{i % 7}".encode(), f"{topic}{i}".encode()) for i in range(60) for topic in "ab"
]


def per_partition(sent: list[tuple[str, int, list[tuple[bytes, bytes]]]]) -> dict[Any, list[Any]]:
    out: dict[Any, list[Any]] = {}
    for topic, partition, records in sent:
        out.setdefault((topic, partition), []).extend(records)
    return out


def expected() -> dict[Any, list[Any]]:
    out: dict[Any, list[Any]] = {}
    for topic, key, value in RECORDS:
        parts = [0, 1, 2, 3, 4, 5] if topic == "a" else [0, 1]
        out.setdefault((topic, DefaultPartitioner()(key, parts, parts)), []).append((key, value))
    return out


def test_records_go_where_send_would_put_them_in_order() -> None:
    producer = FakeProducer()
    futures = asyncio.run(_send_grouped(producer, RECORDS, MARK))
    assert len(futures) == len(producer.sent)
    assert len({(t, p) for t, p, _ in producer.sent}) == len(producer.sent)  # one batch each
    assert per_partition(producer.sent) == expected()


def test_a_full_batch_is_sent_and_a_new_one_started() -> None:
    producer = FakeProducer(room=3)
    asyncio.run(_send_grouped(producer, RECORDS, MARK))
    assert all(len(records) <= 3 for _, _, records in producer.sent)
    assert per_partition(producer.sent) == expected()


class HeldProducer(FakeProducer):
    """Kafka's acknowledgements are the test's to give: each send_batch's future waits."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[asyncio.Future[None]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        self.sent.append((topic, partition, batch.records))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(done)
        return done


class AckLog:
    """What the pipeline tells the MQTT side: acknowledgements (in order) and kicks."""

    def __init__(self) -> None:
        self.acked: list[list[int]] = []
        self.kicks = 0

    def ack(self, batch: list[Inbound]) -> None:
        self.acked.append([m.mid for m in batch])

    def kick(self) -> None:
        self.kicks += 1


def batch_of(*mids: int) -> tuple[list[Inbound], list[tuple[str, bytes, bytes]]]:
    now = datetime.now(UTC)
    msgs = [Inbound("devices/a-1/air", b"{}", mid, 1, now) for mid in mids]
    return msgs, [("readings.air", b"a-1", b"%d" % mid) for mid in mids]


async def turns() -> None:
    """A few loop turns: a future's result reaches gather, then gather's callbacks."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_batches_are_acknowledged_in_arrival_order_whatever_order_kafka_finishes() -> None:
    async def scenario() -> None:
        producer, log = HeldProducer(), AckLog()
        pipeline = _Pipeline(producer, log, depth=4, mark=MARK)  # type: ignore[arg-type]
        for mids in ((1, 2), (3,), (4, 5)):
            await pipeline.send(*batch_of(*mids))
        first, second, third = producer.pending
        third.set_result(None)
        await turns()
        await pipeline.settle()
        assert log.acked == []  # the third is in Kafka, but the first is not yet
        first.set_result(None)
        await turns()
        await pipeline.settle()
        assert log.acked == [[1, 2]]
        second.set_result(None)
        await turns()
        await pipeline.settle()
        assert log.acked == [[1, 2], [3], [4, 5]]
        assert log.kicks == 3  # each landing wakes the loop, messages or not
        assert len(pipeline) == 0

    asyncio.run(scenario())


def test_a_failed_batch_is_sent_again_before_anything_later_is_acknowledged() -> None:
    async def scenario() -> None:
        producer, log = HeldProducer(), AckLog()
        pipeline = _Pipeline(producer, log, depth=4, mark=MARK)  # type: ignore[arg-type]
        await pipeline.send(*batch_of(1))
        await pipeline.send(*batch_of(2))
        first, second = producer.pending
        second.set_result(None)
        first.set_exception(KafkaTimeoutError())
        settling = asyncio.ensure_future(pipeline.settle(wait=True))
        for _ in range(100):  # a few loop turns until the re-send of batch 1
            if len(producer.pending) == 3:
                break
            await asyncio.sleep(0)
        assert log.acked == []
        assert producer.sent[-1][2] == [(b"a-1", b"1")]
        producer.pending[2].set_result(None)
        await settling
        await pipeline.settle()
        assert log.acked == [[1], [2]]

    asyncio.run(scenario())
