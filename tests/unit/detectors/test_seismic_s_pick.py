"""The station detector's S pick (issue 12): the horizontals' STA over their mean since
the trigger, an upward crossing of ``s_ratio`` at least ``s_min_after_p_s`` after P."""

import json

import numpy as np
import pytest

from civic_iot.thresholds import StaLtaThresholds
from processors.detectors.seismic import (
    PacketResult,
    SeismicConfig,
    StationState,
    process_packet,
)
from processors.detectors.state import dump_state, load_state
from simulator.waveforms import (
    SimQuake,
    SimStation,
    Spike,
    arrival_times,
    hypocentral_distance_km,
    synthesize_traces,
)
from tests.unit.detectors.test_seismic_batch import S_FIELDS

T0 = 1_700_000_000.0
FS = 20.0
QUAKE = SimQuake(lat=24.0, lon=121.0, depth_km=10.0, magnitude=6.3, origin_s=T0 + 20)
#: Stations east of the epicentre at about 20, 45, 90 and 120 km hypocentral.
STATIONS = [
    SimStation("S020", 24.0, 121.17),
    SimStation("S045", 24.0, 121.43),
    SimStation("S090", 24.0, 121.88),
    SimStation("S120", 24.0, 122.2),
]


def run(
    x: np.ndarray, packet_s: float = 1.0, fs: float = FS, cfg: SeismicConfig | None = None
) -> list[PacketResult]:
    st = StationState()
    out = []
    step = round(packet_s * fs)
    for i in range(0, x.shape[0], step):
        r = process_packet(st, x[i : i + step], fs, T0 + i / fs, cfg)
        st = r.state
        out.append(r)
    return out


def quake_traces(noise: float, seed: int = 3, quake: SimQuake = QUAKE) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = synthesize_traces(
        STATIONS, start_s=T0, duration_s=80, sample_rate_hz=FS, quake=quake,
        noise_gal=noise, seed=seed,
    )  # fmt: skip
    return out


@pytest.mark.parametrize("noise", [0.3, 0.9])
@pytest.mark.parametrize("seed", [3, 4])
def test_the_s_wave_is_picked_near_the_true_s_at_every_distance(noise: float, seed: int) -> None:
    x = quake_traces(noise, seed)
    for s in STATIONS:
        tp, ts = arrival_times(QUAKE, s)
        results = run(x[s.station_id])
        picks = [r.p_time_s for r in results if r.triggered]
        assert picks, s.station_id
        assert picks[0] == pytest.approx(tp, abs=0.5), s.station_id
        s_picks = {r.s_time_s for r in results if r.s_time_s is not None}
        assert len(s_picks) == 1, (s.station_id, s_picks)  # one pick, kept
        (s_time,) = s_picks
        # The S wave rises over half a second: the pick comes in that rise.
        assert -0.2 <= s_time - ts <= 0.6, (s.station_id, s_time - ts)
        assert s_time - picks[0] >= StaLtaThresholds().s_min_after_p_s
        assert float(hypocentral_distance_km(QUAKE, s.lat, s.lon)) > 15.0


@pytest.mark.parametrize("noise", [0.3, 0.9])
def test_no_s_pick_on_noise_nor_on_a_spike(noise: float) -> None:
    x = synthesize_traces(
        STATIONS[:2], start_s=T0, duration_s=80, sample_rate_hz=FS, noise_gal=noise, seed=5,
        spikes=[Spike("S020", T0 + 30.0), Spike("S045", T0 + 40.0, amplitude_gal=600.0)],
    )  # fmt: skip
    for sid in ("S020", "S045"):
        results = run(x[sid])
        assert any(r.triggered for r in results)  # the spike opened a window
        assert all(r.s_time_s is None for r in results)
        assert all(r.observation(sid) is None or r.observation(sid).s_time_s is None  # type: ignore[union-attr]
                   for r in results)  # fmt: skip


def test_a_transient_window_drops_its_s_pick() -> None:
    """Two knocks 1.5 s apart: the second stands over the first's tail like an S wave
    and is picked as one while the window is open, but the window closes as a transient
    (a long transient rule here, so that it can) and its S pick goes with it."""
    x = synthesize_traces(
        STATIONS[:1], start_s=T0, duration_s=40, sample_rate_hz=FS, noise_gal=0.3, seed=6,
        spikes=[Spike("S020", T0 + 20.0, amplitude_gal=50.0),
                Spike("S020", T0 + 21.5, amplitude_gal=400.0)],
    )  # fmt: skip
    cfg = SeismicConfig(sta_lta=StaLtaThresholds(transient_max_s=8.0))
    results = run(x["S020"], cfg=cfg)
    assert any(r.s_time_s is not None for r in results if r.in_event)
    ended = [r for r in results if r.event_ended]
    assert ended
    assert all(r.transient for r in ended)
    assert all(r.s_time_s is None for r in ended)
    assert results[-1].s_time_s is None
    assert all(o.s_time_s is None for r in ended if (o := r.observation("S020")) is not None)


@pytest.mark.parametrize("packet_s", [0.5, 2.0, 0.35])
def test_the_s_pick_does_not_depend_on_the_packet_length(packet_s: float) -> None:
    x = quake_traces(0.3)
    for s in STATIONS:
        ref = {r.s_time_s for r in run(x[s.station_id], 1.0)} - {None}
        other = {r.s_time_s for r in run(x[s.station_id], packet_s)} - {None}
        assert len(ref) == 1
        assert len(other) == 1
        assert other.pop() == pytest.approx(ref.pop(), abs=1e-6)


def test_a_new_window_resets_the_s_pick() -> None:
    """Two quakes 90 s apart at one station: the second window starts without an S pick
    and gets its own."""
    second = SimQuake(lat=24.0, lon=121.0, depth_km=10.0, magnitude=6.0, origin_s=T0 + 110)
    a = synthesize_traces(STATIONS[1:2], start_s=T0, duration_s=160, sample_rate_hz=FS,
                          quake=QUAKE, noise_gal=0.3, seed=1)["S045"]  # fmt: skip
    b = synthesize_traces(STATIONS[1:2], start_s=T0, duration_s=160, sample_rate_hz=FS,
                          quake=second, noise_gal=0.3, seed=2)["S045"]  # fmt: skip
    results = run(a + b)
    triggers = [k for k, r in enumerate(results) if r.triggered]
    assert len(triggers) == 2
    second_trigger = results[triggers[1]]
    first_s = results[triggers[1] - 1].s_time_s
    assert first_s is not None
    assert second_trigger.s_time_s is None
    assert second_trigger.state.s_count < FS * 1.5  # the picker's memory started again
    later = {r.s_time_s for r in results[triggers[1] :]} - {None}
    _, ts = arrival_times(second, STATIONS[1])
    assert len(later) == 1
    assert abs(later.pop() - ts) < 0.6


def test_the_observation_carries_the_s_pick() -> None:
    x = quake_traces(0.3)
    results = run(x["S090"])
    r = next(r for r in results if r.s_time_s is not None)
    obs = r.observation("S090")
    assert obs is not None
    assert obs.s_time_s == r.s_time_s
    assert obs.p_time_s == r.event_p_time_s
    assert json.loads(obs.model_dump_json())["s_time_s"] == r.s_time_s
    before = results[results.index(r) - 1].observation("S090")
    assert before is not None
    assert before.s_time_s is None


def test_an_old_stored_state_without_the_s_fields_still_loads() -> None:
    x = quake_traces(0.3)
    results = run(x["S045"][: round(40 * FS)])
    st = results[-1].state
    assert st.in_event
    data = json.loads(dump_state(st))
    for name in S_FIELDS - {"s_time_s"}:  # the state's S fields (s_time_s: the result's)
        data.pop(name)
    old = load_state(StationState, json.dumps(data))
    assert old.event_s_time_s is None
    assert old.s_count == 0
    assert old.event_p_time_s == st.event_p_time_s
    # And it carries on: the packet after gives a result.
    r = process_packet(old, x["S045"][round(40 * FS) : round(41 * FS)], FS, T0 + 40.0)
    assert r.in_event


def test_the_s_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="s_onset_ratio"):
        StaLtaThresholds(s_ratio=2.0, s_onset_ratio=2.5)
    with pytest.raises(ValueError, match="s_ratio"):
        StaLtaThresholds(s_ratio=1.0)
