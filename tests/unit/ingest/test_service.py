"""``Ingest.route``, the pure decision of ingest: one inbound message -> (topic, key, value)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from civic_iot.contracts.readings import Reading
from civic_iot.registry import Device, Registry, Township, load_registry, save_registry
from civic_iot.settings import KafkaSettings, Settings
from ingest.service import Inbound, Ingest, batch_delay

NOW = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
PREFIX = "unit."


@pytest.fixture
def ingest(tmp_path: Path) -> Ingest:
    path = tmp_path / "devices.yaml"
    save_registry(
        Registry(
            townships=(Township(code="63000030", name="Da'an", lat=25.026, lon=121.543),),
            devices=(
                Device(id="air-1", kind="air", lat=25.02, lon=121.54, township="63000030"),
                Device(id="water-1", kind="water", lat=25.03, lon=121.55, township="63000030"),
                Device(id="quake-1", kind="seismic", lat=25.04, lon=121.56, township="63000030"),
            ),
        ),
        path,
    )
    base = Settings(_env_file=None)  # type: ignore[call-arg]
    settings = base.model_copy(
        update={
            "registry": path,
            "data_dir": tmp_path,
            "kafka": KafkaSettings(topic_prefix=PREFIX),
            "ingest": base.ingest.model_copy(update={"max_future_skew_s": 30.0}),
        }
    )
    return Ingest(settings, load_registry(path))


def inbound(topic: str, payload: bytes, mid: int = 1) -> Inbound:
    return Inbound(topic=topic, payload=payload, mid=mid, qos=1, received_at=NOW)


@pytest.mark.parametrize(
    ("topic", "payload", "kind"),
    [
        ("devices/air-1/air", b'{"v":1,"ts":"2026-11-25T07:59:00+08:00","pm2_5_ugm3":41.5}', "air"),
        ("devices/water-1/water", b'{"ts":1795564740000,"flood_depth_cm":12}', "water"),
        (
            "devices/quake-1/seismic",
            b'{"ts":1795564740000,"sample_rate_hz":100,"x_gal":[1],"y_gal":[2],"z_gal":[3]}',
            "seismic",
        ),
    ],
)
def test_valid_reading_goes_to_its_kind_keyed_by_device(
    ingest: Ingest, topic: str, payload: bytes, kind: str
) -> None:
    device = topic.split("/")[1]
    out_topic, key, value = ingest.route(inbound(topic, payload))
    assert out_topic == f"{PREFIX}readings.{kind}"
    assert key == device.encode()
    reading = Reading.from_record(value)
    assert reading.device_id == device
    assert reading.kind == kind
    assert reading.reading_id == f"{device}:1795564740000000000"
    assert reading.received_at == NOW
    assert reading.location.township == "63000030"
    assert ingest.counts == {"accepted": 1}


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "key"),
    [
        ("devices/air-1/air", b"\xff\xfenot json", "not_json", b"air-1"),
        ("devices/air-1/air", b'{"ts":1795564740000,"pm2_5_ugm3":-3}', "out_of_range", b"air-1"),
        ("devices/air-1/air", b'{"ts":1795564831000,"pm2_5_ugm3":3}', "future_timestamp", b"air-1"),
        ("devices/air-1/water", b'{"ts":1795564740000,"rainfall_mm":3}', "wrong_kind", b"air-1"),
        ("devices/air-9/air", b'{"ts":1795564740000,"pm2_5_ugm3":3}', "unknown_device", b"air-9"),
        ("devices/air-1/noise", b"{}", "bad_topic", b"air-1"),
        # no device in the topic: the topic itself is the key
        ("devices//air", b"{}", "bad_topic", b"devices//air"),
        (
            "devices/air-1/air",
            b'{"v":2,"ts":1795564740000,"pm2_5_ugm3":3}',
            "unsupported_version",
            b"air-1",
        ),
    ],
)
def test_refused_message_is_dead_lettered_with_raw_bytes(
    ingest: Ingest, topic: str, payload: bytes, reason: str, key: bytes
) -> None:
    out_topic, out_key, value = ingest.route(inbound(topic, payload))
    assert out_topic == f"{PREFIX}readings.deadletter"
    assert out_key == key
    doc = json.loads(value)
    assert doc["reason"] == reason
    assert doc["topic"] == topic
    assert base64.b64decode(doc["payload_b64"]) == payload
    assert doc["received_at"] == NOW.isoformat()
    assert repr(topic) in doc["error"]
    assert ingest.counts == {f"deadletter:{reason}": 1}


def test_oversize_payload_is_dead_lettered_whole(ingest: Ingest) -> None:
    payload = b"{" + b" " * (64 * 1024)
    _, _, value = ingest.route(inbound("devices/air-1/air", payload))
    doc = json.loads(value)
    assert doc["reason"] == "oversize"
    assert base64.b64decode(doc["payload_b64"]) == payload


def test_counts_accumulate(ingest: Ingest) -> None:
    good = b'{"ts":1795564740000,"pm2_5_ugm3":3}'
    for i, payload in enumerate([good, good, b"x", b"[]"]):
        ingest.route(inbound("devices/air-1/air", payload, mid=i))
    assert ingest.counts == {"accepted": 2, "deadletter:not_json": 1, "deadletter:schema": 1}


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    topic=st.sampled_from(["devices/air-1/air", "devices/water-1/water", "x", "devices/a/air"]),
    payload=st.binary(max_size=200),
)
def test_route_never_raises(ingest: Ingest, topic: str, payload: bytes) -> None:
    out_topic, key, value = ingest.route(inbound(topic, payload))
    assert out_topic.startswith(PREFIX)
    assert key
    assert json.loads(value)


def test_a_batch_waits_for_the_gap_after_the_one_before() -> None:
    assert batch_delay(100.0, 100.004, 0.01, pending=3, most=1000) == pytest.approx(0.006)
    assert batch_delay(100.0, 100.02, 0.01, pending=3, most=1000) == 0.0  # gap passed
    assert batch_delay(100.0, 100.004, 0.0, pending=3, most=1000) == 0.0  # no gap set
    assert batch_delay(100.0, 100.004, 0.01, pending=1000, most=1000) == 0.0  # a whole batch
