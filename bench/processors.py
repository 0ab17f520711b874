"""One processors worker against the real Kafka and InfluxDB, and the Python floor in the
same run (run by hand).

    .venv/bin/python bench/processors.py --air 50000 --water 10000 --stations 26 --seconds 60
    .venv/bin/python bench/processors.py --air 20000 --water 0 --stations 0 --profile w.prof
    .venv/bin/python bench/processors.py --air 20000 --water 0 --stations 0 --sample w.stacks
    .venv/bin/python bench/processors.py --rate 2000   # records/s, for latency below saturation
    CIVIC_PROCESSORS__ROLE=bulk .venv/bin/python bench/processors.py --trickle 45 --stations 0
    .venv/bin/python bench/processors.py --air 40000 --water 0 --stations 0 --workers 2 --no-floor

The workload is written to fresh topics (unique prefix) exactly as ingest writes it:
readings in arrival order, per batch of 1,000 messages one marked record per topic and
partition (:func:`ingest.service.readings_records`). Then, one after the other, on the
same records and temporary buckets (deleted at the end):

1. **the Python floor** (``bench/floor.py``): a bare aiokafka consumer that parses each
   reading and writes its raw point, batched, committing after each write;
2. **one worker** (``python -m processors.cli``): every detector, raw and derived points,
   township reports, ticks, candidates.

Each reports readings/s (first record fetched -> last committed after its points are
stored: the consumer group's committed offsets reach the end), CPU per reading (user +
sys of the process, /proc), peak RSS (VmHWM), latency Kafka record -> stored (the
worker: its own ``pipeline`` statistics, median of the 1 s p50s and max of the p99s; the
floor: per record), and the ratio ours/floor; and, from the worker's log, the
triggering packet -> earthquake candidate latency. The machine's load average is printed
with every figure: on a shared machine, CPU per reading is the figure to compare.
``--profile`` runs the worker under cProfile with a CPU-time clock, from its readiness on;
``--sample`` samples its stack instead every 4 ms of its CPU (``bench/sampler.py``, which
reports the samples): cProfile makes the machinery around the handlers (asyncio, faust,
aiokafka: many small calls) look twice its share, the sampler does not.

``--trickle S`` feeds the worker Taiwan's air and water readings at their real rate
instead (``--scale`` x 17,300 air devices once a minute and 1,000 water gauges every 10 s,
for ``S`` seconds, event times now), cut into records as ingest cuts them: what came in
each ``--ingest-period`` (0.02 s: ingest takes whatever its inbox holds, so at this rate
a record holds a reading or two) in one record per topic and partition. Set
``CIVIC_PROCESSORS__ROLE=bulk`` (and ``CIVIC_REGISTRY`` to the Taiwan registry of
``bench/taiwan.py registry``) to measure the bulk worker of ``bench/taiwan.py load``
without the rest of the stack: its CPU per reading at the trickle, where per-record and
per-batch costs weigh more than in a backlog.

``--workers N`` (scale-out: Kafka partitions shared by more workers in one consumer
group, each with its own static member id) starts the N workers first and waits until
every one has joined the group and is ready, then produces the records flat out: the
readings/s are from the first send to the last commit, the CPU is the sum of the workers'.
With more workers than the topics' partitions (``CIVIC_KAFKA__PARTITIONS``) the extra
ones idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiokafka import AIOKafkaProducer  # noqa: E402

from bench.common import (  # noqa: E402
    Buckets,
    Record,
    drop_topics,
    ingest_records,
    load,
    proc_cpu_s,
    proc_hwm_mib,
    produce,
    table,
    wait_committed,
)
from bench.sampler import WORKER as SAMPLED  # noqa: E402
from civic_iot.contracts.provenance import Marker  # noqa: E402
from civic_iot.contracts.readings import AirPayload, Location, Reading, WaterPayload  # noqa: E402
from civic_iot.kafka_admin import ensure_topics  # noqa: E402
from civic_iot.registry import load_registry  # noqa: E402
from civic_iot.settings import Settings, get_settings, influx_token, mark_key  # noqa: E402
from civic_iot.times import to_ns  # noqa: E402
from civic_iot.topology import READING_KINDS, Topology  # noqa: E402
from ingest.service import _send_grouped as send_grouped  # noqa: E402
from processors.app import processors_app_id  # noqa: E402
from simulator.waveforms import SimQuake, SimStation, synthesize_packets  # noqa: E402


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


#: Taiwan's air and water readings per second (``bench/taiwan.py``: 17,300 air devices once
#: a minute, 1,000 water gauges every 10 s).
TAIWAN_AIR_PER_S, TAIWAN_WATER_PER_S = 17_300 / 60, 1_000 / 10


def trickle_workload(
    settings: Settings, prefix: str, seconds: float, scale: float, period_s: float
) -> list[tuple[float, list[Record]]]:
    """``scale`` x Taiwan's air and water readings over ``seconds``, event times from now
    on, in arrival order, cut as ingest cuts them (a record per topic and partition of
    what came in each ``period_s``): (seconds from the start, records)."""
    air_s, water_s = TAIWAN_AIR_PER_S * scale, TAIWAN_WATER_PER_S * scale
    reg = load_registry(settings.registry)
    air, water = reg.of_kind("air"), reg.of_kind("water")
    start = datetime.now(UTC)
    due: list[tuple[float, str, Any]] = [
        (i / air_s, "air", air[i % len(air)]) for i in range(round(air_s * seconds))
    ] + [(j / water_s, "water", water[j % len(water)]) for j in range(round(water_s * seconds))]
    due.sort(key=lambda m: m[0])
    msgs = []
    for i, (at, kind, d) in enumerate(due):
        t = start + timedelta(seconds=at)
        data: Any = (
            AirPayload(ts=t, pm2_5_ugm3=20.0 + i % 50, pm10_ugm3=40.0, o3_ppb=30.0)
            if kind == "air"
            else WaterPayload(ts=t, rainfall_mm=1.0)
            if d.sensor == "rain"
            else WaterPayload(ts=t, flood_depth_cm=float(i % 20))
            if d.sensor == "flood"
            else WaterPayload(ts=t, water_level_m=3.0)
        )
        value = reading(d.id, d.lat, d.lon, d.township, t, data)
        msgs.append((f"{prefix}readings.{kind}", d.id, value))
    out: list[tuple[float, list[Record]]] = []
    k = 0
    for b in range(math.ceil(seconds / period_s)):
        end = (b + 1) * period_s
        chunk = []
        while k < len(msgs) and due[k][0] < end:
            chunk.append(msgs[k])
            k += 1
        if chunk:
            out.append((end, ingest_records(settings, chunk, batch=len(chunk))))
    return out


async def produce_paced(settings: Settings, batches: list[tuple[float, list[Record]]]) -> float:
    """Each batch's records at its time from now, as ingest sends them; returns the first
    send's time."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, linger_ms=5)
    mark = Marker(mark_key(settings))
    await producer.start()
    first = time.time()
    try:
        futures = []
        for at, records in batches:
            ahead = first + at - time.time()
            if ahead > 0:
                await asyncio.sleep(ahead)
            futures += await send_grouped(producer, records, mark)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return first


PROFILE = """
import cProfile, logging, sys, time
sys.argv = ["processors.cli"]
import runpy
prof = cProfile.Profile(time.process_time)


class Start(logging.Handler):
    # Profile from the worker's readiness on, as the CPU per reading is measured: the
    # start (imports, topic metadata: a shared broker holds thousands of topics) is not.
    def emit(self, record):
        if record.getMessage().startswith("worker ready"):
            prof.enable()


logging.getLogger("processors.app").addHandler(Start())
try:
    runpy.run_module("processors.cli", run_name="__main__")
finally:
    prof.disable()
    prof.dump_stats(PATH)
"""


def start_worker(
    env: dict[str, str], log: Path, profile: Path | None, sample: Path | None = None
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "processors.cli"]
    if profile is not None:  # the worker's main thread: its event loop, agents and detectors
        cmd = [sys.executable, "-c", PROFILE.replace("PATH", repr(str(profile)))]
    elif sample is not None:
        cmd = [sys.executable, "-c", SAMPLED.replace("PATH", repr(str(sample)))]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def start_workers(
    env: dict[str, str], logs: list[Path], profile: Path | None, sample: Path | None = None
) -> list[subprocess.Popen[bytes]]:
    """One worker per log, each its own static group member; returns once all are ready.

    A worker that joins makes the others rebalance; the last one to say ready has been
    through the group's final rebalance, and so have the others by then."""
    workers = [
        start_worker({**env, "CIVIC_PROCESSORS__INSTANCE": f"bench{i}"}, log, profile, sample)
        for i, log in enumerate(logs)
    ]
    for worker, log in zip(workers, logs, strict=True):
        while "worker ready" not in log.read_text(errors="replace"):
            assert worker.poll() is None, log.read_text()
            time.sleep(0.2)
    return workers


def run_floor(
    settings: Settings, env: dict[str, str], prefix: str, buckets: Buckets
) -> dict[str, Any]:
    topics = [Topology(prefix=prefix).readings(k) for k in READING_KINDS]
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "floor.py"), "--group", f"{prefix}floor",
         "--topics", *topics, "--bucket-readings", buckets.names["floor"],
         "--bucket-seismic", buckets.names["floor_seismic"], "--until-idle", "4"],
        env=env, cwd=REPO, capture_output=True, check=True, timeout=3600,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--air", type=int, default=50000)
    ap.add_argument("--water", type=int, default=10000)
    ap.add_argument("--stations", type=int, default=26)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=0.0, help="records/s (0: produce first)")
    ap.add_argument("--no-floor", action="store_true", help="skip the Python floor")
    ap.add_argument("--keep", action="store_true", help="keep the buckets and topics")
    ap.add_argument("--profile", type=Path, help="run the worker under cProfile, write here")
    ap.add_argument("--sample", type=Path, help="sample the worker's stacks, write here")
    ap.add_argument("--py-spy", type=Path, help="sample the worker with py-spy (raw), write here")
    ap.add_argument("--workers", type=int, default=1, help="workers in the group (scale-out)")
    ap.add_argument(
        "--trickle",
        type=float,
        default=0.0,
        help="s of Taiwan's air+water readings at their real rate, as ingest cuts them",
    )
    ap.add_argument("--scale", type=float, default=1.0, help="--trickle: share of Taiwan's fleet")
    ap.add_argument(
        "--ingest-period",
        type=float,
        default=0.02,
        help="--trickle: s of readings per ingest batch (ingest takes what came since its last)",
    )
    args = ap.parse_args()
    if args.trickle and (args.workers > 1 or args.rate):
        ap.error("--trickle: one worker, its own pace")
    if args.workers > 1 and (args.rate or args.profile or args.sample or args.py_spy):
        ap.error("--workers > 1 produces flat out after the workers joined; no --rate/profiles")

    base = get_settings()
    uid = uuid.uuid4().hex[:8]
    prefix = f"bench{uid}."
    kafka = base.kafka.model_copy(update={"topic_prefix": prefix})
    asyncio.run(
        ensure_topics(kafka.bootstrap, Topology(prefix=prefix, partitions=kafka.partitions))
    )
    buckets = Buckets(base, uid, ("readings", "seismic", "derived", "floor", "floor_seismic"))
    settings = base.model_copy(update={"kafka": kafka})
    paced: list[tuple[float, list[Record]]] = []
    if args.trickle:
        paced = trickle_workload(settings, prefix, args.trickle, args.scale, args.ingest_period)
        records = [r for _, rs in paced for r in rs]
        n_seis, n_aw = 0, sum(len(r[2].splitlines()) for r in records)
        messages: list[tuple[str, str, bytes]] = [("", "", b"")] * n_aw
    else:
        messages = workload(settings, prefix, args.air, args.water, args.stations, args.seconds)
        n_seis = sum(1 for m in messages if m[0].endswith("seismic"))
        n_aw = len(messages) - n_seis
        records = ingest_records(settings, messages)
    print(f"workload: {n_aw} air/water readings, {n_seis} seismic packets, "
          f"{len(records)} records; load {load()}", flush=True)  # fmt: skip

    logs = [Path(f"/tmp/bench-processors-{uid}-{i}.log") for i in range(args.workers)]
    env = {
        **os.environ,
        "CIVIC_KAFKA__TOPIC_PREFIX": prefix,
        **buckets.env(),
        "CIVIC_INFLUX__TOKEN": influx_token(base),  # the run's own buckets
        "CIVIC_PROCESSORS__WEB_PORT": "0",
        "CIVIC_PROCESSORS__STATS_INTERVAL_S": "1",
    }
    # The worker's consumer group: a role's own (``CIVIC_PROCESSORS__ROLE``, e.g. seismic).
    group = processors_app_id(Topology(prefix=prefix), settings.processors.role)
    reading_topics = [Topology(prefix=prefix).readings(k) for k in READING_KINDS]
    floor: dict[str, Any] | None = None
    try:
        # One worker: the records wait in Kafka, the worker starts on a full backlog.
        # Several: they join first (each join rebalances the others), then the records go.
        produce_first = args.rate == 0 and args.workers == 1 and not args.trickle
        t_first = asyncio.run(produce(settings, records, args.rate)) if produce_first else 0.0
        if not args.no_floor and produce_first:
            floor = run_floor(settings, env, prefix, buckets)
            print(f"floor done; load {load()}", flush=True)
        workers = start_workers(env, logs, args.profile, args.sample)
        worker = workers[0]
        load_start = load()
        spy = None
        if args.py_spy:
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(worker.pid),
                 "-r", "200", "-f", "raw", "-o", str(args.py_spy)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        cpu0 = sum(proc_cpu_s(w.pid) for w in workers)
        t0 = time.time()
        if paced:
            t_first = asyncio.run(produce_paced(settings, paced))
            t0 = t_first
        elif not produce_first:
            t_first = asyncio.run(produce(settings, records, args.rate))
            t0 = t_first
        t_done = asyncio.run(wait_committed(settings, group, reading_topics, 3600))
        cpu1 = sum(proc_cpu_s(w.pid) for w in workers)
        hwm = max(proc_hwm_mib(w.pid) for w in workers)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        load_end = load()
        time.sleep(2.5)  # one more statistics interval
        rows = buckets.client.query_api().query(
            f'from(bucket: "{buckets.names["derived"]}") |> range(start: 0) |> filter(fn: (r) => '
            'r._measurement == "pipeline" and (r._field == "latency_p50_ms" or '
            'r._field == "latency_p99_ms"))'
        )
        p50s = [r.get_value() for t in rows for r in t.records if r.get_field() == "latency_p50_ms"]
        p99s = [r.get_value() for t in rows for r in t.records if r.get_field() == "latency_p99_ms"]
        quake_ms = [float(m) for lg in logs for m in re.findall(
            r"quake candidate latency_ms=([\d.]+)", lg.read_text(errors="replace"))]  # fmt: skip
        stored = buckets.count("readings", "air", "lat") + buckets.count("readings", "water", "lat")
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(60)
    finally:
        if not args.keep:
            buckets.drop()
            drop_topics(settings, prefix)

    total = len(messages)
    wall = t_done - t0
    ours_cpu = (cpu1 - cpu0) / total * 1e6
    out = [
        ("readings (air+water / seismic packets), records",
         f"{n_aw} / {n_seis}, {len(records)} records"),
        ("air/water readings stored (raw) by the worker, of", f"{stored} of {n_aw}"),
        ("workers in the group", f"{args.workers}"),
        ("worker(s): readings/s, first fetch -> last committed", f"{total / wall:.0f}"),
        ("worker(s): CPU per reading, us (all workers)", f"{ours_cpu:.0f}"),
        ("worker: peak RSS (VmHWM), MiB (the largest)", f"{hwm:.0f}"),
        ("worker: latency record -> stored p50 / p99, ms",
         f"{statistics.median(p50s):.0f} / {max(p99s):.0f}" if p50s else "n/a"),
        ("worker: triggering packet -> quake candidate, ms (first / median)",
         f"{quake_ms[0]:.0f} / {statistics.median(quake_ms):.0f}" if quake_ms else "n/a"),
        ("load average at start / end of the worker's run", f"{load_start} / {load_end}"),
    ]  # fmt: skip
    if floor is not None:
        f_rate = floor["readings"] / floor["wall_s"]
        f_cpu = floor["cpu_s"] / floor["readings"] * 1e6
        out += [
            ("floor: readings/s", f"{f_rate:.0f}"),
            ("floor: CPU per reading, us", f"{f_cpu:.0f}"),
            ("floor: peak RSS, MiB", f"{floor['rss_mib']:.0f}"),
            ("floor: latency record -> written p50 / p99, ms",
             f"{floor['p50_ms']:.0f} / {floor['p99_ms']:.0f}"),
            ("ratio ours / floor: readings/s, CPU per reading",
             f"{total / wall / f_rate:.2f}, {ours_cpu / f_cpu:.1f}x"),
        ]  # fmt: skip
    print(table(out))
    print(f"worker log(s): {' '.join(map(str, logs))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
