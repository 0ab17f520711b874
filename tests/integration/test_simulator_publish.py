"""The simulator against the real Mosquitto: what it publishes is exactly what a subscriber
gets, and the broker keeps devices to their own topics. Needs ``deploy/stack.sh up`` after
``civic-iot devices sync`` with the generated registry."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from civic_iot.registry import Registry
from civic_iot.settings import Settings, mqtt_password
from simulator.publisher import PublishError, publish_all
from simulator.scenario import (
    GarbageFault,
    Phase,
    PollutionEvent,
    Scenario,
    SimMessage,
    generate,
)
from tests.integration.helpers import Device, reading

pytestmark = pytest.mark.integration

#: The device that publishes the marker after a test's messages.
MARKER_DEVICE = "air-0003"


class Subscriber:
    """``civic-ingest`` reading ``devices/#`` (a plain subscription: it takes nothing from
    the ingest service's shared subscription)."""

    def __init__(self, settings: Settings, unique: str) -> None:
        self.settings = settings
        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-sim-{unique}", protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set("civic-ingest", mqtt_password(settings, "civic-ingest"))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(settings.mqtt.host, settings.mqtt.port, clean_start=True)
        self.client.loop_start()
        assert self._ready.wait(10), "subscriber: no SUBACK"

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        assert not rc.is_failure, rc
        c.subscribe("devices/#", qos=1)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        assert not rcs[0].is_failure, rcs
        self._ready.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((msg.topic, bytes(msg.payload)))

    def wait_for(self, wanted: set[tuple[str, bytes]], timeout: float) -> list[tuple[str, bytes]]:
        """Wait until every wanted message arrived (or time out), then until a marker
        published after them arrived; return what came before the marker. Anything extra
        (duplicates, denied messages) the broker let through would have come first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if wanted <= set(self.received):
                    break
            time.sleep(0.1)
        device = MARKER_DEVICE
        marker = (f"devices/{device}/air", reading(time.time_ns() // 1_000_000, pm2_5_ugm3=1.0))
        publisher = Device(self.settings, device)
        try:
            assert not publisher.publish(*marker).is_failure
        finally:
            publisher.close()
        want_marker = (marker[0], marker[1].encode())
        deadline = time.monotonic() + 10
        while True:
            with self._lock:
                if want_marker in self.received:
                    return self.received[: self.received.index(want_marker)]
            assert time.monotonic() < deadline, "the marker never arrived"
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(stack: Settings, unique: str) -> Any:
    sub = Subscriber(stack, unique)
    yield sub
    sub.close()


def slice_scenario() -> Scenario:
    """Half an hour of scenario time in 3 s of wall time, with garbage the broker must
    pass to ingest and garbage it must keep out."""
    return Scenario(
        name="it-slice",
        seed=7,
        air_interval_s=(60, 120),
        water_interval_s=(60, 120),
        phases=(
            Phase(
                name="slice",
                duration=1800,
                speed=600,
                events=(
                    PollutionEvent(type="pollution", townships={"68000020": 120}, rise=900),
                    GarbageFault(type="garbage", variant="not_json", device="air-0010", at=300),
                    GarbageFault(type="garbage", variant="bad_topic", device="air-0010", at=400),
                    GarbageFault(
                        type="garbage", variant="unknown_device", device="air-9999", at=500
                    ),
                    GarbageFault(
                        type="garbage",
                        variant="foreign_topic",
                        device="air-0011",
                        target="air-0012",
                        at=600,
                        count=2,
                    ),
                ),
            ),
        ),
    )


def test_subscriber_receives_exactly_what_was_published(
    stack: Settings, registry: Registry, subscriber: Subscriber
) -> None:
    devices = [d for d in registry if d.kind != "seismic"][:40]
    devices += [d for d in registry if d.id in {"air-0010", "air-0011", "air-0012"}]
    small = Registry(
        townships=registry.townships, devices=tuple({d.id: d for d in devices}.values())
    )
    sc = slice_scenario()
    # Event times in the recent past: unique to this run, never refused as future.
    start = datetime.now(UTC) - timedelta(seconds=sc.duration_s)
    messages = generate(sc, small, start=start)
    delivered = [m for m in messages if not m.broker_denied]
    denied = [m for m in messages if m.broker_denied]
    assert len(delivered) > 300
    assert len(denied) == 3

    report = publish_all(messages, stack, speed=1.0)

    assert report.total == len(messages)
    assert report.acknowledged == len(delivered)
    assert report.denied == len(denied) == report.failed
    assert report.elapsed_s < sc.wall_duration_s() + 5  # paced, not late
    assert report.elapsed_s > sc.wall_duration_s() * 0.8  # and not all at once
    ours = {(m.topic, m.payload) for m in messages}
    want = Counter((m.topic, m.payload) for m in delivered)
    got = Counter(r for r in subscriber.wait_for(set(want), 15) if r in ours)
    assert got == want  # every accepted message once, none of the denied ones


def test_device_cannot_publish_on_another_devices_topic(
    stack: Settings, subscriber: Subscriber
) -> None:
    now = datetime.now(UTC)
    payload = f'{{"v":1,"ts":{int(now.timestamp() * 1000)},"pm2_5_ugm3":5.0}}'.encode()
    forged = SimMessage(
        device_id="air-0002",
        kind="air",
        topic="devices/air-0002/air",
        payload=payload,
        event_time=now,
        at_s=0.0,
        sender="air-0001",
        fault="foreign_topic",
        broker_denied=True,
    )
    own = SimMessage("air-0001", "air", "devices/air-0001/air", payload, now, 0.0)
    report = publish_all([forged, own], stack, fast=True)
    assert report.acknowledged == 1
    assert report.denied == 1
    received = subscriber.wait_for({(own.topic, own.payload)}, 10)
    assert (own.topic, own.payload) in received
    assert (forged.topic, forged.payload) not in received


def test_fast_bulk_mode_bounds_the_window(stack: Settings, registry: Registry) -> None:
    air = registry.of_kind("air")[:20]
    now = datetime.now(UTC)
    messages = [
        SimMessage(
            d.id,
            "air",
            f"devices/{d.id}/air",
            f'{{"v":1,"ts":{int(now.timestamp() * 1000) - i},"pm2_5_ugm3":9.5}}'.encode(),
            now,
            0.0,
        )
        for i in range(2000)
        for d in (air[i % len(air)],)
    ]
    report = publish_all(messages, stack, fast=True, window=200, client_window=10)
    assert report.acknowledged == 2000
    assert report.failed == 0
    assert report.devices == 20
    assert report.latency.count == 2000


def test_an_unreachable_broker_is_a_clear_error(stack: Settings) -> None:
    closed = stack.model_copy(update={"mqtt": stack.mqtt.model_copy(update={"port": 1})})
    now = datetime.now(UTC)
    message = SimMessage("air-0001", "air", "devices/air-0001/air", b"{}", now, 0.0)
    with pytest.raises(PublishError, match=r"cannot reach Mosquitto at 127\.0\.0\.1:1"):
        publish_all([message], closed, fast=True)
