"""The alert service against real Kafka, Mosquitto, InfluxDB and real HTTP receivers.

Each test gets its own Kafka topics (a ``t-<id>-`` prefix, so also its own leader election
group), consumer group, InfluxDB bucket and MQTT area, so tests never see each other's
alerts. Receivers are aiohttp servers started here on 127.0.0.1 with an ephemeral port.
The election uses the broker's shortest session timeout (6 s) and a 0.5 s heartbeat, so
a takeover after a stop takes about a second and after a death about seven.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from alerts.cap import parse_cap
from alerts.http import AckError, HttpServer, ack_via_http
from alerts.lifecycle import HazardTiming, LifecycleConfig
from alerts.service import AlertService, replay_state
from alerts.signing import MESSAGE_ID_HEADER, SIGNATURE_HEADER, verify
from alerts.subscription_store import webhook_key
from alerts.subscriptions import Subscription, derive_secret
from civic_iot.auth import TokenStore
from civic_iot.contracts.alerts import AlertCandidate, Hazard
from civic_iot.contracts.storage import StorageDeadLetter
from civic_iot.kafka_admin import ensure_topics
from civic_iot.settings import Settings, influx_token, mqtt_password
from civic_iot.topology import Topology
from processors.detectors.intensity import intensity_ordinal
from processors.detectors.quake import distance_km, to_alert_candidate
from tests.unit.api.live_factories import quake_event

from .helpers import serve_posts, start_process

pytestmark = pytest.mark.integration

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
            # The test's own bucket: the alert service's token writes only the production
            # one, so this run writes with the admin token.
            "influx": stack.influx.model_copy(
                update={"bucket_alerts": bucket, "token": SecretStr(influx_token(stack))}
            ),
            "alerts": stack.alerts.model_copy(
                update={
                    "consumer_group": f"t-alerts-{unique}",
                    "tick_interval_s": 0.1,
                    "webhook_max_attempts": 4,
                    "webhook_timeout_s": 0.5,
                    "webhook_backoff_base_s": 0.05,
                    "webhook_backoff_cap_s": 0.2,
                    "mqtt_publish_timeout_s": 5.0,
                    # group.min.session.timeout.ms of the broker (6 s by default).
                    "session_timeout_s": 6.0,
                    "heartbeat_interval_s": 0.5,
                    # The receivers of these tests listen on 127.0.0.1, over http.
                    "webhook_allow_http": True,
                    "webhook_allowed_networks": ("127.0.0.0/8",),
                }
            ),
        }
    )
    asyncio.run(ensure_topics(settings.kafka.bootstrap, Topology.of(settings)))
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


async def send_candidates(
    settings: Settings, *cands: AlertCandidate, partition: int | None = None
) -> float:
    """Produce candidates (keyed by hazard:area; on ``partition`` if given, else the key's);
    returns the time the last was acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    await producer.start()
    try:
        for c in cands:
            await producer.send_and_wait(
                Topology.of(settings).candidates,
                c.model_dump_json().encode(),
                key=c.key.encode(),
                partition=partition,
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
    recs = await read_topic(settings, Topology.of(settings).alerts)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(pred: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def api_tokens(stack: Settings, unique: str) -> Iterator[dict[str, str]]:
    """A token per role for this test (principals ``agency-<id>``, ``duty-officer``,
    ``admin-<id>``), revoked at its end."""
    store = TokenStore.at(stack.tokens_file)
    issued = {
        "agency": store.issue(f"agency-{unique}", "agency", "integration test"),
        "operator": store.issue("duty-officer", "operator", "integration test"),
        "admin": store.issue(f"admin-{unique}", "admin", "integration test"),
    }
    try:
        yield {role: token for role, (_, token) in issued.items()}
    finally:
        store.revoke([record.id for record, _ in issued.values()])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def running(
    settings: Settings, *, subscriptions: list[Subscription] | None = None, **kwargs: Any
) -> AsyncIterator[AlertService]:
    """A started service, with ``subscriptions`` written to its store first."""
    service = AlertService(settings, **kwargs)
    await service.start()
    try:
        for sub in subscriptions or []:
            await service.subscriptions.put(sub)
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


def publish_marker(settings: Settings, topic: str) -> bytes:
    """Publish a unique, not retained marker on ``topic`` (as the alert service's account);
    a subscriber that got it has got whatever the broker had for it before."""
    marker = f"marker-{time.time_ns()}".encode()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.username_pw_set("civic-alerts", mqtt_password(settings, "civic-alerts"))
    c.connect(settings.mqtt.host, settings.mqtt.port)
    c.loop_start()
    c.publish(topic, marker, qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()
    return marker


def posted(r: Receiver, name: str, field: str) -> list[Any]:
    """``field`` of each JSON body POSTed to ``name``, in arrival order."""
    return [json.loads(h.body)[field] for h in r.of(name)]


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


def receiver(r: Receiver) -> AbstractAsyncContextManager[Receiver]:
    """The webhook receiver: ``/{name}`` is the subscription's name."""
    return serve_posts(r, "/{name}")


def sid(name: str) -> str:
    """The subscription id of the receiver endpoint ``name`` (stable within a test)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"civic-iot-test/{name}"))


def subscription(
    name: str, url: str, area: str | list[str], fmt: str = "json", owner: str = "agency-test"
) -> Subscription:
    now = datetime.now(UTC)
    areas = [area] if isinstance(area, str) else area
    return Subscription(
        id=sid(name),
        owner=owner,
        url=url,
        townships=frozenset(areas),
        format=fmt,  # type: ignore[arg-type]
        created_at=now,
        updated_at=now,
        nonce=uuid.uuid4().hex,
    )


def secret_of(settings: Settings, sub: Subscription) -> str:
    return derive_secret(webhook_key(settings), sub.id, sub.nonce).get_secret_value()


# --------------------------------------------------------------------------- tests


def test_retained_alert_for_late_subscriber_then_cleared_by_cancel(
    env: Settings, unique: str
) -> None:
    area = f"t{unique}"
    topic = f"{Topology.of(env).mqtt_alerts_root}/flood/{area}"
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
            # A retained message would reach it before a marker published after it
            # subscribed.
            after = Listener(env, topic, f"t-after-{unique}")
            marker = publish_marker(env, topic)
            await wait_until(lambda: bool(after.messages), 10, "the marker")
            after.close()
            assert [(p, retained) for _, p, retained, _ in after.messages] == [(marker, False)]

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


def test_township_subscriber_gets_the_quake_with_intensity_and_countdown(
    env: Settings, unique: str
) -> None:
    """An agency subscribed to ``alerts/earthquake/<township>`` gets the earthquake: the
    township's expected intensity and the seconds left until the S wave (issue 12)."""
    root = Topology.of(env).mqtt_alerts_root
    event, cfg = quake_event()
    origin = time.time() - 1.0  # the quake began a second ago: the S wave is on its way
    now = datetime.now(UTC)
    cand = to_alert_candidate(event, detected_at=now, config=cfg)
    cand = cand.model_copy(
        update={
            "area_code": f"quake-t{unique}",
            "event_time": now,
            "evidence": cand.evidence
            | {"origin_time": datetime.fromtimestamp(origin, UTC).isoformat()},
        }
    )
    far_code = "T-MID"  # tens of km from the epicentre: seconds of warning
    assert far_code in cand.geocodes
    listener = Listener(env, f"{root}/earthquake/{far_code}", f"t-town-{unique}")

    async def run() -> None:
        async with running(env, lifecycle=short_lifecycle(60.0), subscriptions=[]):
            await send_candidates(env, cand)
            await wait_until(lambda: bool(listener.messages), 10, "the township's warning")

    try:
        asyncio.run(run())
    finally:
        listener.close()
    topic, payload, retained, got_at = listener.messages[0]
    body = json.loads(payload)
    assert (topic, retained) == (f"{root}/earthquake/{far_code}", False)
    assert body["schema"] == "civic-iot.place-warning/1"
    assert (body["township"], body["msg_type"], body["status"]) == (far_code, "Alert", "Exercise")
    assert body["event"] == f"quake-t{unique}"
    # The township's highest reported cell, and its S arrival from the hypocentre at Vs.
    cells = [c for c in cand.cells if c.township == far_code]
    assert body["intensity"] == max((c.intensity for c in cells), key=intensity_ordinal)
    vs = cfg.association.vs_kms
    # No registry centroid for this test township: its cells place it.
    first = min(
        origin + math.hypot(distance_km(event.lat, event.lon, c.lat, c.lon), event.depth_km) / vs
        for c in cells
    )
    assert body["s_arrival_s"] == pytest.approx(first, abs=0.01)
    # Counted down from when it was published, before it reached the subscriber.
    assert 0 < body["seconds_left"] <= first - origin
    assert body["seconds_left"] >= first - got_at - 0.1


def test_flaky_receiver_gets_the_message_once_signed(env: Settings, unique: str) -> None:
    area = f"t{unique}"

    subs: list[Subscription] = []

    async def run() -> None:
        async with receiver(Receiver(fail_first={"flaky": 2})) as r:
            subs[:] = [
                subscription("flaky", r.url("flaky"), area, "json"),
                subscription("cap", r.url("cap"), area, "cap"),
            ]
            async with running(env, lifecycle=short_lifecycle(60), subscriptions=subs):
                await send_candidates(env, candidate(area, 3))
                await wait_until(lambda: len(r.of("flaky")) >= 3, 15, "three POSTs to flaky")
                # Marker: the alert's escalation goes through the same subscriber queue
                # after the Alert; once it arrived, a repeated POST of the Alert would have.
                await send_candidates(env, candidate(area, 4))
                await wait_until(
                    lambda: "Update" in posted(r, "flaky", "msg_type"), 15, "the marker Update"
                )
                await wait_until(lambda: len(r.of("cap")) >= 2, 15, "the marker Update (cap)")

        alert_ident = r.of("flaky")[0].headers[MESSAGE_ID_HEADER]
        flaky = [h for h in r.of("flaky") if h.headers[MESSAGE_ID_HEADER] == alert_ident]
        assert [h.answered for h in flaky] == [500, 500, 200]
        ok = [h for h in flaky if h.answered == 200]
        assert len(ok) == 1, "the message must be accepted exactly once"
        body = json.loads(ok[0].body)
        assert body["msg_type"] == "Alert"
        assert body["status"] == "Exercise"
        assert {h.headers[MESSAGE_ID_HEADER] for h in flaky} == {body["identifier"]}
        assert [h.headers["X-Civic-Delivery-Attempt"] for h in flaky] == ["1", "2", "3"]
        secret = secret_of(env, subs[0])
        assert verify(secret, ok[0].body, ok[0].headers, now=time.time())
        assert not verify("wrong-secret", ok[0].body, ok[0].headers, now=time.time())
        assert ok[0].headers[SIGNATURE_HEADER].startswith("t=")

        [cap_hit] = [h for h in r.of("cap") if h.headers[MESSAGE_ID_HEADER] == alert_ident]
        assert cap_hit.headers["Content-Type"].startswith("application/cap+xml")
        assert verify(secret_of(env, subs[1]), cap_hit.body, cap_hit.headers, now=time.time())
        cap = parse_cap(cap_hit.body)
        assert cap["identifier"] == body["identifier"]
        assert cap["status"] == "Exercise"
        assert cap["msgType"] == "Alert"

        # Retries and the final delivery are recorded.
        rows = [
            r
            for r in flux_rows(env, "delivery")
            if r["subscriber"] == sid("flaky") and r["identifier"] == alert_ident
        ]
        assert sorted((r["outcome"], r["attempt"], r["status_code"]) for r in rows) == [
            ("delivered", 3, 200),
            ("retry", 1, 500),
            ("retry", 2, 500),
        ]

    asyncio.run(run())
    clear_retained(env, f"{Topology.of(env).mqtt_alerts_root}/flood/{area}")


def test_hanging_receiver_does_not_delay_another_and_is_dead_lettered(
    env: Settings, unique: str
) -> None:
    areas = [f"t{unique}{i}" for i in range(3)]

    async def run() -> None:
        async with receiver(Receiver(hang={"hang"})) as r:
            subs = [subscription(name, r.url(name), areas) for name in ("hang", "fast")]
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

        dead = await read_topic(env, Topology.of(env).alert_deadletter)
        records = [json.loads(d.value) for d in dead if d.value is not None]
        assert {(d["subscriber"], d["attempts"]) for d in records} == {(sid("hang"), 4)}
        assert len(records) == len(areas)
        # Each names the alerts record to send again.
        assert {d["source"]["topic"] for d in records} == {Topology.of(env).alerts}
        failed = [r for r in flux_rows(env, "delivery") if r["outcome"] == "failed"]
        assert {r["subscriber"] for r in failed} == {sid("hang")}
        assert len(failed) == len(areas)

    try:
        asyncio.run(run())
    finally:
        for area in areas:
            clear_retained(env, f"{Topology.of(env).mqtt_alerts_root}/flood/{area}")


@pytest.mark.parametrize("group", ["same", "fresh"], ids=["same-group", "commits-lost"])
def test_restart_in_the_middle_no_duplicate_alert_and_cancel_kept(
    env: Settings, unique: str, group: str
) -> None:
    """Stop the service while a clear is pending; a new instance sends exactly the Cancel.

    ``commits-lost``: the new instance uses a fresh consumer group, so it re-reads every
    candidate from the start (as after a crash before the commit); still no second Alert.
    """
    area = f"t{unique}"
    topic = f"{Topology.of(env).mqtt_alerts_root}/flood/{area}"
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
                # Marker: another hazard's alert in the same area, its candidate on the
                # flood candidates' partition: the new instance handles it after every
                # flood candidate it (re-)reads, and the agency's queue delivers it after
                # anything sent for the flood alert.
                cands = await read_topic(env, Topology.of(env).candidates)
                part = next(c.partition for c in cands if c.key == key.encode())
                await send_candidates(env, candidate(area, 2, hazard="river"), partition=part)
                await wait_until(
                    lambda: "river" in posted(r, "agency", "hazard"), 15, "the marker alert"
                )
            # The hold, the takeover, and the webhook consumer joining its group (the
            # broker delays a group's first rebalance by 3 s).
            assert time.time() - stopped_at < hold + 20

        sent = await alert_messages(env, key)
        assert [m["msg_type"] for m in sent] == ["Alert", "Cancel"]
        assert sent[1]["reason"] == "cleared"
        flood = [h for h in r.of("agency") if json.loads(h.body)["hazard"] == "flood"]
        if group == "fresh":
            # A fresh group is also a fresh webhook consumer group: it delivers the alerts
            # topic again (at least once); the receiver drops repeats by message id.
            first = {h.headers[MESSAGE_ID_HEADER]: h for h in reversed(flood)}
            flood = sorted(first.values(), key=lambda h: h.at)
        assert [json.loads(h.body)["msg_type"] for h in flood] == ["Alert", "Cancel"]

        state_recs = await read_topic(env, Topology.of(env).alert_state)
        state = replay_state([(x.key, x.value, 1) for x in state_recs])
        assert state.records[key].status == "closed"

    try:
        asyncio.run(run())
    finally:
        clear_retained(env, topic)
        clear_retained(env, f"{Topology.of(env).mqtt_alerts_root}/river/{area}")


def test_the_alert_paths_consumers_never_wait_long_for_an_empty_fetch(env: Settings) -> None:
    """The candidates' and the webhooks' consumers fetch with the warning path's wait:
    aiokafka leaves a partition with unconsumed records out of the next fetch, so a
    candidate that comes just after a fetch waits for that fetch to end (aiokafka's
    default: 0.5 s), as the processors' ticks did (settings.KafkaSettings)."""
    wait_ms = round(env.kafka.warning_fetch_wait_s * 1000)
    assert wait_ms <= 100

    async def run() -> None:
        async with running(env, lifecycle=short_lifecycle(60)) as service:
            await wait_until(lambda: service.role == "active", 30, "the service active")
            term = service._term
            assert term is not None
            assert term.consumer is not None
            webhooks = service.webhooks._consumer
            assert webhooks is not None
            for consumer in (term.consumer, webhooks):
                assert consumer._fetcher._fetch_max_wait_ms == wait_ms

    asyncio.run(run())


def test_ack_over_http_is_recorded_and_metrics_served(
    env: Settings, unique: str, api_tokens: dict[str, str]
) -> None:
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
                    agency = bearer(api_tokens["agency"])
                    async with s.get(f"{base}/alerts") as resp:
                        assert resp.status == 401  # no token
                    async with s.get(f"{base}/alerts", headers=agency) as resp:
                        [open_alert] = await resp.json()
                        assert open_alert["alert_id"] == alert_id
                        assert open_alert["acknowledgements"] == []

                    with pytest.raises(AckError, match="HTTP 403"):  # an agency may not
                        await ack_via_http(base, alert_id, "x", token=api_tokens["agency"])
                    with pytest.raises(AckError, match="HTTP 401"):
                        await ack_via_http(base, alert_id, "x", token="civ_nope")
                    ack = await ack_via_http(base, alert_id, "on it", token=api_tokens["operator"])
                    assert (ack["by"], ack["note"], ack["key"]) == ("duty-officer", "on it", key)

                    async with s.get(f"{base}/alerts", headers=agency) as resp:
                        [open_alert] = await resp.json()
                        assert [a["by"] for a in open_alert["acknowledgements"]] == ["duty-officer"]
                    operator = bearer(api_tokens["operator"])
                    unknown = "0b6c0f3e-9d55-4b7e-8f21-3c4d5e6f7a8b"
                    async with s.post(
                        f"{base}/alerts/{unknown}/ack", json={}, headers=operator
                    ) as resp:
                        assert resp.status == 404
                    async with s.post(
                        f"{base}/alerts/{key}/ack", json={}, headers=operator
                    ) as resp:
                        assert resp.status == 400  # the guessable key is not an alert id
                    async with s.post(
                        f"{base}/alerts/{alert_id}/ack", json={"by": "x"}, headers=operator
                    ) as resp:
                        assert resp.status == 400

                    # Acknowledged, not silenced: an escalation still goes out, showing the ack.
                    await send_candidates(env, candidate(area, 4))
                    await wait_until(
                        lambda: svc.open_alerts()[0].announced.level == 4, 15, "the escalation"
                    )
                    async with s.get(f"{base}/metrics", headers=agency) as resp:
                        assert resp.status == 403  # metrics are for operators
                    async with s.get(f"{base}/metrics", headers=operator) as resp:
                        text = await resp.text()
                assert 'civic_alerts_messages_total{msg_type="Alert"} 1.0' in text
                assert 'civic_alerts_messages_total{msg_type="Update"} 1.0' in text
                assert 'civic_alerts_alerts{state="open"} 1.0' in text
                assert "civic_alerts_latency_seconds_bucket" in text
                assert 'civic_alerts_deliveries_total{channel="mqtt",outcome="delivered"}' in text
            finally:
                await http.stop()

        state_recs = await read_topic(env, Topology.of(env).alert_state)
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
        clear_retained(env, f"{Topology.of(env).mqtt_alerts_root}/flood/{area}")


# --------------------------------------------------------------------------- several instances


async def metric_value(base: str, line_prefix: str, token: str) -> float | None:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{base}/metrics", headers=bearer(token)) as resp,
    ):
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def health(base: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(f"{base}/health") as resp:
        return resp.status, await resp.json()


def test_two_instances_one_active_one_alert(
    env: Settings, unique: str, api_tokens: dict[str, str]
) -> None:
    """Two instances started together: one is active, and a candidate gives one Alert."""
    area = f"t{unique}"
    key = f"flood:{area}"

    async def run() -> None:
        async with receiver(Receiver()) as r:
            subs = [subscription("agency", r.url("agency"), area)]
            services = [AlertService(env, lifecycle=short_lifecycle(60)) for _ in range(2)]
            https = [HttpServer(s, host="127.0.0.1", port=0) for s in services]
            try:
                await asyncio.gather(*(s.start() for s in services))
                for h in https:
                    await h.start()
                await services[0].subscriptions.put(subs[0])
                await wait_until(
                    lambda: all(s.subscriptions.get(subs[0].id) for s in services),
                    10,
                    "the subscription on both instances",
                )
                await wait_until(
                    lambda: sorted(s.role for s in services) == ["active", "standby"],
                    15,
                    "one active and one standby instance",
                )
                [active] = [s for s in services if s.role == "active"]
                [standby] = [s for s in services if s.role == "standby"]
                base_active = f"http://127.0.0.1:{https[services.index(active)].port}"
                base_standby = f"http://127.0.0.1:{https[services.index(standby)].port}"

                await send_candidates(env, candidate(area, 2))
                await wait_until(lambda: len(active.open_alerts()) == 1, 15, "the alert to open")
                await wait_until(lambda: len(r.of("agency")) >= 1, 10, "the webhook POST")
                # Marker: the alert's escalation, on the same key (so the same partition),
                # handled and POSTed after the Alert; a standby that consumed candidates
                # would have handled the Alert's candidate by then too.
                await send_candidates(env, candidate(area, 3))
                await wait_until(
                    lambda: "Update" in posted(r, "agency", "msg_type"), 15, "the marker Update"
                )
                assert standby.role == "standby"
                assert standby.state.records == {}, "a standby holds no lifecycle state"

                # The standby is healthy, says so, and refuses acknowledgements by name.
                status, body = await health(base_standby)
                assert (status, body["role"], body["open_alerts"]) == (200, "standby", None)
                status, body = await health(base_active)
                assert (status, body["role"], body["open_alerts"]) == (200, "active", 1)
                alert_id = active.open_alerts()[0].alert_id
                operator = api_tokens["operator"]
                with pytest.raises(AckError, match=r"HTTP 503: .*standby"):
                    await ack_via_http(base_standby, alert_id, token=operator)
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(f"{base_standby}/alerts", headers=bearer(operator)) as resp,
                ):
                    assert resp.status == 503
                    assert (await resp.json())["role"] == "standby"
                ack = await ack_via_http(base_active, alert_id, token=operator)
                assert ack["key"] == key

                # The role gauge; the standby has never been active (leadership is sticky).
                role = "civic_alerts_role{role="
                assert await metric_value(base_standby, role + '"standby"}', operator) == 1.0
                assert await metric_value(base_standby, role + '"active"}', operator) == 0.0
                assert await metric_value(base_active, role + '"active"}', operator) == 1.0
                took = await metric_value(base_standby, "civic_alerts_takeovers_total", operator)
                assert took == 0.0
            finally:
                for h in https:
                    await h.stop()
                await asyncio.gather(*(s.stop() for s in services))

        sent = await alert_messages(env, key)
        assert [m["msg_type"] for m in sent] == ["Alert", "Update"]
        assert posted(r, "agency", "msg_type") == ["Alert", "Update"]

    try:
        asyncio.run(run())
    finally:
        clear_retained(env, f"{Topology.of(env).mqtt_alerts_root}/flood/{area}")


async def escalate_on(leader: AlertService, env: Settings, area: str, alert_id: str) -> None:
    """After a takeover: the open alert was rebuilt, not re-issued; an escalation updates it."""
    key = f"flood:{area}"
    rebuilt = leader.state.records[key]
    assert (rebuilt.alert_id, rebuilt.status, rebuilt.sequence) == (alert_id, "open", 1)

    # The escalation is also the marker: the new leader handles it after any candidate
    # it re-reads, so a re-issued Alert would be on the topic before its Update.
    await send_candidates(env, candidate(area, 3))
    await wait_until(
        lambda: leader.open_alerts()[0].announced.level == 3, 15, "the escalation after takeover"
    )
    sent = await alert_messages(env, key)
    assert [m["msg_type"] for m in sent] == ["Alert", "Update"]
    assert sent[1]["alert_id"] == alert_id
    assert sent[1]["reason"] == "escalated"
    assert [ref["identifier"] for ref in sent[1]["references"]] == [sent[0]["identifier"]]


def test_standby_takes_over_when_the_active_stops(env: Settings, unique: str) -> None:
    area = f"t{unique}"

    async def run() -> None:
        a = AlertService(env, lifecycle=short_lifecycle(60))
        b = AlertService(env, lifecycle=short_lifecycle(60))
        try:
            await a.start()
            assert a.role == "active"
            await b.start()
            assert b.role == "standby"
            await wait_until(lambda: a.role == "active", 10, "the first instance active again")
            await send_candidates(env, candidate(area, 2))
            await wait_until(lambda: len(a.open_alerts()) == 1, 15, "the alert to open")
            alert_id = a.open_alerts()[0].alert_id

            stopped = time.monotonic()
            await a.stop()
            await wait_until(lambda: b.role == "active", 10, "the standby to take over")
            # Leaving the group hands over within about a heartbeat (0.5 s here).
            assert time.monotonic() - stopped < 5
            await escalate_on(b, env, area, alert_id)
        finally:
            await asyncio.gather(a.stop(), b.stop())

    try:
        asyncio.run(run())
    finally:
        clear_retained(env, f"{Topology.of(env).mqtt_alerts_root}/flood/{area}")


def test_standby_takes_over_when_the_active_is_killed(
    env: Settings, unique: str, tmp_path: Path
) -> None:
    """The active instance is a real process killed with SIGKILL: it never leaves the group."""
    area = f"t{unique}"
    key = f"flood:{area}"
    port = free_port()
    a = env.alerts
    child_env = {
        "CIVIC_KAFKA__TOPIC_PREFIX": env.kafka.topic_prefix,
        "CIVIC_INFLUX__BUCKET_ALERTS": env.influx.bucket_alerts,
        "CIVIC_INFLUX__TOKEN": influx_token(env),
        "CIVIC_ALERTS__CONSUMER_GROUP": a.consumer_group,
        "CIVIC_ALERTS__TICK_INTERVAL_S": str(a.tick_interval_s),
        "CIVIC_ALERTS__SESSION_TIMEOUT_S": str(a.session_timeout_s),
        "CIVIC_ALERTS__HEARTBEAT_INTERVAL_S": str(a.heartbeat_interval_s),
        "CIVIC_ALERTS__HTTP_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "alerts-a.log"
    proc = start_process(["alerts", "run"], child_env, log)

    async def run() -> None:
        base = f"http://127.0.0.1:{port}"

        async def child_role() -> str | None:
            try:
                return str((await health(base))[1].get("role"))
            except (aiohttp.ClientError, json.JSONDecodeError):
                return None

        deadline = time.monotonic() + 60
        while await child_role() != "active":
            assert proc.poll() is None, f"alerts process exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"never active: {log.read_text()[-2000:]}"
            await asyncio.sleep(0.2)

        async with running(env, lifecycle=short_lifecycle(60), subscriptions=[]) as b:
            assert b.role == "standby"
            await send_candidates(env, candidate(area, 2))
            deadline = time.monotonic() + 15
            while not (sent := await alert_messages(env, key)):
                assert time.monotonic() < deadline, "the child process issued no Alert"
                await asyncio.sleep(0.2)
            assert [m["msg_type"] for m in sent] == ["Alert"]
            # Its state record follows the message (killed in between, the next leader would
            # issue the Alert again, with the same identifier: the crash case of the module
            # doc, not the one tested here).
            state_topic = Topology.of(env).alert_state
            while not [x for x in await read_topic(env, state_topic) if x.key == key.encode()]:
                assert time.monotonic() < deadline, "the child process wrote no state"
                await asyncio.sleep(0.2)
            assert b.role == "standby"

            killed = time.monotonic()
            proc.kill()
            proc.wait(10)
            # Removed from the groups after the session timeout (6 s), then a heartbeat.
            await wait_until(lambda: b.role == "active", 20, "the standby to take over")
            took = time.monotonic() - killed
            assert a.session_timeout_s - 1 < took < a.session_timeout_s + 6, took
            await escalate_on(b, env, area, sent[0]["alert_id"])

    try:
        asyncio.run(run())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        clear_retained(env, f"{Topology.of(env).mqtt_alerts_root}/flood/{area}")


class FreezableClock:
    """The service's clock; ``freeze_next`` makes its next call block the calling thread.

    Called inside a lifecycle step, it freezes that service's event loop in the middle of
    the step, as a long GC pause, SIGSTOP or a suspended VM would: no heartbeats, no I/O.
    """

    def __init__(self) -> None:
        self._freeze_s = 0.0
        self.frozen = threading.Event()
        self.thawed = threading.Event()

    def freeze_next(self, seconds: float) -> None:
        self._freeze_s = seconds

    def __call__(self) -> datetime:
        if self._freeze_s:
            seconds, self._freeze_s = self._freeze_s, 0.0
            self.frozen.set()
            time.sleep(seconds)
            self.thawed.set()
        return datetime.now(UTC)


class ThreadedService:
    """An :class:`AlertService` on its own thread and event loop, so the test can freeze it."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

        async def make() -> AlertService:
            return AlertService(settings, **kwargs)

        self.service = asyncio.run_coroutine_threadsafe(make(), self.loop).result(10)

    async def call(self, fn: Callable[[AlertService], Any]) -> Any:
        """Await ``fn(service)`` on the service's own loop."""

        async def go() -> Any:
            return await fn(self.service)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(go(), self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def test_frozen_leader_writes_nothing_when_it_resumes(
    env: Settings, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The active instance freezes in the middle of a step, before its writes; the standby
    takes over and handles the candidate. When the frozen one resumes, the fence refuses
    its step: the Alert goes out once, from the new leader."""
    area = f"t{unique}"
    key = f"flood:{area}"
    clock = FreezableClock()
    # No timer on the frozen instance: only the candidate's step calls its clock.
    slow_tick = env.model_copy(
        update={"alerts": env.alerts.model_copy(update={"tick_interval_s": 3600.0})}
    )
    a = ThreadedService(slow_tick, lifecycle=short_lifecycle(60), clock=clock)
    caplog.set_level("WARNING", logger="alerts.service")

    async def run() -> None:
        await a.call(lambda s: s.start())
        assert a.service.role == "active"
        async with running(env, lifecycle=short_lifecycle(60), subscriptions=[]) as b:
            assert b.role == "standby"
            await wait_until(lambda: a.service.role == "active", 10, "the first instance active")
            clock.freeze_next(env.alerts.session_timeout_s + 5)
            await send_candidates(env, candidate(area, 2))
            await wait_until(clock.frozen.is_set, 15, "the frozen step")

            await wait_until(lambda: b.role == "active", 20, "the standby to take over")
            await wait_until(lambda: len(b.open_alerts()) == 1, 15, "the new leader's Alert")
            await wait_until(clock.thawed.is_set, 15, "the frozen instance to resume")
            await wait_until(lambda: a.service.role == "standby", 15, "the old leader to step down")
            # Its abandoned writes would have been made before it stepped down. It also
            # rejoins the group as a standby: the rebalance makes the new leader step down
            # and take over again (it keeps the partition, being the more recent holder).
            # Marker: the alert's escalation, handled by the leader once that is over.
            await send_candidates(env, candidate(area, 3))
            await wait_until(
                lambda: (
                    b.role == "active"
                    and len(b.open_alerts()) == 1
                    and b.open_alerts()[0].announced.level == 3
                ),
                30,
                "the new leader's escalation",
            )
            assert a.service.role == "standby"
            # Read now: a later rejoin of the old leader makes the new one step down and
            # take over again for a moment (no state while it does).
            alert_id = b.open_alerts()[0].alert_id

            sent = await alert_messages(env, key)
            assert [m["msg_type"] for m in sent] == ["Alert", "Update"]
            assert {m["alert_id"] for m in sent} == {alert_id}
            state = await read_topic(env, Topology.of(env).alert_state)
            # The Alert's and the Update's state, both the new leader's.
            mine = [x for x in state if x.key == key.encode()]
            assert len(mine) == 2, [(x.offset, x.timestamp, x.value) for x in mine]
            refused = [r for r in caplog.records if "leadership lost" in r.getMessage()]
            assert any(a.service.instance in r.getMessage() for r in refused), refused

    try:
        asyncio.run(run())
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(a.service.stop(), a.loop).result(30)
        a.close()
        clear_retained(env, f"{Topology.of(env).mqtt_alerts_root}/flood/{area}")


# --------------------------------------------------------------------------- storage


def test_alert_points_still_land_after_a_point_influxdb_refuses(env: Settings, unique: str) -> None:
    """An older tool stored ``ack`` notes as integers in this shard of the alerts bucket:
    InfluxDB refuses the service's ``ack`` point (field type conflict). It goes to
    ``storage.deadletter`` with InfluxDB's reason, is counted and reported on /health
    (still ok), and the alert points written after it land."""
    area = f"t{unique}"
    key = f"flood:{area}"
    with InfluxDBClient(url=env.influx.url, token=influx_token(env), org=env.influx.org) as c:
        c.write_api(write_options=SYNCHRONOUS).write(
            bucket=env.influx.bucket_alerts,
            record=f"ack,area=backfill,hazard=flood note=1i {time.time_ns()}",
        )

    async def run() -> None:
        async with running(env, lifecycle=short_lifecycle(60), subscriptions=[]) as svc:
            await send_candidates(env, candidate(area, 2))
            await wait_until(lambda: len(svc.open_alerts()) == 1, 15, "the alert to open")
            await svc.acknowledge(svc.open_alerts()[0].alert_id, "duty-officer", "on it")
            await wait_until(lambda: svc.points.deadletters == 1, 15, "the ack point refused")

            await send_candidates(env, candidate(area, 4))
            await wait_until(
                lambda: svc.open_alerts()[0].announced.level == 4, 15, "the escalation"
            )
            await wait_until(lambda: svc.points.pending == 0, 15, "the Update's point written")
            health = svc.health()
            assert health["status"] == "ok"
            assert health["storage"] == "ok"
            report = health["storage_deadletters"]["alerts"]
            assert (report["count"], report["last_reason_class"]) == (1, "type_conflict")
            labels = {"sink": "alerts", "reason": "type_conflict"}
            counted = svc.metrics.registry.get_sample_value(
                "civic_storage_deadletters_total", labels
            )
            assert counted == 1.0  # on the service's /metrics

        sent = await alert_messages(env, key)
        assert [m["msg_type"] for m in sent] == ["Alert", "Update"]
        rows = await asyncio.to_thread(flux_rows, env, "alert")
        assert {r["identifier"] for r in rows} == {m["identifier"] for m in sent}
        acks = await asyncio.to_thread(flux_rows, env, "ack")
        assert [r["area"] for r in acks] == ["backfill"]  # the service's ack is not stored
        recs = await read_topic(env, Topology.of(env).storage_deadletter)
        [dead] = [StorageDeadLetter.model_validate_json(r.value) for r in recs if r.value]
        assert dead.line.startswith(f"ack,area={area},hazard=flood ")
        assert 'note="on it"' in dead.line
        assert (dead.service, dead.sink) == ("alerts", "alerts")
        assert dead.bucket == env.influx.bucket_alerts
        assert (dead.reason_class, dead.status) == ("type_conflict", 422)
        assert 'input field "note" on measurement "ack" is type string' in dead.reason

    try:
        asyncio.run(run())
    finally:
        clear_retained(env, f"{Topology.of(env).mqtt_alerts_root}/flood/{area}")


def test_alert_points_wait_out_an_influxdb_outage_and_are_dead_lettered_at_stop(
    env: Settings, unique: str
) -> None:
    """InfluxDB unreachable: alerts still go out, their points wait in the sink (health
    reports it, still ok), and at the stop they go to ``storage.deadletter``, not away."""
    area = f"t{unique}"
    key = f"flood:{area}"
    influx = env.influx.model_copy(
        update={
            "url": f"http://127.0.0.1:{free_port()}",
            "write_backoff_base_s": 0.05,
            "write_backoff_cap_s": 0.2,
        }
    )
    down = env.model_copy(update={"influx": influx})

    async def run() -> None:
        async with running(down, lifecycle=short_lifecycle(60), subscriptions=[]) as svc:
            await send_candidates(env, candidate(area, 2))
            await wait_until(lambda: len(svc.open_alerts()) == 1, 15, "the alert to open")
            await wait_until(
                lambda: svc.health()["storage"] == "unavailable", 15, "storage unavailable"
            )
            await svc.mqtt.flush()
            health = svc.health()
            assert health["status"] == "ok"  # alerts go out: storage is reported, not judged
            assert health["storage_pending"] >= 1
            assert health["storage_deadletters"] == {}
            assert "alerts" in health["storage_failing_s"]

        [sent] = await alert_messages(env, key)
        recs = await read_topic(env, Topology.of(env).storage_deadletter)
        dead = [StorageDeadLetter.model_validate_json(r.value) for r in recs if r.value]
        assert {(d.reason_class, d.status, d.service) for d in dead} == {
            ("unavailable", 0, "alerts")
        }
        [alert] = [d for d in dead if d.measurement == "alert"]
        assert alert.line.startswith(f"alert,area={area},hazard=flood,msg_type=Alert,")
        assert f'identifier="{sent["identifier"]}"' in alert.line

    try:
        asyncio.run(run())
    finally:
        clear_retained(env, f"{Topology.of(env).mqtt_alerts_root}/flood/{area}")
