"""Live push latency: an alert on MQTT -> the same alert on the API's SSE stream.

Run by hand against the native stack (``deploy/stack.sh up``)::

    .venv/bin/python bench/live.py --n 200 --rate 20 --clients 50

It starts the alert service (``python -m ops.cli alerts run``) and the API (``python -m
ops.cli api run``) as separate processes on their own topics (a ``benchlive-<id>.`` prefix),
consumer group and InfluxDB bucket, as a deployment runs them; connects one MQTT
subscriber (user civic-subscriber), one SSE client on ``/live/alerts`` and ``--clients``
more SSE clients on ``/live/console`` (fan-out load, read but not timed); then sends N
candidates for N distinct areas (each opens a new Alert) and prints p50/p99/max of:

- Kafka -> MQTT: the candidate acknowledged by Kafka -> the alert received over MQTT;
- Kafka -> SSE: the same start -> the alert received on the SSE stream;
- MQTT -> SSE: per alert, SSE arrival minus MQTT arrival (the target: under 1 s).

The two paths leave the alert service together: it produces the message to the ``alerts``
topic (which the API consumes) before it publishes on MQTT. Topics, retained messages and
the bucket are removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from alerts_latency import bench_candidate, clear_retained, subscribe_areas, summary
from influxdb_client.client.influxdb_client import InfluxDBClient

from civic_iot.kafka_admin import delete_topics, ensure_topics
from civic_iot.settings import REPO_ROOT, get_settings, influx_token
from civic_iot.topology import Topology
from ops.pipeline import free_port

RESULTS = Path(__file__).resolve().parent / "results"


def spawn(module: str, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env={**os.environ, **env},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
        start_new_session=True,
    )


async def wait_healthy(url: str, procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"a process exited while waiting for {url}")
            with contextlib.suppress(httpx.HTTPError):
                if (await c.get(url, timeout=2)).status_code == 200:
                    return
            await asyncio.sleep(0.3)
    raise SystemExit(f"{url} not healthy after {timeout_s:.0f} s")


async def sse_reader(url: str, on_event: object, ready: asyncio.Event) -> None:
    """Read a stream until cancelled; call ``on_event(name, data)`` for each event."""
    async with httpx.AsyncClient(timeout=None) as c, c.stream("GET", url) as resp:
        name = ""
        async for line in resp.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                ready.set()
                on_event(name, line[6:])  # type: ignore[operator]


async def bench(n: int, rate: float, clients: int, log_dir: Path) -> dict[str, object]:
    base = get_settings()
    run_id = uuid.uuid4().hex[:8]
    prefix = f"benchlive-{run_id}."
    area_prefix = f"benchlive{run_id}"
    bucket = f"bench-live-{run_id}"
    settings = base.model_copy(
        update={"kafka": base.kafka.model_copy(update={"topic_prefix": prefix})}
    )
    topology = Topology.of(settings)
    await ensure_topics(settings.kafka.bootstrap, topology)
    influx = InfluxDBClient(url=base.influx.url, token=influx_token(base), org=base.influx.org)
    created = influx.buckets_api().create_bucket(bucket_name=bucket, org=base.influx.org)
    alerts_port, api_port = free_port(), free_port()
    env = {
        "CIVIC_KAFKA__TOPIC_PREFIX": prefix,
        "CIVIC_INFLUX__BUCKET_ALERTS": bucket,
        "CIVIC_ALERTS__HTTP_PORT": str(alerts_port),
        "CIVIC_API__PORT": str(api_port),
        "CIVIC_API__LIVE_STREAMS_PER_IP": str(clients + 10),
        "CIVIC_API__LIVE_CONNECTS_PER_MINUTE": str(clients + 10),
        "CIVIC_API__PUBLIC_BURST": str(clients + 10),
        "PYTHONUNBUFFERED": "1",
    }
    procs = [
        spawn("ops.cli", ["alerts", "run"], env, log_dir / "alerts.log"),
        spawn("ops.cli", ["api", "run"], env, log_dir / "api.log"),
    ]
    sent_at: dict[str, float] = {}
    mqtt_at: dict[str, float] = {}
    sse_at: dict[str, float] = {}
    console_events = [0]
    tasks: list[asyncio.Task[None]] = []
    sub: mqtt.Client | None = None
    try:
        await wait_healthy(f"http://127.0.0.1:{alerts_port}/health", procs, 60)
        await wait_healthy(f"http://127.0.0.1:{api_port}/health", procs, 60)

        sub = subscribe_areas(settings, area_prefix, mqtt_at)

        def on_alert(name: str, data: str) -> None:
            if name == "alert":
                area = json.loads(data)["area"]["code"]
                sse_at.setdefault(area, time.time())

        def on_console(_name: str, _data: str) -> None:
            console_events[0] += 1

        base_url = f"http://127.0.0.1:{api_port}"
        opened = [asyncio.Event() for _ in range(clients + 1)]
        tasks.append(
            asyncio.create_task(sse_reader(f"{base_url}/live/alerts", on_alert, opened[0]))
        )
        tasks += [
            asyncio.create_task(sse_reader(f"{base_url}/live/console", on_console, ev))
            for ev in opened[1:]
        ]
        await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in opened)), 30)

        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
        await producer.start()
        try:
            start = time.monotonic()
            for i in range(n):
                area = f"{area_prefix}-{i:05d}"
                cand = bench_candidate(area, i)
                await producer.send_and_wait(
                    topology.candidates, cand.model_dump_json().encode(), key=cand.key.encode()
                )
                sent_at[area] = time.time()
                await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
        finally:
            await producer.stop()
        deadline = time.monotonic() + 30
        while (len(mqtt_at) < n or len(sse_at) < n) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if sub is not None:
            sub.disconnect()
            sub.loop_stop()
        clear_retained(settings, sent_at)
        influx.buckets_api().delete_bucket(created)
        influx.close()
        await delete_topics(settings.kafka.bootstrap, topology)

    to_mqtt = [(mqtt_at[a] - t) * 1000 for a, t in sent_at.items() if a in mqtt_at]
    to_sse = [(sse_at[a] - t) * 1000 for a, t in sent_at.items() if a in sse_at]
    mqtt_to_sse = [(sse_at[a] - mqtt_at[a]) * 1000 for a in sent_at if a in sse_at and a in mqtt_at]
    print(
        f"live push: {n} candidates at {rate:g}/s, one new Alert each; "
        f"{clients} more SSE clients on /live/console ({console_events[0]} events read)"
    )
    return {
        "n": n,
        "rate_per_s": rate,
        "console_clients": clients,
        "at": datetime.now(UTC).isoformat(),
        "kafka_to_mqtt": summary("Kafka -> MQTT", to_mqtt, n),
        "kafka_to_sse": summary("Kafka -> SSE", to_sse, n),
        "mqtt_to_sse": summary("MQTT -> SSE", mqtt_to_sse, n),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="candidates to send")
    parser.add_argument("--rate", type=float, default=20.0, help="candidates per second")
    parser.add_argument("--clients", type=int, default=50, help="extra SSE clients (console)")
    args = parser.parse_args()
    log_dir = get_settings().data_dir / "logs" / f"bench-live-{int(time.time())}"
    log_dir.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(bench(args.n, args.rate, args.clients, log_dir))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "live.json"
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"written {out} (process logs in {log_dir})")


if __name__ == "__main__":
    main()
