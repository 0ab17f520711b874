"""CPU per packet of the seismic worker's pure work, stage by stage, no I/O (run by hand).

    .venv/bin/python bench/stations.py                       # 615 stations, 40 s, an M6
    .venv/bin/python bench/stations.py --stations 300 --seconds 60 --seed 3
    .venv/bin/python bench/stations.py --profile /tmp/s.prof
    .venv/bin/python bench/stations.py --quiet                # noise only (most seconds)

What the seismic worker does with a second of the network's packets once Kafka has
handed them over, minus Kafka and InfluxDB, split as the worker does it
(:class:`processors.agents.device.SeismicAgent`): decode the records (ingest's batch
records, each line validated again as the worker does), the station detector over the
batch's packets together (:func:`processors.detectors.seismic.process_packets`), the rest
of :func:`processors.handlers.handle_seismic_many` (triggers, observations, statuses),
the associator's ticks (:func:`processors.agents.device.seismic_ticks`) as JSON (``to
ticks``: the warning path's share), then the raw and station points with every point's
line of line protocol (built after the ticks leave) and every station's new state as
the changelog stores it (:func:`processors.states.encode_value`). The stations are the
Taiwan-scale registry's (``simulator.network``), their packets a noise floor with an
earthquake under the network half-way (``simulator.waveforms``), 100 Hz x 3 components,
the samples rounded to 0.01 gal as the simulator's devices send them; a batch is one
second of every station, ``--per-record`` packets to a record, cut at ``--batch-max``
packets as the worker's loop cuts it (``CIVIC_PROCESSORS__BATCH_MAX``).

It reports CPU time (``time.process_time``) per packet of each stage, the median of
``--repeat`` runs (and the best, for an A/B on a busy machine), and the garbage
collector's share (charged to whichever stage allocated when it ran): the worker sets
the collector as here (:func:`processors.app.settle_heap`).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import statistics
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.taiwan import taiwan_spec  # noqa: E402
from civic_iot.contracts.readings import (  # noqa: E402
    Location,
    Reading,
    SeismicPayload,
    decode_record,
    record_value,
)
from civic_iot.settings import get_settings  # noqa: E402
from processors import handlers  # noqa: E402
from processors.agents.device import seismic_ticks  # noqa: E402
from processors.app import GC_YOUNG_THRESHOLD_STATIONS, settle_heap  # noqa: E402
from processors.handlers import Context, handle_seismic_many  # noqa: E402
from processors.states import SeismicDevice, encode_value  # noqa: E402
from simulator.network import DEFAULT_SEED, build_network, network_thresholds  # noqa: E402
from simulator.waveforms import SimQuake, SimStation, synthesize_traces  # noqa: E402

_process_packets = handlers.process_packets

STAGES = ("decode", "detector", "outcomes", "ticks", "points", "state")
#: The stages on the warning path: the ticks leave before the points are built.
WARNING_PATH = STAGES[:4]


def batches(
    n_stations: int, seconds: int, seed: int, per_record: int, batch_max: int, *, quiet: bool
) -> list[list[bytes]]:
    """A second of every station's packets a batch, as ingest's records, cut after the
    record that makes ``batch_max`` packets (as the worker's loop cuts its batches);
    ``quiet``: noise only, no earthquake."""
    registry = build_network(DEFAULT_SEED, taiwan_spec(1.0))
    devices = registry.of_kind("seismic")[:n_stations]
    t0 = 1_790_000_000.0
    lat = statistics.fmean(d.lat for d in devices)
    lon = statistics.fmean(d.lon for d in devices)
    quake = (
        None
        if quiet
        else SimQuake(lat=lat, lon=lon, depth_km=10.0, magnitude=6.0, origin_s=t0 + seconds / 2)
    )
    traces = synthesize_traces(
        [SimStation(d.id, d.lat, d.lon) for d in devices],
        start_s=t0,
        duration_s=float(seconds),
        quake=quake,
        seed=seed,
    )
    out: list[list[bytes]] = []
    for s in range(seconds):
        lines = []
        t = datetime.fromtimestamp(t0 + s, UTC)
        for d in devices:
            x = np.round(traces[d.id][s * 100 : (s + 1) * 100], 2)
            data = SeismicPayload(
                ts=t,
                sample_rate_hz=100.0,
                x_gal=x[:, 0].tolist(),
                y_gal=x[:, 1].tolist(),
                z_gal=x[:, 2].tolist(),
            )
            ns = round((t0 + s) * 1e9)
            lines.append(
                Reading(
                    reading_id=f"{d.id}:{ns}",
                    device_id=d.id,
                    kind="seismic",
                    event_time=t,
                    received_at=t,
                    location=Location(lat=d.lat, lon=d.lon, township=d.township),
                    data=data,
                ).to_record()
            )
        records = [
            record_value(lines[i : i + per_record]) for i in range(0, len(lines), per_record)
        ]
        per_batch = -(-batch_max // per_record)
        out += [records[i : i + per_batch] for i in range(0, len(records), per_batch)]
    return out


class Worker:
    """The seismic agent's pure work on one batch, each stage timed."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.states: dict[str, SeismicDevice] = {}
        self.cpu: dict[str, float] = defaultdict(float)
        self.offset = 0

    def run(self, records: list[bytes]) -> int:
        clock = time.process_time
        cpu = self.cpu
        c = clock()
        readings = [r for value in records for r in decode_record(value, trusted=False).readings]
        c1 = clock()
        cpu["decode"] += c1 - c
        spent = [0.0]

        def timed(work: Any) -> Any:
            a = clock()
            out = _process_packets(work)
            spent[0] += clock() - a
            return out

        handlers.process_packets = timed  # the detector's share of the handler
        try:
            empty = SeismicDevice()
            outs = handle_seismic_many(
                [(self.states.get(r.device_id, empty), r) for r in readings], self.ctx
            )
        finally:
            handlers.process_packets = _process_packets
        c2 = clock()
        cpu["detector"] += spent[0]
        cpu["outcomes"] += c2 - c1 - spent[0]
        batch = [(o, 1, hash(r.device_id) % 4) for r, o in zip(readings, outs, strict=True)]
        for t in seismic_ticks(batch):
            t.model_dump_json().encode()
        c3 = clock()
        cpu["ticks"] += c3 - c2
        self.lines = "\n".join(p.line() for o in outs for p in o.points)
        c4 = clock()
        cpu["points"] += c4 - c3
        self.offset += 1
        for r, o in zip(readings, outs, strict=True):
            encode_value(o.state.model_copy(update={"offset": self.offset, "index": 0}))
            self.states[r.device_id] = o.state
        cpu["state"] += clock() - c4
        return len(readings)


class Collector:
    """CPU time of the garbage collector's runs, per generation."""

    def __init__(self) -> None:
        self.runs: dict[int, list[float]] = defaultdict(lambda: [0, 0.0])
        self._began = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.process_time()
            return
        run = self.runs[info["generation"]]
        run[0] += 1
        run[1] += time.process_time() - self._began

    def total(self) -> float:
        return sum(s for _, s in self.runs.values())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stations", type=int, default=615)
    ap.add_argument("--seconds", type=int, default=40, help="of packets (the quake half-way)")
    ap.add_argument("--warm", type=int, default=12, help="seconds decided first, not counted")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--per-record", type=int, default=3, help="packets per Kafka record")
    ap.add_argument("--batch-max", type=int, default=500, help="packets a batch at most")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", type=Path, help="cProfile (CPU time) of one measured run")
    ap.add_argument(
        "--quiet", action="store_true", help="noise only: the network's every second outside quakes"
    )
    args = ap.parse_args()

    settings = get_settings()
    spec = taiwan_spec(1.0)
    registry = build_network(DEFAULT_SEED, spec)
    ctx = Context.build(settings.influx, registry, network_thresholds(DEFAULT_SEED, spec))
    work = batches(
        args.stations, args.seconds, args.seed, args.per_record, args.batch_max, quiet=args.quiet
    )
    per_s = len(work) // args.seconds
    warm, measured = work[: args.warm * per_s], work[args.warm * per_s :]
    settle_heap(GC_YOUNG_THRESHOLD_STATIONS)  # as the seismic worker does once it is ready

    def run() -> Worker:
        w = Worker(ctx)
        for b in warm:
            w.run(b)
        w.cpu.clear()
        for b in measured:
            w.run(b)
        return w

    collector = Collector()
    runs: list[Worker] = []
    collected: list[float] = []
    for _ in range(args.repeat):
        before = collector.total()
        runs.append(run())
        collected.append(collector.total() - before)
    if args.profile:
        prof = cProfile.Profile(time.process_time)
        prof.runcall(run)
        prof.dump_stats(str(args.profile))
    seconds = args.seconds - args.warm
    n = args.stations * seconds
    what = "noise only" if args.quiet else "an M6 half-way"
    print(f"{args.stations} stations, {seconds} s measured ({n} packets, {what}), seed {args.seed}")
    for stage in (*STAGES, "to ticks", "total"):
        parts = {"to ticks": WARNING_PATH, "total": STAGES}.get(stage, (stage,))
        vals = [sum(w.cpu[p] for p in parts) / n * 1e6 for w in runs]
        print(
            f"{stage:<10} us/packet  median {statistics.median(vals):7.1f}  best {min(vals):7.1f}"
        )
    gc_us = statistics.median(collected) / n * 1e6
    print(f"of which the garbage collector, us/packet: median {gc_us:.1f}")
    for g, (count, spent) in sorted(collector.runs.items()):
        print(f"  generation {g}: {count} runs, {spent / count * 1e3:.1f} ms each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
