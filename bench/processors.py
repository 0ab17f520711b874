"""Benchmark one processors worker against the real Kafka and InfluxDB (run by hand).

    .venv/bin/python bench/processors.py --air 20000 --water 10000 --stations 27 --seconds 100
    .venv/bin/python bench/processors.py --rate 1000   # paced, for latency below saturation

Produces Reading JSON to fresh topics (unique prefix) and temporary buckets (deleted at the
end), runs one worker (``python -m processors.cli``) and reports:

* sustained readings/s into InfluxDB: from the first record produced to the last raw point
  visible (polling Flux counts);
* latency Kafka record timestamp -> points stored, p50/p99, as the worker measures it per
  record (``pipeline`` measurement, every second: median of the p50s, max of the p99s);
* triggering packet (its Kafka record timestamp) -> earthquake candidate handed to the
  producer, as the worker logs it (``quake candidate latency_ms``);
* worker CPU time (user + sys from /proc) per reading, and peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from influxdb_client.client.influxdb_client import InfluxDBClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from civic_iot.contracts.provenance import Marker  # noqa: E402
from civic_iot.contracts.readings import AirPayload, Location, Reading, WaterPayload  # noqa: E402
from civic_iot.kafka_admin import ensure_topics  # noqa: E402
from civic_iot.registry import load_registry  # noqa: E402
from civic_iot.settings import Settings, get_settings, influx_token, mark_key  # noqa: E402
from civic_iot.times import to_ns  # noqa: E402
from civic_iot.topology import Topology  # noqa: E402
from simulator.waveforms import SimQuake, SimStation, synthesize_packets  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def reading(dev_id: str, lat: float, lon: float, town: str, t: datetime, data: Any) -> bytes:
    return Reading(
        reading_id=f"{dev_id}:{to_ns(t)}",
        device_id=dev_id,
        kind=data.kind,
        event_time=t,
        received_at=t,
        location=Location(lat=lat, lon=lon, township=town),
        data=data,
    ).to_record()


def workload(settings: Settings, prefix: str, n_air: int, n_water: int, stations: int,
             seconds: float) -> list[tuple[str, str, bytes]]:  # fmt: skip
    reg = load_registry(settings.registry)
    air, water = reg.of_kind("air"), reg.of_kind("water")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
    out: list[tuple[str, str, bytes]] = []
    for i in range(n_air):
        d = air[i % len(air)]
        t = start + timedelta(seconds=60 * (i // len(air)))
        data = AirPayload(ts=t, pm2_5_ugm3=20.0 + i % 50, pm10_ugm3=40.0, o3_ppb=30.0)
        out.append(
            (f"{prefix}readings.air", d.id, reading(d.id, d.lat, d.lon, d.township, t, data))
        )
    for i in range(n_water):
        d = water[i % len(water)]
        t = start + timedelta(seconds=60 * (i // len(water)))
        w = (
            WaterPayload(ts=t, rainfall_mm=1.0)
            if d.sensor == "rain"
            else WaterPayload(ts=t, flood_depth_cm=float(i % 20))
            if d.sensor == "flood"
            else WaterPayload(ts=t, water_level_m=3.0)
        )
        out.append((f"{prefix}readings.water", d.id, reading(d.id, d.lat, d.lon, d.township, t, w)))
    # The seismic network replays an M6 in real packet order (one packet/s per station).
    seis = reg.of_kind("seismic")[:stations]
    sim = [SimStation(d.id, d.lat, d.lon) for d in seis]
    t0 = time.time() - seconds - 60
    quake = SimQuake(lat=24.8, lon=121.6, depth_km=10, magnitude=6.0, origin_s=t0 + 30)
    towns = {d.id: d.township for d in seis}
    packets = synthesize_packets(sim, start_s=t0, duration_s=seconds, quake=quake, seed=3)
    seismic = []
    for p in packets:
        data_s = p.payload(decimals=3)
        t = data_s.ts
        st = next(s for s in sim if s.station_id == p.station_id)
        seismic.append(
            (f"{prefix}readings.seismic", st.station_id,
             reading(st.station_id, st.lat, st.lon, towns[st.station_id], t, data_s))
        )  # fmt: skip
    # Interleave: the seismic stream arrives among the others, as in life.
    mixed: list[tuple[str, str, bytes]] = []
    step = max(1, len(out) // max(1, len(seismic)))
    it = iter(out)
    for s in seismic:
        mixed.append(s)
        for _ in range(step):
            nxt = next(it, None)
            if nxt is not None:
                mixed.append(nxt)
    mixed += list(it)
    return mixed


async def produce(settings: Settings, records: list[tuple[str, str, bytes]], rate: float) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, linger_ms=5,
                                max_batch_size=256 * 1024)  # fmt: skip
    mark = Marker(mark_key(settings))  # as ingest marks its records: the worker checks
    await producer.start()
    t_first = time.time()
    try:
        futs = []
        for i, (topic, key, value) in enumerate(records):
            if rate > 0:
                ahead = t_first + i / rate - time.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            headers = mark.headers(topic, key.encode(), value)
            futs.append(await producer.send(topic, value, key=key.encode(), headers=headers))
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
    return t_first


def proc_cpu_rss(pid: int) -> tuple[float, int]:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / CLK  # utime, stime (fields 14, 15)
    hwm = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return cpu, int(hwm.group(1)) if hwm else 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--air", type=int, default=20000)
    ap.add_argument("--water", type=int, default=10000)
    ap.add_argument("--stations", type=int, default=26)
    ap.add_argument("--seconds", type=float, default=100.0)
    ap.add_argument("--rate", type=float, default=0.0, help="records/s (0: as fast as possible)")
    ap.add_argument("--keep", action="store_true", help="keep the buckets")
    ap.add_argument("--profile", type=Path, help="run the worker under cProfile, write here")
    args = ap.parse_args()

    base = get_settings()
    uid = uuid.uuid4().hex[:8]
    prefix = f"bench{uid}."
    kafka = base.kafka.model_copy(update={"topic_prefix": prefix})
    asyncio.run(
        ensure_topics(kafka.bootstrap, Topology(prefix=prefix, partitions=kafka.partitions))
    )
    buckets = {b: f"bench{uid}-{b}" for b in ("readings", "seismic", "derived")}
    i = base.influx
    client = InfluxDBClient(url=i.url, token=influx_token(base), org=i.org, timeout=60_000)
    org = client.organizations_api().find_organizations(org=i.org)[0]
    for name in buckets.values():
        client.buckets_api().create_bucket(bucket_name=name, org_id=org.id)
    settings = base.model_copy(update={"kafka": kafka})
    records = workload(settings, prefix, args.air, args.water, args.stations, args.seconds)
    n_seis = sum(1 for r in records if r[0].endswith("seismic"))
    n_aw = len(records) - n_seis
    print(f"workload: {n_aw} air/water readings, {n_seis} seismic packets", flush=True)

    log = Path(f"/tmp/bench-processors-{uid}.log")
    env = {
        **os.environ,
        "CIVIC_KAFKA__TOPIC_PREFIX": prefix,
        "CIVIC_INFLUX__BUCKET_READINGS": buckets["readings"],
        "CIVIC_INFLUX__BUCKET_SEISMIC": buckets["seismic"],
        "CIVIC_INFLUX__BUCKET_DERIVED": buckets["derived"],
        "CIVIC_INFLUX__TOKEN": influx_token(base),  # the run's own buckets
        "CIVIC_PROCESSORS__WEB_PORT": "0",
        "CIVIC_PROCESSORS__STATS_INTERVAL_S": "1",
    }
    cmd = [sys.executable, "-m", "processors.cli"]
    if args.profile:  # the worker's main thread: its event loop, agents and detectors
        cmd[1:1] = ["-m", "cProfile", "-o", str(args.profile)]
    worker = subprocess.Popen(cmd, env=env, cwd=REPO,
                              stdout=log.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
    try:
        while "Ready" not in log.read_text(errors="replace"):
            assert worker.poll() is None, log.read_text()
            time.sleep(0.2)
        cpu0, _ = proc_cpu_rss(worker.pid)
        t_first = asyncio.run(produce(settings, records, args.rate))
        t_produced = time.time()

        def count(bucket: str, meas: str, field: str) -> int:
            rows = client.query_api().query(
                f'from(bucket: "{buckets[bucket]}") |> range(start: 0) |> filter(fn: (r) => '
                f'r._measurement == "{meas}" and r._field == "{field}") |> group() |> count()'
            )
            return int(rows[0].records[0].get_value()) if rows and rows[0].records else 0

        want_samples = sum(1 for r in records if r[0].endswith("seismic")) * 100
        deadline = time.time() + 1200
        while time.time() < deadline:
            done = (
                count("readings", "air", "lat") + count("readings", "water", "lat") >= n_aw
                and count("derived", "seismic_station", "pga_gal") >= n_seis
                and count("seismic", "seismic_sample", "z_gal") >= want_samples
            )
            if done:
                break
            time.sleep(0.5)
        t_last = time.time()
        cpu1, hwm = proc_cpu_rss(worker.pid)
        time.sleep(2.5)  # one more statistics interval
        rows = client.query_api().query(
            f'from(bucket: "{buckets["derived"]}") |> range(start: 0) |> filter(fn: (r) => '
            'r._measurement == "pipeline" and (r._field == "latency_p50_ms" or '
            'r._field == "latency_p99_ms"))'
        )
        p50s = [r.get_value() for t in rows for r in t.records if r.get_field() == "latency_p50_ms"]
        p99s = [r.get_value() for t in rows for r in t.records if r.get_field() == "latency_p99_ms"]
        quake_ms = [float(m) for m in re.findall(r"quake candidate latency_ms=([\d.]+)",
                                                 log.read_text(errors="replace"))]  # fmt: skip
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        if not args.keep:
            api = client.buckets_api()
            for name in buckets.values():
                b = api.find_bucket_by_name(name)
                if b is not None:
                    api.delete_bucket(b)
        client.close()

    total = len(records)
    wall = t_last - t_first
    rows_out = [
        ("records (air+water readings / seismic packets)", f"{n_aw} / {n_seis}"),
        ("raw points (incl. seismic samples)", f"{n_aw + want_samples}"),
        ("produce time, s", f"{t_produced - t_first:.1f}"),
        ("first produce -> last point visible, s", f"{wall:.1f}"),
        ("sustained records/s into InfluxDB", f"{total / wall:.0f}"),
        ("sustained points/s into InfluxDB", f"{(n_aw + want_samples) / wall:.0f}"),
        ("latency record -> stored p50, ms (median of 1 s p50s)",
         f"{statistics.median(p50s):.0f}" if p50s else "n/a"),
        ("latency record -> stored p99, ms (max of 1 s p99s)",
         f"{max(p99s):.0f}" if p99s else "n/a"),
        ("triggering packet -> quake candidate, ms (first / median)",
         f"{quake_ms[0]:.0f} / {statistics.median(quake_ms):.0f}" if quake_ms else "n/a"),
        ("worker CPU per record, ms", f"{(cpu1 - cpu0) * 1000 / total:.2f}"),
        ("worker peak RSS (VmHWM), MiB", f"{hwm / 1024:.0f}"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows_out)
    for k, v in rows_out:
        print(f"{k:<{width}}  {v}")
    print(f"worker log: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
