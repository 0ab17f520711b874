"""The one InfluxDB sink against the real InfluxDB 2.7 and Kafka: what InfluxDB refuses is
set aside on ``storage.deadletter`` with its answer and everything else is written; an
outage keeps every point until InfluxDB is back; a bounded sink never drops silently.

The outage is a real one: the sink reaches InfluxDB through a TCP relay that the test
stops and starts again (no HTTP double: InfluxDB answers every request that gets through).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.domain.bucket_retention_rules import BucketRetentionRules
from prometheus_client import CollectorRegistry

from civic_iot.contracts.storage import StorageDeadLetter
from civic_iot.kafka_admin import delete_topics, ensure_topics
from civic_iot.settings import Settings, influx_token
from civic_iot.storage.points import Point
from civic_iot.storage.sink import (
    AIOKafkaPublisher,
    InfluxSink,
    StorageMetrics,
    StorageUnavailable,
    store,
)
from civic_iot.times import to_ns
from civic_iot.topology import Topology
from ops.pipeline import free_port
from tests.integration.helpers import read_topic

pytestmark = pytest.mark.integration


@dataclass
class Env:
    settings: Settings
    bucket: str
    topology: Topology

    def client(self) -> InfluxDBClient:
        s = self.settings
        return InfluxDBClient(url=s.influx.url, token=influx_token(s), org=s.influx.org)

    def ids(self, field: str = "v") -> list[str]:
        """The ``id`` tag of every stored ``m`` point with ``field``."""
        q = (
            f'from(bucket: "{self.bucket}") |> range(start: -30d, stop: 1d)'
            f' |> filter(fn: (r) => r._measurement == "m" and r._field == "{field}")'
            ' |> group() |> keep(columns: ["id"])'
        )
        with self.client() as c:
            return sorted(str(r.values["id"]) for t in c.query_api().query(q) for r in t.records)

    async def deadletters(self, want: int) -> list[StorageDeadLetter]:
        recs = await read_topic(self.settings, self.topology.storage_deadletter, want=want)
        return [StorageDeadLetter.model_validate_json(v) for _, v in recs]


@pytest.fixture
def senv(stack: Settings, unique: str) -> Iterator[Env]:
    """A bucket with one hour of retention and the deployment's topics, per test."""
    topology = Topology(prefix=f"t{unique}.", partitions=1)
    asyncio.run(ensure_topics(stack.kafka.bootstrap, topology))
    bucket = f"t{unique}-storage"
    env = Env(stack, bucket, topology)
    with env.client() as c:
        created = c.buckets_api().create_bucket(
            bucket_name=bucket,
            org=stack.influx.org,
            retention_rules=BucketRetentionRules(type="expire", every_seconds=3600),
        )
    try:
        yield env
    finally:
        with env.client() as c:
            c.buckets_api().delete_bucket(created)
        asyncio.run(delete_topics(stack.kafka.bootstrap, topology))


@contextlib.asynccontextmanager
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def sink(
    env: Env,
    kafka: AIOKafkaProducer,
    registry: CollectorRegistry,
    *,
    url: str | None = None,
    **kw: object,
) -> InfluxSink:
    s = env.settings
    return InfluxSink(
        url=url or s.influx.url,
        token=influx_token(s),
        org=s.influx.org,
        name="test",
        service="tests",
        deadletters=AIOKafkaPublisher(lambda: kafka),
        deadletter_topic=env.topology.storage_deadletter,
        timeout_s=2.0,
        max_attempts=2,
        backoff_base_s=0.05,
        backoff_cap_s=0.2,
        metrics=StorageMetrics.of(registry),
        **kw,  # type: ignore[arg-type]
    )


def m(env: Env, id_: str, value: float | str, t_ns: int) -> Point:
    return Point(env.bucket, "m", (("id", id_),), (("v", value),), t_ns)


def test_refused_lines_are_dead_lettered_with_influxdbs_reason_and_the_rest_written(
    senv: Env,
) -> None:
    now = time.time_ns()
    good = [m(senv, f"g{i:03d}", float(i), now + i) for i in range(200)]
    # Mid-chunk, three lines InfluxDB refuses, each for another reason:
    bad = {
        50: m(senv, "conflict", "text", now),  # v is a float in this shard: HTTP 422
        120: m(senv, "old", 1.0, now - 2 * 86_400 * 10**9),  # beyond 1 h retention: 422
        # A device clock reset to year 1: no request holding this line is written (400).
        170: m(senv, "year1", 1.0, to_ns(datetime(1, 1, 1, tzinfo=UTC))),
    }
    points = list(good)
    for i in sorted(bad):
        points.insert(i, bad[i])
    registry = CollectorRegistry()

    async def run() -> InfluxSink:
        async with producer(senv.settings) as kafka:
            s = sink(senv, kafka, registry, chunk_lines=1000)
            s.add([m(senv, "seed", 0.5, now)])
            await s.flush()  # the shard now holds v as a float
            s.add(points)
            await s.flush()  # returns: refused lines never block the others
            await s.close()
            return s

    s = asyncio.run(run())
    assert senv.ids() == sorted(["seed", *(p.tags[0][1] for p in good)])
    assert (s.pending, s.written, s.deadletters, s.failing_since) == (0, 201, 3, None)

    records = asyncio.run(senv.deadletters(want=3))
    by_line = {r.line: r for r in records}
    assert set(by_line) == {p.line() for p in bad.values()}
    got = {(r.reason_class, r.status) for r in records}
    assert got == {("type_conflict", 422), ("retention", 422), ("timestamp", 400)}
    conflict = by_line[bad[50].line()]
    assert 'field type conflict: input field "v" on measurement "m" is type string' in (
        conflict.reason
    )
    assert "outside retention policy" in by_line[bad[120].line()].reason
    assert "value out of range" in by_line[bad[170].line()].reason
    assert {(r.bucket, r.measurement, r.service, r.sink) for r in records} == {
        (senv.bucket, "m", "tests", "test")
    }
    for cls in ("type_conflict", "retention", "timestamp"):
        sample = registry.get_sample_value(
            "civic_storage_deadletters_total", {"sink": "test", "reason": cls}
        )
        assert sample == 1.0
    assert registry.get_sample_value("civic_storage_points_written_total", {"sink": "test"}) == 201


class Relay:
    """A TCP relay to InfluxDB that can be cut (connections refused and reset) and
    restored, like a network or InfluxDB outage."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


def test_an_outage_keeps_every_point_and_shows_until_influxdb_is_back(senv: Env) -> None:
    host, port = senv.settings.influx.url.removeprefix("http://").rstrip("/").split(":")
    relay = Relay((host, int(port)))
    now = time.time_ns()

    async def run() -> None:
        await relay.up()
        async with producer(senv.settings) as kafka:
            s = sink(senv, kafka, CollectorRegistry(), url=relay.url)
            s.add([m(senv, "before", 1.0, now)])
            await s.flush()
            assert s.failing_since is None

            await relay.down()
            s.add([m(senv, f"during{i}", 1.0, now + i) for i in range(10)])
            with pytest.raises(StorageUnavailable):
                await s.flush()
            assert s.pending == 10
            assert s.failing_since is not None
            assert s.deadletters == 0  # an outage is not a refusal

            # store() holds its caller (the processors' offsets) while InfluxDB is away:
            # still waiting after several more failed attempts.
            task = asyncio.create_task(store(s, what="test", retry_s=0.05))
            errors = s.write_errors
            while s.write_errors < errors + 4:  # noqa: ASYNC110 - the sink has no event
                await asyncio.sleep(0.01)
            assert not task.done()
            assert s.pending == 10

            await relay.up()
            async with asyncio.timeout(30):
                await task
            assert (s.pending, s.failing_since, s.deadletters) == (0, None, 0)
            await s.close()
        await relay.down()

    asyncio.run(run())
    assert senv.ids() == sorted(["before", *(f"during{i}" for i in range(10))])


def test_a_bounded_sink_sends_what_it_cannot_keep_to_the_dead_letter_topic(senv: Env) -> None:
    """The alert service's case: InfluxDB unreachable, a buffer of 3, then a stop."""
    now = datetime.now(UTC)
    points = [m(senv, f"p{i}", float(i), to_ns(now + timedelta(seconds=i))) for i in range(5)]
    registry = CollectorRegistry()

    async def run() -> InfluxSink:
        async with producer(senv.settings) as kafka:
            s = sink(senv, kafka, registry, url=f"http://127.0.0.1:{free_port()}", max_pending=3)
            s.add(points)
            with pytest.raises(StorageUnavailable):
                await s.flush()  # the two overflowed points are sent, the rest kept
            assert s.pending == 3
            assert await s.set_aside("stopping while InfluxDB is unavailable") == 3
            await s.close()
            return s

    s = asyncio.run(run())
    assert (s.pending, s.deadletters) == (0, 5)
    records = asyncio.run(senv.deadletters(want=5))
    assert sorted((r.line, r.reason_class, r.status) for r in records) == sorted(
        [(p.line(), "overflow", 0) for p in points[3:]]
        + [(p.line(), "unavailable", 0) for p in points[:3]]
    )
    for cls, n in (("overflow", 2.0), ("unavailable", 3.0)):
        sample = registry.get_sample_value(
            "civic_storage_deadletters_total", {"sink": "test", "reason": cls}
        )
        assert sample == n
    assert senv.ids() == []
