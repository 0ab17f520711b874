"""The alert service against real Kafka, Mosquitto, InfluxDB and real HTTP receivers.

Each test gets its own Kafka topics (a ``t-<id>-`` prefix), consumer group, InfluxDB bucket
and MQTT area, so tests never see each other's alerts. Receivers are aiohttp servers
started here on 127.0.0.1 with an ephemeral port.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord
from influxdb_client.client.influxdb_client import InfluxDBClient
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from alerts.cap import parse_cap
from alerts.delivery import MESSAGE_ID_HEADER
from alerts.http import HttpServer, ack_via_http
from alerts.lifecycle import HazardTiming, LifecycleConfig
from alerts.service import AlertService, deadletter_topic, replay_state
from alerts.signing import SIGNATURE_HEADER, verify
from alerts.subscriptions import Subscription
from civic_iot.events import AlertCandidate, Hazard
from civic_iot.kafka_setup import ensure_topics
from civic_iot.settings import Settings, influx_token, mqtt_password
from civic_iot.topics import Topics

pytestmark = pytest.mark.integration

SECRET = "test-webhook-secret"
HAZARDS: tuple[Hazard, ...] = ("air_quality", "flood", "river", "rain", "debris_flow", "earthquake")


def short_lifecycle(clear_hold_s: float) -> LifecycleConfig:
    """Hold times of seconds instead of minutes, for every hazard."""
    timing = HazardTiming(
        deescalate_hold_s=clear_hold_s, clear_hold_s=clear_hold_s, expire_after_s=600
    )
    return LifecycleConfig(
        sender="alerts-test@civic-iot.example", timings=dict.fromkeys(HAZARDS, timing)
    )


# --------------------------------------------------------------------------- environment


@pytest.fixture
def env(stack: Settings, unique: str) -> Iterator[Settings]:
    """Settings for one test: own topics, consumer group and bucket; fast timers and retries."""
    prefix = f"t-{unique}-"
    bucket = f"t-alerts-{unique}"
    settings = stack.model_copy(
        update={
            "kafka": stack.kafka.model_copy(update={"topic_prefix": prefix, "partitions": 2}),
            "influx": stack.influx.model_copy(update={"bucket_alerts": bucket}),
            "alerts": stack.alerts.model_copy(
                update={
                    "consumer_group": f"t-alerts-{unique}",
                    "tick_interval_s": 0.1,
                    "webhook_max_attempts": 4,
                    "webhook_timeout_s": 0.5,
                    "webhook_backoff_base_s": 0.05,
                    "webhook_backoff_cap_s": 0.2,
                    "mqtt_publish_timeout_s": 5.0,
                }
            ),
        }
    )
    asyncio.run(ensure_topics(settings.kafka))
    with InfluxDBClient(url=stack.influx.url, token=influx_token(stack), org=stack.influx.org) as c:
        created = c.buckets_api().create_bucket(bucket_name=bucket, org=stack.influx.org)
    try:
        yield settings
    finally:
        with InfluxDBClient(
            url=stack.influx.url, token=influx_token(stack), org=stack.influx.org
        ) as c:
            c.buckets_api().delete_bucket(created)
        asyncio.run(_delete_topics(settings, prefix))


async def _delete_topics(settings: Settings, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def candidate(area: str, level: int, *, hazard: Hazard = "flood", **over: Any) -> AlertCandidate:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "hazard": hazard,
        "area_code": area,
        "area_desc": f"Test area {area}",
        "level": level,
        "severity": ("Minor", "Minor", "Moderate", "Severe", "Extreme")[min(level, 4)],
        "headline": f"{hazard} level {level} in {area}",
        "metric": "flood_depth_cm",
        "value": 10.0 * level,
        "threshold": 10.0,
        "event_time": now,
        "detected_at": now,
        "devices": ("flood-t-01",),
        "geocodes": (area,),
    }
    return AlertCandidate(**(fields | over))


async def send_candidates(settings: Settings, *cands: AlertCandidate) -> float:
    """Produce candidates (keyed by hazard:area); returns the time the last was acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    await producer.start()
    try:
        for c in cands:
            await producer.send_and_wait(
                Topics.from_settings(settings.kafka).candidates,
                c.model_dump_json().encode(),
                key=c.key.encode(),
            )
        return time.time()
    finally:
        await producer.stop()


async def read_topic(settings: Settings, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` from the beginning to its current end."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        async with asyncio.timeout(20):
            while not consumer.assignment():  # noqa: ASYNC110 - aiokafka has no event for it
                await asyncio.sleep(0.05)
        tps = list(consumer.assignment())
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(20):
            while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                for recs in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend(recs)
        return out
    finally:
        await consumer.stop()


async def alert_messages(settings: Settings, key: str) -> list[dict[str, Any]]:
    """The JSON forms on the ``alerts`` topic for ``key``, in sent order."""
    recs = await read_topic(settings, Topics.from_settings(settings.kafka).alerts)
    values = [json.loads(r.value) for r in recs if r.value is not None]
    return sorted(
        (v["json"] for v in values if v["key"] == key), key=lambda j: (j["sent"], j["sequence"])
    )


def flux_rows(settings: Settings, measurement: str) -> list[dict[str, Any]]:
    """Pivoted rows of one measurement in the test's ``alerts`` bucket."""
    query = (
        f'from(bucket: "{settings.influx.bucket_alerts}") |> range(start: -1h) '
        f'|> filter(fn: (r) => r._measurement == "{measurement}") '
        '|> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
    )
    with InfluxDBClient(
        url=settings.influx.url, token=influx_token(settings), org=settings.influx.org
    ) as c:
        tables = c.query_api().query(query)
    return [dict(r.values) for t in tables for r in t.records]


async def wait_until(pred: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running(settings: Settings, **kwargs: Any) -> AsyncIterator[AlertService]:
    service = AlertService(settings, **kwargs)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


# --------------------------------------------------------------------------- MQTT subscriber


class Listener:
    """An agency's read-only MQTT subscriber (user civic-subscriber) on one topic filter."""

    def __init__(self, settings: Settings, topic: str, cid: str) -> None:
        self.messages: list[tuple[str, bytes, bool, float]] = []
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        user = "civic-subscriber"
        self._client.username_pw_set(user, mqtt_password(settings, user))
        connected, subscribed = threading.Event(), threading.Event()
        self._client.on_connect = lambda *_a: connected.set()
        self._client.on_subscribe = lambda *_a: subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(settings.mqtt.host, settings.mqtt.port)
        self._client.loop_start()
        assert connected.wait(10), "no CONNACK for civic-subscriber"
        self._client.subscribe(topic, qos=1)
        assert subscribed.wait(10), f"no SUBACK for {topic}"

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain), time.time()))

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(p) for _, p, _, _ in self.messages if p]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def clear_retained(settings: Settings, topic: str) -> None:
    """Leave no retained test message behind on the shared broker."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.username_pw_set("civic-alerts", mqtt_password(settings, "civic-alerts"))
    c.connect(settings.mqtt.host, settings.mqtt.port)
    c.loop_start()
    c.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


# --------------------------------------------------------------------------- HTTP receiver


@dataclass
class Hit:
    name: str
    headers: dict[str, str]
    body: bytes
    at: float
    answered: int


@dataclass
class Receiver:
    """Webhook endpoints ``/{name}``: ``fail_first[name]`` 500s then 200; ``hang`` never answers."""

    fail_first: dict[str, int] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    hits: list[Hit] = field(default_factory=list)
    port: int = 0

    async def handle(self, req: web.Request) -> web.Response:
        name = req.match_info["name"]
        body = await req.read()
        seen = sum(1 for h in self.hits if h.name == name)
        answered = 500 if seen < self.fail_first.get(name, 0) else 200
        if name in self.hang:
            answered = 0
        self.hits.append(Hit(name, dict(req.headers), body, time.time(), answered))
        if name in self.hang:
            await asyncio.sleep(30)
        return web.Response(status=answered)

    def of(self, name: str) -> list[Hit]:
        return [h for h in self.hits if h.name == name]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@asynccontextmanager
async def receiver(r: Receiver) -> AsyncIterator[Receiver]:
    app = web.Application()
    app.router.add_post("/{name}", r.handle)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    r.port = int(runner.addresses[0][1])
    try:
        yield r
    finally:
        await runner.cleanup()


def subscription(
    sub_id: str, url: str, area: str, fmt: str = "json"
) -> tuple[Subscription, SecretStr]:
    sub = Subscription(id=sub_id, url=url, townships=frozenset({area}), format=fmt, secret=SECRET)
    return sub, SecretStr(SECRET)


# --------------------------------------------------------------------------- tests


def test_retained_alert_for_late_subscriber_then_cleared_by_cancel(
    env: Settings, unique: str
) -> None:
    area = f"t{unique}"
    topic = f"alerts/flood/{area}"
    hold = 1.0

    async def run() -> None:
        async with running(env, lifecycle=short_lifecycle(hold), subscriptions=[]) as svc:
            await send_candidates(env, candidate(area, 2))
            await wait_until(lambda: len(svc.open_alerts()) == 1, 15, "the alert to open")
            await svc.mqtt.flush()

            # A subscriber that connects only now still sees what is open.
            late = Listener(env, topic, f"t-late-{unique}")
            try:
                await wait_until(lambda: bool(late.messages), 5, "the retained alert")
                t, payload, retained, _ = late.messages[0]
                body = json.loads(payload)
                assert (t, retained) == (topic, True)
                assert body["msg_type"] == "Alert"
                assert body["status"] == "Exercise"
                assert body["actual"] is False
                assert body["level"] == 2
                alert_id = body["alert_id"]

                cleared_at = await send_candidates(env, candidate(area, 0))
                await wait_until(lambda: len(late.messages) >= 3, 10, "the cancel and the clear")
            finally:
                late.close()
            _, cancel, cancel_retained, cancel_at = late.messages[1]
            assert json.loads(cancel)["msg_type"] == "Cancel"
            assert json.loads(cancel)["alert_id"] == alert_id
            assert cancel_retained is False
            assert cancel_at - cleared_at >= hold - 0.05, "cleared before the hold time"
            assert late.messages[2][1] == b"", "the retained alert was not cleared"

            # A subscriber that connects after the cancel sees nothing: nothing is open.
            after = Listener(env, topic, f"t-after-{unique}")
            await asyncio.sleep(1.0)
            after.close()
            assert after.messages == []

        # Every message sent is in the alerts topic and InfluxDB, with its MQTT delivery.
        sent = await alert_messages(env, f"flood:{area}")
        assert [m["msg_type"] for m in sent] == ["Alert", "Cancel"]
        assert sent[1]["references"][0]["identifier"] == sent[0]["identifier"]
        ids = {m["identifier"] for m in sent}
        alerts = flux_rows(env, "alert")
        assert {r["identifier"] for r in alerts} == ids
        assert all(r["area"] == area and r["status"] == "Exercise" for r in alerts)
        assert all(r["latency_ms"] >= 0 for r in alerts)
        deliveries = flux_rows(env, "delivery")
        assert {
            r["identifier"]
            for r in deliveries
            if r["channel"] == "mqtt" and r["outcome"] == "delivered"
        } == ids

    try:
        asyncio.run(run())
    finally:
        clear_retained(env, topic)


def test_flaky_receiver_gets_the_message_once_signed(env: Settings, unique: str) -> None:
    area = f"t{unique}"

    async def run() -> None:
        async with receiver(Receiver(fail_first={"flaky": 2})) as r:
            subs = [
                subscription("flaky", r.url("flaky"), area, "json"),
                subscription("cap", r.url("cap"), area, "cap"),
            ]
            async with running(env, lifecycle=short_lifecycle(60), subscriptions=subs) as svc:
                await send_candidates(env, candidate(area, 3))
                await wait_until(lambda: len(r.of("flaky")) >= 3, 15, "three POSTs to flaky")
                await svc.webhooks.flush()
                await asyncio.sleep(0.3)  # nothing more may arrive

        flaky = r.of("flaky")
        assert [h.answered for h in flaky] == [500, 500, 200]
        ok = [h for h in flaky if h.answered == 200]
        assert len(ok) == 1, "the message must be accepted exactly once"
        body = json.loads(ok[0].body)
        assert body["msg_type"] == "Alert"
        assert body["status"] == "Exercise"
        assert {h.headers[MESSAGE_ID_HEADER] for h in flaky} == {body["identifier"]}
        assert [h.headers["X-Civic-Delivery-Attempt"] for h in flaky] == ["1", "2", "3"]
        assert verify(SECRET, ok[0].body, ok[0].headers, now=time.time())
        assert not verify("wrong-secret", ok[0].body, ok[0].headers, now=time.time())
        assert ok[0].headers[SIGNATURE_HEADER].startswith("t=")

        [cap_hit] = r.of("cap")
        assert cap_hit.headers["Content-Type"].startswith("application/cap+xml")
        assert verify(SECRET, cap_hit.body, cap_hit.headers, now=time.time())
        cap = parse_cap(cap_hit.body)
        assert cap["identifier"] == body["identifier"]
        assert cap["status"] == "Exercise"
        assert cap["msgType"] == "Alert"

        # Retries and the final delivery are recorded.
        rows = [r for r in flux_rows(env, "delivery") if r["subscriber"] == "flaky"]
        assert sorted((r["outcome"], r["attempt"], r["status_code"]) for r in rows) == [
            ("delivered", 3, 200),
            ("retry", 1, 500),
            ("retry", 2, 500),
        ]

    asyncio.run(run())
    clear_retained(env, f"alerts/flood/{area}")


def test_hanging_receiver_does_not_delay_another_and_is_dead_lettered(
    env: Settings, unique: str
) -> None:
    areas = [f"t{unique}{i}" for i in range(3)]

    async def run() -> None:
        async with receiver(Receiver(hang={"hang"})) as r:
            subs = [
                (
                    Subscription(
                        id=name,
                        url=r.url(name),
                        townships=frozenset(areas),
                        format="json",
                        secret=SECRET,
                    ),
                    SecretStr(SECRET),
                )
                for name in ("hang", "fast")
            ]
            async with running(env, lifecycle=short_lifecycle(60), subscriptions=subs):
                latencies = []
                for i, area in enumerate(areas):
                    sent_at = await send_candidates(env, candidate(area, 2))
                    await wait_until(lambda i=i: len(r.of("fast")) > i, 10, f"fast POST {i}")
                    latencies.append(r.of("fast")[i].at - sent_at)
                    await asyncio.sleep(0.2)  # the hanging worker is now stuck on its POSTs
                # While "hang" holds its worker for 0.5 s per attempt, "fast" is unaffected.
                assert max(latencies) < 0.4, latencies
                assert len(r.of("hang")) >= 1
                await wait_until(
                    lambda: len(r.of("hang")) >= 4 * len(areas), 30, "every attempt to hang"
                )
                await asyncio.sleep(0.6)  # the last attempt times out

        dead = await read_topic(env, deadletter_topic(Topics.from_settings(env.kafka)))
        records = [json.loads(d.value) for d in dead if d.value is not None]
        assert {(d["subscriber"], d["attempts"]) for d in records} == {("hang", 4)}
        assert len(records) == len(areas)
        failed = [r for r in flux_rows(env, "delivery") if r["outcome"] == "failed"]
        assert {r["subscriber"] for r in failed} == {"hang"}
        assert len(failed) == len(areas)

    try:
        asyncio.run(run())
    finally:
        for area in areas:
            clear_retained(env, f"alerts/flood/{area}")


@pytest.mark.parametrize("group", ["same", "fresh"], ids=["same-group", "commits-lost"])
def test_restart_in_the_middle_no_duplicate_alert_and_cancel_kept(
    env: Settings, unique: str, group: str
) -> None:
    """Stop the service while a clear is pending; a new instance sends exactly the Cancel.

    ``commits-lost``: the new instance uses a fresh consumer group, so it re-reads every
    candidate from the start (as after a crash before the commit); still no second Alert.
    """
    area = f"t{unique}"
    topic = f"alerts/flood/{area}"
    hold = 2.5
    key = f"flood:{area}"

    async def run() -> None:
        async with receiver(Receiver()) as r:
            subs = [subscription("agency", r.url("agency"), area)]
            async with running(env, lifecycle=short_lifecycle(hold), subscriptions=subs) as a:
                await send_candidates(env, candidate(area, 2))
                await wait_until(lambda: len(a.open_alerts()) == 1, 15, "the alert to open")
                await send_candidates(env, candidate(area, 0))
                await wait_until(
                    lambda: a.state.records[key].zero_since is not None, 15, "the pending clear"
                )
            stopped_at = time.time()

            second = env
            if group == "fresh":
                second = env.model_copy(
                    update={
                        "alerts": env.alerts.model_copy(
                            update={"consumer_group": f"t-alerts-{unique}-b"}
                        )
                    }
                )
            async with running(second, lifecycle=short_lifecycle(hold), subscriptions=subs) as b:
                assert b.state.records[key].zero_since is not None, "pending clear lost"
                await wait_until(lambda: not b.open_alerts(), 15, "the cancel after restart")
                await b.webhooks.flush()
                await asyncio.sleep(0.5)  # a duplicate would have arrived by now
            assert time.time() - stopped_at < hold + 10

        sent = await alert_messages(env, key)
        assert [m["msg_type"] for m in sent] == ["Alert", "Cancel"]
        assert sent[1]["reason"] == "cleared"
        assert [json.loads(h.body)["msg_type"] for h in r.of("agency")] == ["Alert", "Cancel"]

        state_recs = await read_topic(env, Topics.from_settings(env.kafka).alert_state)
        state = replay_state([(x.key, x.value, 1) for x in state_recs])
        assert state.records[key].status == "closed"

    try:
        asyncio.run(run())
    finally:
        clear_retained(env, topic)


def test_ack_over_http_is_recorded_and_metrics_served(env: Settings, unique: str) -> None:
    area = f"t{unique}"
    key = f"flood:{area}"

    async def run() -> None:
        async with running(env, lifecycle=short_lifecycle(60), subscriptions=[]) as svc:
            http = HttpServer(svc, host="127.0.0.1", port=0)
            await http.start()
            base = f"http://127.0.0.1:{http.port}"
            try:
                await send_candidates(env, candidate(area, 2))
                await wait_until(lambda: len(svc.open_alerts()) == 1, 15, "the alert to open")
                alert_id = svc.open_alerts()[0].alert_id
                async with aiohttp.ClientSession() as s:
                    async with s.get(f"{base}/health") as resp:
                        assert resp.status == 200
                        assert (await resp.json())["status"] == "ok"
                    async with s.get(f"{base}/alerts") as resp:
                        [open_alert] = await resp.json()
                        assert open_alert["alert_id"] == alert_id
                        assert open_alert["acknowledgements"] == []

                    ack = await ack_via_http(base, alert_id, "duty-officer", "on it")
                    assert (ack["by"], ack["note"], ack["key"]) == ("duty-officer", "on it", key)

                    async with s.get(f"{base}/alerts") as resp:
                        [open_alert] = await resp.json()
                        assert [a["by"] for a in open_alert["acknowledgements"]] == ["duty-officer"]
                    async with s.post(f"{base}/alerts/nope/ack", json={"by": "x"}) as resp:
                        assert resp.status == 404
                    async with s.post(f"{base}/alerts/{alert_id}/ack", json={"note": "x"}) as resp:
                        assert resp.status == 400

                    # Acknowledged, not silenced: an escalation still goes out, showing the ack.
                    await send_candidates(env, candidate(area, 4))
                    await wait_until(
                        lambda: svc.open_alerts()[0].announced.level == 4, 15, "the escalation"
                    )
                    async with s.get(f"{base}/metrics") as resp:
                        text = await resp.text()
                assert 'civic_alerts_messages_total{msg_type="Alert"} 1.0' in text
                assert 'civic_alerts_messages_total{msg_type="Update"} 1.0' in text
                assert 'civic_alerts_alerts{state="open"} 1.0' in text
                assert "civic_alerts_latency_seconds_bucket" in text
                assert 'civic_alerts_deliveries_total{channel="mqtt",outcome="delivered"}' in text
            finally:
                await http.stop()

        state_recs = await read_topic(env, Topics.from_settings(env.kafka).alert_state)
        state = replay_state([(x.key, x.value, 1) for x in state_recs])
        assert [a.by for a in state.records[key].acks] == ["duty-officer"]
        sent = await alert_messages(env, key)
        assert [m["msg_type"] for m in sent] == ["Alert", "Update"]
        assert [a["by"] for a in sent[1]["acknowledgements"]] == ["duty-officer"]
        [ack_row] = flux_rows(env, "ack")
        assert (ack_row["alert_id"], ack_row["by"], ack_row["area"]) == (
            alert_id,
            "duty-officer",
            area,
        )

    try:
        asyncio.run(run())
    finally:
        clear_retained(env, f"alerts/flood/{area}")
