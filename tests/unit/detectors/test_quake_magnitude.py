"""The early magnitude: tau_c (Wu & Kanamori 2005) through the stations' P-wave chain, and Pd
from the P window the S wave has not reached."""

import math
from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest

from civic_iot.contracts.processing import Observation
from processors.detectors.quake import (
    TAU_C_MAX_MAGNITUDE,
    EventStation,
    Hypocentre,
    PWindow,
    QuakeConfig,
    _magnitude,
    _magnitude_span,
    _observe,
    magnitude_from_pd,
    magnitude_from_tau_c,
)
from processors.detectors.seismic import SeismicConfig, StationState, process_packet
from processors.detectors.state import dump_state, load_state
from simulator.waveforms import SimQuake, SimStation, arrival_times, synthesize_traces

T0 = 1_700_000_000.0
CFG = QuakeConfig()


def station_tau_c(magnitude: float, seed: int = 2) -> tuple[float, float]:
    """(tau_c s, Pd SNR) a 20 Hz station 36 km from a 20 km deep quake reports once
    its 3 s P window is complete."""
    station = SimStation("ST1", 24.95, 121.55)
    quake = SimQuake(24.70, 121.75, 20.0, magnitude, T0 + 20.0)
    fs = 20.0
    trace = synthesize_traces(
        [station], start_s=T0, duration_s=40, sample_rate_hz=fs, quake=quake, seed=seed
    )["ST1"]
    p_true, _ = arrival_times(quake, station)
    seismic = SeismicConfig(pd_highpass_hz=CFG.association.pd_highpass_hz)
    state = StationState()
    for k in range(0, trace.shape[0], 20):
        res = process_packet(state, trace[k : k + 20], fs, T0 + k / fs, seismic)
        state = res.state
        if (
            res.tau_c_s is not None
            and res.pd_snr is not None
            and res.event_p_time_s is not None
            and abs(res.event_p_time_s - p_true) < 0.5
            and res.pd_complete
        ):
            return res.tau_c_s, res.pd_snr
    raise AssertionError("no complete P window at the quake's P time")


@pytest.mark.parametrize("magnitude", [5.0, 5.5, 6.0])
def test_tau_c_through_the_station_detector_gives_the_magnitude(magnitude: float) -> None:
    tau_c, snr = station_tau_c(magnitude)
    assert snr >= CFG.association.pd_min_snr + 1.0
    assert magnitude_from_tau_c(tau_c, 3.0, CFG) == pytest.approx(magnitude, abs=0.3)


@pytest.mark.parametrize("magnitude", [6.5, 7.0, 7.5])
def test_tau_c_saturates_so_it_only_bounds_a_large_quake_from_below(magnitude: float) -> None:
    tau_c, _ = station_tau_c(magnitude)
    m = magnitude_from_tau_c(tau_c, 3.0, CFG)
    assert 6.0 <= m <= TAU_C_MAX_MAGNITUDE
    assert m <= magnitude


def test_tau_c_magnitude_rises_with_tau_c_for_every_window() -> None:
    for window in (1.0, 1.5, 2.0, 2.5, 3.0):
        ms = [magnitude_from_tau_c(t, window, CFG) for t in np.linspace(0.2, 3.0, 30)]
        assert all(b >= a for a, b in pairwise(ms))
        assert 6.0 <= ms[-1] <= TAU_C_MAX_MAGNITUDE
    # Wu & Kanamori's period of an M 5 over a 3 s window, through the chain.
    assert magnitude_from_tau_c(10 ** (-1.716 + 0.296 * 5.0), 3.0, CFG) == pytest.approx(
        5.0, abs=0.1
    )


HYPO = Hypocentre(origin_s=T0, lat=24.0, lon=121.6, depth_km=20.0, rms_s=0.1)


def _pick(sid: str, km_east: float, **kw: float) -> EventStation:
    lon = HYPO.lon + km_east / (111.2 * math.cos(math.radians(HYPO.lat)))
    r = math.hypot(km_east, HYPO.depth_km)
    return EventStation(
        station_id=sid,
        lat=HYPO.lat,
        lon=lon,
        p_time_s=T0 + r / 6.0,
        picked=True,
        seen_until_s=T0 + 8.0,
        **kw,  # type: ignore[arg-type]
    )


def test_tau_c_lifts_a_low_p_amplitude_magnitude_from_two_stations() -> None:
    # Pd below the magnitude's SNR bar (noise), the P amplitude saying ~M 4, tau_c ~M 6.
    common = {"pd_cm": 0.01, "pd_snr": 5.0, "pa_gal": 0.5, "pa_snr": 10.0, "p_window_s": 3.0}
    one = [_pick("A", 30.0, tau_c_s=1.13, **common), _pick("B", 35.0, **common)]
    m1, method1 = _magnitude(one, HYPO, T0 + 8.0, CFG)
    assert method1 == "pa"
    two = [_pick("A", 30.0, tau_c_s=1.13, **common), _pick("B", 35.0, tau_c_s=1.2, **common)]
    m2, method2 = _magnitude(two, HYPO, T0 + 8.0, CFG)
    assert method2 == "tau_c"
    assert m2 == pytest.approx(6.0, abs=0.15)
    assert m2 > m1 + 1.0
    # tau_c of a pulse barely above the displacement noise is the noise's period.
    noisy = {**common, "pd_snr": 3.5}
    weak = [_pick("A", 30.0, tau_c_s=3.0, **noisy), _pick("B", 35.0, tau_c_s=3.0, **noisy)]
    assert _magnitude(weak, HYPO, T0 + 8.0, CFG) == (m1, "pa")


def test_a_station_near_the_source_gives_its_magnitude_from_the_window_before_s() -> None:
    # 8 km east of a 20 km deep source: S comes 2.6 s after P, inside the 3 s P window,
    # and sets its peaks (a Pd of 0.5 cm reads M 6.8); the 2 s window before it reads ~M 5.
    r = math.hypot(8.0, HYPO.depth_km)
    pd_2s = float(10 ** (-3.463 + 0.729 * 5.0 - 1.374 * math.log10(r)))
    st = _pick("N", 8.0)
    for window, pd in ((0.6, pd_2s / 3), (1.6, pd_2s * 0.9), (2.0, pd_2s), (3.0, 0.5)):
        obs = Observation(
            station_id="N", pga_gal=1.0, pgv_cms=0.1, p_time_s=st.p_time_s, at_s=T0 + 9.0,
            pd_cm=pd, pd_snr=100.0, pa_gal=1.0, pa_snr=100.0, p_window_s=window,
        )  # fmt: skip
        st = _observe(st, obs)
    assert st.p_window_s == 3.0
    assert [w.p_window_s for w in st.shorter] == [0.6, 1.6, 2.0]
    assert st.features(2.5) == PWindow(2.0, pd_2s, 100.0, 1.0, 100.0, None)
    assert st.features(0.5) is None
    m, method = _magnitude([st], HYPO, T0 + 8.0, CFG)
    assert method == "pd"
    # The station's filter takes a little of Pd: the corrected magnitude is a bit higher.
    assert 5.0 <= m <= 5.3
    assert float(magnitude_from_pd(np.array([0.5]), np.array([r]))[0]) > 6.5
    # An older packet of the window (partitions deliver out of order) changes nothing.
    late = Observation(
        station_id="N", pga_gal=1.0, pgv_cms=0.1, p_time_s=st.p_time_s, at_s=T0 + 7.0,
        pd_cm=pd_2s, pd_snr=100.0, pa_gal=1.0, pa_snr=100.0, p_window_s=1.6,
    )  # fmt: skip
    assert _observe(st, late).shorter == st.shorter


def test_shorter_windows_are_stored_and_older_states_read_without_them() -> None:
    st = replace(_pick("A", 30.0), shorter=(PWindow(1.2, 0.01, math.inf, 2.0, 30.0, 0.8),))
    assert load_state(EventStation, dump_state(st)) == st
    older = dump_state(_pick("A", 30.0)).replace(b',"shorter":[]', b"")
    assert b"shorter" not in older
    assert load_state(EventStation, older).shorter == ()


def test_the_depth_span_keeps_the_windows_the_location_chose() -> None:
    # Three stations 25-35 km out, their 3 s windows clear of S at the located 20 km;
    # at the region's shallow end S would come within them, and a shorter window (a
    # second of P, reading lower) would stand in: that is not the depth's doing.
    common = {"pd_snr": 50.0, "pa_gal": 5.0, "pa_snr": 50.0, "p_window_s": 3.0}
    short = (PWindow(1.0, 0.01, 20.0, 2.0, 20.0, None), PWindow(2.0, 0.02, 40.0, 4.0, 40.0))
    bare = [_pick(k, d, pd_cm=0.05, **common) for k, d in (("A", 25.0), ("B", 30.0), ("C", 35.0))]
    with_short = [replace(s, shorter=short) for s in bare]
    hypo = replace(HYPO, depth_range_km=(0.0, 60.0))
    span = _magnitude_span(bare, hypo, T0 + 8.0, CFG)
    assert span > 0.0
    assert _magnitude_span(with_short, hypo, T0 + 8.0, CFG) == span
