"""Replay: a synthetic M6 in northern Taiwan through every station detector and the
associator, packet by packet in time order, with a noisy station spiking by itself."""

import math
import time
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np

from civic_iot.contracts.processing import Trigger
from processors.detectors.intensity import intensity_ordinal
from processors.detectors.quake import (
    Associator,
    QuakeConfig,
    QuakeEvent,
    distance_km,
)
from processors.detectors.seismic import PacketResult, StationState, process_packet
from simulator.waveforms import (
    SimQuake,
    Spike,
    hypocentral_distance_km,
    synthesize_packets,
)
from tests.stations import NOISY, STATIONS, T0

QUAKE = SimQuake(lat=24.80, lon=121.60, depth_km=10.0, magnitude=6.0, origin_s=T0 + 40.0)
# The noisy station bursts before, during and after the quake.
SPIKES = [Spike(NOISY, T0 + t, a) for t, a in ((15.0, 200.0), (47.3, 300.0), (110.0, 250.0))]


@dataclass
class Replay:
    events: list[QuakeEvent] = field(default_factory=list)
    triggers: list[Trigger] = field(default_factory=list)
    last: dict[str, PacketResult] = field(default_factory=dict)
    packet_s: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)


def replay(quake: SimQuake | None, seed: int) -> Replay:
    packets = synthesize_packets(
        STATIONS,
        start_s=T0,
        duration_s=130.0,
        quake=quake,
        spikes=SPIKES,
        noisy={NOISY: 1.5},
        offset_gal=(0.0, 0.0, 980.0),
        seed=seed,
    )
    where = {s.station_id: s for s in STATIONS}
    states = {s.station_id: StationState() for s in STATIONS}
    cfg = QuakeConfig()
    assoc = Associator()
    out = Replay()
    for t0, batch in groupby(packets, key=lambda p: p.t0_s):
        triggers, observations, statuses = [], [], []
        for p in batch:
            tic = time.perf_counter()
            res = process_packet(states[p.station_id], p.samples, p.sample_rate_hz, p.t0_s)
            out.packet_s.append(time.perf_counter() - tic)
            states[p.station_id] = res.state
            out.last[p.station_id] = res
            st = where[p.station_id]
            trig = res.trigger(st.station_id, st.lat, st.lon)
            if trig is not None:
                triggers.append(trig)
            obs = res.observation(st.station_id)
            if obs is not None:
                observations.append(obs)
            status = res.status(st.station_id, st.lat, st.lon)
            if status is not None:
                statuses.append(status)
        tic = time.perf_counter()
        step = assoc.step(
            now_s=t0 + 1.0,
            triggers=triggers,
            observations=observations,
            stations=statuses,
            config=cfg,
        )
        out.step_s.append(time.perf_counter() - tic)
        assoc = step.associator
        out.events.extend(step.updates)
        out.triggers.extend(triggers)
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(float)


def test_m6_replay_gives_exactly_one_event() -> None:
    run = replay(QUAKE, seed=7)
    ids = {e.event_id for e in run.events}
    assert len(ids) == 1, ids
    first, final = run.events[0], run.events[-1]
    assert final.closed
    assert not any(e.closed for e in run.events[:-1])
    # Declared within a few seconds of the first P arrival (~2.3 s after origin).
    assert first.computed_at_s - QUAKE.origin_s < 6.0
    for ev in run.events:
        assert float(distance_km(ev.lat, ev.lon, QUAKE.lat, QUAKE.lon)) < 20.0
    assert abs(final.origin_s - QUAKE.origin_s) < 1.0
    assert 5.0 <= final.magnitude <= 7.0
    assert final.n_stations >= 20
    assert NOISY not in final.station_ids or NOISY in {t.station_id for t in run.triggers}

    # Observed intensities fall with distance (the noisy station's spikes excluded).
    sids = [s.station_id for s in STATIONS if s.station_id != NOISY]
    where = {s.station_id: s for s in STATIONS}
    dist = np.array(
        [float(hypocentral_distance_km(QUAKE, where[s].lat, where[s].lon)) for s in sids]
    )
    pga = np.array([run.last[s].event_pga_gal for s in sids])
    levels = np.array([intensity_ordinal(run.last[s].event_intensity) for s in sids])
    spearman = np.corrcoef(_ranks(dist), _ranks(pga))[0, 1]
    assert spearman < -0.7, spearman
    near, far = levels[dist < 30.0], levels[dist > 50.0]
    assert near.min() >= far.max()
    assert np.median(near) > np.median(far)

    # Expected cells: the closer to the epicentre, the stronger (station corrections may
    # raise a cell here and there, so compare groups).
    cells = sorted(final.cells, key=lambda c: distance_km(c.lat, c.lon, final.lat, final.lon))
    assert cells
    c_dist = np.array([float(distance_km(c.lat, c.lon, final.lat, final.lon)) for c in cells])
    c_lvl = np.array([intensity_ordinal(c.intensity) for c in cells])
    assert c_lvl[c_dist < 20.0].min() >= np.median(c_lvl[c_dist > 50.0])
    assert c_lvl[c_dist < 20.0].mean() > c_lvl[c_dist > 50.0].mean()
    assert cells[0].s_wave_s == 0.0  # by the end the S wave has passed everywhere

    per_packet_us = 1e6 * float(np.median(run.packet_s))
    p99_us = 1e6 * float(np.percentile(run.packet_s, 99))
    step_ms = 1e3 * float(np.max(run.step_s))
    print(
        f"\nprocess_packet (100 samples): median {per_packet_us:.0f} us, p99 {p99_us:.0f} us; "
        f"associator step: max {step_ms:.1f} ms over {len(run.step_s)} steps"
    )


def test_noisy_station_alone_makes_no_event() -> None:
    run = replay(None, seed=11)
    assert run.events == []
    # It did trigger (outside warm-up and lockout): the associator is what stops it.
    assert {t.station_id for t in run.triggers} == {NOISY}
    assert len(run.triggers) >= 2
    assert not math.isnan(run.last[NOISY].packet_pga_gal)
