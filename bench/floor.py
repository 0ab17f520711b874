"""The Python floor of the processors worker: the same records through a bare aiokafka
consumer and batched InfluxDB writes, nothing else (run by bench/processors.py and
bench/taiwan.py in a process of its own; by hand for a look).

    .venv/bin/python bench/floor.py --group G --topics p.readings.air p.readings.water \\
        --bucket-readings B --bucket-seismic S --until-idle 5

Per record: split its lines, ``json.loads`` each, one line of line protocol per air or
water reading (its fields as sent, the device and township as tags) and, per seismic
packet, what the worker stores raw (:func:`processors.points.reading_points`'s raw
samples); lines are written in requests of 5,000 with aiohttp and the offsets committed
after each write: the commit-after-sink a bare consumer needs to lose nothing. It prints
one JSON line: readings, CPU seconds, wall seconds, latency (Kafka record -> written)
p50/p99 in ms, peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
from aiokafka import AIOKafkaConsumer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import pct  # noqa: E402
from civic_iot.contracts.readings import Reading, record_lines  # noqa: E402
from civic_iot.settings import get_settings, influx_token  # noqa: E402
from processors.points import reading_points  # noqa: E402

CHUNK = 5000


def raw_line(doc: dict[str, object]) -> str:
    data = doc["data"]
    loc = doc["location"]
    assert isinstance(data, dict)
    assert isinstance(loc, dict)
    fields = ",".join(f"{k}={v!r}" for k, v in data.items() if k not in ("v", "ts", "kind"))
    return (
        f"{doc['kind']},device={doc['device_id']},township={loc['township']} {fields},"
        f"lat={loc['lat']!r},lon={loc['lon']!r} {doc['reading_id'].split(':')[1]}"  # type: ignore[union-attr]
    )


async def run(args: argparse.Namespace) -> dict[str, float]:
    settings = get_settings()
    i = settings.influx
    headers = {"Authorization": f"Token {influx_token(settings)}"}
    url = f"{i.url.rstrip('/')}/api/v2/write?org={quote(i.org)}&precision=ns&bucket="
    consumer = AIOKafkaConsumer(
        *args.topics,
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    session = aiohttp.ClientSession()
    n = 0
    lat: list[float] = []
    cpu0 = time.process_time()
    t0 = idle_since = time.time()
    first: float | None = None
    last = t0
    try:
        while time.time() - idle_since < args.until_idle:
            batch = await consumer.getmany(timeout_ms=200, max_records=200)
            if not batch:
                continue
            if first is None:
                first, cpu0 = time.time(), time.process_time()
            idle_since = time.time()
            by_bucket: dict[str, list[str]] = {}
            stamps: list[int] = []
            for recs in batch.values():
                for rec in recs:
                    for line in record_lines(rec.value or b""):
                        doc = json.loads(line)
                        if doc["kind"] == "seismic":
                            r = Reading.model_validate(doc)
                            lines = [p.line() for p in reading_points(r, i)]
                            by_bucket.setdefault(args.bucket_seismic, []).extend(lines)
                        else:
                            by_bucket.setdefault(args.bucket_readings, []).append(raw_line(doc))
                        stamps.append(rec.timestamp)
            for bucket, lines in by_bucket.items():
                for k in range(0, len(lines), CHUNK):
                    body = "\n".join(lines[k : k + CHUNK]).encode()
                    async with session.post(url + quote(bucket), data=body, headers=headers) as r:
                        assert r.status < 300, await r.text()
            await consumer.commit()
            last = time.time()
            now_ms = last * 1000
            lat += [now_ms - s for s in stamps]
            n += len(stamps)
    finally:
        await session.close()
        await consumer.stop()
    cpu = time.process_time() - cpu0
    wall = last - (first or t0)
    return {
        "readings": n,
        "cpu_s": cpu,
        "wall_s": wall,
        "p50_ms": pct(lat, 0.5),
        "p99_ms": pct(lat, 0.99),
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--group", required=True)
    ap.add_argument("--topics", nargs="+", required=True)
    ap.add_argument("--bucket-readings", required=True)
    ap.add_argument("--bucket-seismic", required=True)
    ap.add_argument("--until-idle", type=float, default=5.0, help="stop after this long idle, s")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
