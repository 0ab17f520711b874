"""Small real-service helpers for integration tests (no fakes)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import paho.mqtt.client as mqtt
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from civic_iot.contracts.readings import record_lines
from civic_iot.registry import device_password, device_secret
from civic_iot.settings import Settings
from civic_iot.topology import READING_KINDS

REPO = Path(__file__).resolve().parents[2]


class Device:
    """A device publishing with its own credentials, QoS 1, waiting for each PUBACK."""

    def __init__(self, settings: Settings, device_id: str, password: str | None = None) -> None:
        self.id = device_id
        self.acks: dict[int, ReasonCode] = {}
        self._acked = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{device_id}-{os.getpid()}-{time.time_ns()}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(
            device_id, password or device_password(device_secret(settings.data_dir), device_id)
        )
        self.client.on_publish = self._on_publish
        connected = threading.Event()
        codes: list[ReasonCode] = []

        def on_connect(_c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            codes.append(rc)
            connected.set()

        self.client.on_connect = on_connect
        self.client.connect(settings.mqtt.host, settings.mqtt.port)
        self.client.loop_start()
        assert connected.wait(10), f"{device_id}: no CONNACK"
        assert not codes[0].is_failure, f"{device_id}: connect refused: {codes[0]}"

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._acked:
            self.acks[mid] = rc
            self._acked.notify_all()

    def publish(self, topic: str, payload: bytes | str, timeout: float = 10) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        with self._acked:
            assert self._acked.wait_for(lambda: info.mid in self.acks, timeout), "no PUBACK"
            return self.acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def reading(ts: str | int, **values: float) -> str:
    return json.dumps({"v": 1, "ts": ts, **values})


async def read_topic(
    settings: Settings, topic: str, *, want: int, timeout_s: float = 60
) -> list[tuple[bytes | None, bytes]]:
    """Read a topic from the beginning until ``want`` records arrived (or time out)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    out: list[tuple[bytes | None, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        await _from_beginning(consumer, topic, deadline)
        while len(out) < want and time.monotonic() < deadline:
            out += await _next_records(consumer, topic)
        return out
    finally:
        await consumer.stop()


async def read_through(
    settings: Settings,
    topic: str,
    is_marker: Callable[[bytes | None, bytes], bool],
    *,
    timeout_s: float = 60,
) -> list[tuple[bytes | None, bytes]]:
    """Every record of ``topic`` up to a marker: read from the beginning until a record
    ``is_marker(key, value)`` accepts arrived, then on to the end offsets every partition
    has at that moment, so what was produced before the marker, on any partition, is in.
    A test that asserts something did not arrive publishes the marker after it."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap,
        enable_auto_commit=False,
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    out: list[tuple[bytes | None, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        tps = await _from_beginning(consumer, topic, deadline)
        while not any(is_marker(k, v) for k, v in out):
            assert time.monotonic() < deadline, f"no marker on {topic}; got {len(out)} records"
            out += await _next_records(consumer, topic)
        end = await consumer.end_offsets(tps)
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            assert time.monotonic() < deadline, f"{topic} not read to its end"
            out += await _next_records(consumer, topic)
        return out
    finally:
        await consumer.stop()


async def _from_beginning(
    consumer: AIOKafkaConsumer, topic: str, deadline: float
) -> list[TopicPartition]:
    """Every partition of ``topic`` assigned to ``consumer``, from its first record (the
    topic may still be being made: wait for it until ``deadline``, monotonic)."""
    while not (parts := consumer.partitions_for_topic(topic)):
        assert time.monotonic() < deadline, f"topic {topic} never appeared"
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.2)
    tps = [TopicPartition(topic, p) for p in parts]
    consumer.assign(tps)
    await consumer.seek_to_beginning()
    return tps


async def _next_records(consumer: AIOKafkaConsumer, topic: str) -> list[tuple[bytes | None, bytes]]:
    """The records of one fetch (up to 0.5 s), one reading each (:func:`_per_reading`)."""
    batch = await consumer.getmany(timeout_ms=500)
    return _per_reading(
        topic, [(r.key, r.value) for recs in batch.values() for r in recs if r.value is not None]
    )


def _per_reading(
    topic: str, records: list[tuple[bytes | None, bytes]]
) -> list[tuple[bytes | None, bytes]]:
    """A readings topic's records one reading each (a record holds several, one a line:
    civic_iot.contracts.readings), keyed by the reading's device; others as they are."""
    if not topic.endswith(tuple(f"readings.{k}" for k in READING_KINDS)):
        return records
    return [
        (json.loads(line)["device_id"].encode(), line)
        for _, value in records
        for line in record_lines(value)
    ]


def start_process(args: Iterable[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ops.cli", *args],
        env={**os.environ, **env},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )


class PostReceiver(Protocol):
    """A test's HTTP receiver: answers POSTs, learns the port it is served on."""

    port: int

    @property
    def handle(self) -> Callable[[web.Request], Awaitable[web.StreamResponse]]: ...


R = TypeVar("R", bound=PostReceiver)


@asynccontextmanager
async def serve_posts(r: R, route: str) -> AsyncIterator[R]:
    """``r`` served on a free loopback port (set in ``r.port``): POSTs to ``route`` go to
    ``r.handle``. Stopped on exit, cancelling handlers that still hang."""
    app = web.Application()
    app.router.add_post(route, r.handle)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    r.port = int(runner.addresses[0][1])
    try:
        yield r
    finally:
        await runner.cleanup()
