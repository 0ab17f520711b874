"""S picks in the location: a station's S - P time is its distance from the source, so
it fixes what P picks alone leave open (the depth of a source ringed by its stations,
the range of one seen from one side), and a wrong one (a burst in the P coda) is capped
like an odd P pick."""

import math
import random
from datetime import UTC, datetime

import pytest

from civic_iot.contracts.processing import Observation, Trigger
from processors.detectors.quake import (
    Associator,
    EventStation,
    Hypocentre,
    QuakeConfig,
    distance_km,
    locate,
    to_alert_candidate,
)
from processors.detectors.state import dump_state, load_state

T0 = 1_700_000_000.0
CFG = QuakeConfig()
VP, VS = CFG.association.vp_kms, CFG.association.vs_kms


def _stations(
    lat0: float, lon0: float, arc: tuple[float, float], dist_km: tuple[float, float], n: int
) -> list[tuple[float, float]]:
    """``n`` stations at azimuths spread over ``arc`` (degrees) and epicentral
    distances over ``dist_km`` from a point."""
    out = []
    for k in range(n):
        az = math.radians(arc[0] + (arc[1] - arc[0]) * k / max(n - 1, 1))
        d = dist_km[0] + (dist_km[1] - dist_km[0]) * ((k * 5) % n) / max(n - 1, 1)
        lat = lat0 + d * math.cos(az) / 111.2
        lon = lon0 + d * math.sin(az) / (111.2 * math.cos(math.radians(lat0)))
        out.append((lat, lon))
    return out


def _picks(
    src: Hypocentre,
    where: list[tuple[float, float]],
    rng: random.Random,
    p_err: float,
    s_err: float,
) -> tuple[list[float], list[float], list[float], list[tuple[float, float, float]]]:
    lats, lons, p_times, s_picks = [], [], [], []
    for lat, lon in where:
        r = math.hypot(float(distance_km(src.lat, src.lon, lat, lon)), src.depth_km)
        lats.append(lat)
        lons.append(lon)
        p_times.append(src.origin_s + r / VP + rng.gauss(0.0, p_err))
        s_picks.append((lat, lon, src.origin_s + r / VS + rng.gauss(0.0, s_err)))
    return lats, lons, p_times, s_picks


@pytest.mark.parametrize(
    ("depth_km", "radius_km", "seed"),
    [(45.0, (35.0, 45.0), 1), (70.0, (45.0, 60.0), 2), (95.0, (40.0, 60.0), 3)],
)
def test_s_picks_fix_the_depth_of_a_source_ringed_by_its_stations(
    depth_km: float, radius_km: tuple[float, float], seed: int
) -> None:
    # Stations all around at nearly one distance: their P times fit any depth with its
    # own origin time, and the depth prior (10 km) chooses shallow.
    src = Hypocentre(origin_s=T0, lat=24.0, lon=121.1, depth_km=depth_km, rms_s=0.0)
    where = _stations(src.lat, src.lon, (10.0, 330.0), radius_km, 7)
    lats, lons, p_times, s_picks = _picks(src, where, random.Random(seed), 0.1, 0.2)
    p_only = locate(lats, lons, p_times, CFG)
    with_s = locate(lats, lons, p_times, CFG, s_picks=s_picks)
    assert abs(with_s.depth_km - depth_km) <= 8.0
    assert abs(with_s.depth_km - depth_km) < abs(p_only.depth_km - depth_km)

    def span(h: Hypocentre) -> float:
        assert h.depth_range_km is not None
        return h.depth_range_km[1] - h.depth_range_km[0]

    # The depths the picks allow: 28-84 km from P picks alone at 45 km, 41-50 with S.
    assert span(with_s) * 3.0 < span(p_only)
    assert float(distance_km(with_s.lat, with_s.lon, src.lat, src.lon)) <= 5.0
    assert abs(with_s.origin_s - T0) <= 1.0
    # The location's own figures stay the P picks'.
    assert (with_s.n_picks, with_s.n_s_picks) == (len(p_times), len(s_picks))
    assert p_only.n_s_picks == 0


@pytest.mark.parametrize(
    ("lat", "lon", "depth_km", "seed"),
    [(24.3, 122.3, 15.0, 4), (23.9, 122.1, 30.0, 5), (24.6, 122.5, 10.0, 6)],
)
def test_s_picks_fix_the_range_of_a_source_seen_from_one_side(
    lat: float, lon: float, depth_km: float, seed: int
) -> None:
    # Offshore east of the island: every station to the west, in a 70 degree sector.
    src = Hypocentre(origin_s=T0, lat=lat, lon=lon, depth_km=depth_km, rms_s=0.0)
    where = _stations(lat, lon, (235.0, 305.0), (45.0, 110.0), 8)
    lats, lons, p_times, s_picks = _picks(src, where, random.Random(seed), 0.15, 0.3)
    with_s = locate(lats, lons, p_times, CFG, s_picks=s_picks)
    assert float(distance_km(with_s.lat, with_s.lon, src.lat, src.lon)) <= 8.0
    assert abs(with_s.depth_km - depth_km) <= 12.0


def test_a_wrong_s_pick_is_capped_like_an_odd_p_pick() -> None:
    src = Hypocentre(origin_s=T0, lat=24.2, lon=121.3, depth_km=25.0, rms_s=0.0)
    where = _stations(src.lat, src.lon, (0.0, 315.0), (20.0, 80.0), 8)
    lats, lons, p_times, s_picks = _picks(src, where, random.Random(7), 0.05, 0.1)
    good = locate(lats, lons, p_times, CFG, s_picks=s_picks)
    # One station's "S" is a burst in its P coda, 4 s early.
    lat, lon, t = s_picks[2]
    wrong = [*s_picks[:2], (lat, lon, t - 4.0), *s_picks[3:]]
    bad = locate(lats, lons, p_times, CFG, s_picks=wrong)
    assert float(distance_km(bad.lat, bad.lon, good.lat, good.lon)) <= 3.0
    assert abs(bad.depth_km - good.depth_km) <= 5.0


def _deep_ring() -> tuple[Hypocentre, list[Trigger]]:
    src = Hypocentre(origin_s=T0, lat=24.1, lon=121.7, depth_km=80.0, rms_s=0.0)
    out = []
    for k, (lat, lon) in enumerate(_stations(src.lat, src.lon, (10.0, 310.0), (40.0, 52.0), 6)):
        r = math.hypot(float(distance_km(src.lat, src.lon, lat, lon)), src.depth_km)
        out.append(Trigger(station_id=f"D{k}", lat=lat, lon=lon, p_time_s=T0 + r / VP))
    return src, out


def test_an_s_pick_arriving_with_an_observation_relocates_the_event() -> None:
    src, ring = _deep_ring()
    res = Associator().step(now_s=T0 + 18.0, triggers=ring, config=CFG)
    assert len(res.updates) == 1
    first = res.updates[0]
    assert abs(first.depth_km - src.depth_km) > 15.0  # the picks alone: the prior's depth
    obs = []
    for t in ring:
        r = math.hypot(float(distance_km(src.lat, src.lon, t.lat, t.lon)), src.depth_km)
        ts = T0 + r / VS
        obs.append(
            Observation(
                station_id=t.station_id,
                pga_gal=5.0,
                pgv_cms=0.2,
                p_time_s=t.p_time_s,
                at_s=ts + 0.5,
                s_time_s=ts,
            )
        )
    now = max(o.at_s or 0.0 for o in obs)
    res = res.associator.step(now_s=now, observations=obs, config=CFG)
    assert len(res.updates) == 1
    assert abs(res.updates[0].depth_km - src.depth_km) <= 8.0
    (ev,) = res.associator.events
    assert {s.station_id: s.s_time_s for s in ev.stations} == {
        o.station_id: o.s_time_s for o in obs
    }
    # An operator sees how many S picks the location took.
    cand = to_alert_candidate(res.updates[0], detected_at=datetime.now(UTC), config=CFG)
    assert cand.evidence["n_s_picks"] == len(obs)
    assert (
        to_alert_candidate(first, detected_at=datetime.now(UTC), config=CFG).evidence["n_s_picks"]
        == 0
    )


def test_the_s_pick_is_carried_and_older_records_read_without_one() -> None:
    obs = Observation(station_id="A", pga_gal=1.0, pgv_cms=0.1, p_time_s=T0, s_time_s=T0 + 6.5)
    assert Observation.model_validate_json(obs.model_dump_json()) == obs
    old_obs = '{"station_id": "A", "pga_gal": 1.0, "pgv_cms": 0.1}'
    assert Observation.model_validate_json(old_obs).s_time_s is None
    st = EventStation("A", 24.0, 121.0, T0, picked=True, s_time_s=T0 + 6.5)
    assert load_state(EventStation, dump_state(st)) == st
    older = b'{"station_id": "A", "lat": 24.0, "lon": 121.0, "p_time_s": 1.7e9, "picked": true}'
    assert load_state(EventStation, older).s_time_s is None
