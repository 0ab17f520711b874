"""Dead-letter records keep the exact bytes (base64) with the topic, device and reason."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from civic_iot.contracts.deadletter import deadletter_record, device_of

AT = datetime(2026, 11, 25, 0, 0, 1, 250_000, tzinfo=UTC)


def record(raw: bytes, topic: str = "devices/air-1/air", device: str | None = "air-1") -> dict:
    value = deadletter_record(
        topic=topic,
        raw=raw,
        reason="not_json",
        error=f"device {device!r} topic {topic!r}: not JSON",
        device_id=device,
        received_at=AT,
    )
    assert isinstance(value, bytes)
    return json.loads(value)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfenot json",
        b"\x00\x01\x02",
        b'{"ts": 1, "pm2_5_ugm3": -3}',
        "溫度 23 °C".encode(),
        "溫度".encode("utf-16"),
        bytes(range(256)),
        b"x" * 70_000,
    ],
)
def test_raw_bytes_survive_exactly(raw: bytes) -> None:
    doc = record(raw)
    assert base64.b64decode(doc["payload_b64"], validate=True) == raw
    assert doc["payload_bytes"] == len(raw)


def test_record_fields() -> None:
    doc = record(b"oops", topic="devices/air-1/air")
    assert doc == {
        "topic": "devices/air-1/air",
        "device_id": "air-1",
        "reason": "not_json",
        "error": "device 'air-1' topic 'devices/air-1/air': not JSON",
        "received_at": "2026-11-25T00:00:01.250000+00:00",
        "payload_b64": "b29wcw==",
        "payload_bytes": 4,
    }


def test_record_without_a_device() -> None:
    doc = record(b"{}", topic="sensors/x", device=None)
    assert doc["device_id"] is None
    assert doc["topic"] == "sensors/x"


def test_non_ascii_topic_and_error_are_utf8_json() -> None:
    value = deadletter_record(
        topic="devices/站-1/air",
        raw=b"",
        reason="unknown_device",
        error="device '站-1': not in the device registry",
        device_id="站-1",
        received_at=AT,
    )
    doc = json.loads(value.decode("utf-8"))
    assert doc["topic"] == "devices/站-1/air"
    assert doc["device_id"] == "站-1"


@given(raw=st.binary(max_size=2000), topic=st.text(max_size=50))
def test_any_bytes_round_trip(raw: bytes, topic: str) -> None:
    doc = record(raw, topic=topic, device=device_of(topic))
    assert base64.b64decode(doc["payload_b64"]) == raw
    assert doc["topic"] == topic


@pytest.mark.parametrize(
    ("topic", "device"),
    [
        ("devices/air-1/air", "air-1"),
        ("devices/air-1/noise", "air-1"),
        ("devices/air-1/air/extra", "air-1"),
        ("devices/air-1", "air-1"),
        ("devices//air", None),
        ("devices", None),
        ("alerts/air-1/air", None),
        ("", None),
    ],
)
def test_device_of(topic: str, device: str | None) -> None:
    assert device_of(topic) == device
