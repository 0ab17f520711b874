"""The first alert of a one-sided network (a wide location waits a bounded time), the
S wave's PGA as a floor for a P-wave magnitude, and a first location whose depth (and so
magnitude) the picks leave open (round 8)."""

import math
from dataclasses import replace

import numpy as np
import pytest

from processors.detectors.quake import (
    EventStation,
    Hypocentre,
    PWindow,
    QuakeConfig,
    _depth_open,
    _first_s_arrival,
    _magnitude,
    _s_wave_floor,
    _too_wide,
    distance_km,
)

T0 = 1_700_000_000.0
CFG = QuakeConfig()
HYPO = Hypocentre(origin_s=T0, lat=24.0, lon=121.5, depth_km=10.0, rms_s=0.1)


def picks(n: int, first_s: float = T0 + 5.0, step_s: float = 0.4) -> list[EventStation]:
    return [
        EventStation(f"S{k}", 24.0 + 0.1 * k, 121.6, first_s + step_s * k, picked=True)
        for k in range(n)
    ]


def test_a_wide_region_from_few_picks_waits_until_after_the_fifth_pick() -> None:
    group = picks(7)
    wide = replace(HYPO, uncertainty_km=CFG.declare_wide_km + 20.0)
    fifth = group[4].p_time_s
    assert _too_wide(group, wide, fifth + 1.0, CFG)
    # The bound: the alert is not held past the fifth pick + the wait.
    assert not _too_wide(group, wide, fifth + CFG.declare_wide_wait_s, CFG)
    # A narrow region, or enough picks, declares at once.
    assert not _too_wide(group, replace(wide, uncertainty_km=CFG.declare_wide_km), fifth, CFG)
    many = picks(CFG.declare_wide_max_picks, step_s=0.1)
    assert not _too_wide(many, wide, many[4].p_time_s, CFG)


@pytest.mark.parametrize("fifth_in_packet_s", [0.0, 0.05, 0.2, 0.5, 0.8, 0.95])
@pytest.mark.parametrize("late_s", [0.0, 0.1, 0.19])
def test_a_wide_region_waits_a_second_but_never_past_the_fifth_p_plus_3_s(
    fifth_in_packet_s: float, late_s: float
) -> None:
    # Decisions come at the end of each 1 s packet; the fifth pick lies anywhere in one
    # and comes up to 0.2 s after the P it picks. The wide region is held for at least
    # the next packet (its stations a step inland tell a deep source near the coast from
    # a shallow one far out), and the first decision that is not held is within 3 s of
    # the fifth P.
    fifth_p = T0 + 10.0 + fifth_in_packet_s
    group = picks(7, first_s=fifth_p + late_s - 4 * 0.4)
    wide = replace(HYPO, uncertainty_km=CFG.declare_wide_km + 30.0)
    decisions = [T0 + 10.0 + k for k in range(1, 6)]
    held = [t for t in decisions if _too_wide(group, wide, t, CFG)]
    declared = next(t for t in decisions if not _too_wide(group, wide, t, CFG))
    assert held
    assert held[0] < declared
    assert declared - fifth_p <= 3.0


def test_fewer_than_five_picks_wait_after_the_newest() -> None:
    group = picks(3)
    wide = replace(HYPO, uncertainty_km=90.0)
    assert _too_wide(group, wide, group[-1].p_time_s + 1.0, CFG)
    assert not _too_wide(group, wide, group[-1].p_time_s + CFG.declare_wide_wait_s, CFG)


def _near_stations(pga_gal: float, seen_after_s_s: float) -> list[EventStation]:
    """Three stations 10-20 km from ``HYPO`` with ``pga_gal`` so far, their data reaching
    ``seen_after_s_s`` past their S wave, and a P amplitude that reads low (a short window)."""
    out = []
    for k, dlat in enumerate((0.09, 0.13, 0.18)):
        lat, lon = HYPO.lat + dlat, HYPO.lon
        r = float(np.hypot(distance_km(HYPO.lat, HYPO.lon, lat, lon), HYPO.depth_km))
        t_s = HYPO.origin_s + r / CFG.association.vs_kms
        out.append(
            EventStation(
                f"N{k}",
                lat,
                lon,
                HYPO.origin_s + r / CFG.association.vp_kms,
                picked=True,
                pga_gal=pga_gal,
                pa_gal=2.0,
                pa_snr=50.0,
                p_window_s=0.6,
                seen_until_s=t_s + seen_after_s_s,
            )
        )
    return out


def test_the_s_wave_so_far_floors_a_low_p_wave_magnitude() -> None:
    gm = CFG.ground_motion
    r = np.array([20.0])
    pga = float(gm.pga_gal(6.8, r)[0])
    stations = _near_stations(pga, seen_after_s_s=1.5)
    now = max(s.seen_until_s for s in stations)
    floor = _s_wave_floor(stations, HYPO, now, CFG)
    assert floor is not None
    assert 6.0 < floor < 7.5
    m, method = _magnitude(stations, HYPO, now, CFG)
    assert method == "pga"
    assert m == round(floor, 2)
    # The same P amplitudes before the S wave has been recorded for a second: no floor.
    early = _near_stations(pga, seen_after_s_s=0.5)
    assert _s_wave_floor(early, HYPO, now, CFG) is None
    m_early, method_early = _magnitude(early, HYPO, now, CFG)
    assert method_early == "pa"
    assert m_early < floor - 1.0


def test_the_floor_needs_two_stations_and_never_lowers() -> None:
    gm = CFG.ground_motion
    one = _near_stations(float(gm.pga_gal(6.8, np.array([20.0]))[0]), 1.5)
    one = [one[0], *(replace(s, pga_gal=0.0) for s in one[1:])]
    now = max(s.seen_until_s for s in one)
    assert _s_wave_floor(one, HYPO, now, CFG) is None
    # A weak S wave (a small quake's) leaves a higher P-wave magnitude as it is.
    weak = [
        replace(s, pga_gal=0.5, shorter=(PWindow(0.3),))
        for s in _near_stations(1.0, seen_after_s_s=2.0)
    ]
    strong_p = [replace(s, pa_gal=50.0) for s in weak]
    m_p, method = _magnitude(strong_p, HYPO, now + 5.0, CFG)
    assert method == "pa"
    floor = _s_wave_floor(strong_p, HYPO, now + 5.0, CFG)
    assert floor is not None
    assert floor < m_p


def _deep_picks(depth_km: float, azimuth_deg: float, n: int) -> list[EventStation]:
    """``n`` picks 18-45 km from a source ``depth_km`` deep under ``HYPO``'s epicentre
    (exact P times), each with a P amplitude the magnitude can be read from."""
    out = []
    for k in range(n):
        az = math.radians(azimuth_deg + 360.0 * k / n)
        d = 18.0 + 27.0 * k / max(n - 1, 1)
        lat = HYPO.lat + d * math.cos(az) / 111.2
        lon = HYPO.lon + d * math.sin(az) / (111.2 * math.cos(math.radians(HYPO.lat)))
        r = math.hypot(float(distance_km(HYPO.lat, HYPO.lon, lat, lon)), depth_km)
        out.append(
            EventStation(
                f"D{k}",
                lat,
                lon,
                HYPO.origin_s + r / CFG.association.vp_kms,
                picked=True,
                pa_gal=3.0,
                pa_snr=10.0,
                p_window_s=1.0,
            )
        )
    return out


@pytest.mark.parametrize("depth_km", [55.0, 70.0, 85.0, 100.0])
@pytest.mark.parametrize("azimuth_deg", [0.0, 40.0, 100.0])
def test_a_deep_quake_first_put_shallow_waits_while_its_s_wave_is_not_surely_in(
    depth_km: float, azimuth_deg: float
) -> None:
    # Four picks of a deep source, located shallow with a late origin (the depth prior,
    # or an early noise pick the location fits): at the located depth the S wave has
    # reached the nearest station a second ago, but at the depths the picks allow it
    # has not, and the magnitude changes by a unit over those depths.
    group = _deep_picks(depth_km, azimuth_deg, 4)
    shallow = 15.0
    t_p = np.array([s.p_time_s for s in group])
    r_shallow = np.array(
        [float(np.hypot(distance_km(HYPO.lat, HYPO.lon, s.lat, s.lon), shallow)) for s in group]
    )
    origin = float(np.median(t_p - r_shallow / CFG.association.vp_kms))
    located = replace(
        HYPO, origin_s=origin, depth_km=shallow, depth_range_km=(5.0, min(depth_km + 10.0, 100.0))
    )
    s_at_located = origin + float(r_shallow.min()) / CFG.association.vs_kms
    now = s_at_located + 1.0
    true_s = min(
        HYPO.origin_s
        + float(np.hypot(distance_km(HYPO.lat, HYPO.lon, s.lat, s.lon), depth_km))
        / CFG.association.vs_kms
        for s in group
    )
    assert now < true_s  # the S wave has not come: the old test was wrong here
    assert _first_s_arrival(group, located, CFG) > now
    assert _depth_open(group, located, now, CFG)
    # Once the S wave could have come from every depth allowed, the event goes out.
    assert not _depth_open(group, located, _first_s_arrival(group, located, CFG), CFG)
    # A depth the picks resolve holds nothing back.
    resolved = replace(located, depth_range_km=(shallow - 3.0, shallow + 3.0))
    assert not _depth_open(group, resolved, now, CFG)


@pytest.mark.parametrize("depth_km", [55.0, 85.0])
@pytest.mark.parametrize("fifth_in_packet_s", [0.0, 0.5, 0.95])
def test_from_five_picks_the_depth_wait_ends_with_the_wide_wait(
    depth_km: float, fifth_in_packet_s: float
) -> None:
    group = _deep_picks(depth_km, 20.0, 5)
    located = replace(HYPO, depth_km=15.0, depth_range_km=(5.0, 100.0))
    fifth = sorted(s.p_time_s for s in group)[4]
    assert _depth_open(group, located, fifth + 0.5, CFG)
    assert not _depth_open(group, located, fifth + CFG.declare_wide_wait_s, CFG)
    # With 1 s packets the first decision not held is within 3 s of the fifth P.
    start = math.floor(fifth) + fifth_in_packet_s
    decisions = [start + k for k in range(1, 6)]
    declared = next(t for t in decisions if not _depth_open(group, located, t, CFG))
    assert declared - fifth <= 3.0
