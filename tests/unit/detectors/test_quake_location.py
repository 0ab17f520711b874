"""Location: an odd pick in the declaring group, the P velocity solved for (round 3), a
deep source ringed by its first stations (round 6), the silent stations judged at the
largest magnitude the picks allow (round 8)."""

import math
from dataclasses import replace

import numpy as np
import pytest

from civic_iot.contracts.processing import Trigger
from processors.detectors.quake import (
    WIDE_PAIR_FACTOR,
    Associator,
    EventStation,
    Hypocentre,
    QuakeConfig,
    _consistent,
    _largest_magnitude,
    _locate_picks,
    _magnitude,
    distance_km,
    locate,
)
from processors.detectors.state import dump_state, load_state
from tests.unit.detectors.test_quake import CFG as NETWORK_CFG
from tests.unit.detectors.test_quake import T0, feed, trig

CFG = QuakeConfig()
HYPO = Hypocentre(origin_s=T0, lat=24.0, lon=121.6, depth_km=20.0, rms_s=0.5)


def test_an_early_noise_pick_in_the_group_does_not_hold_the_event_back() -> None:
    # Five picks from the quake and one 3 s early (a station's noise before the P):
    # consistent in pairs, so in the group, but the group's RMS is over the bar.
    odd = trig(5, -3.0)
    res = feed([trig(0), trig(1), trig(2), trig(3), trig(4), odd], T0 + 8)
    assert len(res.updates) == 1
    ev = res.updates[0]
    assert odd.station_id not in ev.station_ids
    assert ev.n_stations == 5
    assert ev.rms_s < NETWORK_CFG.association.max_rms_s


def test_picks_that_fit_no_source_still_make_no_event() -> None:
    # Every pick off by seconds in its own way: dropping the worst leaves too few.
    res = feed([trig(0), trig(1, 2.5), trig(2, -2.5), trig(3, 3.0)], T0 + 10)
    assert res.updates == ()


def _ring(vp_kms: float, depth_km: float, n: int = 20) -> list[EventStation]:
    """``n`` picks around an epicentre at 10-200 km, from a world with this vp."""
    out = []
    for k in range(n):
        az = math.radians(360.0 / n * k * 7 % 360.0)
        d = 10.0 + 190.0 * k / (n - 1)
        lat = HYPO.lat + d * math.cos(az) / 111.2
        lon = HYPO.lon + d * math.sin(az) / (111.2 * math.cos(math.radians(HYPO.lat)))
        r = math.hypot(float(distance_km(HYPO.lat, HYPO.lon, lat, lon)), depth_km)
        out.append(EventStation(f"S{k}", lat, lon, T0 + r / vp_kms, picked=True))
    return out


def test_a_settled_event_solves_for_a_slower_crust() -> None:
    picks = _ring(5.5, 40.0)  # 8% slower than the model's 6.0 km/s
    fixed = _locate_picks(picks, {}, set(), T0 + 40.0, QuakeConfig(velocity_scales=()), HYPO)
    free = _locate_picks(picks, {}, set(), T0 + 40.0, CFG, HYPO)
    assert fixed.vp_scale == 1.0
    assert free.vp_scale == pytest.approx(0.92)
    assert abs(free.depth_km - 40.0) < abs(fixed.depth_km - 40.0)
    assert abs(free.depth_km - 40.0) <= 5.0
    assert free.rms_s < fixed.rms_s


def test_the_models_velocity_stays_when_the_picks_fit_it() -> None:
    hypo = _locate_picks(_ring(6.0, 40.0), {}, set(), T0 + 40.0, CFG, HYPO)
    assert hypo.vp_scale == 1.0
    assert abs(hypo.depth_km - 40.0) <= 3.0
    # A young event (no ``around``) or few picks: the model's velocity, always.
    assert _locate_picks(_ring(5.5, 40.0, n=6), {}, set(), T0 + 40.0, CFG, HYPO).vp_scale == 1.0
    assert _locate_picks(_ring(5.5, 40.0), {}, set(), T0 + 40.0, CFG).vp_scale == 1.0


def test_the_velocity_factor_is_stored_and_older_states_read_as_the_models() -> None:
    h = Hypocentre(origin_s=T0, lat=24.0, lon=121.6, depth_km=40.0, rms_s=0.1, vp_scale=0.92)
    assert load_state(Hypocentre, dump_state(h)) == h
    older = b'{"origin_s": 1700000000.0, "lat": 24.0, "lon": 121.6, "depth_km": 40.0, "rms_s": 0.1}'
    assert load_state(Hypocentre, older).vp_scale == 1.0


#: A deep source on a node of the coarse location grid: with exact picks around it the
#: misfit valley is narrower than the grid's step (that is the locator's business, not
#: the pairing's under test).
DEEP = Hypocentre(origin_s=T0, lat=24.1, lon=121.7, depth_km=98.0, rms_s=0.0)


def _deep_ring(radius_km: float = 57.0) -> list[Trigger]:
    """Six stations on a ring around a deep source: nearly simultaneous P picks from
    stations 100-120 km apart across it."""
    out = []
    for k in range(6):
        az = math.radians(60.0 * k + 10.0)
        d = radius_km + 4.0 * (k % 3)
        lat = DEEP.lat + d * math.cos(az) / 111.2
        lon = DEEP.lon + d * math.sin(az) / (111.2 * math.cos(math.radians(DEEP.lat)))
        r = math.hypot(float(distance_km(DEEP.lat, DEEP.lon, lat, lon)), DEEP.depth_km)
        out.append(Trigger(station_id=f"D{k}", lat=lat, lon=lon, p_time_s=T0 + r / 6.0))
    return out


def test_nearly_simultaneous_picks_pair_beyond_the_pair_range() -> None:
    a = EventStation("A", 24.0, 121.0, T0, picked=True)
    thr = CFG.association
    at = {  # the same station at these distances east of A and P-time offsets
        (110.0, 0.3): True,
        (110.0, 3.0): False,  # far and not simultaneous: two sources
        (thr.pair_max_km * WIDE_PAIR_FACTOR + 5.0, 0.0): False,
    }
    for (d_km, dt_s), expected in at.items():
        lon = 121.0 + d_km / (111.2 * math.cos(math.radians(24.0)))
        b = EventStation("B", 24.0, lon, T0 + dt_s, picked=True)
        assert _consistent(a, b, thr) is expected, (d_km, dt_s)


def test_a_deep_quake_ringed_by_its_first_stations_is_declared() -> None:
    ring = _deep_ring()
    lat = [t.lat for t in ring]
    lon = [t.lon for t in ring]
    widest = max(
        float(distance_km(lat[i], lon[i], lat[j], lon[j]))
        for i in range(len(ring))
        for j in range(i)
    )
    assert widest > CFG.association.pair_max_km
    res = Associator().step(now_s=T0 + 22.0, triggers=ring, config=CFG)
    assert len(res.updates) == 1
    ev = res.updates[0]
    assert ev.n_picks == 6
    assert float(distance_km(ev.lat, ev.lon, DEEP.lat, DEEP.lon)) <= 10.0


def test_a_deep_source_ringed_by_its_picks_is_found_between_grid_nodes() -> None:
    # Off the coarse grid's nodes (24.0, 121.6 lies between them): the misfit valley of
    # picks all around a deep source is narrower than the grid's step (73 km off at an
    # RMS of 7 s when only the capped cost chose the points to refine).
    lats, lons, times = [], [], []
    for k in range(5):
        az = math.radians(72.0 * k + 10.0)
        d = 57.0 + 4.0 * (k % 3)
        lat = HYPO.lat + d * math.cos(az) / 111.2
        lon = HYPO.lon + d * math.sin(az) / (111.2 * math.cos(math.radians(HYPO.lat)))
        r = math.hypot(float(distance_km(HYPO.lat, HYPO.lon, lat, lon)), 98.0)
        lats.append(lat)
        lons.append(lon)
        times.append(T0 + r / 6.0 + 0.1 * ((k * 7) % 3 - 1))
    h = locate(lats, lons, times, CFG)
    assert float(distance_km(h.lat, h.lon, HYPO.lat, HYPO.lon)) <= 5.0
    assert h.rms_s < 0.3


def _deep_event(
    depth_km: float, magnitude: float, azimuth_deg: float
) -> tuple[
    Hypocentre, list[EventStation], dict[str, tuple[float, float, float | None, float, float]]
]:
    """A deep source under noise: five picks 55-67 km out around it (exact P times, P
    amplitudes of ``magnitude``) and six armed stations 5-30 km from its epicentre whose
    P, a second or more before the picks', stood under ten times their 0.9 gal noise (so
    they did not trigger)."""
    src = Hypocentre(origin_s=T0, lat=24.2, lon=121.2, depth_km=depth_km, rms_s=0.0)
    gm = CFG.ground_motion
    thr = CFG.association

    def at(d_km: float, az_deg: float) -> tuple[float, float, float]:
        az = math.radians(az_deg)
        lat = src.lat + d_km * math.cos(az) / 111.2
        lon = src.lon + d_km * math.sin(az) / (111.2 * math.cos(math.radians(src.lat)))
        return lat, lon, math.hypot(float(distance_km(src.lat, src.lon, lat, lon)), depth_km)

    picks = []
    for k in range(5):
        lat, lon, r = at(55.0 + 3.0 * k, azimuth_deg + 72.0 * k)
        pa = thr.p_to_s_ratio * float(gm.pga_gal(magnitude, np.array([r]))[0])
        picks.append(
            EventStation(
                f"P{k}",
                lat,
                lon,
                T0 + r / thr.vp_kms,
                picked=True,
                pa_gal=pa,
                pa_snr=10.0,
                p_window_s=1.0,
            )
        )
    now = max(s.p_time_s for s in picks) + 1.0
    armed: dict[str, tuple[float, float, float | None, float, float]] = {}
    for k in range(6):
        lat, lon, _ = at(5.0 + 5.0 * k, azimuth_deg + 60.0 * k + 30.0)
        armed[f"Q{k}"] = (lat, lon, T0 - 60.0, now, 0.9)
    return src, picks, armed


@pytest.mark.parametrize("depth_km", [85.0, 98.0])
@pytest.mark.parametrize("magnitude", [5.1, 5.4])
@pytest.mark.parametrize("azimuth_deg", [0.0, 35.0])
def test_silent_stations_over_a_weak_deep_quake_do_not_pull_its_first_location(
    depth_km: float, magnitude: float, azimuth_deg: float
) -> None:
    src, picks, armed = _deep_event(depth_km, magnitude, azimuth_deg)
    now = max(s.p_time_s for s in picks) + 1.0
    names = {s.station_id for s in picks}
    largest = _largest_magnitude(picks, now, CFG)
    assert largest is not None
    # At the largest magnitude the picks allow, the stations above it could not have
    # seen its P over their noise: they are excused, and the picks locate it.
    h = _locate_picks(picks, armed, names, now, CFG, magnitude=largest)
    assert float(distance_km(h.lat, h.lon, src.lat, src.lon)) <= 10.0
    assert h.rms_s < 0.3
    # Judged without a magnitude, the same stations pull the solution off (the test can
    # fail: the silent stations do constrain).
    blind = _locate_picks(picks, armed, names, now, CFG)
    assert blind.rms_s > 1.0 or float(distance_km(blind.lat, blind.lon, src.lat, src.lon)) > 20.0


def test_the_largest_magnitude_needs_picks_that_locate_alone() -> None:
    _, picks, _ = _deep_event(98.0, 5.3, 0.0)
    now = max(s.p_time_s for s in picks) + 1.0
    m5 = _largest_magnitude(picks, now, CFG)
    assert m5 is not None
    # Deeper reads larger: not below the magnitude at the picks' own location.
    alone = _locate_picks(picks, {}, set(), now, CFG)
    assert m5 >= _magnitude(picks, alone, now, CFG)[0]
    # Three picks (four unknowns) and picks that do not fit one source give none.
    assert _largest_magnitude(picks[:3], now, CFG) is None
    odd = [*picks[:4], replace(picks[4], p_time_s=picks[4].p_time_s - 3.0)]
    assert _largest_magnitude(odd, now, CFG) is None
    # No measure, no magnitude.
    bare = [replace(s, pa_gal=None, pa_snr=None, p_window_s=0.0) for s in picks]
    assert _largest_magnitude(bare, now, CFG) is None
