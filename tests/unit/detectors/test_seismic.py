"""Station detector: STA/LTA trigger, warm-up, transients and lockout, packet boundaries,
PGA/PGV, P-wave features."""

import math
from dataclasses import asdict
from itertools import pairwise

import numpy as np
import pytest

from civic_iot.thresholds import StaLtaThresholds
from processors.detectors.seismic import (
    PacketResult,
    SeismicConfig,
    StationState,
    process_packet,
    process_packets,
)
from processors.detectors.state import dump_state, load_state
from simulator.waveforms import SimQuake, SimStation, Spike, arrival_times, synthesize_traces

FS = 100.0
T0 = 1_700_000_000.0
STATION = SimStation("ST1", 24.95, 121.55)


def run(trace: np.ndarray, *, t0: float = T0, packet: int = 100) -> list[PacketResult]:
    """Feed ``trace`` as one 1 s packet (it seeds the filters) then ``packet``-sized ones."""
    state = StationState()
    out = []
    bounds = [0, *range(100, trace.shape[0], packet), trace.shape[0]]
    for j, k in pairwise(bounds):
        res = process_packet(state, trace[j:k], FS, t0 + j / FS)
        state = res.state
        out.append(res)
    return out


def triggers(results: list[PacketResult]) -> list[float]:
    return [r.p_time_s for r in results if r.triggered and r.p_time_s is not None]


def noise(duration_s: float, seed: int = 1, **kw: object) -> np.ndarray:
    return synthesize_traces(
        [STATION],
        start_s=T0,
        duration_s=duration_s,
        seed=seed,
        **kw,  # type: ignore[arg-type]
    )["ST1"]


def test_no_trigger_on_noise_with_gravity_offset() -> None:
    results = run(noise(120, offset_gal=(0.0, 0.0, 980.0)))
    assert triggers(results) == []
    assert max(r.packet_max_ratio for r in results) < 2.0
    # The offset is removed: packet PGA is noise-sized, not ~980 gal.
    assert max(r.packet_pga_gal for r in results[5:]) < 3.0


def test_trigger_on_p_onset_with_accurate_pick() -> None:
    quake = SimQuake(24.80, 121.60, 10.0, 5.5, T0 + 30.0)
    trace = synthesize_traces([STATION], start_s=T0, duration_s=70, quake=quake, seed=3)["ST1"]
    picks = triggers(run(trace))
    p_true, _ = arrival_times(quake, STATION)
    assert len(picks) == 1
    assert abs(picks[0] - p_true) <= 0.2


def test_no_trigger_during_warm_up() -> None:
    trace = noise(30, spikes=[Spike("ST1", T0 + 4.0, 200.0)])
    assert triggers(run(trace)) == []


def test_a_started_station_does_not_trigger_on_its_own_noise() -> None:
    # The LTA is the plain mean of the warm-up: a recursive average from 0 read 63 % of
    # the noise when the warm-up ended, and 60 stations under 3x noise started together
    # made 5-10 triggers in the next 20 s (a station then blind for a minute).
    stations = [SimStation(f"N{k:02d}", 23.0 + 0.05 * k, 121.0) for k in range(60)]
    x = synthesize_traces(
        stations, start_s=T0, duration_s=40, sample_rate_hz=20.0, noise_gal=0.9, seed=11
    )
    states = {s.station_id: StationState() for s in stations}
    picks = []
    noise_at_warm: dict[str, float] = {}
    for j in range(0, 800, 20):
        batch = process_packets(
            [
                (
                    states[s.station_id],
                    x[s.station_id][j : j + 20],
                    20.0,
                    T0 + j / 20.0,
                    SeismicConfig(),
                )
                for s in stations
            ]
        )
        for s, r in zip(stations, batch, strict=True):
            states[s.station_id] = r.state
            picks += triggers([r])
            if r.warmed_up and s.station_id not in noise_at_warm:
                noise_at_warm[s.station_id] = r.noise_gal
    assert picks == []
    # The noise the station measures when armed is the noise it measures later.
    ratio = [noise_at_warm[s.station_id] / math.sqrt(states[s.station_id].lta) for s in stations]
    assert 0.9 <= float(np.median(ratio)) <= 1.1


def test_spikes_do_not_blind_the_station() -> None:
    # Each spike is a transient: the station is armed again within seconds, not 60 s.
    spikes = [Spike("ST1", T0 + t, 100.0) for t in (20.0, 50.0, 79.0, 85.0)]
    results = run(noise(100, spikes=spikes))
    picks = triggers(results)
    assert picks == [pytest.approx(T0 + t, abs=0.3) for t in (20.0, 50.0, 79.0, 85.0)]
    assert sum(r.transient and r.event_ended for r in results) == 4


def test_a_quake_right_after_a_spike_is_still_picked() -> None:
    quake = SimQuake(24.80, 121.60, 10.0, 5.0, T0 + 30.0)
    p_true, _ = arrival_times(quake, STATION)
    for gap_s, amp in ((6.0, 150.0), (8.0, 400.0), (12.0, 1000.0)):
        spike = Spike("ST1", p_true - gap_s, amp)
        trace = synthesize_traces(
            [STATION], start_s=T0, duration_s=70, quake=quake, spikes=[spike], seed=3
        )["ST1"]
        picks = triggers(run(trace))
        assert picks[0] == pytest.approx(p_true - gap_s, abs=0.3)
        assert any(abs(p - p_true) <= 0.3 for p in picks[1:]), (gap_s, amp, picks, p_true)


def test_no_retrigger_within_lockout_after_a_quake() -> None:
    quake = SimQuake(24.80, 121.60, 10.0, 5.5, T0 + 20.0)
    p_true, _ = arrival_times(quake, STATION)
    spikes = [Spike("ST1", p_true + t, 100.0) for t in (45.0, 70.0)]
    trace = synthesize_traces(
        [STATION], start_s=T0, duration_s=110, quake=quake, spikes=spikes, seed=3
    )["ST1"]
    picks = triggers(run(trace))
    # The quake's window is no transient: its coda and a spike within 60 s of its P do
    # not fire again (OpenEEW's lockout); the spike after it does.
    assert picks == [pytest.approx(p_true, abs=0.3), pytest.approx(p_true + 70.0, abs=0.3)]


def test_packets_give_the_same_result_as_one_array() -> None:
    quake = SimQuake(24.85, 121.60, 10.0, 6.0, T0 + 25.0)
    trace = synthesize_traces(
        [STATION], start_s=T0, duration_s=60, quake=quake, seed=5, offset_gal=(0, 0, 980)
    )["ST1"]
    whole = run(trace, packet=trace.shape[0])[-1]  # everything after the first second
    by_packet = run(trace, packet=100)
    odd_sizes = run(trace, packet=37)
    assert triggers([whole]) == pytest.approx(triggers(by_packet))
    assert triggers(odd_sizes) == pytest.approx(triggers(by_packet))
    for r in (by_packet[-1], odd_sizes[-1]):
        a, b = asdict(whole.state), asdict(r.state)
        assert a.keys() == b.keys()
        for key in a:
            if a[key] is None or b[key] is None:
                assert a[key] is b[key], key
            else:
                assert np.allclose(a[key], b[key], rtol=1e-9, atol=1e-9), key
        assert r.event_pga_gal == pytest.approx(whole.event_pga_gal)
        assert r.event_pgv_cms == pytest.approx(whole.event_pgv_cms)


def test_state_round_trip_through_json() -> None:
    quake = SimQuake(24.85, 121.60, 10.0, 5.5, T0 + 20.0)
    trace = synthesize_traces([STATION], start_s=T0, duration_s=40, quake=quake, seed=4)["ST1"]
    results = run(trace[:3000])
    state = results[-1].state
    assert state.in_event
    restored = load_state(StationState, dump_state(state))
    assert restored == state
    nxt = trace[3000:3100]
    assert process_packet(restored, nxt, FS, T0 + 30.0) == process_packet(state, nxt, FS, T0 + 30.0)


def test_pga_and_pgv_of_a_known_sine() -> None:
    amp, freq = 100.0, 2.0
    t = np.arange(int(40 * FS)) / FS
    trace = np.zeros((t.size, 3))
    trace[:, 2] = 980.0
    on = t >= 20.0
    # Cosine onset: velocity A/w sin(wt) is zero-mean, so PGV is exactly A / (2 pi f).
    # On the vertical, over gravity: the trigger band is vertical.
    trace[on, 2] += amp * np.cos(2 * np.pi * freq * (t[on] - 20.0))
    res = run(trace)
    assert triggers(res) == [pytest.approx(T0 + 20.0, abs=0.05)]
    last = res[-1]
    assert last.event_pga_gal == pytest.approx(amp, rel=0.03)
    assert last.event_pgv_cms == pytest.approx(amp / (2 * np.pi * freq), rel=0.05)
    assert last.packet_pga_gal == pytest.approx(amp, rel=0.03)
    assert last.event_intensity == "4"  # >= 80 gal but PGV ~8 cm/s < 15
    assert last.pd_complete
    assert last.pd_cm is not None
    # A 2 Hz sine: Wu & Kanamori's tau_c is its period, Pa its amplitude in the band.
    assert last.tau_c_s == pytest.approx(0.5, rel=0.15)
    assert last.pa_gal is not None
    assert 0.5 * amp < last.pa_gal <= 1.05 * amp
    assert last.pv_cms == pytest.approx(amp / (2 * np.pi * freq), rel=0.2)


def test_three_sequences_equal_array() -> None:
    trace = noise(12)
    chunk = trace[:100]
    a = process_packet(StationState(), chunk, FS, T0)
    b = process_packet(StationState(), [list(chunk[:, k]) for k in range(3)], FS, T0)
    assert a == b
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        process_packet(StationState(), chunk.T, FS, T0)


def test_duplicate_packet_is_ignored_and_gap_restarts() -> None:
    trace = noise(20)
    first = process_packet(StationState(), trace[:100], FS, T0)
    again = process_packet(first.state, trace[:100], FS, T0)
    assert again.duplicate
    assert again.state == first.state
    later = process_packet(first.state, trace[100:200], FS, T0 + 60.0)
    assert later.restarted
    assert not later.warmed_up


def test_event_window_closes() -> None:
    cfg = SeismicConfig(sta_lta=StaLtaThresholds(min_event_window_s=10.0, max_event_window_s=20.0))
    trace = noise(60)
    t = np.arange(500) / FS
    # Five seconds of shaking: no transient, the window runs its minimum length.
    trace[2000:2500, 2] += 20.0 * np.sin(2 * np.pi * 3.0 * t) * np.hanning(500)
    state = StationState()
    ended_at = None
    for j in range(0, trace.shape[0], 100):
        r = process_packet(state, trace[j : j + 100], FS, T0 + j / FS, cfg)
        state = r.state
        if r.event_ended:
            ended_at = j / FS
    assert ended_at is not None
    assert 29.0 <= ended_at <= 40.0
    assert not state.in_event
