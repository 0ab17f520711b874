"""Earthquake latency under an air backlog: one worker for everything, against a bulk
worker and a seismic worker of their own (``CIVIC_PROCESSORS__ROLE``). Run by hand.

    .venv/bin/python bench/quake_isolation.py --backlog 200000 --modes one split

For each mode, on fresh topics (unique prefix) and temporary buckets (deleted at the
end): ``--backlog`` air readings are written to ``readings.air`` as ingest writes them
(marked records of a partition's readings), the worker(s) started, and once they are
ready the registry's seismic stations send a packet a second in real time for
``--seconds``, with an M6 near them ``--origin`` seconds in (bench/processors.py's
quake), each second's packets written as ingest would (:func:`bench.common.ingest_records`).

It reports, from the seismic worker's log, the deciding packet's Kafka record ->
earthquake candidate latency (``quake candidate latency_ms``: the first is the
detection, later ones its updates), and the air backlog still unprocessed when the
seismic run ended (committed offsets of the bulk group): a backlog that outlasts the
quake is what makes the comparison. The machine's load is printed with the figures.
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
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import Buckets, Record, ingest_records, load, produce, table  # noqa: E402
from bench.processors import reading, workload  # noqa: E402
from civic_iot.contracts.provenance import Marker  # noqa: E402
from civic_iot.kafka_admin import ensure_topics  # noqa: E402
from civic_iot.registry import load_registry  # noqa: E402
from civic_iot.settings import Settings, get_settings, influx_token, mark_key  # noqa: E402
from civic_iot.topology import Topology  # noqa: E402
from ingest.service import _send_grouped  # noqa: E402
from processors.app import processors_app_id  # noqa: E402
from simulator.waveforms import SimQuake, SimStation, synthesize_packets  # noqa: E402

#: Records to send, by second of the seismic run.
Plan = dict[int, list[Record]]


def start(env: dict[str, str], log: Path, role: str) -> subprocess.Popen[bytes]:
    env = {**env, "CIVIC_PROCESSORS__ROLE": role, "CIVIC_PROCESSORS__INSTANCE": role}
    return subprocess.Popen(
        [sys.executable, "-m", "processors.cli"],
        env=env,
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def quake_plan(settings: Settings, seconds: float, origin_s: float) -> tuple[float, Plan]:
    """The registry's seismic stations, a packet a second each from a few seconds from
    now, as ingest would write each second's packets: (start, records by second)."""
    prefix = settings.kafka.topic_prefix
    reg = load_registry(settings.registry)
    seis = reg.of_kind("seismic")
    sim = {d.id: SimStation(d.id, d.lat, d.lon) for d in seis}
    towns = {d.id: d.township for d in seis}
    t0 = float(int(time.time()) + 5)
    quake = SimQuake(lat=24.8, lon=121.6, depth_km=10, magnitude=6.0, origin_s=t0 + origin_s)
    packets = synthesize_packets(
        list(sim.values()), start_s=t0, duration_s=seconds, quake=quake, seed=3
    )
    by_second: dict[int, list[tuple[str, str, bytes]]] = {}
    for p in packets:
        data = p.payload(decimals=3)
        st = sim[p.station_id]
        value = reading(st.station_id, st.lat, st.lon, towns[st.station_id], data.ts, data)
        second = int(data.ts.timestamp() - t0)
        by_second.setdefault(second, []).append((f"{prefix}readings.seismic", st.station_id, value))
    return t0, {k: ingest_records(settings, v) for k, v in by_second.items()}


async def send_when_due(settings: Settings, t0: float, plan: Plan) -> int:
    """Each second's records when its packets are complete; returns the records sent."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, linger_ms=1)
    mark = Marker(mark_key(settings))  # as ingest marks its records: the worker checks
    await producer.start()
    try:
        for second in sorted(plan):
            # A 1 s packet leaves the station when its last sample is taken.
            ahead = t0 + second + 1 - time.time()
            if ahead > 0:
                await asyncio.sleep(ahead)
            await asyncio.gather(*await _send_grouped(producer, plan[second], mark))
    finally:
        await producer.stop()
    return sum(len(v) for v in plan.values())


async def backlog_left(settings: Settings, group: str, topic: str) -> int:
    """Records of ``topic`` that ``group`` has not committed."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap)
    await admin.start()
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        end = await consumer.end_offsets(tps)
        done = await admin.list_consumer_group_offsets(group, partitions=tps)
        return sum(
            n - (done[tp].offset if tp in done and done[tp].offset >= 0 else 0)
            for tp, n in end.items()
        )
    finally:
        await consumer.stop()
        await admin.close()


def run_mode(base: Settings, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    uid = uuid.uuid4().hex[:8]
    prefix = f"bench{uid}."
    kafka = base.kafka.model_copy(update={"topic_prefix": prefix})
    topology = Topology(prefix=prefix, partitions=kafka.partitions)
    asyncio.run(ensure_topics(kafka.bootstrap, topology))
    settings = base.model_copy(update={"kafka": kafka})
    buckets = Buckets(base, uid)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    try:
        messages = workload(settings, prefix, args.backlog, 0, 0, 0)
        records = ingest_records(settings, messages)
        asyncio.run(produce(settings, records))
        env = {
            **os.environ,
            "CIVIC_KAFKA__TOPIC_PREFIX": prefix,
            **buckets.env(),
            "CIVIC_INFLUX__TOKEN": influx_token(base),  # the run's own buckets
            "CIVIC_PROCESSORS__WEB_PORT": "0",
            "CIVIC_PROCESSORS__STATS_INTERVAL_S": "5",
        }
        roles = ["all"] if mode == "one" else ["bulk", "seismic"]
        for role in roles:
            logs[role] = Path(f"/tmp/bench-quake-{uid}-{role}.log")
            procs[role] = start(env, logs[role], role)
        for role, proc in procs.items():
            while "worker ready" not in logs[role].read_text(errors="replace"):
                assert proc.poll() is None, logs[role].read_text()
                time.sleep(0.2)
        load_start = load()
        bulk_group = processors_app_id(topology, "all")
        at_quake = asyncio.run(backlog_left(settings, bulk_group, topology.readings("air")))
        t0, plan = quake_plan(settings, args.seconds, args.origin)
        packets = asyncio.run(send_when_due(settings, t0, plan))
        time.sleep(3)  # the last packets through the associator
        left = asyncio.run(backlog_left(settings, bulk_group, topology.readings("air")))
        seismic_log = logs["all" if mode == "one" else "seismic"]
        quake_ms = [
            float(m)
            for m in re.findall(
                r"quake candidate latency_ms=([\d.]+)", seismic_log.read_text(errors="replace")
            )
        ]
        return {
            "mode": mode,
            "packets": packets,
            "backlog": args.backlog,
            "records": len(records),
            "at_quake": at_quake,
            "left": left,
            "quake_ms": quake_ms,
            "load": f"{load_start} / {load()}",
            "logs": ", ".join(str(p) for p in logs.values()),
        }
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            proc.wait(60)
        buckets.drop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backlog", type=int, default=200_000, help="air readings waiting")
    ap.add_argument("--seconds", type=float, default=60.0, help="seismic run, s")
    ap.add_argument("--origin", type=float, default=25.0, help="quake origin into the run, s")
    ap.add_argument("--modes", nargs="+", default=["one", "split"], choices=["one", "split"])
    args = ap.parse_args()
    base = get_settings()
    for mode in args.modes:
        r = run_mode(base, mode, args)
        q = r["quake_ms"]
        rows = [
            ("mode", "one worker (role all)" if mode == "one" else "bulk + seismic workers"),
            ("air backlog: readings, records", f"{r['backlog']}, {r['records']}"),
            ("air readings unprocessed at the seismic run's start / end",
             f"{r['at_quake']} / {r['left']} (records)"),
            ("seismic records sent in real time (a second's packets each)", f"{r['packets']}"),
            ("deciding packet -> candidate, ms: detection",
             f"{q[0]:.0f}" if q else "no candidate"),
            ("  updates: median / max",
             f"{statistics.median(q[1:]):.0f} / {max(q[1:]):.0f}" if len(q) > 1 else "n/a"),
            ("load average at start / end", r["load"]),
            ("worker logs", r["logs"]),
        ]  # fmt: skip
        print(table(rows), flush=True)
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
