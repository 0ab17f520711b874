"""Alert latency: candidate on Kafka -> MQTT message received, and -> webhook POST received.

Run by hand against the native stack (``deploy/stack.sh up``)::

    .venv/bin/python bench/alerts_latency.py --n 300 --rate 50

It creates its own topics (a ``bench-<id>-`` prefix), consumer group and InfluxDB bucket,
runs the alert service in this process with one JSON webhook subscriber (an aiohttp
receiver on 127.0.0.1) and one MQTT subscriber (user civic-subscriber), sends N candidates
for N distinct areas (each opens a new Alert), and prints p50/p99/max of:

- Kafka -> MQTT: the candidate acknowledged by Kafka -> the retained message received by
  the subscriber;
- Kafka -> webhook: the same start -> the POST received by the receiver.

Everything runs on one machine and, apart from paho's threads, one event loop, so the
figures include the service, the receivers and the producer competing for it. Retained
messages, topics and the bucket are removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from aiohttp import web
from aiokafka import AIOKafkaProducer
from influxdb_client.client.influxdb_client import InfluxDBClient
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from alerts.service import AlertService
from alerts.subscriptions import Subscription
from civic_iot.contracts.alerts import AlertCandidate
from civic_iot.kafka_admin import delete_topics, ensure_topics
from civic_iot.settings import Settings, get_settings, influx_token, mqtt_password
from civic_iot.topology import Topology

RESULTS = Path(__file__).resolve().parent / "results"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(name: str, ms: list[float], n: int) -> dict[str, float]:
    if not ms:
        print(f"{name:<18} no messages received of {n}")
        return {}
    row = {
        "received": len(ms),
        "p50_ms": pct(ms, 0.50),
        "p99_ms": pct(ms, 0.99),
        "max_ms": max(ms),
        "mean_ms": statistics.fmean(ms),
    }
    print(
        f"{name:<18} received {len(ms)}/{n}  p50 {row['p50_ms']:7.1f} ms  "
        f"p99 {row['p99_ms']:7.1f} ms  max {row['max_ms']:7.1f} ms"
    )
    return row


def mqtt_client(settings: Settings, user: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, mqtt_password(settings, user))
    return c


def subscribe_areas(
    settings: Settings, area_prefix: str, first_at: dict[str, float]
) -> mqtt.Client:
    """A subscriber to every air-quality alert area (started, subscribed): the time each
    area of this run (``area_prefix``...) first brought an alert goes to ``first_at``
    (also used by ``bench/live.py``)."""
    sub = mqtt_client(settings, "civic-subscriber")
    ready = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        area = msg.topic.rsplit("/", 1)[-1]
        if area.startswith(area_prefix) and msg.payload and area not in first_at:
            first_at[area] = time.time()

    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: ready.set()
    sub.connect(settings.mqtt.host, settings.mqtt.port)
    sub.loop_start()
    sub.subscribe(f"{Topology.of(settings).mqtt_alerts_root}/air_quality/+", qos=1)
    if not ready.wait(10):
        raise SystemExit("no SUBACK from Mosquitto for civic-subscriber")
    return sub


def clear_retained(settings: Settings, areas: Iterable[str]) -> None:
    """Leave no retained bench alerts on the broker: an empty retained message per area."""
    root = Topology.of(settings).mqtt_alerts_root
    pub = mqtt_client(settings, "civic-alerts")
    pub.connect(settings.mqtt.host, settings.mqtt.port)
    pub.loop_start()
    infos = [pub.publish(f"{root}/air_quality/{a}", b"", qos=1, retain=True) for a in areas]
    for info in infos:
        info.wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()


def bench_candidate(area: str, i: int) -> AlertCandidate:
    """The benches' alert candidate: an air-quality level 2 in area ``area``, now (also
    used by ``bench/live.py``)."""
    now = datetime.now(UTC)
    return AlertCandidate(
        hazard="air_quality",
        area_code=area,
        area_desc=f"Bench area {i}",
        level=2,
        severity="Moderate",
        headline=f"AQI high in bench area {i}",
        metric="aqi",
        value=160.0,
        threshold=100.0,
        event_time=now,
        detected_at=now,
        devices=("bench-aq",),
        geocodes=(area,),
    )


async def bench(n: int, rate: float, worst: int = 0) -> dict[str, object]:
    base = get_settings()
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench-{run_id}-"
    area_prefix = f"bench{run_id}"
    bucket = f"bench-alerts-{run_id}"
    settings = base.model_copy(
        update={
            "kafka": base.kafka.model_copy(update={"topic_prefix": prefix}),
            # The run's own bucket: written with the admin token.
            "influx": base.influx.model_copy(
                update={"bucket_alerts": bucket, "token": SecretStr(influx_token(base))}
            ),
            "alerts": base.alerts.model_copy(
                update={
                    "consumer_group": f"bench-{run_id}",
                    # The receiver below listens on 127.0.0.1 over http.
                    "webhook_allow_http": True,
                    "webhook_allowed_networks": ("127.0.0.0/8",),
                }
            ),
        }
    )
    await ensure_topics(settings.kafka.bootstrap, Topology.of(settings))
    influx = InfluxDBClient(url=base.influx.url, token=influx_token(base), org=base.influx.org)
    created = influx.buckets_api().create_bucket(bucket_name=bucket, org=base.influx.org)

    sent_at: dict[str, float] = {}
    mqtt_at: dict[str, float] = {}
    hook_at: dict[str, float] = {}

    sub = subscribe_areas(settings, area_prefix, mqtt_at)

    # Webhook receiver.
    async def hook(req: web.Request) -> web.Response:
        body = json.loads(await req.read())
        hook_at.setdefault(body["area"]["code"], time.time())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = int(runner.addresses[0][1])
    now = datetime.now(UTC)
    webhook = Subscription(
        id=str(uuid.uuid4()),
        owner="bench",
        url=f"http://127.0.0.1:{port}/hook",
        format="json",
        created_at=now,
        updated_at=now,
        nonce=uuid.uuid4().hex,
    )

    service = AlertService(settings)
    await service.start()
    # Through the store, as the API does: the webhook consumer reads it from Kafka.
    await service.subscriptions.put(webhook)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    await producer.start()
    topic = Topology.of(settings).candidates
    try:
        interval = 1.0 / rate
        start = time.monotonic()
        for i in range(n):
            area = f"{area_prefix}-{i:05d}"
            cand = bench_candidate(area, i)
            await producer.send_and_wait(
                topic, cand.model_dump_json().encode(), key=cand.key.encode()
            )
            sent_at[area] = time.time()
            await asyncio.sleep(max(0.0, start + (i + 1) * interval - time.monotonic()))
        deadline = time.monotonic() + 30
        # The receipts are written by paho's thread: poll them.
        while (len(mqtt_at) < n or len(hook_at) < n) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        await producer.stop()
        await service.stop()
        await runner.cleanup()
        sub.disconnect()
        sub.loop_stop()
        clear_retained(settings, sent_at)
        influx.buckets_api().delete_bucket(created)
        influx.close()
        await delete_topics(settings.kafka.bootstrap, Topology.of(settings))

    to_mqtt = [(mqtt_at[a] - t) * 1000 for a, t in sent_at.items() if a in mqtt_at]
    to_hook = [(hook_at[a] - t) * 1000 for a, t in sent_at.items() if a in hook_at]
    print(f"alerts latency: {n} candidates at {rate:g}/s, one new Alert each")
    if worst:
        # When the slow ones cluster at regular send times, look at the broker (autosave).
        t0 = min(sent_at.values())
        slow = sorted(
            ((mqtt_at[a] - t) * 1000, t - t0, a) for a, t in sent_at.items() if a in mqtt_at
        )[-worst:]
        for ms, offset, area in reversed(slow):
            print(f"  slow MQTT: {ms:7.1f} ms  sent at +{offset:5.2f} s  {area}")
    return {
        "n": n,
        "rate_per_s": rate,
        "at": datetime.now(UTC).isoformat(),
        "kafka_to_mqtt": summary("Kafka -> MQTT", to_mqtt, n),
        "kafka_to_webhook": summary("Kafka -> webhook", to_hook, n),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="candidates to send")
    parser.add_argument("--rate", type=float, default=50.0, help="candidates per second")
    parser.add_argument("--worst", type=int, default=0, help="list the K slowest MQTT messages")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    result = asyncio.run(bench(args.n, args.rate, args.worst))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "alerts_latency.json"
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"written {out}")


if __name__ == "__main__":
    main()
