"""CPU per reading of the processors' pure work, in one process, no I/O (run by hand).

    .venv/bin/python bench/handlers.py --kind air --readings 20000
    .venv/bin/python bench/handlers.py --kind water --readings 20000 --profile /tmp/h.prof
    .venv/bin/python bench/handlers.py --kind air --changelog
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        .venv/bin/python bench/handlers.py --kind air --readings 2000 --warm 200

What a worker does with a record's readings once Kafka has handed them over, minus Kafka
and InfluxDB: decode the record (ingest's batch record, each line validated as the worker
does; ``--trusted`` without), the kind's handler with the device's state, the township
aggregation of the batch's reports, every point encoded as line protocol. Readings come
from the registry's devices in turn, a device every 60 s (air) or 10 s (water) of event
time, values varying. ``--changelog`` adds what the worker writes to the tables'
changelogs after each batch: every device state the record changed, with its position,
encoded (:func:`processors.states.encode_value`).

It reports CPU time (``time.process_time``) per reading and the readings/s that makes,
peak memory (``ru_maxrss``), and the same for the floor: the same record decoded with
``json.loads`` and each reading encoded as one line of line protocol (what a bare
consumer that only stores readings would do). The garbage collector is set as a
worker sets it once ready (:func:`processors.app.settle_heap`). The work is deterministic, so an A/B
comparison is best made by instruction counts under callgrind (``--warm`` readings
first, so imports and first-use caches are not counted: callgrind counts the whole run;
compare two runs' totals) when the machine is shared; CPU time is what the other
figures say.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from civic_iot.contracts.processing import TownshipReport  # noqa: E402
from civic_iot.contracts.readings import (  # noqa: E402
    AirPayload,
    Location,
    Reading,
    WaterPayload,
    decode_record,
    record_lines,
    record_value,
)
from civic_iot.registry import Device, Registry, load_registry  # noqa: E402
from civic_iot.settings import InfluxSettings, get_settings  # noqa: E402
from civic_iot.storage.points import Point  # noqa: E402
from civic_iot.thresholds import load_thresholds  # noqa: E402
from civic_iot.times import to_ns  # noqa: E402
from processors.app import settle_heap  # noqa: E402
from processors.handlers import (  # noqa: E402
    Context,
    handle_air,
    handle_township_reports,
    handle_water,
)
from processors.states import (  # noqa: E402
    AirDevice,
    DeviceState,
    TownshipState,
    WaterDevice,
    encode_value,
)

BATCH = 500


def records(registry: Registry, kind: str, n: int, start: datetime) -> list[bytes]:
    """``n`` readings of ``kind`` as ingest's batch records of :data:`BATCH` readings."""
    devices = registry.of_kind("air" if kind == "air" else "water")
    step_s = 60 if kind == "air" else 10
    out: list[bytes] = []
    for i in range(n):
        d = devices[i % len(devices)]
        t = start + timedelta(seconds=step_s * (i // len(devices)))
        out.append(_reading(d, t, i).to_record())
    return [record_value(out[i : i + BATCH]) for i in range(0, n, BATCH)]


def _reading(d: Device, t: datetime, i: int) -> Reading:
    if d.kind == "air":
        data: AirPayload | WaterPayload = AirPayload(
            ts=t,
            pm2_5_ugm3=float(10 + (i * 7) % 60),
            pm10_ugm3=float(20 + i % 50),
            o3_ppb=float(20 + i % 40),
            temperature_c=25.0,
            humidity_pct=70.0,
        )
    elif d.sensor == "rain":
        data = WaterPayload(ts=t, rainfall_mm=float(i % 5))
    elif d.sensor == "flood":
        data = WaterPayload(ts=t, flood_depth_cm=float(i % 20))
    else:
        data = WaterPayload(ts=t, water_level_m=(d.elevation_m or 0.0) + 1.2 + (i % 10) / 10)
    return Reading(
        reading_id=f"{d.id}:{to_ns(t)}",
        device_id=d.id,
        kind=d.kind,
        event_time=t,
        received_at=t,
        location=Location(lat=d.lat, lon=d.lon, township=d.township),
        data=data,
    )


class BatchWork:
    """What a worker's device agent and township agent do with one record's readings
    (:mod:`processors.agents`), minus Kafka and InfluxDB: decode, handler, state, the
    batch's reports per township, every point's line; with ``changelog``, every device
    state the record changed as its changelog record holds it."""

    def __init__(
        self, ctx: Context, kind: str, trusted: bool = False, changelog: bool = False
    ) -> None:
        self.ctx = ctx
        self.kind = kind
        #: Decode without validating the lines again (the worker validates them).
        self.trusted = trusted
        #: Encode the states as BatchState.write does (position, encode_value).
        self.changelog = changelog
        self.offset = 0
        self.devices: dict[str, DeviceState] = {}
        self.towns: dict[str, TownshipState] = {}
        self.lines = 0

    def run(self, value: bytes) -> int:
        record = decode_record(value, trusted=self.trusted)
        points: list[Point] = []
        reports: dict[str, list[TownshipReport]] = {}
        ctx = self.ctx
        for r in record.readings:
            if self.kind == "air":
                env_a = self.devices.get(r.device_id)
                out_a = handle_air(env_a if isinstance(env_a, AirDevice) else AirDevice(), r, ctx)
                self.devices[r.device_id], out_points, out_reports = (
                    out_a.state,
                    out_a.points,
                    out_a.reports,
                )
            else:
                env_w = self.devices.get(r.device_id)
                out_w = handle_water(
                    env_w if isinstance(env_w, WaterDevice) else WaterDevice(), r, ctx
                )
                self.devices[r.device_id], out_points, out_reports = (
                    out_w.state,
                    out_w.points,
                    out_w.reports,
                )
            points += out_points
            for rep in out_reports:
                reports.setdefault(rep.township, []).append(rep)
        now = datetime.now(UTC)
        for town, batch in reports.items():
            d = handle_township_reports(self.towns.get(town, TownshipState()), batch, ctx, now)
            self.towns[town] = d.state
            points += d.points
        self.lines += len("\n".join(p.line() for p in points))
        if self.changelog:
            # Each device the record reached, once, at its last reading (BatchState.write).
            last = {r.device_id: i for i, r in enumerate(record.readings)}
            for device, i in last.items():
                state = self.devices[device].model_copy(update={"offset": self.offset, "index": i})
                self.lines += len(encode_value(state))
        self.offset += 1
        return len(record.readings)


def floor(batches: list[bytes], buckets: InfluxSettings) -> int:
    """The least a consumer that stores readings does: parse, one line each."""
    n = 0
    for value in batches:
        lines = []
        for r in map(json.loads, record_lines(value)):
            fields = ",".join(
                f"{k}={v!r}" for k, v in r["data"].items() if k not in ("v", "ts", "kind")
            )
            lines.append(f"{r['kind']},device={r['device_id']} {fields} {r['event_time']}")
        n += len(lines)
    return n


def measure(label: str, fn: Callable[[], int]) -> tuple[float, int]:
    c0 = time.process_time()
    n = fn()
    return time.process_time() - c0, n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=("air", "water"), default="air")
    ap.add_argument("--readings", type=int, default=20000)
    ap.add_argument("--warm", type=int, default=1000, help="readings processed first, not counted")
    ap.add_argument("--registry", type=Path, help="default: CIVIC_REGISTRY")
    ap.add_argument("--thresholds", type=Path, help="default: CIVIC_THRESHOLDS")
    ap.add_argument("--profile", type=Path, help="cProfile (CPU time) of the measured part")
    ap.add_argument("--trusted", action="store_true", help="decode without validating again")
    ap.add_argument(
        "--changelog", action="store_true", help="also encode each record's device states"
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs; the median is reported")
    args = ap.parse_args()

    settings = get_settings()
    registry = load_registry(args.registry or settings.registry)
    thresholds = load_thresholds(args.thresholds or settings.thresholds, registry)
    buckets = settings.influx
    ctx = Context.build(buckets, registry, thresholds)
    start = datetime(2026, 11, 25, tzinfo=UTC)
    warm = records(registry, args.kind, args.warm, start - timedelta(days=1))
    batches = records(registry, args.kind, args.readings, start)

    settle_heap()  # as the worker does once it is ready

    def run_ours() -> int:
        work = BatchWork(ctx, args.kind, args.trusted, args.changelog)
        for value in warm:
            work.run(value)
        n = 0
        c0 = time.process_time()
        for value in batches:
            n += work.run(value)
        run_ours.cpu = time.process_time() - c0  # type: ignore[attr-defined]
        return n

    cpus: list[float] = []
    for _ in range(args.repeat):
        run_ours()
        cpus.append(run_ours.cpu)  # type: ignore[attr-defined]
    if args.profile:
        prof = cProfile.Profile(time.process_time)
        prof.runcall(run_ours)
        prof.dump_stats(str(args.profile))
    floors = [measure("floor", lambda: floor(batches, buckets))[0] for _ in range(args.repeat)]
    ours, base = statistics.median(cpus), statistics.median(floors)
    # Other processes slow a run down (caches, frequency), never speed it up.
    best = min(cpus)
    n = args.readings
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [
        ("readings (kind)", f"{n} ({args.kind}), {len(batches)} records of {BATCH}"),
        ("ours: CPU per reading, us (median of runs)", f"{ours / n * 1e6:.1f}"),
        ("ours: CPU per reading, us (best run: A/B on a busy machine)", f"{best / n * 1e6:.1f}"),
        ("ours: readings/s on one core", f"{n / ours:.0f}"),
        ("floor (json.loads + one line each): CPU per reading, us", f"{base / n * 1e6:.1f}"),
        ("ratio floor / ours", f"{base / ours:.2f}"),
        ("peak RSS, MiB", f"{rss:.0f}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    _ = Point  # re-exported type for readers of this bench
    return 0


if __name__ == "__main__":
    sys.exit(main())
