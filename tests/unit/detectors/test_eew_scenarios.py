"""Earthquake early warning scenarios through the station detectors and the associator,
replayed as the seismic agents send them (``tests/eew_world.py``): offshore, deep, inside
and at the edge of the network, under noise, and human-made bursts.

Pure and fast (20 Hz stations, only those within 250 km, about 45 s of data each). The
bounds and why the physics allows them are in ``docs/eew.md``; a bound is never tuned
to one scenario.
"""

from __future__ import annotations

import pytest

from simulator.waveforms import Burst, Spike
from tests.eew_world import LEAD_S, MATRIX, Scenario, associate, quake, recorded, replay
from tests.stations import STATIONS, T0


def _key(out):  # type: ignore[no-untyped-def]
    return [
        (u.event_id, u.lat, u.lon, u.depth_km, u.magnitude, u.station_ids, u.computed_at_s,
         u.closed, u.max_intensity, u.townships)
        for u in out.updates
    ]  # fmt: skip


def test_partitions_and_arrival_order_do_not_change_the_event() -> None:
    # Offshore east of Hualien: picks arrive over many seconds from stations spread over
    # every partition, some picks placed before the second that carried them.
    rec = recorded(MATRIX[0], 0)
    one = associate(rec, partitions=1)
    assert len(one.event_ids) == 1
    assert len(one.updates) >= 3
    for partitions, shuffle in ((4, 1), (8, 2)):
        other = associate(rec, partitions=partitions, shuffle=shuffle)
        assert _key(other) == _key(one), (partitions, shuffle)


# The bounds (docs/eew.md says why the physics allows them):
FIRST_ERROR_KM = 30.0  # the first alert's epicentre, offshore included
FINAL_ERROR_KM = 20.0  # the last update's epicentre
FINAL_DEPTH_KM = 25.0  # the last update's depth (the first is not bounded, see docs)
FIRST_MAGNITUDE = 0.7  # the first magnitude (Pd over 1-3 s of P at 3-5 stations)
FINAL_MAGNITUDE = 0.5
ALERT_AFTER_FIFTH_P_S = 3.0  # first alert after the P reached the fifth station
INTENSITY_HIT = 0.9  # felt stations within one CWA step


@pytest.mark.parametrize("sc", MATRIX, ids=[s.name for s in MATRIX])
def test_every_quake_is_declared_once_and_located(sc: Scenario) -> None:
    out = replay(sc, seed=0)
    m = out.metrics()
    assert m is not None, f"not declared; triggers {len(out.triggers)}"
    assert m.n_events == 1, out.event_ids
    assert m.first_error_km <= FIRST_ERROR_KM, m
    assert m.final_error_km <= FINAL_ERROR_KM, m
    assert abs(m.final_depth_error_km) <= FINAL_DEPTH_KM, m
    assert abs(m.first_magnitude_error) <= FIRST_MAGNITUDE, m
    assert abs(m.final_magnitude_error) <= FINAL_MAGNITUDE, m
    assert m.first_alert_s <= m.fifth_p_s + ALERT_AFTER_FIFTH_P_S, m
    assert m.intensity_hit >= INTENSITY_HIT, m
    # The updates only ever improve on what the network knows: every station that
    # joined stays (none is absorbed and dropped), and the last report is the closing.
    seen: set[str] = set()
    for u in out.updates:
        assert seen <= set(u.station_ids)
        seen = set(u.station_ids)
    assert out.updates[-1].closed
    assert out.updates[-1].n_picks >= 0.8 * out.updates[-1].n_stations


NORTH = ("TPE", "BQA", "WLI")  # Taipei, Banqiao, Wulai: neighbours 10-20 km apart


def test_a_burst_on_three_neighbours_makes_no_event() -> None:
    # A door slammed, a truck: the same impact at three neighbouring stations within
    # 0.3 s, strong enough that each triggers; and later a construction site hammering
    # on four.
    bursts = (
        Burst(NORTH, T0 + LEAD_S + 2.0, amplitude_gal=150.0, jitter_s=0.3),
        Burst(
            ("TYN", "ZLI", "DXI", "SXA"),
            T0 + LEAD_S + 12.0,
            amplitude_gal=80.0,
            band_hz=(3.0, 15.0),
            repeats=5,
        ),
    )
    # The northern network is enough (and every armed station is a witness).
    sc = Scenario("bursts", None, stations=tuple(STATIONS), bursts=bursts, after_s=30.0)
    out = replay(sc, seed=0)
    triggered = {t.station_id for t in out.triggers}
    assert set(NORTH) <= triggered, triggered
    assert out.updates == []


def test_a_real_p_right_after_a_spike_still_triggers() -> None:
    # A spike at the station nearest the quake 8 s before the origin: the station
    # re-arms and its P pick joins the event.
    q = quake(24.80, 121.60, 10.0, 5.5)
    spike = Spike("DTG", q.origin_s - 8.0, amplitude_gal=200.0)
    sc = Scenario("spike then P", q, spikes=(spike,), lead_s=24.0, radius_km=120.0)
    out = replay(sc, seed=0)
    dtg = [t.p_time_s - q.origin_s for t in out.triggers if t.station_id == "DTG"]
    assert len(dtg) >= 2, dtg
    assert dtg[0] < 0 < dtg[1] < 4.0
    m = out.metrics()
    assert m is not None
    assert m.n_events == 1
    assert "DTG" in out.updates[-1].station_ids
    assert m.first_error_km <= 10.0


def test_s_picks_bring_in_a_weak_quake_seen_from_one_side() -> None:
    # Off the north-east edge under three times the noise (bench/eew.py seed 6): its P
    # picks all lie to the south-west (gap 335 deg) and locate 40 km off at 0.01 s RMS
    # by themselves; the S - P times of the same stations say how far it is.
    sc = Scenario(
        "north-east edge, M5.0, 12 km, noise x3",
        quake(25.497, 122.256, 12.3, 5.02),
        noise_gal=0.9,
    )
    out = replay(sc, seed=1023)
    m = out.metrics()
    assert m is not None
    assert m.n_events == 1
    last = out.updates[-1]
    assert last.location is not None
    assert last.location.n_s_picks >= 3
    assert m.final_error_km <= FINAL_ERROR_KM, m
    assert abs(m.final_depth_error_km) <= 10.0, m
