"""``_send_grouped``: one Kafka batch per (topic, partition), as ``send`` would place them."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from ingest.service import _send_grouped


class FakeBatch:
    def __init__(self, room: int) -> None:
        self.room = room
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, *, key: bytes, value: bytes, timestamp: None) -> object | None:
        assert timestamp is None
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
    futures = asyncio.run(_send_grouped(producer, RECORDS))
    assert len(futures) == len(producer.sent)
    assert len({(t, p) for t, p, _ in producer.sent}) == len(producer.sent)  # one batch each
    assert per_partition(producer.sent) == expected()


def test_a_full_batch_is_sent_and_a_new_one_started() -> None:
    producer = FakeProducer(room=3)
    asyncio.run(_send_grouped(producer, RECORDS))
    assert all(len(records) <= 3 for _, _, records in producer.sent)
    assert per_partition(producer.sent) == expected()
