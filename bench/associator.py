"""The associator's step at Taiwan's scale (run by hand; pure, no stack needed).

The EEW benchmark (``bench/eew.py``) runs 60 stations; Taiwan's network is 615, and a
strong quake under it triggers hundreds of them within seconds. This replays quakes
through the station detectors of Taiwan's 615 stations (``bench/taiwan.py``'s registry,
:func:`simulator.network.build_network`) as the seismic agents tick them (4 partitions),
and times every associator step (:meth:`processors.detectors.quake.Associator.step`)::

    .venv/bin/python bench/associator.py                  # 3 quakes, 615 stations
    .venv/bin/python bench/associator.py --scale 0.25 --profile assoc.prof

It prints, per quake, the steps' p50 / p90 / max ms and the whole replay's associator
CPU, and where the event was put. A step is on the warning path: the quake agent takes
the next second's ticks only after it.
"""

from __future__ import annotations

import argparse
import cProfile
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.taiwan import taiwan_spec  # noqa: E402
from processors.agents.device import seismic_ticks  # noqa: E402
from processors.detectors.quake import (  # noqa: E402
    Associator,
    QuakeConfig,
    QuakeEvent,
    Township,
    distance_km,
)
from simulator.network import build_network  # noqa: E402
from simulator.waveforms import SimStation  # noqa: E402
from tests.eew_world import Recording, Scenario, partition_of, quake, record  # noqa: E402

#: (name, lat, lon, depth km, magnitude): under the network, offshore, at its edge.
QUAKES = (
    ("M6.0 under the network, 10 km", 24.95, 121.45, 10.0, 6.0),
    ("M7.0 offshore east of Yilan, 30 km", 24.7, 122.2, 30.0, 7.0),
    ("M5.2 at the north-east edge, 15 km", 25.25, 121.9, 15.0, 5.2),
)


def replay(
    rec: Recording, cfg: QuakeConfig, partitions: int
) -> tuple[list[float], list[QuakeEvent]]:
    """Every second's ticks to the associator as one step: its wall times (ms) and updates."""
    assoc = Associator()
    steps: list[float] = []
    updates: list[QuakeEvent] = []
    for second in rec.seconds:
        ticks = seismic_ticks([(o, None, partition_of(sid, partitions)) for sid, o in second])
        t0 = time.perf_counter()
        out = assoc.step(
            now_s=max(t.now_s for t in ticks),
            triggers=[x for t in ticks for x in t.triggers],
            observations=[x for t in ticks for x in t.observations],
            stations=[x for t in ticks for x in t.stations],
            config=cfg,
        )
        steps.append((time.perf_counter() - t0) * 1000)
        assoc = out.associator
        updates += out.updates
    return steps, updates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="share of Taiwan's 615 stations")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--after", type=float, default=25.0, help="s replayed after the origin")
    ap.add_argument("--profile", help="write a cProfile of the associator steps here")
    args = ap.parse_args(argv)

    reg = build_network(spec=taiwan_spec(args.scale))
    stations = tuple(
        SimStation(d.id, d.lat, d.lon) for d in reg.devices if d.sensor == "accelerometer"
    )
    cfg = QuakeConfig(townships=tuple(Township(t.code, t.lat, t.lon) for t in reg.townships))
    print(f"{len(stations)} stations, {len(cfg.townships)} townships, {args.partitions} partitions")
    print("| quake | steps | step p50 / p90 / max ms | associator CPU s | first / final km |")
    print("|---|---|---|---|---|")
    prof = cProfile.Profile() if args.profile else None
    for name, lat, lon, depth, mag in QUAKES:
        q = quake(lat, lon, depth, mag)
        rec = record(Scenario(name, q, stations=stations, after_s=args.after), seed=1, cfg=cfg)
        cpu0 = time.process_time()
        if prof is not None:
            prof.enable()
        steps, updates = replay(rec, cfg, args.partitions)
        if prof is not None:
            prof.disable()
        cpu = time.process_time() - cpu0
        qs = statistics.quantiles(steps, n=10)
        errs = [float(distance_km(u.lat, u.lon, lat, lon)) for u in updates if not u.closed]
        where = f"{errs[0]:.1f} / {errs[-1]:.1f}" if errs else "not declared"
        print(
            f"| {name} | {len(steps)} | {statistics.median(steps):.1f} / {qs[-1]:.1f} / "
            f"{max(steps):.1f} | {cpu:.2f} | {where} |"
        )
    if prof is not None:
        prof.dump_stats(args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
