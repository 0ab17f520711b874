"""``_send_grouped``: one Kafka batch per (topic, partition), as ``send`` would place them;
``_Pipeline``: batches in flight to Kafka, acknowledged to the broker in arrival order, and
a new producer with every unacknowledged batch sent again when Kafka fails; ``Outage``: one
log line per interval while Kafka is unavailable."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, OutOfOrderSequenceNumber
from aiokafka.partitioner import DefaultPartitioner

from civic_iot.contracts.provenance import HEADER, Marker
from civic_iot.contracts.readings import record_value
from ingest import service
from ingest.service import Inbound, Outage, _Pipeline, _send_grouped

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

    def __init__(self, *, refuse_start: bool = False) -> None:
        super().__init__()
        self.pending: list[asyncio.Future[None]] = []
        self.refuse_start = refuse_start
        self.started = self.stopped = False

    async def start(self) -> None:
        if self.refuse_start:
            msg = "Unable to bootstrap"
            raise KafkaConnectionError(msg)
        self.started = True

    async def stop(self) -> None:
        # What a producer still holds when it stops has failed (its request timed out).
        for done in self.pending:
            if not done.done():
                done.set_exception(KafkaTimeoutError())
        self.stopped = True

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

    def ack(self, batch: list[Inbound], first: int) -> None:
        assert first == batch[0].mid - 1  # the tests number messages 1, 2, 3...
        self.acked.append([m.mid for m in batch])

    def kick(self) -> None:
        self.kicks += 1


def batch_of(*mids: int) -> tuple[list[Inbound], int, list[tuple[str, bytes, bytes]]]:
    """Messages with these packet ids (also their sequence numbers, from 1)."""
    now = datetime.now(UTC)
    msgs = [Inbound("devices/a-1/air", b"{}", mid, 1, now) for mid in mids]
    return msgs, mids[0] - 1, [("readings.air", b"a-1", b"%d" % mid) for mid in mids]


async def pipeline_of(
    *producers: HeldProducer, readings: frozenset[str] = frozenset()
) -> tuple[_Pipeline, AckLog]:
    """A started pipeline whose producers are these, one after the other."""
    log = AckLog()
    queue = list(producers)
    pipeline = _Pipeline(
        lambda: queue.pop(0),  # type: ignore[arg-type,return-value]
        log,  # type: ignore[arg-type]
        depth=4,
        timeout_s=1.0,
        mark=MARK,
        readings=readings,
    )
    await pipeline.start()
    return pipeline, log


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Producers are retried at once (the backoff is civic_iot.retry's, tested there)."""
    monkeypatch.setattr(service, "KAFKA_RETRY_BASE_S", 0.0)


async def turns() -> None:
    """A few loop turns: a future's result reaches gather, then gather's callbacks."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_batches_are_acknowledged_in_arrival_order_whatever_order_kafka_finishes() -> None:
    async def scenario() -> None:
        producer = HeldProducer()
        pipeline, log = await pipeline_of(producer)
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
        old, new = HeldProducer(), HeldProducer()
        pipeline, log = await pipeline_of(old, new)
        await pipeline.send(*batch_of(1))
        await pipeline.send(*batch_of(2))
        first, second = old.pending
        second.set_result(None)
        first.set_exception(KafkaTimeoutError())
        settling = asyncio.ensure_future(pipeline.settle(wait=True))
        for _ in range(100):  # a few loop turns until the re-send of batch 1
            if new.pending:
                break
            await asyncio.sleep(0)
        assert log.acked == []
        assert old.stopped  # the producer that failed is not used again
        assert [records for _, _, records in new.sent] == [[(b"a-1", b"1")]]  # not batch 2
        new.pending[0].set_result(None)
        await settling
        await pipeline.settle()
        assert log.acked == [[1], [2]]
        assert pipeline.outage.since is None

    asyncio.run(scenario())


def test_a_failed_batch_of_readings_goes_again_as_the_same_records_on_a_new_producer() -> None:
    """A flight keeps its readings one per record and gathers them into records of
    several at each launch (ingest.service.readings_records): the new producer gets the
    same records, and the readings are acknowledged once Kafka has them."""

    async def scenario() -> None:
        old, new = HeldProducer(), HeldProducer()
        pipeline, log = await pipeline_of(old, new, readings=frozenset({"readings.air"}))
        await pipeline.send(*batch_of(1, 2, 3))
        gathered = [("readings.air", 0, [(b"a-1", record_value([b"1", b"2", b"3"]))])]
        assert old.sent == gathered
        old.pending[0].set_exception(KafkaTimeoutError())
        settling = asyncio.ensure_future(pipeline.settle(wait=True))
        for _ in range(100):  # a few loop turns until the re-send
            if new.pending:
                break
            await asyncio.sleep(0)
        assert old.stopped
        assert new.sent == gathered
        assert log.acked == []
        new.pending[0].set_result(None)
        await settling
        assert log.acked == [[1, 2, 3]]
        assert pipeline.outage.since is None

    asyncio.run(scenario())


def test_a_fatal_producer_error_brings_a_new_producer_once_kafka_answers() -> None:
    """OutOfOrderSequenceNumber (an idempotent producer's batches expired while Kafka was
    down) fails every later batch of that producer: only a new producer gets through.
    While Kafka refuses connections, new producers fail to start and are retried; then
    every batch Kafka has not acknowledged is sent again, oldest first."""

    async def scenario() -> None:
        old, down, new = HeldProducer(), HeldProducer(refuse_start=True), HeldProducer()
        pipeline, log = await pipeline_of(old, down, new)
        for mids in ((1,), (2,), (3,)):
            await pipeline.send(*batch_of(*mids))
        one, two, _three = old.pending
        one.set_exception(OutOfOrderSequenceNumber())
        two.set_result(None)  # Kafka has batch 2; batch 3 is still on its way
        settling = asyncio.ensure_future(pipeline.settle(wait=True))
        for _ in range(100):  # a few loop turns until the re-sends
            if len(new.pending) == 2:
                break
            await asyncio.sleep(0)
        assert down.started is False
        assert new.started
        assert old.stopped
        # 1 and 3 again (3 failed when its producer stopped), in arrival order; 2 not
        assert [records for _, _, records in new.sent] == [[(b"a-1", b"1")], [(b"a-1", b"3")]]
        assert log.acked == []
        assert pipeline.outage.attempts == 2  # the batch, then the refused start
        assert pipeline.health(0.0)[0] == "unavailable"
        new.pending[0].set_result(None)
        new.pending[1].set_result(None)
        await settling
        await turns()
        await pipeline.settle()
        assert log.acked == [[1], [2], [3]]
        assert pipeline.outage.since is None

    asyncio.run(scenario())


def test_an_outage_is_logged_when_it_starts_then_once_per_interval() -> None:
    outage = Outage(interval_s=30)
    logged = [outage.failed(t, "refused") for t in (100.0, 100.5, 110, 129.9, 130, 131, 160)]
    assert logged == [True, False, False, False, True, False, True]
    assert outage.attempts == 7
    assert outage.end(170.0) == (70.0, 7)
    assert outage.since is None
    assert outage.end(171.0) is None  # nothing to end
    assert outage.failed(200.0, KafkaTimeoutError())  # a new outage is logged at once
    assert outage.last_error == "KafkaTimeoutError()"


def test_a_batch_the_producer_holds_past_the_deadline_is_sent_again_on_a_new_producer() -> None:
    """While Kafka's node cannot be reached at all, aiokafka neither sends a batch nor
    fails it: past the deadline ingest counts it failed and recovers."""

    async def scenario() -> None:
        old, new = HeldProducer(), HeldProducer()
        pipeline, log = await pipeline_of(old, new)
        pipeline.deadline_s = 0.05
        await pipeline.send(*batch_of(1))
        await pipeline.settle()
        assert new.sent == []  # within the deadline: still waiting
        await asyncio.sleep(0.06)
        await pipeline.settle()
        assert old.stopped
        assert [records for _, _, records in new.sent] == [[(b"a-1", b"1")]]
        assert pipeline.outage.attempts == 1
        new.pending[0].set_result(None)
        await turns()
        await pipeline.settle()
        assert log.acked == [[1]]
        assert pipeline.outage.since is None

    asyncio.run(scenario())
