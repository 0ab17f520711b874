"""Network association, location, magnitude, closing and the alert candidate."""

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from civic_iot.contracts.processing import Observation, Trigger
from processors.detectors.intensity import intensity_ordinal
from processors.detectors.quake import (
    Associator,
    CellShaking,
    QuakeConfig,
    QuakeEvent,
    Township,
    distance_km,
    locate,
    magnitude_from_pd,
    to_alert_candidate,
    township_intensities,
)
from processors.detectors.state import dump_state, load_state

T0 = 1_700_000_000.0
ORIGIN = (24.80, 121.60)  # near Datong, Yilan
STATIONS = [
    ("WLI", 24.87, 121.55),
    ("DTG", 24.68, 121.60),
    ("ILA", 24.76, 121.75),
    ("PLN", 24.94, 121.71),
    ("FXG", 24.82, 121.35),
    ("TPE", 25.04, 121.56),
]
CFG = QuakeConfig(
    townships=(Township("10002010", 24.76, 121.75), Township("65000010", 25.0, 121.5))
)


def p_time(lat: float, lon: float, origin_s: float = T0, depth: float = 10.0) -> float:
    r = math.hypot(float(distance_km(ORIGIN[0], ORIGIN[1], lat, lon)), depth)
    return origin_s + r / 6.0


def trig(i: int, dt: float = 0.0) -> Trigger:
    sid, lat, lon = STATIONS[i]
    return Trigger(station_id=sid, lat=lat, lon=lon, p_time_s=p_time(lat, lon) + dt)


def observed(sid: str, pga: float, pgv: float, **kw: float) -> Observation:
    return Observation(station_id=sid, pga_gal=pga, pgv_cms=pgv, **kw)


def feed(triggers: list[Trigger], now_s: float, assoc: Associator | None = None):  # type: ignore[no-untyped-def]
    return (assoc or Associator()).step(now_s=now_s, triggers=triggers, config=CFG)


def test_three_consistent_stations_make_one_event() -> None:
    res = feed([trig(0), trig(1), trig(2)], T0 + 6)
    assert len(res.updates) == 1
    ev = res.updates[0]
    assert ev.n_stations == 3
    assert not ev.closed
    assert res.associator.pending == ()


def test_two_stations_are_not_enough() -> None:
    res = feed([trig(0), trig(1)], T0 + 6)
    assert res.updates == ()
    assert len(res.associator.pending) == 2


def test_single_spike_never_alerts() -> None:
    assoc = Associator()
    for k in range(5):  # the same station firing again and again
        res = assoc.step(now_s=T0 + 70 * k + 1, triggers=[trig(0, 70 * k)], config=CFG)
        assoc = res.associator
        assert res.updates == ()


def test_times_inconsistent_with_p_travel_make_no_event() -> None:
    # WLI-DTG are ~22 km apart (P needs < 4 s) but fire 9 s apart; ILA too late for both.
    res = feed([trig(0), trig(1, 9.0), trig(2, 14.0)], T0 + 20)
    assert res.updates == ()


def test_triggers_too_far_apart_in_time_make_no_event() -> None:
    assoc = feed([trig(0)], T0 + 3).associator
    res = feed([trig(1, 20.0), trig(2, 20.0)], T0 + 25, assoc)
    assert res.updates == ()


def test_event_closes_20_s_after_last_trigger_and_cancels() -> None:
    res = feed([trig(0), trig(1), trig(2)], T0 + 6)
    last = max(t.p_time_s for t in (trig(0), trig(1), trig(2)))
    assoc = res.associator
    res = assoc.step(now_s=last + 19.0, config=CFG)
    assert res.updates == ()
    res = res.associator.step(now_s=last + 20.0, config=CFG)
    assert len(res.updates) == 1
    final = res.updates[0]
    assert final.closed
    cand = to_alert_candidate(final, detected_at=datetime.now(UTC), config=CFG)
    assert cand.level == 0
    # A straggler after closing is absorbed, not a new event.
    late = feed([trig(3), trig(4), trig(5)], last + 25.0, res.associator)
    assert late.updates == ()


def test_location_on_perfect_picks() -> None:
    lats = [s[1] for s in STATIONS]
    lons = [s[2] for s in STATIONS]
    picks = [p_time(la, lo, T0 + 3.0) for la, lo in zip(lats, lons, strict=True)]
    hypo = locate(lats, lons, picks, CFG)
    assert float(distance_km(hypo.lat, hypo.lon, *ORIGIN)) < 2.0
    assert hypo.origin_s == pytest.approx(T0 + 3.0, abs=0.2)
    assert hypo.rms_s < 0.05


def test_late_s_wave_trigger_is_absorbed_not_a_new_event() -> None:
    res = feed([trig(0), trig(1), trig(2)], T0 + 6)
    assoc = res.associator
    # Three more stations triggering on the S wave (well after their P) join as shaking.
    s_late = [trig(3, 8.0), trig(4, 9.0), trig(5, 10.0)]
    res = feed(s_late, T0 + 18, assoc)
    assert len(res.associator.events) == 1
    assert all(u.n_stations == 6 for u in res.updates)


def test_magnitude_from_pd_inverts_wu_zhao() -> None:
    r = np.array([10.0, 30.0, 80.0])
    pd = 10 ** (-3.463 + 0.729 * 6.0 - 1.374 * np.log10(r))
    assert magnitude_from_pd(pd, r) == pytest.approx([6.0, 6.0, 6.0])


def test_updates_only_on_material_change_and_candidate_fields() -> None:
    res = feed([trig(0), trig(1), trig(2)], T0 + 6)
    assoc = res.associator
    ev = res.updates[0]
    eid = ev.event_id
    obs = [
        observed("WLI", 300.0, 30.0),
        observed("DTG", 200.0, 20.0),
        observed("ILA", 150.0, 15.0),
    ]
    res = assoc.step(now_s=T0 + 7, observations=obs, config=CFG)
    assert len(res.updates) == 1
    ev = res.updates[0]
    assert ev.event_id == eid
    assert ev.magnitude_method == "pga"
    # The same figures again change nothing worth sending.
    res2 = res.associator.step(now_s=T0 + 8, observations=obs, config=CFG)
    assert res2.updates == ()
    cand = to_alert_candidate(ev, detected_at=datetime.now(UTC), config=CFG)
    assert cand.hazard == "earthquake"
    assert cand.area_code == f"quake-{eid}"
    assert cand.level >= 5  # observed 5+ near WLI
    assert cand.severity in ("Severe", "Extreme")
    assert cand.cells
    # A cell is named for the nearest township centroid within reach; far ones are not.
    assert all(c.township in {"10002010", "65000010", None} for c in cand.cells)
    assert {c.township for c in cand.cells} >= {"10002010", "65000010"}
    assert {p.township for p in cand.places} == set(cand.geocodes)
    assert set(cand.geocodes) <= {"10002010", "65000010"}
    assert cand.circle is not None
    assert cand.evidence["n_stations"] == 3.0
    assert cand.devices == ("WLI", "DTG", "ILA")


def test_associator_round_trips_through_json() -> None:
    res = feed([trig(0), trig(1), trig(2), trig(4, 30.0)], T0 + 6)
    obs = [observed("WLI", 30.0, 2.0, pd_cm=0.1, pd_snr=1e9)]
    assoc = res.associator.step(now_s=T0 + 7, observations=obs, config=CFG).associator
    back = load_state(Associator, dump_state(assoc))
    assert back == assoc  # pd_snr infinity included


def _event(cells: list[tuple[str, str | None]]) -> QuakeEvent:
    """An event whose cells have these (intensity, township)."""
    return QuakeEvent(
        event_id="e1", origin_s=T0, lat=24.8, lon=121.6, depth_km=10.0, rms_s=0.1,
        magnitude=6.0, magnitude_method="pd", station_ids=("WLI", "DTG", "ILA"),
        max_intensity="5+",
        cells=tuple(
            CellShaking(24.8, 121.6 + 0.1 * i, 100.0, 20.0, level, 0.0, town)
            for i, (level, town) in enumerate(cells)
        ),
        townships=tuple(sorted({t for _, t in cells if t})), first_trigger_s=T0 + 2,
        computed_at_s=T0 + 6,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        ([], {}),
        ([("3", "A")], {"A": "3"}),
        ([("4", "A"), ("5-", "A"), ("3", "A")], {"A": "5-"}),  # the township's highest cell
        ([("5+", "A"), ("5-", "A")], {"A": "5+"}),  # by rank, whatever the order
        ([("6-", "B"), ("4", "A"), ("5+", None)], {"A": "4", "B": "6-"}),  # no township: out
    ],
)
def test_township_intensities(
    cells: list[tuple[str, str | None]], expected: dict[str, str]
) -> None:
    assert township_intensities(_event(cells)) == expected


def test_township_intensities_of_an_associated_event() -> None:
    res = feed([trig(0), trig(1), trig(2)], T0 + 6)
    obs = [observed("WLI", 300.0, 30.0), observed("DTG", 200.0, 20.0)]
    ev = res.associator.step(now_s=T0 + 7, observations=obs, config=CFG).updates[0]
    towns = township_intensities(ev)
    assert set(towns) == set(ev.townships)
    top = max(intensity_ordinal(level) for level in towns.values())
    assert top <= intensity_ordinal(ev.max_intensity)
    assert top >= intensity_ordinal("5-")  # observed 5+ near WLI reaches a township


def test_a_trigger_waits_for_the_watermark_to_pass_its_packet() -> None:
    # The third pick is placed before the clock but came in a packet ending after it:
    # another partition may still hold an earlier pick of that second, so it waits.
    late = trig(2).model_copy(update={"at_s": T0 + 7.0})
    held = Associator().step(now_s=T0 + 6, triggers=[trig(0), trig(1), late], config=CFG)
    assert held.updates == ()
    assert held.associator.inbox == (late,)
    # Another partition's tick at the same clock brings nothing new: nothing happens.
    again = held.associator.step(now_s=T0 + 6, config=CFG)
    assert again.updates == ()
    done = again.associator.step(now_s=T0 + 7, config=CFG)
    assert len(done.updates) == 1
    assert done.updates[0].n_stations == 3
    assert done.associator.inbox == ()
