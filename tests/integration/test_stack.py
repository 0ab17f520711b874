"""Each service of the native stack, talked to for real (deploy/stack.sh up)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write.point import Point
from influxdb_client.client.write_api import SYNCHRONOUS

from civic_iot.registry import Registry, device_password, device_secret
from civic_iot.settings import Settings, influx_token, mqtt_password

pytestmark = pytest.mark.integration


def _client(settings: Settings, user: str, password: str, cid: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, password)
    return c


def _connect(c: mqtt.Client, settings: Settings) -> mqtt.ReasonCode:
    done = threading.Event()
    result: list[mqtt.ReasonCode] = []

    def on_connect(
        _c: mqtt.Client, _u: object, _f: object, rc: mqtt.ReasonCode, _p: object
    ) -> None:
        result.append(rc)
        done.set()

    c.on_connect = on_connect
    c.connect(settings.mqtt.host, settings.mqtt.port)
    c.loop_start()
    assert done.wait(10), "no CONNACK from Mosquitto"
    return result[0]


def test_mosquitto_device_publishes_ingest_receives(
    stack: Settings, registry: Registry, unique: str
) -> None:
    device = registry.of_kind("air")[0]
    secret = device_secret(stack.data_dir)
    sub = _client(stack, "civic-ingest", mqtt_password(stack, "civic-ingest"), f"t-sub-{unique}")
    got: list[bytes] = []
    arrived = threading.Condition()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with arrived:
            got.append(msg.payload)
            arrived.notify_all()

    sub.on_message = on_message
    assert not _connect(sub, stack).is_failure
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.subscribe(f"devices/{device.id}/air", qos=1)
    assert subscribed.wait(10)

    pub = _client(stack, device.id, device_password(secret, device.id), f"t-pub-{unique}")
    assert not _connect(pub, stack).is_failure
    payload = f'{{"v":1,"ts":"2026-01-01T00:00:00+08:00","pm2_5_ugm3":12.5,"t":"{unique}"}}'
    pub.publish(f"devices/{device.id}/air", payload, qos=1).wait_for_publish(10)
    # A marker after it: a duplicate of the reading would arrive before the marker.
    marker = f"marker-{unique}"
    pub.publish(f"devices/{device.id}/air", marker, qos=1).wait_for_publish(10)
    with arrived:
        assert arrived.wait_for(lambda: marker.encode() in got, 10), (
            f"the ingest account did not receive the device's reading and marker: {got}"
        )
    assert got == [payload.encode(), marker.encode()]
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()


def test_mosquitto_refuses_wrong_password_and_anonymous(
    stack: Settings, registry: Registry, unique: str
) -> None:
    device = registry.of_kind("air")[0]
    bad = _client(stack, device.id, "not-the-password", f"t-bad-{unique}")
    rc = _connect(bad, stack)
    bad.loop_stop()
    assert rc.is_failure
    assert rc.getName() in {"Bad user name or password", "Not authorized"}
    anon = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-anon-{unique}", protocol=mqtt.MQTTv5
    )
    rc = _connect(anon, stack)
    anon.loop_stop()
    assert rc.is_failure


def test_kafka_through_a_faust_agent(stack: Settings, unique: str, tmp_path: Path) -> None:
    topic_in, topic_out = f"t-echo-in-{unique}", f"t-echo-out-{unique}"
    env = {
        **os.environ,
        "ECHO_APP_ID": f"t-echo-{unique}",
        "ECHO_IN": topic_in,
        "ECHO_OUT": topic_out,
        "ECHO_DATADIR": str(tmp_path / "faust-data"),
    }
    log = (tmp_path / "faust.log").open("w")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "faust",
            "-A",
            "tests.integration.echo_app",
            "worker",
            "-l",
            "warn",
            "--without-web",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).parents[2],
    )

    async def run() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap, acks="all")
        consumer = AIOKafkaConsumer(
            topic_out,
            bootstrap_servers=stack.kafka.bootstrap,
            auto_offset_reset="earliest",
            group_id=f"t-echo-check-{unique}",
            metadata_max_age_ms=1000,
        )
        await producer.start()
        await consumer.start()
        try:
            for i in range(5):
                # One key: one partition, so order is kept (as readings are keyed by device).
                await producer.send_and_wait(topic_in, f"m{i}".encode(), key=b"device-1")
            out: list[bytes] = []
            async with asyncio.timeout(90):
                async for rec in consumer:
                    assert rec.value is not None
                    out.append(rec.value)
                    if len(out) == 5:
                        break
            return out
        finally:
            await producer.stop()
            await consumer.stop()

    try:
        out = asyncio.run(run())
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()
    assert out == [f"echo:m{i}".encode() for i in range(5)], (tmp_path / "faust.log").read_text()


def test_influxdb_write_and_flux_read_back(stack: Settings, unique: str) -> None:
    with InfluxDBClient(
        url=stack.influx.url, token=influx_token(stack), org=stack.influx.org
    ) as client:
        bucket = client.buckets_api().create_bucket(bucket_name=f"t-{unique}", org=stack.influx.org)
        try:
            t = datetime(2026, 1, 1, 0, 0, 1, 123456, tzinfo=UTC)
            point = Point("air").tag("device", "air-x").field("pm2_5_ugm3", 31.4).time(t)
            client.write_api(write_options=SYNCHRONOUS).write(
                bucket=bucket.name, record=[point, point]
            )
            tables = client.query_api().query(
                f'from(bucket: "{bucket.name}") |> range(start: 2025-12-31T00:00:00Z) '
                '|> filter(fn: (r) => r._measurement == "air")'
            )
            rows = [
                (r.get_time(), r.values["device"], r.get_field(), r.get_value())
                for tb in tables
                for r in tb.records
            ]
            # The same point written twice is one point (idempotent writes).
            assert rows == [(t, "air-x", "pm2_5_ugm3", 31.4)]
        finally:
            client.buckets_api().delete_bucket(bucket)
