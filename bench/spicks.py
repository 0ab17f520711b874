"""S picks at the station detector over random quakes and noise (run by hand).

Quakes drawn as ``bench/eew.py`` draws them (its places, depths, M5.0-7.5; a third under
three times the noise, a third in the slower world with per-station delays), synthesised
with :mod:`simulator.waveforms` at 20 Hz on the stations of ``tests/stations.py``
(TAIWAN) within 150 km hypocentral, in 1 s packets through
:func:`processors.detectors.seismic.process_packets`. The true P and S are
:func:`simulator.waveforms.arrival_times` plus the station's delay in the slower world
(drawn as the synthesis draws it). Pure: no stack needed::

    .venv/bin/python bench/spicks.py --quakes 40 --seed 1
    .venv/bin/python bench/spicks.py --quakes 40 --seed 2 --noise-runs 20

Prints, per noise level and world and per hypocentral distance band, the stations whose
first window opened at their P (within 1.5 s), the share of them with an S pick, the
pick error against the true S (median of the error, median and 90th percentile of
``|error|``) and the share of picks more than 1 s off (what would mislead a locator);
windows opened at the S wave (their P under the noise) with an S pick are counted apart.
Then noise-only runs with spikes and bursts: windows opened and S picks held at the end.
``--p-to-s`` runs a harsher world than the shared one (a P wave, and so a P coda on the
horizontals, a larger fraction of the S wave) to see how the picker degrades.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.eew import noise_run, random_quake
from civic_iot.thresholds import StaLtaThresholds
from processors.detectors.seismic import SeismicConfig, StationState, process_packets
from simulator.waveforms import (
    SimQuake,
    SimStation,
    WaveModel,
    arrival_times,
    hypocentral_distance_km,
    synthesize_traces,
)
from tests.eew_world import LEAD_S
from tests.stations import T0, TAIWAN

FS = 20.0
BANDS = ((0.0, 30.0), (30.0, 60.0), (60.0, 100.0), (100.0, 150.0))
AFTER_S = 60.0


def delays(model: WaveModel, k: int, n: int, seed: int) -> np.ndarray:
    """Per-station delays of both arrivals, s, as :func:`synthesize_traces` draws them
    (the noise first, then the site terms, then the delays)."""
    if model.delay_sigma_s <= 0:
        return np.zeros(k)
    rng = np.random.default_rng(seed)
    rng.standard_normal((k, n, 3))
    rng.normal(0.0, model.site_sigma_log10, k)
    return np.asarray(rng.normal(0.0, model.delay_sigma_s, k))


def run_stream(
    stations: Sequence[SimStation],
    traces: dict[str, np.ndarray],
    start: float,
    cfg: SeismicConfig,
    packet_s: float = 1.0,
) -> dict[str, list[tuple[float, float | None, bool]]]:
    """Each station's windows: (P pick, S pick at the window's end or now, transient)."""
    states = {s.station_id: StationState() for s in stations}
    windows: dict[str, list[tuple[float, float | None, bool]]] = defaultdict(list)
    n = next(iter(traces.values())).shape[0]
    step = round(packet_s * FS)
    for i in range(0, n, step):
        res = process_packets(
            [
                (states[s.station_id], traces[s.station_id][i : i + step], FS, start + i / FS, cfg)
                for s in stations
            ]
        )
        for s, r in zip(stations, res, strict=True):
            states[s.station_id] = r.state
            w = windows[s.station_id]
            if r.triggered:
                assert r.p_time_s is not None
                w.append((r.p_time_s, None, False))
            if w and r.event_p_time_s == w[-1][0]:
                w[-1] = (w[-1][0], r.s_time_s, r.state.event_transient and not r.in_event)
    return windows


Row = tuple[float, str, float | None, float]


def quake_rows(
    sc_quake: SimQuake, noise: float, model: WaveModel, seed: int, cfg: SeismicConfig
) -> list[Row]:
    """(hypocentral km, kind, S error s, P error s) per station within 150 km: kind ``p``
    (first window at its P), ``s-opened`` (first window at the S wave), ``none``."""
    near = [
        s for s in TAIWAN if float(hypocentral_distance_km(sc_quake, s.lat, s.lon)) <= BANDS[-1][1]
    ]
    if not near:
        return []
    start = sc_quake.origin_s - LEAD_S
    dur = LEAD_S + AFTER_S
    traces = synthesize_traces(
        near, start_s=start, duration_s=dur, sample_rate_hz=FS, quake=sc_quake,
        noise_gal=noise, model=model, seed=seed,
    )  # fmt: skip
    delay = delays(model, len(near), round(dur * FS), seed)
    windows = run_stream(near, traces, start, cfg)
    out = []
    for s, d in zip(near, delay, strict=True):
        r = float(hypocentral_distance_km(sc_quake, s.lat, s.lon))
        tp, ts = arrival_times(sc_quake, s, model)
        tp, ts = tp + d, ts + d
        w = [x for x in windows.get(s.station_id, []) if x[0] >= tp - 3.0]
        if not w:
            out.append((r, "none", None, 0.0))
            continue
        p, sp, _ = w[0]
        kind = "p" if abs(p - tp) <= 1.5 else "s-opened" if abs(p - ts) <= 3.0 else "other"
        out.append((r, kind, None if sp is None else sp - ts, p - tp))
    return out


def _pct(v: Sequence[float], q: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] if s else float("nan")


def report(rows: dict[str, list[Row]]) -> None:
    print(
        "| noise, world | band km | P windows | with S | error median s | abs error median"
        " / p90 s | > 1 s off | S - P error median s | S-opened windows with an S pick |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for key in sorted(rows):
        for lo, hi in (*BANDS, (0.0, 150.0)):
            sel = [x for x in rows[key] if lo <= x[0] < hi]
            p = [x for x in sel if x[1] == "p"]
            errs = [x[2] for x in p if x[2] is not None]
            sp_errs = [x[2] - x[3] for x in p if x[2] is not None]
            s_open = [x for x in sel if x[1] in ("s-opened", "other")]
            s_open_picked = sum(x[2] is not None for x in s_open)
            ab = [abs(e) for e in errs]
            wrong = sum(a > 1.0 for a in ab)
            band = f"{lo:.0f}-{hi:.0f}" if (lo, hi) != (0.0, 150.0) else "**all**"
            print(
                f"| {key} | {band} | {len(p)} "
                f"| {len(errs)} ({100 * len(errs) / max(len(p), 1):.0f}%) "
                f"| {statistics.median(errs) if errs else float('nan'):+.2f} "
                f"| {_pct(ab, 0.5):.2f} / {_pct(ab, 0.9):.2f} "
                f"| {wrong} ({100 * wrong / max(len(errs), 1):.1f}%) "
                f"| {statistics.median(sp_errs) if sp_errs else float('nan'):+.2f} "
                f"| {s_open_picked} of {len(s_open)} |"
            )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quakes", type=int, default=40)
    ap.add_argument("--noise-runs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--s-ratio", type=float, default=None)
    ap.add_argument("--s-sta", type=float, default=None)
    ap.add_argument("--s-backtrack", type=float, default=None)
    ap.add_argument("--s-onset", type=float, default=None)
    ap.add_argument(
        "--p-to-s",
        type=float,
        default=None,
        help="a harsher world: the P wave this fraction of the S (the world's 0.25)",
    )
    args = ap.parse_args(argv)
    over = {
        k: v
        for k, v in (
            ("s_ratio", args.s_ratio),
            ("s_sta_s", args.s_sta),
            ("s_max_backtrack_s", args.s_backtrack),
            ("s_onset_ratio", args.s_onset),
        )
        if v is not None
    }
    cfg = SeismicConfig(sta_lta=StaLtaThresholds(**over))
    rng = random.Random(args.seed)
    tic = time.perf_counter()
    rows: dict[str, list[Row]] = defaultdict(list)
    for i in range(args.quakes):
        _, sc = random_quake(rng)
        assert sc.quake is not None
        if args.p_to_s is not None:
            sc = replace(sc, model=replace(sc.model, p_to_s=args.p_to_s))
        world = "slower world" if sc.model.delay_sigma_s > 0 else "model's world"
        key = f"{sc.noise_gal:.1f} gal, {world}"
        rows[key] += quake_rows(sc.quake, sc.noise_gal, sc.model, 1000 + i, cfg)
    rows["all"] = [x for k, v in rows.items() if k != "all" for x in v]
    world = "" if args.p_to_s is None else f", P {args.p_to_s:g} of S"
    print(f"## S picks, {args.quakes} random quakes (seed {args.seed}{world}), {over}\n")
    report(rows)

    windows = picks = transient_picks = 0
    for i in range(args.noise_runs):
        sc = noise_run(rng, 60.0)
        start = T0
        traces = synthesize_traces(
            TAIWAN, start_s=start, duration_s=sc.lead_s + sc.after_s, sample_rate_hz=FS,
            spikes=sc.spikes, bursts=sc.bursts, noise_gal=sc.noise_gal, seed=5000 + i,
        )  # fmt: skip
        for w in run_stream(TAIWAN, traces, start, cfg).values():
            windows += len(w)
            picks += sum(x[1] is not None for x in w)
            transient_picks += sum(x[1] is not None and x[2] for x in w)
    print(
        f"\nNoise runs ({args.noise_runs} x 60 s, spikes and bursts, {len(TAIWAN)} stations):"
        f" {windows} windows, {picks} with an S pick ({transient_picks} transient)."
    )
    print(f"(took {time.perf_counter() - tic:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
