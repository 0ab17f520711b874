"""The live hub's state and fan-out, without I/O: alert messages, readings, levels, health,
acknowledgements; replay by Last-Event-ID; bounded client queues; the rate limiter."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from api.livehub import AckFailedError, ClientTooSlowError, LiveHub, RateLimiter, Subscription
from civic_iot.contracts.processing import TownshipReport
from civic_iot.contracts.readings import AirPayload, Location, Reading
from civic_iot.registry import Device, Registry, Township
from civic_iot.settings import ApiSettings, Settings
from tests.unit.alerts.factories import candidate
from tests.unit.api.live_factories import cancel_json, message_json, quake_message

TOWNS = (
    Township(code="65000020", name="Sanchong District", lat=25.062, lon=121.488),
    Township(code="63000010", name="Songshan District", lat=25.05, lon=121.558),
)
DEVICES = (
    Device(id="air-0001", kind="air", lat=25.06, lon=121.49, township="65000020"),
    Device(id="air-0002", kind="air", lat=25.05, lon=121.55, township="63000010"),
    Device(
        id="flood-0001", kind="water", sensor="flood", lat=25.06, lon=121.48, township="65000020"
    ),
)


def make_hub(**api: object) -> LiveHub:
    settings = Settings(api=ApiSettings(**api))  # type: ignore[arg-type]
    return LiveHub(settings, registry=Registry(townships=TOWNS, devices=DEVICES), clock=lambda: 1e9)


def drain(hub: LiveHub, sub: Subscription) -> list[tuple[str, dict[str, Any]]]:
    """Every event queued for ``sub`` now (name, data)."""
    out = []
    while not sub._queue.empty():
        ev = sub._queue.get_nowait()
        out.append((ev.name, json.loads(ev.data)))
    return out


def reading_record(device: Device, value: float = 12.0) -> bytes:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    return Reading(
        reading_id=f"{device.id}:1",
        device_id=device.id,
        kind="air",
        event_time=t,
        received_at=t,
        location=Location(lat=device.lat, lon=device.lon, township=device.township),
        data=AirPayload(ts=t, pm2_5_ugm3=value),
    ).to_record()


# --------------------------------------------------------------------------- alerts


def test_replayed_messages_rebuild_state_silently_then_live_ones_are_pushed() -> None:
    hub = make_hub()
    sub, _ = hub.subscribe(["alerts", "quakes"])
    flood, state = message_json(candidate(2, hazard="flood"))
    hub.on_alert_message(flood, replay=True)
    assert list(hub.open_alerts) == [flood["alert_id"]]
    assert drain(hub, sub) == []

    quake, _, _ = quake_message()
    hub.on_alert_message(quake, replay=False)
    got = drain(hub, sub)
    assert [n for n, _ in got] == ["alert", "quake"]
    view = got[1][1]
    assert view["alert_id"] == quake["alert_id"]
    assert {t["code"] for t in view["townships"]} == {t.code for t in TOWNS}  # type: ignore[union-attr]
    assert view["cells"]
    assert {a["alert_id"] for a in hub.alerts_view()} == {flood["alert_id"], quake["alert_id"]}

    cancel = cancel_json(state, candidate(0, 10, hazard="flood"))
    hub.on_alert_message(cancel, replay=False)
    assert [a["alert_id"] for a in hub.alerts_view()] == [quake["alert_id"]]
    assert drain(hub, sub) == [("alert", {**cancel, "acknowledgements": []})]


def test_a_cancelled_quake_leaves_the_open_set_but_stays_on_the_panel() -> None:
    hub = make_hub()
    quake, event, state = quake_message()
    hub.on_alert_message(quake, replay=False)
    assert list(hub.quakes) == [quake["alert_id"]]
    closed = candidate(0, 0, hazard="earthquake", area_code=f"quake-{event.event_id}")
    hub.on_alert_message({**quake, "msg_type": "Cancel", "level": 0}, replay=False)
    assert hub.quakes == {}
    (view,) = hub.quakes_view()
    assert view["ended"] is True
    del closed, state


def test_filtered_subscription_gets_only_its_hazard() -> None:
    hub = make_hub()
    sub, _ = hub.subscribe(["alerts"], keys=["hazard:air_quality"])
    hub.on_alert_message(message_json(candidate(2, hazard="flood"))[0], replay=False)
    air, _ = message_json(candidate(2, hazard="air_quality"))
    hub.on_alert_message(air, replay=False)
    assert [d["alert_id"] for _, d in drain(hub, sub)] == [air["alert_id"]]


def test_acknowledgements_reported_by_storage_are_pushed_once() -> None:
    hub = make_hub()
    flood, _ = message_json(candidate(2, hazard="flood"))
    hub.on_alert_message(flood, replay=True)
    sub, _ = hub.subscribe(["alerts"])
    ack = {"alert_id": flood["alert_id"], "key": flood["key"], "by": "op", "at": "t", "note": ""}
    hub.set_acks({flood["alert_id"]: [ack]})
    hub.set_acks({flood["alert_id"]: [ack]})  # unchanged: nothing more
    assert drain(hub, sub) == [
        ("ack", {"alert_id": flood["alert_id"], "key": flood["key"], "acknowledgements": [ack]})
    ]
    assert hub.alerts_view()[0]["acknowledgements"] == [ack]


def test_acknowledgements_one_per_principal_and_never_taken_back() -> None:
    """An ack made in the console a moment ago is not lost to a read that predates its
    storage; the same principal again replaces its ack (as the alert service does)."""
    hub = make_hub()
    flood, _ = message_json(candidate(2, hazard="flood"))
    hub.on_alert_message(flood, replay=True)
    alert_id = flood["alert_id"]

    def ack(by: str, note: str) -> dict[str, Any]:
        return {"alert_id": alert_id, "key": flood["key"], "by": by, "at": "t", "note": note}

    hub.set_acks({alert_id: [ack("op", "seen")]}, only=[alert_id])
    hub.set_acks({})  # a read from before it was stored
    assert hub.acks[alert_id] == [ack("op", "seen")]
    hub.set_acks({alert_id: [ack("op", "on it"), ack("chief", "")]})
    assert hub.acks[alert_id] == [ack("op", "on it"), ack("chief", "")]
    hub.set_acks({"not-open": [ack("op", "")]})
    assert "not-open" not in hub.acks


def test_acknowledging_needs_the_hub_running() -> None:
    hub = make_hub()
    with pytest.raises(AckFailedError) as err:
        asyncio.run(hub.acknowledge("some-alert", "Bearer civ_x", "seen"))
    assert err.value.status == 503


# --------------------------------------------------------------------------- replay


def test_last_event_id_replays_what_was_missed() -> None:
    hub = make_hub()
    first, _ = hub.subscribe(["alerts"])
    hub.on_alert_message(message_json(candidate(2, hazard="flood"))[0], replay=False)
    seen = hub.event_id(hub.seq)
    air, _ = message_json(candidate(2, hazard="air_quality"))
    hub.on_alert_message(air, replay=False)
    hub.unsubscribe(first)
    _, missed = hub.subscribe(["alerts"], last_event_id=seen)
    assert missed is not None
    assert [json.loads(ev.data)["alert_id"] for ev in missed] == [air["alert_id"]]
    _, none = hub.subscribe(["alerts"], last_event_id=hub.event_id(hub.seq))
    assert none == []


@pytest.mark.parametrize("last", ["", "otherepoch-1", "garbage", "{epoch}-999"])
def test_a_foreign_or_future_id_gets_a_snapshot(last: str) -> None:
    hub = make_hub()
    _, replay = hub.subscribe(["alerts"], last_event_id=last.format(epoch=hub.epoch))
    assert replay is None


def test_an_id_older_than_the_ring_gets_a_snapshot() -> None:
    hub = make_hub(live_replay_events=10)
    hub.publish("devices", "devices", {"n": 0})
    old = hub.event_id(hub.seq)
    for i in range(10):
        hub.publish("devices", "devices", {"n": i + 1})
    # The ring holds the last 10: everything after ``old`` is still there.
    _, replay = hub.subscribe(["devices"], last_event_id=old)
    assert replay is not None
    assert len(replay) == 10
    hub.publish("devices", "devices", {"n": 11})  # now the first one after ``old`` is gone
    _, replay = hub.subscribe(["devices"], last_event_id=old)
    assert replay is None
    # Another stream's ring dropped nothing: its replay still works from the same id.
    _, other = hub.subscribe(["alerts"], last_event_id=old)
    assert other == []


# --------------------------------------------------------------------------- slow clients


def test_a_slow_client_is_cut_off_and_its_queue_freed() -> None:
    hub = make_hub(live_client_buffer=10)
    slow, _ = hub.subscribe(["devices"])
    fast, _ = hub.subscribe(["devices"])
    for i in range(25):
        hub.publish("devices", "devices", {"n": i})
        if i < 20:
            assert len(drain(hub, fast)) == 1
    assert slow.overflowed
    assert slow._queue.qsize() == 1  # only the marker: nothing kept for it
    assert hub.slow_clients == 1

    async def read() -> None:
        await slow.get(0.1)

    with pytest.raises(ClientTooSlowError):
        asyncio.run(read())
    assert not fast.overflowed


# --------------------------------------------------------------------------- devices


def test_readings_update_last_seen_and_are_decoded_only_for_subscribers() -> None:
    hub = make_hub()
    hub.on_reading_record("air", b"air-0001", b"not json", 5_000)  # nobody asked: not read
    assert hub.devices["air-0001"].last_seen_s == 5.0
    by_device, _ = hub.subscribe(["readings"], keys=["device:air-0001"])
    by_town, _ = hub.subscribe(["readings"], keys=["township:63000010"])
    hub.on_reading_record("air", b"air-0001", reading_record(DEVICES[0], 20.5), 6_000)
    hub.on_reading_record("air", b"air-0002", reading_record(DEVICES[1], 7.0), 6_000)
    (one,) = drain(hub, by_device)
    assert one[0] == "reading"
    assert one[1]["device_id"] == "air-0001"
    assert one[1]["data"]["pm2_5_ugm3"] == 20.5  # type: ignore[index]
    assert [d["device_id"] for _, d in drain(hub, by_town)] == ["air-0002"]
    assert hub.counts["air"] == 3
    hub.unsubscribe(by_device)
    hub.unsubscribe(by_town)
    assert not hub._want_devices
    assert not hub._want_towns


def test_levels_and_health_go_out_in_batches() -> None:
    hub = make_hub()
    hub.flush_batches()
    public, _ = hub.subscribe(["devices"])
    ops, _ = hub.subscribe(["health"])
    t = datetime(2026, 1, 1, tzinfo=UTC)
    for value in (30.0, 45.0):
        hub.on_township_report(
            TownshipReport(
                township="65000020",
                hazard="flood",
                device="flood-0001",
                level=2,
                value=value,
                metric="flood_depth_cm",
                threshold=30.0,
                event_time=t,
            )
        )
    hub.set_health({"air-0002": {"stuck": ("pm2_5_ugm3 = 12 for 36 readings", 1.0)}})
    hub.flush_batches()
    ((name, body),) = drain(hub, public)
    assert name == "devices"
    (dev,) = body["devices"]  # type: ignore[misc]
    assert (dev["id"], dev["level"], dev["levels"]["flood"]["value"]) == ("flood-0001", 2, 45.0)
    assert drain(hub, ops) == [
        (
            "health",
            {
                "devices": [
                    {"id": "air-0002", "issues": {"stuck": "pm2_5_ugm3 = 12 for 36 readings"}}
                ]
            },
        )
    ]
    hub.flush_batches()  # nothing changed since
    assert drain(hub, public) == []


# --------------------------------------------------------------------------- rate limiter


def test_rate_limiter_per_ip_open_streams_rate_and_total() -> None:
    now = [0.0]
    lim = RateLimiter(per_ip=2, per_minute=3, total=4, clock=lambda: now[0])
    assert lim.acquire("a") is None
    assert lim.acquire("a") is None
    assert "at most 2 streams" in (lim.acquire("a") or "")
    lim.release("a")
    assert lim.acquire("a") is None  # third new stream this minute: the last token
    lim.release("a")
    assert "a minute" in (lim.acquire("a") or "")
    assert lim.retry_after_s("a") >= 1
    now[0] = 20.0  # a third of a minute: one token back
    assert lim.acquire("a") is None
    assert lim.acquire("b") is None
    assert lim.acquire("c", public=False) is None  # operators: only the total counts
    assert "4 streams" in (lim.acquire("d") or "")
    assert lim.open_streams == 4


def test_a_device_heard_from_after_it_was_called_silent_is_not_silent() -> None:
    hub = make_hub()
    hub.on_reading_record("air", b"air-0001", b"", 50_000)  # heard at 50 s
    hub.set_health(
        {"air-0001": {"silent": ("no reading", 40.0)}, "air-0002": {"silent": ("", 40.0)}}
    )
    assert hub.devices["air-0001"].health == {}
    assert hub.devices["air-0002"].health == {"silent": ""}
    ops, _ = hub.subscribe(["health"])
    hub.on_reading_record("air", b"air-0002", b"", 60_000)
    hub.flush_batches()
    assert drain(hub, ops) == [("health", {"devices": [{"id": "air-0002", "issues": {}}]})]


def test_stopping_ends_every_stream() -> None:
    hub = make_hub()
    sub, _ = hub.subscribe(["alerts"])
    hub.publish("alerts", "alert", {"n": 1})

    async def stop_then_read() -> None:
        await hub.stop()
        with pytest.raises(ClientTooSlowError):
            await sub.get(1.0)

    asyncio.run(stop_then_read())
