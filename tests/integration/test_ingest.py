"""Ingest against the real Mosquitto and Kafka: contract, refusals, dead letters, crashes."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from civic_iot.accounts import INGEST_USER
from civic_iot.kafka_admin import ensure_topics
from civic_iot.registry import Registry
from civic_iot.settings import Settings, mqtt_password
from civic_iot.topology import Topology
from tests.integration.helpers import Device, read_through, read_topic, reading, start_process

pytestmark = pytest.mark.integration

#: A recent event time, whole seconds (ingest refuses readings older than six days), as a
#: device in Taiwan would stamp it.
TS_S = int(time.time()) - 60
TS = datetime.fromtimestamp(TS_S, timezone(timedelta(hours=8))).isoformat()
TS_NEXT = datetime.fromtimestamp(TS_S + 1, timezone(timedelta(hours=8))).isoformat()


@pytest.fixture
def env(stack: Settings, unique: str) -> dict[str, str]:
    """Per-test Kafka topics, MQTT share group and session: tests never compete."""
    prefix = f"t{unique}."
    kafka = stack.kafka.model_copy(update={"topic_prefix": prefix})
    asyncio.run(
        ensure_topics(kafka.bootstrap, Topology(prefix=prefix, partitions=kafka.partitions))
    )
    return {
        "CIVIC_KAFKA__TOPIC_PREFIX": prefix,
        "CIVIC_MQTT__SHARE_GROUP": f"g{unique}",
        "CIVIC_INGEST__INSTANCE": f"t{unique}",
        "CIVIC_INGEST__HTTP_PORT": "0",
        # Long enough to survive the restart test; short so the broker drops the
        # test's session (and its queue of everyone's readings) soon after.
        "CIVIC_MQTT__SESSION_EXPIRY_S": "120",
    }


@pytest.fixture
def ingest(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = _start_ingest(env, tmp_path)
    yield proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def _start_ingest(env: dict[str, str], tmp_path: Path) -> subprocess.Popen[bytes]:
    log = tmp_path / "ingest.log"
    proc = start_process(["ingest"], env, log)
    deadline = time.monotonic() + 30
    while "mqtt connected" not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return proc


def test_device_reading_reaches_kafka_with_location(
    stack: Settings, registry: Registry, env: dict[str, str], ingest: object
) -> None:
    device = registry.of_kind("air")[0]
    dev = Device(stack, device.id)
    rc = dev.publish(f"devices/{device.id}/air", reading(TS, pm2_5_ugm3=41.5))
    dev.close()
    assert not rc.is_failure
    prefix = env["CIVIC_KAFKA__TOPIC_PREFIX"]
    # This ingest shares the broker's device traffic with other runs (which publish as the
    # same devices), and a record holds a partition's readings of one batch: this reading
    # is found by its device and time.
    rid = f'"reading_id":"{device.id}:{TS_S * 1_000_000_000}"'.encode()

    def ours(k: bytes | None, v: bytes) -> bool:
        return k == device.id.encode() and rid in v

    found = asyncio.run(read_through(stack, f"{prefix}readings.air", ours))
    [(key, value)] = [(k, v) for k, v in found if ours(k, v)]
    doc = json.loads(value)
    assert key == device.id.encode()
    assert doc["device_id"] == device.id
    assert doc["reading_id"] == f"{device.id}:{TS_S * 1_000_000_000}"
    assert doc["data"]["pm2_5_ugm3"] == 41.5
    assert doc["location"] == {"lat": device.lat, "lon": device.lon, "township": device.township}


def test_broker_refuses_a_device_writing_another_devices_topic(
    stack: Settings, registry: Registry, env: dict[str, str], ingest: object
) -> None:
    me, other = registry.of_kind("air")[:2]
    dev = Device(stack, me.id)
    rc = dev.publish(f"devices/{other.id}/air", reading(TS, pm2_5_ugm3=1))
    ok = dev.publish(f"devices/{me.id}/air", reading(TS_NEXT, pm2_5_ugm3=2))
    dev.close()
    assert rc.getName() == "Not authorized"
    assert not ok.is_failure
    prefix = env["CIVIC_KAFKA__TOPIC_PREFIX"]
    # The device's own reading, published after the forged one, is the marker: ingest
    # would have had the forged one first.
    records = asyncio.run(
        read_through(
            stack, f"{prefix}readings.air", lambda _k, v: json.loads(v)["device_id"] == me.id
        )
    )
    # Only the device's own reading got through: the forged one never reached ingest.
    assert [json.loads(v)["device_id"] for _, v in records] == [me.id]


@pytest.mark.parametrize(
    ("suffix", "payload", "reason"),
    [
        ("air", b"\xff\xfenot json", "not_json"),
        ("air", b'{"v":1,"ts":"%s","pm2_5_ugm3":-3}' % TS.encode(), "out_of_range"),
        ("air", b'{"v":1,"ts":"%s"}' % TS.encode(), "schema"),
        ("air", b'{"v":1,"ts":"2099-01-01T00:00:00+08:00","pm2_5_ugm3":3}', "future_timestamp"),
        ("water", b'{"v":1,"ts":"%s","rainfall_mm":3}' % TS.encode(), "wrong_kind"),
        ("air", b'{"v":1,"ts":"0001-01-01T00:00:00Z","pm2_5_ugm3":3}', "too_old"),
    ],
)
def test_bad_payload_is_dead_lettered_with_reason_and_raw_bytes(
    stack: Settings,
    registry: Registry,
    env: dict[str, str],
    ingest: object,
    suffix: str,
    payload: bytes,
    reason: str,
) -> None:
    device = registry.of_kind("air")[0]
    dev = Device(stack, device.id)
    assert not dev.publish(f"devices/{device.id}/{suffix}", payload).is_failure
    dev.close()
    prefix = env["CIVIC_KAFKA__TOPIC_PREFIX"]
    [(key, value)] = asyncio.run(read_topic(stack, f"{prefix}readings.deadletter", want=1))
    doc = json.loads(value)
    assert key == device.id.encode()
    assert doc["reason"] == reason
    assert device.id in doc["error"]
    assert base64.b64decode(doc["payload_b64"]) == payload
    assert doc["topic"] == f"devices/{device.id}/{suffix}"


def test_sigkill_mid_stream_loses_nothing(
    stack: Settings, registry: Registry, env: dict[str, str], tmp_path: Path
) -> None:
    devices = registry.of_kind("water")[:3]
    proc = _start_ingest(env, tmp_path)
    clients = [Device(stack, d.id) for d in devices]
    sent: set[str] = set()
    n = 300
    for i in range(n):
        d = clients[i % len(clients)]
        ts_ms = TS_S * 1000 - 600_000 + i * 1000
        if i == n // 3:
            proc.send_signal(signal.SIGKILL)  # no goodbye, no flush
            proc.wait(10)
        assert not d.publish(f"devices/{d.id}/water", reading(ts_ms, rainfall_mm=0.5)).is_failure
        sent.add(f"{d.id}:{ts_ms * 1_000_000}")
        if i == 2 * n // 3:
            proc = _start_ingest(env, tmp_path)  # same instance id: same persistent session
    for c in clients:
        c.close()
    try:
        prefix = env["CIVIC_KAFKA__TOPIC_PREFIX"]
        records = asyncio.run(read_topic(stack, f"{prefix}readings.water", want=n, timeout_s=60))
        got = {json.loads(v)["reading_id"] for _, v in records}
        # Every reading published while ingest was dead arrived after the restart;
        # redeliveries may duplicate a record, never drop one.
        assert got == sent
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _kick(stack: Settings, client_id: str, session_expiry_s: int) -> None:
    """Take over ingest's MQTT session for a moment: Mosquitto drops ingest's connection
    (reason "Session taken over"), as it would on a network cut or a broker restart.

    The intruder resumes the session (clean_start false, the same expiry) so the session
    and its subscription survive, and never acknowledges anything it is sent.
    """
    intruder = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
    )
    intruder.username_pw_set(INGEST_USER, mqtt_password(stack, INGEST_USER))
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry_s
    intruder.connect(stack.mqtt.host, stack.mqtt.port, clean_start=False, properties=props)
    deadline = time.monotonic() + 10
    while not intruder.is_connected():
        assert time.monotonic() < deadline, "the intruder got no CONNACK"
        intruder.loop(0.1)
    intruder.disconnect()
    intruder.loop(0.1)


def test_ingest_reconnects_after_its_connection_is_dropped(
    stack: Settings, registry: Registry, env: dict[str, str], tmp_path: Path
) -> None:
    devices = registry.of_kind("water")[3:5]
    proc = _start_ingest(env, tmp_path)
    log = tmp_path / "ingest.log"
    prefix = env["CIVIC_KAFKA__TOPIC_PREFIX"]
    clients = [Device(stack, d.id) for d in devices]
    try:
        _kick(stack, f"civic-ingest-{env['CIVIC_INGEST__INSTANCE']}", 120)
        deadline = time.monotonic() + 10
        while "mqtt disconnected" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, "ingest was not disconnected:\n" + log.read_text()
            time.sleep(0.1)
        sent: set[str] = set()
        for i in range(100):  # at once: some arrive while ingest is still reconnecting
            d = clients[i % len(clients)]
            ts_ms = TS_S * 1000 - 600_000 + i * 1000
            assert not d.publish(f"devices/{d.id}/water", reading(ts_ms, rainfall_mm=1)).is_failure
            sent.add(f"{d.id}:{ts_ms * 1_000_000}")
        got: set[str] = set()
        deadline = time.monotonic() + 60
        while not sent <= got and time.monotonic() < deadline:
            records = asyncio.run(
                read_topic(stack, f"{prefix}readings.water", want=10**6, timeout_s=3)
            )
            got = {json.loads(v)["reading_id"] for _, v in records}
        assert sent <= got, f"missing {sorted(sent - got)[:5]}...\n" + log.read_text()
        assert proc.poll() is None
        # ingest itself reconnected, with its backoff, to the same persistent session
        assert log.read_text().count("mqtt connected") >= 2
    finally:
        for c in clients:
            c.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_two_ingest_processes_split_the_load_and_lose_nothing(
    stack: Settings, registry: Registry, env: dict[str, str], tmp_path: Path
) -> None:
    """The MQTT 5 shared subscription (not the default: see the IngestSettings): two
    processes, one share group, each reading once."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shared = {**env, "CIVIC_INGEST__SUBSCRIPTION": "shared"}
    instance = env["CIVIC_INGEST__INSTANCE"]
    procs = [
        _start_ingest({**shared, "CIVIC_INGEST__INSTANCE": f"{instance}{s}"}, p)
        for s, p in (("a", tmp_path / "a"), ("b", tmp_path / "b"))
    ]
    devices = registry.of_kind("air")[10:14]
    clients = [Device(stack, d.id) for d in devices]
    sent: set[str] = set()
    try:
        for i in range(400):
            d = clients[i % len(clients)]
            ts_ms = TS_S * 1000 - 600_000 + i * 1000
            assert not d.publish(f"devices/{d.id}/air", reading(ts_ms, pm10_ugm3=9)).is_failure
            sent.add(f"{d.id}:{ts_ms * 1_000_000}")
        prefix = env["CIVIC_KAFKA__TOPIC_PREFIX"]
        records = asyncio.run(read_topic(stack, f"{prefix}readings.air", want=400, timeout_s=60))
    finally:
        for c in clients:
            c.close()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    ids = [json.loads(v)["reading_id"] for _, v in records]
    assert sorted(ids) == sorted(sent)  # every reading, each once
    accepted = []
    for sub in ("a", "b"):
        stopped = [
            line
            for line in (tmp_path / sub / "ingest.log").read_text().splitlines()
            if "ingest stopped counts=" in line
        ]
        assert stopped, f"ingest {sub} did not stop cleanly"
        accepted.append(int(re.search(r"'accepted': (\d+)", stopped[-1]).group(1)))  # type: ignore[union-attr]
    assert sum(accepted) == 400
    assert min(accepted) > 0, f"one process got nothing: {accepted}"


def test_readings_with_mqtt5_properties_arrive_amid_plain_ones(
    stack: Settings, registry: Registry, env: dict[str, str], ingest: object
) -> None:
    """A device may set properties (content type, user properties, expiry): ingest's own
    reader leaves those packets to paho's parser, and the order of arrival is kept."""
    device = registry.of_kind("air")[15]
    dev = Device(stack, device.id)
    expected = []
    try:
        for i in range(20):
            ts_ms = TS_S * 1000 - 600_000 + i * 1000
            props = None
            if i % 3 == 0:
                props = Properties(PacketTypes.PUBLISH)
                props.ContentType = "application/json"
                props.UserProperty = [("firmware", "1.4.2")]
                props.MessageExpiryInterval = 3600
            info = dev.client.publish(
                f"devices/{device.id}/air",
                reading(ts_ms, pm2_5_ugm3=float(i)),
                qos=1,
                properties=props,
            )
            info.wait_for_publish(10)
            expected.append(f"{device.id}:{ts_ms * 1_000_000}")
    finally:
        dev.close()
    prefix = env["CIVIC_KAFKA__TOPIC_PREFIX"]
    records = asyncio.run(read_topic(stack, f"{prefix}readings.air", want=20, timeout_s=30))
    # One device, one partition: Kafka holds its readings in the order they were sent.
    assert [json.loads(v)["reading_id"] for _, v in records] == expected
